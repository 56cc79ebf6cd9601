"""The leaderboard snippet of docs/TEMPLATES.md runs as written, through a real Engine (thread
topology, SQLite) and real lupa: XP by message, then TOP and RANK answer from ``ctx.kv``."""

from __future__ import annotations

import re
from pathlib import Path

from moonshard import Engine, Event, TenantId

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "TEMPLATES.md"


def leaderboard_snippet() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("\n### Leaderboards")
    end = text.index("\n### ", start + 1)
    [snippet] = re.findall(r"```lua\n(.*?)```", text[start:end], re.DOTALL)
    return snippet


async def test_the_leaderboard_snippet_runs(tmp_path: Path) -> None:
    guild = TenantId.guild(80351110224678912)
    async with Engine.open(f"sqlite:///{tmp_path / 'levels.db'}", topology="thread",
                           workers=1) as engine:
        saved = await engine.templates.put(guild, "levels",
                                           files={"init.lua": leaderboard_snippet()})
        assert saved.events == ("MESSAGE_CREATE", "RANK", "TOP")
        for author in ("111", "222", "111", "333", "222", "111", "444"):
            [result] = await engine.dispatch(
                guild, Event("MESSAGE_CREATE", {"author": {"id": author}, "content": "hi"}))
            assert result.ok, result.error
        [top] = await engine.dispatch(guild, Event("TOP", {}))
        assert top.value == "1. <@111> 30 XP\n2. <@222> 20 XP\n3. <@333> 10 XP"
        [rank] = await engine.dispatch(guild, Event("RANK", {"user": "444"}))
        assert rank.value == "rank #4 of 4"
        [nobody] = await engine.dispatch(guild, Event("RANK", {"user": "999"}))
        assert nobody.value == "no XP yet"
