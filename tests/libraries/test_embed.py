"""@moonshard/embed through the real sandbox: the built shape and every Discord embed limit."""

from __future__ import annotations

import pytest

from tests.conftest import Harness


async def test_builds_the_shape_discord_expects(harness: Harness) -> None:
    value = await harness.value("""
        local embed = require("@moonshard/embed")
        return embed.new()
          :title("Rank of Nelly")
          :description("Level **3**")
          :url("https://example.com/rank")
          :color("#5865F2")
          :timestamp(0)
          :field("XP", 1200, true)
          :field("Next level", "in 300 XP")
          :footer("moonshard levels", "https://example.com/icon.png")
          :author("Nelly", nil, "https://example.com/a.png")
          :thumbnail("https://example.com/t.png")
          :image("https://example.com/i.png")
          :build()
    """)
    assert value == {
        "title": "Rank of Nelly", "description": "Level **3**",
        "url": "https://example.com/rank", "color": 0x5865F2,
        "timestamp": "1970-01-01T00:00:00Z",
        "fields": [{"name": "XP", "value": "1200", "inline": True},
                   {"name": "Next level", "value": "in 300 XP", "inline": False}],
        "footer": {"text": "moonshard levels", "icon_url": "https://example.com/icon.png"},
        "author": {"name": "Nelly", "icon_url": "https://example.com/a.png"},
        "thumbnail": {"url": "https://example.com/t.png"},
        "image": {"url": "https://example.com/i.png"},
    }


async def test_new_takes_a_table(harness: Harness) -> None:
    value = await harness.value("""
        local embed = require("@moonshard/embed")
        return embed.new{title = "Hi", color = 0xFF0000, footer = "bye",
                         fields = {{name = "a", value = "b", inline = true}, {"c", "d"}}}:build()
    """)
    assert value == {"title": "Hi", "color": 0xFF0000, "footer": {"text": "bye"},
                     "fields": [{"name": "a", "value": "b", "inline": True},
                                {"name": "c", "value": "d", "inline": False}]}


@pytest.mark.parametrize(("code", "wording"), [
    ('embed.new():title(("x"):rep(257))',
     "embed.title: 257 characters, Discord allows at most 256"),
    ('embed.new():description(("x"):rep(4097))', "embed.description: 4097 characters, "
                                                  "Discord allows at most 4096"),
    ('embed.new():field(("x"):rep(257), "v")', "embed.field name: 257 characters"),
    ('embed.new():field("n", ("x"):rep(1025))', "embed.field value: 1025 characters, "
                                               "Discord allows at most 1024"),
    ('embed.new():footer(("x"):rep(2049))', "embed.footer: 2049 characters, "
                                           "Discord allows at most 2048"),
    ('embed.new():author(("x"):rep(257))', "embed.author: 257 characters, "
                                          "Discord allows at most 256"),
    ('embed.new():field("", "v")', "embed.field name: the text is empty"),
    ('embed.new():color("blue")', 'embed.color: expected "#RRGGBB" or a number'),
    ('embed.new():color(0x1000000)', "embed.color: expected a whole number"),
    ('embed.new():image("not a url")', 'embed.image: expected a URL such as "https://..."'),
    ('embed.new{colour = 1}', "embed.new: unknown embed part 'colour'"),
    ('embed.new{title = ("x"):rep(300)}', "embed.title: 300 characters"),
    ('embed.new{fields = "a"}', "embed.new: fields must be a list"),
])
async def test_each_limit_fails_at_the_templates_line(
        harness: Harness, code: str, wording: str) -> None:
    error = await harness.error(f'local embed = require("@moonshard/embed")\nlocal e = {code}')
    assert wording in error
    assert error.startswith("init.lua:3:")


async def test_at_most_25_fields(harness: Harness) -> None:
    error = await harness.error("""
        local e = require("@moonshard/embed").new()
        for i = 1, 26 do e:field("f" .. i, "v") end
    """)
    assert "embed.field: an embed has at most 25 fields" in error


async def test_the_total_of_6000_characters_is_checked_on_build(harness: Harness) -> None:
    error = await harness.error("""
        local e = require("@moonshard/embed").new():description(("x"):rep(4096))
        e:field("a", ("y"):rep(1024)):field("b", ("z"):rep(1024))
        return e:build()
    """)
    assert "embed.build: 6146 characters in all, Discord allows at most 6000" in error


async def test_lengths_count_characters_not_bytes(harness: Harness) -> None:
    value = await harness.value("""
        local embed = require("@moonshard/embed")
        local e = embed.new():title(("é"):rep(256))
        return {embed.length(e), #e:build().title, embed.truncate("héllo wörld", 5),
                embed.truncate("short", 10)}
    """)
    assert value == [256, 512, "héll…", "short"]
