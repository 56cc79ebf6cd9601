"""The process wire's one codec: every request, reply and error crosses as itself."""

from __future__ import annotations

import msgspec
import pytest

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.wire import (
    Answer,
    Call,
    Configure,
    Failed,
    Frame,
    Log,
    Ready,
    Started,
    Stuck,
    WireCodec,
    error_from_wire,
    error_to_wire,
)
from moonshard.contracts.worker import (
    Ack,
    Arm,
    Dispatch,
    DispatchReply,
    Ping,
    Reload,
    ReloadReply,
    Status,
    Stop,
    TenantStatus,
    Validate,
    ValidateReply,
    WorkerConfig,
    WorkerStatus,
)
from moonshard.errors import (
    HostCallError,
    LimitExceeded,
    MoonshardError,
    Overloaded,
    TemplateError,
    TenantQuarantined,
    WorkerCrashed,
    WorkerUnavailable,
)
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.tenants import TenantId

A = TenantId.guild(1)
FRAMES: list[Frame] = [
    Configure(WorkerConfig(3, "postgresql://u:pw@h/db", Limits(cpu_seconds=2.5), workers=4)),
    Call(1, Dispatch(A, Event("MESSAGE_CREATE", {"a": [1, 2.5, None, {"b": "ü"}], "t": True},
                              author="42"))),
    Call(2, Reload(A)),
    Call(3, Validate(A, "t", {"init.lua": "return {}"})),
    Call(4, Arm(TimerRef("expiry", 12.5, A, "default", "k", 3, attempt=2))),
    Call(5, Status()), Call(6, Status(TenantId.user(7))), Call(7, Ping()), Call(8, Stop(1.5)),
    Ready(99), Started(1),
    Answer(1, DispatchReply([HandlerResult("t", True, {"x": [1]}),
                             HandlerResult("u", False, error="boom", traceback="tb",
                                           limit="cpu")])),
    Answer(2, ReloadReply(True, 4)), Answer(3, ValidateReply(("A", "B"))), Answer(4, Ack()),
    Answer(5, WorkerStatus(0, 1, 1, 100, 0, False, {"held": 2}, ["guild:1"])),
    Answer(6, TenantStatus(True, 100, 4, 0, False)),
    Log(A, "warn", "t", "line"), Stuck(A, "guild:1 STUCK #3", 3.2), Stuck(None, "?", 1.0),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda frame: type(frame).__name__)
def test_every_frame_crosses_as_itself(frame: Frame) -> None:
    codec = WireCodec()
    assert codec.decode(codec.encode(frame)) == frame


@pytest.mark.parametrize("error", [
    TemplateError("unexpected symbol", template="t", file="init.lua", line=3),
    LimitExceeded("kv.keys", "too many keys", retry_after=2.0),
    Overloaded("queue full", retry_after=0.5),
    TenantQuarantined("quarantined", until=1234.5),
    WorkerCrashed("crashed", stuck="guild:1 X #1"),
    WorkerUnavailable("stopping"),
    HostCallError("refused"),
], ids=lambda error: type(error).__name__)
def test_an_error_keeps_its_type_message_and_fields(error: MoonshardError) -> None:
    codec = WireCodec()
    frame = codec.decode(codec.encode(Failed(1, error_to_wire(error))))
    assert isinstance(frame, Failed)
    back = error_from_wire(frame.error)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_an_unexpected_error_crosses_as_a_moonshard_error_with_its_text() -> None:
    back = error_from_wire(error_to_wire(KeyError("k")))
    assert type(back) is MoonshardError
    assert str(back) == "internal error in the worker: KeyError: 'k'"


def test_a_malformed_frame_is_refused() -> None:
    codec = WireCodec()
    with pytest.raises(msgspec.ValidationError):
        codec.decode(msgspec.msgpack.encode({"type": "Call", "id": "x", "request": {}}))
    with pytest.raises(msgspec.ValidationError):
        codec.decode(msgspec.msgpack.encode({"type": "Ready"}))
