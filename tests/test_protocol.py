"""Unit tests for taskq._protocol: what crosses a pipe, checked in-process (no workers).

Frames go through a real ``os.pipe()`` and the real ``FrameReader``; exceptions and calls go
through ``pack_exception``/``unpack_exception`` and ``dump_call`` exactly as a worker and the
parent use them.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import math
import os
import pickle
import pickletools
import struct
import sys
import threading
import types
from concurrent.futures.process import BrokenProcessPool

import pytest

import taskq
from taskq import _protocol
from taskq._channel import FrameReader
from taskq._errors import JobTimeout, RemoteError, RemoteTraceback, WorkerCrashed
from taskq._protocol import (
    HEADER,
    Frame,
    Kind,
    PackedError,
    dump_call,
    dumps,
    encode,
    encode_parts,
    load,
    load_call,
    pack_exception,
    unpack_exception,
)
from taskq._segments import SegmentCache

# -- helpers ------------------------------------------------------------------------------


def frames_through_pipe(data: bytes) -> list[Frame]:
    """Every frame a FrameReader makes of ``data`` written to a pipe and closed (EOF ends it)."""
    assert len(data) < 60_000, "keep it under the default pipe buffer: no reader thread here"
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        w = -1
        reader = FrameReader(r)
        frames: list[Frame] = []
        while True:
            try:
                frames += reader.read()
            except EOFError:
                return frames
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a real traceback, as a worker would have it."""
    try:
        raise_it(exc)
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


def raise_it(exc: BaseException) -> None:
    raise exc


def round_trip(exc: BaseException) -> BaseException:
    return unpack_exception(pack_exception(raised(exc)))


def distinctively_named_job(a, b=0):
    return a + b


class Holder:
    def method(self):
        return "held"


class NeedsTwoArgs(Exception):
    """A custom exception whose __init__ requires arguments and passes them all on."""

    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class LosesItsArgs(Exception):
    """Required __init__ args, but only a message reaches ``args``: unpickling calls
    ``LosesItsArgs("...")`` and fails with a TypeError."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


def _refuse_to_load(message):
    raise RuntimeError(f"this exception cannot be rebuilt: {message}")


class PicklesButWontUnpickle(Exception):
    def __reduce__(self):
        return (_refuse_to_load, (str(self),))


# -- frames ---------------------------------------------------------------------------------


def test_header_layout_is_little_endian_length_kind_job_id_seconds():
    assert HEADER.format == "<QBqd"
    assert HEADER.size == 8 + 1 + 8 + 8 == 25  # packed: no alignment padding
    data = encode(Kind.OK, job_id=-2, payload=b"abc", seconds=1.5)
    assert len(data) == HEADER.size + 3
    assert data[0:8] == (3).to_bytes(8, "little")  # payload length, u64
    assert data[8] == Kind.OK == 4  # kind, u8
    assert data[9:17] == (-2).to_bytes(8, "little", signed=True)  # job id, i64
    assert data[17:25] == struct.pack("<d", 1.5)  # seconds, f64
    assert data[25:] == b"abc"
    assert encode_parts(Kind.OK, -2, b"abc", 1.5) == [data[:25], b"abc"]


def test_kinds_have_fixed_wire_values():
    assert {k.name: int(k) for k in Kind} == {
        "CALL": 1, "STOP": 2, "READY": 3, "OK": 4, "ERROR": 5, "INIT_FAILED": 6, "RELEASED": 7,
        "OK_SHARED": 8,
    }  # fmt: skip


def _sample_frames() -> list[tuple[Kind, int, bytes, float]]:
    """One realistic frame of every kind, as the parent and a worker build them."""
    return [
        (Kind.CALL, 17, dump_call(distinctively_named_job, (1,), {"b": 2}), 0.0),
        (Kind.STOP, 0, b"", 0.0),
        (Kind.READY, 0, b"", 0.0),
        (Kind.OK, 17, dumps({"result": [1, 2, 3]}), 0.25),
        (Kind.ERROR, 18, pack_exception(raised(ValueError("boom"))), 1e-6),
        (Kind.INIT_FAILED, 0, dumps("Traceback (most recent call last): ..."), 0.0),
        (Kind.RELEASED, 17, b"", 0.0),
        (Kind.OK_SHARED, 19, dumps(("taskq-123-0a1b2c3d-1", 1 << 20)), 0.5),  # names a file
    ]


def test_sample_frames_cover_every_kind():
    assert {kind for kind, *_ in _sample_frames()} == set(Kind)


@pytest.mark.parametrize("how", ["encode", "encode_parts"])
def test_every_frame_kind_round_trips_through_a_pipe(how):
    samples = _sample_frames()
    if how == "encode":
        data = b"".join(encode(kind, job_id, payload, seconds)
                        for kind, job_id, payload, seconds in samples)  # fmt: skip
    else:
        data = b"".join(b"".join(encode_parts(kind, job_id, payload, seconds))
                        for kind, job_id, payload, seconds in samples)  # fmt: skip
    frames = frames_through_pipe(data)
    assert [(f.kind, f.job_id, f.seconds, bytes(f.payload)) for f in frames] == [
        (kind, job_id, seconds, payload) for kind, job_id, payload, seconds in samples
    ]
    for frame in frames:
        assert isinstance(frame, Frame)
        assert Kind(frame.kind) in Kind
    by_kind = {Kind(f.kind): f for f in frames}
    fn, args, kwargs = load(by_kind[Kind.CALL].payload)
    assert fn(*args, **kwargs) == 3
    assert load(by_kind[Kind.OK].payload) == {"result": [1, 2, 3]}
    error = unpack_exception(by_kind[Kind.ERROR].payload)
    assert type(error) is ValueError and error.args == ("boom",)
    assert load(by_kind[Kind.INIT_FAILED].payload).startswith("Traceback")


@pytest.mark.parametrize(
    ("job_id", "seconds"),
    [(0, 0.0), (2**63 - 1, 1e300), (-(2**63), -0.0), (-1, math.inf), (123, 5e-324)],
)
def test_header_fields_keep_their_full_range(job_id, seconds):
    [frame] = frames_through_pipe(encode(Kind.OK, job_id, b"x", seconds))
    assert frame.job_id == job_id
    assert struct.pack("<d", frame.seconds) == struct.pack("<d", seconds)  # -0.0 stays -0.0


def test_a_nan_duration_crosses_as_nan():
    [frame] = frames_through_pipe(encode(Kind.OK, 1, b"", math.nan))
    assert math.isnan(frame.seconds)


def test_header_rejects_what_it_cannot_carry():
    with pytest.raises(struct.error):
        encode(Kind.OK, 2**63, b"")
    with pytest.raises(struct.error):
        encode(256, 0, b"")  # type: ignore[arg-type]


# -- exceptions -----------------------------------------------------------------------------


def test_a_plain_exception_comes_back_as_itself_with_the_worker_traceback_as_cause():
    original = raised(ValueError("bad value", 42))
    exc = unpack_exception(pack_exception(original))
    assert type(exc) is ValueError
    assert exc.args == ("bad value", 42)
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert exc.__suppress_context__  # the caller sees "the above was the direct cause"
    assert "ValueError: ('bad value', 42)" in cause.traceback_text
    assert "raise_it" in cause.traceback_text  # the frame that raised it in the worker
    assert cause.traceback_text.startswith("Traceback (most recent call last):")
    assert cause.traceback_text in str(cause)


def test_the_packed_form_keeps_type_name_message_and_traceback():
    packed = pickle.loads(pack_exception(raised(KeyError("k"))))
    assert isinstance(packed, PackedError)
    assert packed.type_name == "builtins.KeyError"
    assert packed.message == "'k'"
    assert "KeyError: 'k'" in packed.traceback_text
    assert type(pickle.loads(packed.exc_bytes)) is KeyError


def test_an_exception_that_was_never_raised_packs_too():
    exc = unpack_exception(pack_exception(OSError(2, "no such file")))
    assert type(exc) is FileNotFoundError  # OSError's own constructor picks the subclass
    assert exc.errno == 2 and exc.strerror == "no such file"
    assert "no such file" in exc.__cause__.traceback_text


def test_custom_attributes_of_a_picklable_exception_survive():
    original = ValueError("with extras")
    original.extra = {"a": 1}
    exc = round_trip(original)
    assert type(exc) is ValueError and exc.extra == {"a": 1}


def test_an_exception_with_required_init_args_that_reach_args_round_trips():
    exc = round_trip(NeedsTwoArgs(404, "missing"))
    assert type(exc) is NeedsTwoArgs
    assert exc.args == (404, "missing")
    assert (exc.code, exc.detail) == (404, "missing")
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_an_exception_whose_init_args_cannot_be_rebuilt_falls_back_to_remote_error():
    exc = round_trip(LosesItsArgs(500, "server"))
    assert type(exc) is RemoteError
    assert exc.type_name == f"{__name__}.LosesItsArgs"
    assert exc.message == "code 500: server"
    assert "LosesItsArgs: code 500: server" in exc.traceback_text
    assert str(exc) == f"{__name__}.LosesItsArgs: code 500: server"
    assert exc.__cause__.traceback_text == exc.traceback_text


def test_an_exception_whose_class_cannot_be_pickled_falls_back_to_remote_error():
    class LocalError(Exception):  # not importable by name: pickle refuses it
        pass

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(LocalError("x"))
    exc = round_trip(LocalError("defined inside a function"))
    assert type(exc) is RemoteError
    assert exc.type_name == f"{__name__}.{LocalError.__qualname__}"
    assert exc.message == "defined inside a function"
    assert "LocalError: defined inside a function" in exc.traceback_text
    assert "raise_it" in exc.traceback_text
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_an_exception_that_pickles_but_cannot_be_unpickled_falls_back_to_remote_error():
    exc = round_trip(PicklesButWontUnpickle("one way only"))
    assert type(exc) is RemoteError
    assert exc.type_name == f"{__name__}.PicklesButWontUnpickle"
    assert exc.message == "one way only"
    assert "PicklesButWontUnpickle: one way only" in exc.traceback_text


def test_an_exception_with_an_unpicklable_attribute_falls_back_to_remote_error():
    original = ValueError("holds a lock")
    original.lock = threading.Lock()
    exc = round_trip(original)
    assert type(exc) is RemoteError
    assert exc.type_name == "builtins.ValueError"
    assert exc.message == "holds a lock"


def test_a_class_the_parent_cannot_import_falls_back_to_remote_error(monkeypatch):
    """The worker could pickle it; the parent lacks the module (unpack_exception's own fallback)."""
    module = types.ModuleType("taskq_test_worker_only_module")
    exec("class WorkerOnlyError(Exception):\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    payload = pack_exception(raised(module.WorkerOnlyError("only in the worker")))
    assert pickle.loads(payload).exc_bytes is not None  # it did pickle, worker side
    monkeypatch.delitem(sys.modules, module.__name__)
    exc = unpack_exception(payload)
    assert type(exc) is RemoteError
    assert exc.type_name == "taskq_test_worker_only_module.WorkerOnlyError"
    assert exc.message == "only in the worker"
    assert "WorkerOnlyError: only in the worker" in exc.traceback_text


def test_exc_bytes_that_are_not_an_exception_fall_back_to_remote_error():
    payload = dumps(PackedError(dumps("not an exception"), "x.Y", "msg", "tb text"))
    exc = unpack_exception(payload)
    assert type(exc) is RemoteError
    assert (exc.type_name, exc.message, exc.traceback_text) == ("x.Y", "msg", "tb text")


def test_an_exception_with_a_broken_str_is_not_lost():
    class BrokenStr(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    exc = round_trip(BrokenStr())
    assert type(exc) is RemoteError  # local class: cannot pickle
    assert "BrokenStr" in exc.type_name
    assert "BrokenStr" in exc.message  # repr of its type stands in for the message


def test_base_exceptions_round_trip():
    exc = round_trip(KeyboardInterrupt())
    assert type(exc) is KeyboardInterrupt
    exc = round_trip(SystemExit(3))
    assert type(exc) is SystemExit and exc.code == 3


def test_worker_crashed_keeps_pid_exitcode_and_job_id():
    exc = round_trip(WorkerCrashed("worker died", pid=1234, exitcode=-9, job_id=77))
    assert type(exc) is WorkerCrashed
    assert isinstance(exc, BrokenProcessPool) and isinstance(exc, taskq.TaskqError)
    assert (str(exc), exc.pid, exc.exitcode, exc.job_id) == ("worker died", 1234, -9, 77)
    exc = round_trip(WorkerCrashed("unknown", pid=None, exitcode=None, job_id=0))
    assert (exc.pid, exc.exitcode, exc.job_id) == (None, None, 0)


def test_job_timeout_keeps_its_timeout():
    exc = round_trip(JobTimeout("too slow", timeout=2.5))
    assert type(exc) is JobTimeout
    assert isinstance(exc, TimeoutError) and isinstance(exc, concurrent.futures.TimeoutError)
    assert (str(exc), exc.timeout) == ("too slow", 2.5)
    assert round_trip(JobTimeout("no limit")).timeout is None


def test_remote_error_keeps_type_name_message_and_traceback_text():
    original = RemoteError("pkg.Original", "the message", "Traceback (original)\n")
    exc = round_trip(original)
    assert type(exc) is RemoteError
    assert (exc.type_name, exc.message, exc.traceback_text) == (
        "pkg.Original", "the message", "Traceback (original)\n",
    )  # fmt: skip
    assert str(exc) == "pkg.Original: the message"
    assert "RemoteError: pkg.Original: the message" in exc.__cause__.traceback_text


@pytest.mark.parametrize(
    "exc",
    [
        WorkerCrashed("w", pid=1, exitcode=2, job_id=3),
        JobTimeout("t", timeout=1.0),
        RemoteError("a.B", "m", "tb"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_taskqs_errors_keep_their_notes(exc):
    exc.__notes__ = ["added by the job"]
    back = round_trip(exc)
    assert getattr(back, "__notes__", None) == ["added by the job"]


def test_a_plain_exception_keeps_its_notes():
    exc = ValueError("v")
    exc.__notes__ = ["added by the job"]
    assert round_trip(exc).__notes__ == ["added by the job"]


@pytest.mark.parametrize(
    "exc",
    [
        taskq.SerializationError("cannot pickle"),
        taskq.InitializerError("Traceback ..."),
        taskq.PoolBroken("gave up"),
        taskq.Full(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_taskqs_other_errors_round_trip_as_themselves(exc):
    back = round_trip(exc)
    assert type(back) is type(exc)
    assert back.args == exc.args


# -- calls --------------------------------------------------------------------------------


def test_dump_call_pickles_a_module_level_function_by_reference():
    data = dump_call(distinctively_named_job, (1,), {"b": 2})
    strings = {"SHORT_BINUNICODE", "BINUNICODE"}
    globals_named = [arg for op, arg, _ in pickletools.genops(data) if op.name in strings]
    assert __name__ in globals_named and "distinctively_named_job" in globals_named
    assert b"cloudpickle" not in data  # plain pickle: no code object travels
    assert len(data) < 200
    fn, args, kwargs = pickle.loads(data)
    assert fn is distinctively_named_job
    assert (args, kwargs) == ((1,), {"b": 2})


def test_a_pools_call_carries_the_functions_reference_pickled_once(monkeypatch):
    segments = SegmentCache()
    first = dump_call(distinctively_named_job, (1,), {"b": 2}, segments)
    second = dump_call(distinctively_named_job, (3,), {}, segments)
    assert first[0] == second[0] == _protocol.SPLIT
    assert first[: first.index(b".") + 1] == second[: second.index(b".") + 1]  # same head
    assert load_call(first) == (distinctively_named_job, (1,), {"b": 2})
    assert load_call(bytearray(second)) == (distinctively_named_job, (3,), {})  # as read
    # Rebound under its name: the cached reference would now name another function.
    original = distinctively_named_job
    monkeypatch.setattr(sys.modules[__name__], "distinctively_named_job", lambda a, b=0: a)
    try:
        data = dump_call(original, (1,), {"b": 2}, segments)
    except taskq.SerializationError:
        return  # without cloudpickle: refused, as plain pickle refuses it
    assert data[0] != _protocol.SPLIT
    fn, args, kwargs = load_call(data)
    assert fn(*args, **kwargs) == 3  # the original (a + b), by value, not the new one


def test_only_plain_module_level_functions_are_split_and_a_store_gets_one_pickle():
    segments = SegmentCache()
    for fn, args in [(math.sqrt, (4.0,)), (int.__add__, (1, 2)), (Holder().method, ())]:
        data = dump_call(fn, args, {}, segments)
        assert data[0] == 0x80, fn  # one pickle, as before
        loaded, loaded_args, _ = load_call(data)
        assert loaded(*loaded_args) == fn(*args)
    stored = dump_call(distinctively_named_job, (1,), {"b": 2})  # no segments: a broker's
    assert stored[0] == 0x80
    assert load_call(stored) == pickle.loads(stored)


def test_dump_call_of_an_unpicklable_argument_names_the_function():
    pytest.importorskip("cloudpickle")  # both serializers get their chance and refuse
    named = r"cannot send distinctively_named_job\(\.\.\.\)"
    with pytest.raises(taskq.SerializationError, match=named) as info:
        dump_call(distinctively_named_job, (threading.Lock(),), {})
    assert "could not be pickled" in str(info.value)
    assert "lock" in str(info.value).lower()
    assert info.value.__cause__ is not None


def test_dump_call_without_cloudpickle_names_the_function_and_hints(monkeypatch):
    monkeypatch.setattr(_protocol, "_cloudpickle", False)  # as if cloudpickle were not installed
    with pytest.raises(taskq.SerializationError) as info:
        dump_call(distinctively_named_job, (), {"b": threading.Lock()})
    message = str(info.value)
    assert "distinctively_named_job(...)" in message
    assert "taskq[cloudpickle]" in message
    assert isinstance(info.value.__cause__, TypeError)


def test_dump_call_of_a_lambda_without_cloudpickle_raises_serialization_error(monkeypatch):
    monkeypatch.setattr(_protocol, "_cloudpickle", False)
    with pytest.raises(taskq.SerializationError, match=r"<lambda>\(\.\.\.\)"):
        dump_call(lambda: 1, (), {})


def test_dump_call_of_a_lambda_with_cloudpickle_goes_by_value():
    pytest.importorskip("cloudpickle")
    offset = 10
    data = dump_call(lambda x: x + offset, (5,), {})
    fn, args, kwargs = pickle.loads(data)
    assert fn(*args, **kwargs) == 15


# -- every message pickles ------------------------------------------------------------------


def _message_samples() -> dict[type, object]:
    """One instance of every class defined in _protocol (keep it complete: checked below)."""
    return {
        Kind: Kind.INIT_FAILED,
        Frame: Frame(int(Kind.OK), 3, 0.5, b"payload"),
        PackedError: PackedError(None, "builtins.ValueError", "m", "tb"),
        _protocol._ByValue: _protocol._ByValue(pickle.dumps(distinctively_named_job)),
    }


def test_every_message_round_trips_through_pickle():
    defined = {
        obj
        for obj in vars(_protocol).values()
        if inspect.isclass(obj) and obj.__module__ == _protocol.__name__
    }
    samples = _message_samples()
    assert set(samples) == defined, "add a sample for every message type defined in _protocol"
    for cls, sample in samples.items():
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(sample, protocol=protocol))
            if cls is _protocol._ByValue:
                # a function sent by value arrives as the function itself
                assert back is distinctively_named_job
            else:
                assert type(back) is cls
                assert back == sample
    frame_with_bytearray = Frame(int(Kind.OK), 1, 0.0, bytearray(b"large"))
    assert pickle.loads(pickle.dumps(frame_with_bytearray)) == frame_with_bytearray
    packed = PackedError(dumps(ValueError("v")), "builtins.ValueError", "v", "tb")
    assert pickle.loads(dumps(packed)) == packed
