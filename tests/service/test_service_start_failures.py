"""``moonshard serve`` refuses a database it cannot use in one line naming the setting and the
cause, exit status 1, never a traceback, never a password."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from service_support import MOONSHARD, free_port


def _file_as_parent(folder: Path) -> str:
    (folder / "afile").write_text("not a folder")
    return f"sqlite:///{folder / 'afile' / 'x.db'}"


def _folder_as_database(folder: Path) -> str:
    (folder / "adir").mkdir()
    return f"sqlite:///{folder / 'adir'}"


def _not_a_database(folder: Path) -> str:
    (folder / "junk.db").write_bytes(b"this is no SQLite file at all, only text" * 100)
    return f"sqlite:///{folder / 'junk.db'}"


def _newer_schema(folder: Path) -> str:
    path = folder / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT,"
                 " applied_at REAL)")
    conn.execute("INSERT INTO schema_version VALUES (999, 'from the future', 0)")
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def _refused(_: Path) -> str:
    return f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{free_port()}/test"


def _unknown_host(_: Path) -> str:
    return "postgresql://postgres:s3cr3t-pw@no-such-host.invalid:5432/test"


def _unknown_database(_: Path) -> str:
    return "postgresql://postgres:s3cr3t-pw@127.0.0.1:5432/no_such_database_here"


def _bad_option(folder: Path) -> str:
    return f"sqlite:///{folder / 'x.db'}?readers=many"


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "parent is a file": (_file_as_parent, "afile is not a folder"),
    "folder as the database file": (_folder_as_database, "unable to open the database file"),
    "not a database": (_not_a_database, "not an SQLite database"),
    "newer schema": (_newer_schema, "upgrade moonshard"),
    "connection refused": (_refused, "connection refused"),
    "unknown host": (_unknown_host, "unknown host"),
    "unknown database": (_unknown_database, "does not exist"),
    "bad URL option": (_bad_option, "readers"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_database_serve_cannot_use_is_one_line(tmp_path: Path, case: str) -> None:
    make_url, cause = CASES[case]
    url = make_url(tmp_path)
    env = {**os.environ, "MOONSHARD_DATABASE_URL": url, "MOONSHARD_PORT": str(free_port()),
           "MOONSHARD_WORKERS": "1", "MOONSHARD_TOPOLOGY": "thread"}
    done = subprocess.run([*MOONSHARD, "serve"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: MOONSHARD_DATABASE_URL: "), lines[0]
    assert cause in lines[0], lines[0]
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    assert done.stdout == ""


def test_a_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MOONSHARD, "serve", "--database-url", f"sqlite:///{_folder_as_database(tmp_path)[10:]}",
         "--port", str(free_port()), "--workers", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: --database-url: cannot open the database"), done.stderr
