"""Limits on a tenant's VM, handler runs, templates and store, with their documented defaults."""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType

__all__ = ["Limits", "parse_size"]

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = MappingProxyType({"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
          "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3})


def parse_size(text: str | int) -> int:
    """``25MiB`` -> bytes. Plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"bad size {text!r}: expected a number with an optional unit like 25MiB")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of TEMPLATES.md. Frozen: a tenant's override is a new value."""

    memory_bytes: int = 25 * 1024 * 1024
    cpu_seconds: float = 10.0
    # The hard wall-clock limit on one call into Lua, as a multiple of the CPU limit; past it
    # the process that runs the VM is killed (code in C cannot be interrupted in-process).
    hard_wall_factor: float = 2.0
    template_source_bytes: int = 1024 * 1024
    templates_per_tenant: int = 50
    key_bytes: int = 512
    value_bytes: int = 256 * 1024
    # A handler's return value, encoded as JSON, is at most this long.
    result_bytes: int = 1024 * 1024
    keys_per_tenant: int = 100_000
    emits_per_dispatch: int = 10
    scheduled_per_tenant: int = 10_000
    # Estimated backtracking steps above which a Lua pattern call is refused.
    pattern_steps: int = 1_000_000_000
    log_lines_per_run: int = 1000
    log_line_bytes: int = 4096

    @property
    def hard_wall_seconds(self) -> float:
        return self.cpu_seconds * self.hard_wall_factor + 1.0

    def replace(self, **changes: object) -> Limits:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
