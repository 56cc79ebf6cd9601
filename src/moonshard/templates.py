"""Templates and template sets: immutable, versioned values. Compiling them is the sandbox's job."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from moonshard.errors import LimitExceeded, TemplateError
from moonshard.limits import Limits
from moonshard.tenants import TenantId

__all__ = ["ENTRY_FILE", "Template", "TemplateSet", "check_template_shape"]

ENTRY_FILE = "init.lua"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_FILE = re.compile(r"[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+)*\.lua")


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A named bundle of Lua files. ``events`` are its subscriptions (its handler keys)."""

    name: str
    files: Mapping[str, str]
    events: tuple[str, ...] = ()
    paused: bool = False
    version: int = 0
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @property
    def source_bytes(self) -> int:
        return sum(len(source.encode()) for source in self.files.values())

    def to_json(self, *, with_files: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name, "version": self.version, "events": list(self.events),
            "paused": self.paused, "updated_at": self.updated_at,
        }
        if with_files:
            out["files"] = dict(self.files)
        return out


def check_template_shape(name: str, files: Mapping[str, str], limits: Limits) -> None:
    """Checks what can be checked without Lua: names, file paths, sizes."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TemplateError(
            f"bad template name {name!r}: 1-64 letters, digits, _ . - (not starting with . or -)",
            template=str(name))
    if not files:
        raise TemplateError("a template needs at least init.lua", template=name, file=ENTRY_FILE)
    for path, source in files.items():
        if not isinstance(path, str) or not _FILE.fullmatch(path):
            raise TemplateError(
                f"bad file name {path!r}: a relative path of letters, digits, _ - ending in .lua",
                template=name, file=str(path))
        if not isinstance(source, str):
            raise TemplateError("file content must be text", template=name, file=path)
    if ENTRY_FILE not in files:
        raise TemplateError("a template needs an init.lua", template=name, file=ENTRY_FILE)
    size = sum(len(source.encode()) for source in files.values())
    if size > limits.template_source_bytes:
        raise LimitExceeded(
            "template.size",
            f"template {name!r} has {size} bytes of source; the limit is "
            f"{limits.template_source_bytes}")


@dataclasses.dataclass(frozen=True, slots=True)
class TemplateSet:
    """All templates of one tenant at one version. Replaced whole, never changed in place."""

    tenant: TenantId
    version: int = 0
    templates: tuple[Template, ...] = ()
    # event name -> its active subscribers in name order: computed once per set, since every
    # event asks (the set never changes).
    _by_event: Mapping[str, tuple[Template, ...]] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict)
    _subscriptions: frozenset[str] = dataclasses.field(
        init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.templates, key=lambda template: template.name))
        object.__setattr__(self, "templates", ordered)
        by_event: dict[str, list[Template]] = {}
        for template in ordered:
            if not template.paused:
                for event in template.events:
                    by_event.setdefault(event, []).append(template)
        object.__setattr__(self, "_by_event", MappingProxyType(
            {event: tuple(templates) for event, templates in by_event.items()}))
        object.__setattr__(self, "_subscriptions", frozenset(by_event))

    @property
    def subscriptions(self) -> frozenset[str]:
        """Event names that at least one active (not paused) template handles."""
        return self._subscriptions

    def get(self, name: str) -> Template | None:
        for template in self.templates:
            if template.name == name:
                return template
        return None

    def subscribers(self, event_name: str) -> tuple[Template, ...]:
        return self._by_event.get(event_name, ())

    def with_template(self, template: Template, version: int) -> TemplateSet:
        others = (existing for existing in self.templates if existing.name != template.name)
        return TemplateSet(self.tenant, version, (*others, template))

    def without(self, name: str, version: int) -> TemplateSet:
        kept: Iterable[Template] = (t for t in self.templates if t.name != name)
        return TemplateSet(self.tenant, version, tuple(kept))
