"""Tenant identity (``guild:<id>``, ``user:<id>``, more kinds later) and the routing formula."""

from __future__ import annotations

import dataclasses
import hashlib
import re

__all__ = ["TENANT_KINDS", "TenantId", "TenantKind", "worker_index"]

_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
_GENERIC_ID = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


@dataclasses.dataclass(frozen=True, slots=True)
class TenantKind:
    """A kind of tenant. ``snowflake`` kinds take Discord ids and route by the shard formula."""

    name: str
    snowflake: bool = True


# Tenant kinds are data: adding a kind is one more entry here.
TENANT_KINDS: tuple[TenantKind, ...] = (TenantKind("guild"), TenantKind("user"))


def _kind(name: str) -> TenantKind:
    for kind in TENANT_KINDS:
        if kind.name == name:
            return kind
    known = ", ".join(kind.name for kind in TENANT_KINDS)
    raise ValueError(f"unknown tenant kind {name!r} (known: {known})")


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class TenantId:
    """Who owns templates, state and limits. Written ``kind:id`` wherever a string is needed."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        kind = _kind(self.kind)
        pattern = _SNOWFLAKE if kind.snowflake else _GENERIC_ID
        if not pattern.fullmatch(self.id):
            expected = "a decimal snowflake" if kind.snowflake else "letters, digits, _ . -"
            raise ValueError(f"bad {self.kind} tenant id {self.id!r}: expected {expected}")
        # Discord's snowflakes stay below 2**63 (their top bit is a timestamp's); the store
        # computes worker shards on them as signed 64-bit integers.
        if kind.snowflake and int(self.id) >= 2**63:
            raise ValueError(f"bad {self.kind} tenant id {self.id!r}: not below 2**63")

    @classmethod
    def guild(cls, snowflake: int | str) -> TenantId:
        return cls("guild", str(snowflake))

    @classmethod
    def user(cls, snowflake: int | str) -> TenantId:
        return cls("user", str(snowflake))

    @classmethod
    def parse(cls, text: str) -> TenantId:
        """Parse ``kind:id``; raises ``ValueError`` with a clear message."""
        kind, sep, ident = text.partition(":")
        if not sep:
            raise ValueError(f"bad tenant {text!r}: expected kind:id, for example guild:123")
        return cls(kind, ident)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id}


def worker_index(tenant: TenantId, workers: int) -> int:
    """The worker that owns ``tenant``: Discord's shard formula for snowflakes, else a hash."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if _kind(tenant.kind).snowflake:
        return (int(tenant.id) >> 22) % workers
    digest = hashlib.blake2b(str(tenant).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers
