"""Domain errors raised to moonshard's users: each carries a clear, one-line message."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EventStopped",
    "HostCallError",
    "LimitExceeded",
    "MoonshardError",
    "NotBuiltError",
    "NothingToRollBack",
    "Overloaded",
    "SchemaError",
    "StoreUnavailable",
    "TemplateError",
    "TemplateNotFound",
    "TenantQuarantined",
    "ValueConversionError",
    "WorkerCrashed",
    "WorkerUnavailable",
]


class MoonshardError(Exception):
    """Base of every error moonshard raises on purpose."""


class TemplateError(MoonshardError):
    """A template was refused: it does not compile, or does not return a table of handlers.

    ``file`` and ``line`` locate the problem when it has a place in the source. ``code`` is
    ``compile_error`` (it does not compile, or its shape is wrong) or ``load_error`` (it
    compiled, but running ``init.lua`` raised an error).
    """

    def __init__(
        self, message: str, *, template: str | None = None, file: str | None = None,
        line: int | None = None, code: str = "compile_error",
    ) -> None:
        self.code = code
        self.template = template
        self.file = file
        self.line = line
        self.message = message
        where = ":".join(str(part) for part in (file, line) if part is not None)
        super().__init__(f"{where}: {message}" if where else message)

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "template": self.template, "file": self.file,
                "line": self.line, "message": self.message}


class LimitExceeded(MoonshardError):
    """A limit was broken; ``limit`` names which one (for example ``kv.value_size``)."""

    def __init__(self, limit: str, message: str, *, retry_after: float | None = None) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)


class ValueConversionError(MoonshardError):
    """A value cannot cross between Lua and JSON (a function, a cycle, a mixed table...)."""


class HostCallError(MoonshardError):
    """A host capability refused a template's call; the message is shown to the template."""


class ConfigurationError(MoonshardError):
    """Parts handed to moonshard that cannot work together (a message says which)."""


class SchemaError(MoonshardError):
    """The database schema cannot be used by this version of moonshard."""


class StoreUnavailable(MoonshardError):
    """The database cannot be opened or reached: the message names it (never its password)
    and the cause, in one line."""


class NotBuiltError(MoonshardError):
    """A part of moonshard that is named in the contract but not built yet."""


class Overloaded(MoonshardError):
    """A queue is full; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class WorkerCrashed(MoonshardError):
    """The worker running this request died; the request was not completed.

    ``stuck`` is set when the worker was ended because one Lua call was stuck; it names the
    tenant and event (``"guild:1 MESSAGE_CREATE"``) so that only that tenant is blamed.
    """

    def __init__(self, message: str, *, stuck: str | None = None) -> None:
        self.stuck = stuck
        super().__init__(message)


class WorkerUnavailable(MoonshardError):
    """No worker can take the request now (restarting past its budget, or stopping)."""


class EventStopped(WorkerUnavailable):
    """The engine stopped its workers before this awaited event answered.

    ``started`` says whether it had begun to run; either way none of its writes were
    committed (they commit when the handler returns, and the answer follows the commit).
    """

    def __init__(self, message: str, *, event_id: str, started: bool) -> None:
        self.event_id = event_id
        self.started = started
        super().__init__(message)


class TenantQuarantined(MoonshardError):
    """The tenant's events crashed workers repeatedly; it is paused until ``until``."""

    def __init__(self, message: str, *, until: float) -> None:
        self.until = until
        super().__init__(message)


class TemplateNotFound(MoonshardError):
    """A tenant has no template of that name, or no kept version of that number."""


class NothingToRollBack(MoonshardError):
    """A rollback with no earlier version to go to (or to the version that is current)."""
