"""The interactions routed to each tenant of a worker, and whether each has been answered.

A template hands back the interaction table it was given; only its ``id`` is read from it.
The token the answer needs comes from here, from the ``INTERACTION_CREATE`` this worker ran
for that tenant, so a template can answer only the interactions routed to it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable

from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["INTERACTION_LIFETIME", "Answer", "InteractionBook", "InteractionState"]

INTERACTION_LIFETIME = 15 * 60.0
"""Discord accepts answers and follow-ups for 15 minutes."""


class Answer(enum.Enum):
    NONE = "none"
    DEFERRED = "deferred"
    RESPONDED = "responded"


class InteractionState:
    """One interaction: what answering it needs, and how far it is answered."""

    __slots__ = ("answer", "application_id", "arrived_at", "id", "lock", "token")

    def __init__(self, interaction_id: str, token: str, application_id: str,
                 arrived_at: float) -> None:
        self.id = interaction_id
        self.token = token
        self.application_id = application_id
        self.arrived_at = arrived_at
        self.answer = Answer.NONE
        # respond and the automatic deferral must not both send the first answer.
        self.lock = asyncio.Lock()


class InteractionBook:
    """Bounded, expiring: (tenant, interaction id) -> state. One per worker."""

    __slots__ = ("_clock", "_entries", "_max")

    def __init__(self, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[tuple[TenantId, str], InteractionState] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def record(self, tenant: TenantId, data: JsonValue, arrived_at: float,
               ) -> InteractionState | None:
        """Notes an ``INTERACTION_CREATE``'s data routed to ``tenant``."""
        if not isinstance(data, dict):
            return None
        interaction_id, token, app = data.get("id"), data.get("token"), data.get(
            "application_id")
        if not (isinstance(interaction_id, str) and isinstance(token, str)):
            return None
        key = (tenant, interaction_id)
        state = self._entries.get(key)
        if state is None:
            state = InteractionState(interaction_id, token,
                                     app if isinstance(app, str) else "", arrived_at)
            self._entries[key] = state
        self._entries.move_to_end(key)
        self._prune()
        return state

    def find(self, tenant: TenantId, interaction_id: str) -> InteractionState | None:
        state = self._entries.get((tenant, interaction_id))
        if state is None or self._clock() - state.arrived_at > INTERACTION_LIFETIME:
            return None
        return state

    def _prune(self) -> None:
        now = self._clock()
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if len(self._entries) <= self._max and \
                    now - oldest.arrived_at <= INTERACTION_LIFETIME:
                break
            del self._entries[key]
