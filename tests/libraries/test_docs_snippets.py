"""The Lua snippets of docs/TEMPLATES.md's library and editor sections run as written."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Harness, RecordingCapability
from tests.libraries.payloads import command, option

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "TEMPLATES.md"


def _snippets(section: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```lua\n(.*?)```", text[start:end], re.DOTALL)


async def test_the_editor_sections_snippet_loads(harness: Harness) -> None:
    [snippet] = _snippets("Start a template, with editor support")
    assert await harness.load(snippet) == ("MESSAGE_CREATE",)


async def test_the_library_snippets_run() -> None:
    commands_doc, duration_doc, embed_doc = _snippets("Built-in libraries")

    duration = Harness()
    await duration.load(duration_doc)
    result = await duration.run("RUN")
    assert result.value == [9000, 129600,
                            '"10 parsecs": unknown unit "parsecs" (units: s, m, h, d, w)',
                            "2h30m", "1d1h", "1 hour 1 minute"]

    embed = Harness()
    await embed.load(embed_doc)
    result = await embed.run("RUN", {})
    assert result.ok, result.error
    assert isinstance(result.value, dict)
    assert result.value["title"] == "Rank of nelly"
    assert result.value["color"] == 0x5865F2
    assert len(result.value["fields"]) == 2  # type: ignore[arg-type]

    router = Harness()
    assert await router.load(commands_doc) == ("INTERACTION_CREATE", "KeyExpiry")
    discord, kv = RecordingCapability(answer=True), RecordingCapability(answer=None)
    capabilities = {"discord": discord, "kv": kv}
    await router.run("INTERACTION_CREATE", command("ping"), capabilities=capabilities)
    await router.run("INTERACTION_CREATE", command("remind", [option("in", 3, "10m")]),
                     capabilities=capabilities)
    await router.run("INTERACTION_CREATE", command("config", [
        option("set", 1, options=[option("key", 3, "prefix"), option("value", 3, "!")])],
        in_guild=False), capabilities=capabilities)
    answers = [(op, args[0]["content"], args[0].get("ephemeral"))  # type: ignore[index,union-attr]
               for op, args in discord.calls]
    assert answers == [("respond", "Pong!", None),
                       ("respond", "I will remind you in 10 minutes", True),
                       ("respond", "This only works in a server.", True)]
    assert ("set", ["remind:80351110224678912", "something", {"ttl": 600}]) in kv.calls
