"""The gateway intents setting: names (``guilds,guild_messages``) or a number."""

from __future__ import annotations

__all__ = ["DEFAULT_INTENTS", "PRIVILEGED", "default_intents", "intents_names", "parse_intents"]

DEFAULT_INTENTS = ("GUILDS", "GUILD_MEMBERS", "GUILD_MODERATION", "GUILD_MESSAGES",
                   "GUILD_MESSAGE_REACTIONS", "MESSAGE_CONTENT")
"""Guilds, members, moderation (bans), messages, their content, reactions."""

PRIVILEGED = ("GUILD_MEMBERS", "GUILD_PRESENCES", "MESSAGE_CONTENT")
"""Intents Discord gives only once enabled in the developer portal."""


def parse_intents(value: object) -> int:
    """An intents bitfield from a number, or from names separated by commas, ``|`` or
    spaces (hikari's names, any case: ``guilds, guild_messages, message_content``)."""
    from hikari import Intents  # noqa: PLC0415 - hikari is heavy; only a set value needs it

    if isinstance(value, bool):
        raise ValueError("expected intent names or a number")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if text.isdigit():
            number = int(text)
        else:
            number = 0
            for name in text.replace("|", ",").replace(" ", ",").split(","):
                if not name:
                    continue
                try:
                    number |= int(Intents[name.strip().upper()])
                except KeyError:
                    raise ValueError(f"unknown intent {name!r} (known: "
                                     f"{', '.join(_single_bits()).lower()})",
                                     ) from None
    if number < 0 or number >= 1 << 26:
        raise ValueError(f"intents out of range: {number}")
    return number


def _single_bits() -> list[str]:
    from hikari import Intents  # noqa: PLC0415

    return [flag.name for flag in Intents
            if flag.name and int(flag) and not int(flag) & (int(flag) - 1)]


def intents_names(number: int) -> list[str]:
    """The names of the single intents set in ``number``, lower case."""
    from hikari import Intents  # noqa: PLC0415

    return [name.lower() for name in _single_bits() if number & int(Intents[name])]


def default_intents() -> int:
    return parse_intents(",".join(DEFAULT_INTENTS))
