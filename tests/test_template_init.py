"""``moonshard template init`` as an author runs it, and the editor types it ships.

The Lua language server (LuaLS) itself is not installable on this machine (neither npm nor
Debian has it), so these tests check the definitions against the real API instead: every file
is valid Lua, and every call of ctx.kv, ctx.events, ctx.discord and the built-in libraries has
a definition.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from lupa import lua54

from moonshard.authoring import type_definitions
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parent.parent


def moonshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonshard", *args], capture_output=True, text=True,
        timeout=120, cwd=cwd, check=False)


def test_init_writes_a_starter_that_exec_runs(tmp_path: Path) -> None:
    done = moonshard("template", "init", "hello", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "hello"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        ".luarc.json", ".types/commands.lua", ".types/duration.lua", ".types/embed.lua",
        ".types/moonshard.lua", "events/INTERACTION_CREATE.json", "events/MESSAGE_CREATE.json",
        "init.lua"]
    ran = moonshard("exec", "hello", "--event", "MESSAGE_CREATE",
                    "--data", "@hello/events/MESSAGE_CREATE.json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    # .types/ is left out of the template: otherwise its file names would be refused.
    assert json.loads(ran.stdout)["results"] == [
        {"template": "hello", "ok": True, "value": {"messages": 1}}]
    assert "[info] hello: nelly has sent 1 messages" in ran.stderr


def test_the_starters_slash_command_answers_through_ctx_discord(tmp_path: Path) -> None:
    assert moonshard("template", "init", "hello", cwd=tmp_path).returncode == 0
    ran = moonshard("exec", "hello", "--event", "INTERACTION_CREATE",
                    "--data", "@hello/events/INTERACTION_CREATE.json", cwd=tmp_path)
    result = json.loads(ran.stdout)["results"][0]
    # Until exec records Discord calls, ctx.discord refuses: the call was made all the same.
    assert result["ok"] or "ctx.discord.respond" in result["error"], result


def test_luarc_points_at_the_copied_definitions(tmp_path: Path) -> None:
    assert moonshard("template", "init", "hello", cwd=tmp_path).returncode == 0
    luarc = json.loads((tmp_path / "hello" / ".luarc.json").read_text())
    assert luarc["runtime"]["version"] == "Lua 5.4"
    [library] = luarc["workspace"]["library"]
    copied = {p.name: p.read_text() for p in (tmp_path / "hello" / library).iterdir()}
    assert copied == dict(type_definitions())


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "init.lua").write_text("-- my work")
    done = moonshard("template", "init", "mine", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "error: mine already exists and is not empty; choose a new folder name\n"
    assert (folder / "init.lua").read_text() == "-- my work"
    assert sorted(p.name for p in folder.iterdir()) == ["init.lua"]


def test_init_fills_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = moonshard("template", "init", "empty", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "empty" / "init.lua").is_file()


def test_every_definition_file_is_valid_lua() -> None:
    runtime = lua54.LuaRuntime(register_eval=False)
    check = runtime.eval("function(text, name) local f, err = load(text, name, 't') "
                         "return err end")
    definitions = type_definitions()
    assert set(definitions) == {"moonshard.lua", "commands.lua", "duration.lua", "embed.lua"}
    for name, text in definitions.items():
        assert check(text, name) is None, name
        assert text.startswith("---@meta"), name


def _defined(file: str, owner: str) -> set[str]:
    text = type_definitions()[file]
    return set(re.findall(rf"^function {re.escape(owner)}[.:](\w+)\(", text, re.MULTILINE))


def test_every_host_call_has_a_definition() -> None:
    prelude = (ROOT / "src/moonshard/sandbox/lua/prelude.lua").read_text()
    kv_ops = set(re.findall(r'"(\w+)"', re.search(r'capability\("kv", \{(.*?)\}\)', prelude,
                                                  re.DOTALL).group(1)))  # type: ignore[union-attr]
    assert kv_ops | {"top", "rank"} <= _defined("moonshard.lua", "Kv")
    assert _defined("moonshard.lua", "Events") == {"emit", "schedule", "cancel"}
    assert _defined("moonshard.lua", "Discord") == {
        "send_message", "edit_message", "delete_message", "add_reaction", "ban", "unban",
        "kick", "timeout", "add_role", "remove_role", "get_member", "get_channel", "get_guild",
        "get_roles", "respond", "followup"}
    assert _defined("moonshard.lua", "json") == {"encode", "decode", "object", "array"}
    assert _defined("moonshard.lua", "Context") == {"log"}


LIBRARY_API = """
local function functions(t)
  local names = {}
  for name, value in pairs(t) do
    if type(value) == "function" then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end
local commands = require("@moonshard/commands")
local embed = require("@moonshard/embed")
local router = commands.router{send = function() return true end}
local command_methods
router:command("x", function(cmd) command_methods = functions(getmetatable(cmd)) return "ok" end)
router:dispatch({}, {data = {type = 2, data = {name = "x"}, user = {id = "1"}}})
return {
  duration = functions(require("@moonshard/duration")),
  embed = functions(embed),
  builder = functions(getmetatable(embed.new())),
  commands = functions(commands),
  router = functions(getmetatable(router)),
  command = command_methods,
}
"""


async def test_every_library_function_has_a_definition(harness: Harness) -> None:
    api = await harness.value(LIBRARY_API)
    assert isinstance(api, dict)
    assert set(api["duration"]) == _defined("duration.lua", "duration")
    assert set(api["embed"]) == _defined("embed.lua", "embed")
    assert set(api["builder"]) == _defined("embed.lua", "Builder")
    assert set(api["commands"]) == _defined("commands.lua", "commands")
    assert set(api["router"]) == _defined("commands.lua", "Router")
    assert set(api["command"]) == _defined("commands.lua", "Command")
