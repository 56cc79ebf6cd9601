"""A refused template over HTTP and through ``moonshard template push``: its code, its name,
its place."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from service_support import MOONSHARD, Served, cli_env, new_guild


def test_a_runtime_error_at_load_answers_422_load_error_with_the_name(
        admin: httpx.Client, tenant: str) -> None:
    response = admin.put(f"/v1/tenants/{tenant}/templates/greeter", json={
        "files": {"init.lua": "local cfg = nil\nlocal x = cfg.channel\nreturn {}\n"}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error == {"code": "load_error", "template": "greeter", "file": "init.lua",
                     "line": 2, "message": "error while loading: attempt to index a nil "
                                           "value (local 'cfg')"}
    compile_error = admin.put(f"/v1/tenants/{tenant}/templates/greeter", json={
        "files": {"init.lua": "return {\n X = function() if a = 1 then end end }"}})
    body = compile_error.json()["error"]
    assert (compile_error.status_code, body["code"], body["template"], body["line"]) == (
        422, "compile_error", "greeter", 2)
    assert "(hint: `=` stores a value" in body["message"]


def test_push_refusals_keep_the_template_name_and_say_the_place_once(
        served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "greeter"
    folder.mkdir()
    (folder / "init.lua").write_text("return { Foo = 3 }\n")
    refused = subprocess.run([*MOONSHARD, "template", "push", str(folder), "--tenant",
                              new_guild()], env=cli_env(served), capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("error: template greeter refused: init.lua: the handler "
                                      "for 'Foo' is a number, not a function")
