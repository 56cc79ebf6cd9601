"""The Lua of docs/TEMPLATES.md runs as the guide says: every snippet that is a whole
template loads, and the beginner's, the host events', the guarantees' and the errors'
snippets give what the text next to them promises (through the local engine: a real store,
real capabilities, real lupa)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moonshard.errors import TemplateError
from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.localrun import LocalSession
from moonshard.sandbox import run_inline
from moonshard.sandbox.loading import validate_template
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "TEMPLATES.md"
TENANT = TenantId.guild(1100000000000000042)


def snippets(section: str | None = None) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end != -1 else len(text)]
    return re.findall(r"```lua\n(.*?)```", text, re.DOTALL)


def whole_templates() -> list[str]:
    """The snippets that are a whole init.lua: they return the table of handlers."""
    return [snippet for snippet in snippets() if re.search(r"^return \{", snippet, re.M)
            and "require(\"greet\")" not in snippet]


@pytest.mark.parametrize("source", whole_templates(), ids=lambda s: s.splitlines()[0][:40])
async def test_every_whole_template_in_the_guide_loads(source: str) -> None:
    template = await validate_template(TENANT, "snippet", {"init.lua": source}, Limits(),
                                       run_inline)
    assert template.events


class Session:
    def __init__(self, tmp_path: Path) -> None:
        self.logs: list[tuple[str, str, str]] = []
        self.session = LocalSession(TENANT, Limits(cpu_seconds=2.0),
                                    f"sqlite:///{tmp_path / 'kv.db'}",
                                    lambda *line: self.logs.append(line), run_inline)

    async def value(self, name: str, data: JsonValue = None) -> JsonValue:
        report = await self.session.run(Event(name, data if data is not None else {}))
        [result] = report.results
        assert result.ok, result.error
        return result.value


async def test_lua_in_five_minutes_returns_what_the_text_says(tmp_path: Path) -> None:
    [source] = snippets("Lua in five minutes")
    rig = Session(tmp_path)
    async with rig.session as session:
        await session.load("basics", {"init.lua": source})
        assert await rig.value("RUN") == {"name": "nelly!", "roles": ["1:mod", "2:member"],
                                          "loud": "NELLY", "missing": True}


async def test_the_mistakes_table_quotes_what_moonshard_says() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    source = "return {\n  X = function(ctx, event)\n    if x = 1 then end\n  end,\n}\n"
    with pytest.raises(TemplateError) as caught:
        await validate_template(TENANT, "t", {"init.lua": source}, Limits(), run_inline)
    assert f"`{caught.value}`" in text


async def test_the_host_events_snippet_subscribes_to_each_kind(tmp_path: Path) -> None:
    [source] = snippets("Host events")
    rig = Session(tmp_path)
    async with rig.session as session:
        template = await session.load("events", {"init.lua": source})
        assert template.events == ("GUILD_MEMBER_ADD", "KeyExpiry", "KeyResume",
                                   "MESSAGE_CREATE", "Remind", "Startup")
        report = await session.run(Event("Remind", {"text": "tea"}))
    assert [(before.event.name, before.results[0].ok) for before in report.before] == [
        ("Startup", True)]  # before the event, when the VM was built
    assert ("info", "events", "VM built:\tworker_start") in rig.logs
    assert ("info", "events", "custom event\ttea") in rig.logs


async def test_a_failed_run_keeps_nothing_as_the_guarantees_say(tmp_path: Path) -> None:
    [source] = snippets("What is guaranteed")
    rig = Session(tmp_path)
    async with rig.session as session:
        await session.load("coins", {"init.lua": source})
        assert await rig.value("PAY", {"user": "1"}) == 10
        failed = await session.run(Event("PAY", {"user": "1", "fail": True}))
        assert failed.results[0].error == "init.lua:4: refused"
        assert await rig.value("BALANCE", {"user": "1"}) == 10


async def test_the_errors_snippet_catches_the_host_error(tmp_path: Path) -> None:
    [source] = snippets("Errors")
    rig = Session(tmp_path)
    async with rig.session as session:
        await session.load("errors", {"init.lua": source})
        value = await rig.value("RUN")
    assert value == {"ok": False,
                     "error": "init.lua:3: ctx.kv.set: key is 600 bytes; the limit is 512"}
    promised = ('`{ok = false, error = "init.lua:3: ctx.kv.set: key is 600 bytes; the limit is'
                '\n512"}`')
    assert promised in GUIDE.read_text(encoding="utf-8")
