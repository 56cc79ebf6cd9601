"""Small pieces both stores share: decoding rows, limit checks, tokens. No SQL lives here."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from moonshard.errors import LimitExceeded
from moonshard.store.api import OutboxEvent, ScheduledEvent, TemplateVersion, TokenInfo
from moonshard.templates import Template
from moonshard.tenants import TenantId
from moonshard.values import loads_json

__all__ = [
    "check_admin",
    "check_emits",
    "check_label",
    "check_pending",
    "check_template_count",
    "new_token",
    "new_token_id",
    "outbox_event",
    "scheduled_event",
    "template_from_row",
    "template_version",
    "token_info",
]


def template_from_row(
    name: str, files: str, events: str, paused: object, version: int, updated_at: float,
) -> Template:
    files_json = loads_json(files)
    events_json = loads_json(events)
    if not isinstance(files_json, dict) or not isinstance(events_json, list):
        raise ValueError(f"template {name!r} is stored malformed")
    return Template(name, {path: str(source) for path, source in files_json.items()},
                    tuple(str(event) for event in events_json), bool(paused), int(version),
                    float(updated_at))


def template_version(row: Sequence[Any]) -> TemplateVersion:
    """A TemplateVersion from ``version, events, updated_at``."""
    events = loads_json(row[1])
    if not isinstance(events, list):
        raise ValueError("a template version is stored malformed")
    return TemplateVersion(int(row[0]), tuple(str(event) for event in events), float(row[2]))


def check_template_count(count: int, max_templates: int) -> None:
    """Refuses a new template when the tenant already has ``max_templates``."""
    if count >= max_templates:
        raise LimitExceeded(
            "template.count", f"a tenant may have at most {max_templates} templates")


def new_token() -> str:
    """A bearer token: 256 random bits, prefixed so a leaked one is recognisable in a log."""
    return "mst_" + secrets.token_urlsafe(32)


def new_token_id() -> str:
    """A token's public name: random, unrelated to its secret."""
    return "tok_" + secrets.token_hex(8)


def token_info(kind: str | None, tenant_id: str | None, created_at: float,
               token_id: str | None = None, label: str | None = None,
               last_used_at: float | None = None) -> TokenInfo:
    """A TokenInfo from ``tenant_kind, tenant_id, created_at, id, label, last_used_at``."""
    tenant = None if kind is None or tenant_id is None else TenantId(kind, tenant_id)
    return TokenInfo(tenant, float(created_at), token_id or "", label,
                     None if last_used_at is None else float(last_used_at))


def check_label(label: str | None) -> str | None:
    if label is not None and (len(label) > 200 or not label.isprintable()):
        raise ValueError("a token label is at most 200 printable characters")
    return label


def check_admin(info: TokenInfo | None) -> None:
    """``ensure_admin`` must not silently keep a tenant token that was meant as the admin's."""
    if info is not None and not info.is_admin:
        raise ValueError("that token already exists for a single tenant; pick another admin token")


def check_pending(pending: int, max_pending: int) -> None:
    if pending >= max_pending:
        raise LimitExceeded(
            "events.scheduled",
            f"a tenant may have at most {max_pending} pending scheduled events")


def scheduled_event(row: Sequence[Any]) -> ScheduledEvent:
    """A ScheduledEvent from ``id, tenant_kind, tenant_id, key, name, data, due_at, attempt,
    created_at``."""
    return ScheduledEvent(int(row[0]), TenantId(row[1], row[2]), row[3], row[4],
                          loads_json(row[5]), float(row[6]), int(row[7]), float(row[8]))


def check_emits(emits: int, max_emits: int) -> None:
    if emits > max_emits:
        raise LimitExceeded("events.emits", f"at most {max_emits} emits per dispatch")


def outbox_event(row: Sequence[Any]) -> OutboxEvent:
    """An OutboxEvent from ``id, tenant_kind, tenant_id, name, data, author, event_id,
    created_at``."""
    return OutboxEvent(int(row[0]), TenantId(row[1], row[2]), row[3], loads_json(row[4]),
                       row[5], row[6], float(row[7]))
