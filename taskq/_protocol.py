"""What crosses a pipe between the parent and a worker: every message, in one file.

A message is a *frame*: a fixed binary header followed by a pickled payload.

    header = length (u64) | kind (u8) | job_id (i64) | seconds (f64)

Parent -> worker
    CALL         job_id, payload = pickle((fn, args, kwargs)), or for a module-level
                 function: SPLIT | u16 n | pickle(fn) (n bytes) | pickle((args, kwargs))
    STOP         finish what you hold, then exit

Worker -> parent
    READY        the initializer ran; jobs may follow
    RELEASED     job_id's argument segment is no longer mapped (sent just before its reply)
    OK           job_id finished; payload = pickle(result); seconds = time spent on it
    ERROR        job_id raised; payload = pack_exception(...)
    INIT_FAILED  the initializer raised; payload = pickle(traceback text)

Calls and results are pickled one job at a time, so that a payload which cannot
be pickled or unpickled fails only its own job. Their large buffers (NumPy
arrays, bytearrays, large bytes...) do not cross the pipe: they travel through
shared memory (``_shm.py``) and the payload only refers to them. READY's
payload names the prefix of the worker's result segments.
"""

from __future__ import annotations

import enum
import linecache
import pickle
import struct
import sys
import traceback
import types
import weakref
from typing import Any, NamedTuple

from taskq import _segments, _shm
from taskq._errors import PicklingFailed, RemoteError, RemoteTraceback

HEADER = struct.Struct("<QBqd")


class Kind(enum.IntEnum):
    CALL = 1
    STOP = 2
    READY = 3
    OK = 4
    ERROR = 5
    INIT_FAILED = 6
    RELEASED = 7
    OK_SHARED = 8  # OK, and the result waits in a shared-memory file (_copier.py)


class Frame(NamedTuple):
    kind: int
    job_id: int
    seconds: float
    payload: bytes | bytearray


def encode(kind: Kind, job_id: int = 0, payload: bytes = b"", seconds: float = 0.0) -> bytes:
    """One frame as bytes (small frames: header and payload joined in one buffer)."""
    return HEADER.pack(len(payload), kind, job_id, seconds) + payload


def encode_parts(kind: Kind, job_id: int, payload: bytes, seconds: float = 0.0) -> list[bytes]:
    """One frame as two buffers, so a large payload is never copied to prepend its header."""
    return [HEADER.pack(len(payload), kind, job_id, seconds), payload]


def dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# -- exceptions ---------------------------------------------------------------


class PackedError(NamedTuple):
    """A job's exception on its way to the parent, with enough to rebuild it if unpickling fails."""

    exc_bytes: bytes | None
    type_name: str
    message: str
    traceback_text: str


def pack_exception(exc: BaseException) -> bytes:
    """Pickle ``exc`` for the parent; if it cannot make the round trip, keep its text only."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except BaseException:  # a broken __str__ must not lose the error
        message = repr(type(exc))
    exc_bytes: bytes | None
    try:
        exc_bytes = dumps(exc)
        pickle.loads(exc_bytes)  # catches exceptions whose __init__ breaks unpickling
    except BaseException:  # user code: may raise anything, SystemExit included
        exc_bytes = None
    return dumps(PackedError(exc_bytes, type_name, message, tb_text))


def unpack_exception(payload: bytes | bytearray) -> BaseException:
    """The exception as the caller should see it, with the worker traceback as ``__cause__``."""
    packed: PackedError = pickle.loads(payload)
    exc: BaseException | None = None
    if packed.exc_bytes is not None:
        try:
            exc = pickle.loads(packed.exc_bytes)
        except BaseException:  # user code (runs on the manager thread): never let it out
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(packed.type_name, packed.message, packed.traceback_text)
    exc.__cause__ = RemoteTraceback(packed.traceback_text)
    return exc


def load(payload: bytes | bytearray | memoryview) -> Any:
    return pickle.loads(payload)


# -- calls ------------------------------------------------------------------------

_cloudpickle: Any = None


def _load_cloudpickle() -> Any:
    global _cloudpickle
    if _cloudpickle is None:
        try:
            import cloudpickle  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            _cloudpickle = False
        else:
            _cloudpickle = cloudpickle
    return _cloudpickle


class _ByValue:
    """A function pickled by value (cloudpickle), pickled once and loaded once per worker.

    Pickling it costs a copy of the cached bytes; a worker rebuilds the
    function only the first time it sees those bytes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_load_by_value, (self.data,))


_sent_by_value: weakref.WeakKeyDictionary[Any, _ByValue] = weakref.WeakKeyDictionary()
_loaded_by_value: dict[bytes, Any] = {}


def _load_by_value(data: bytes) -> Any:
    fn = _loaded_by_value.get(data)
    if fn is None:
        fn = _loaded_by_value[data] = pickle.loads(data)
    return fn


def _by_value(fn: Any, cloudpickle: Any) -> Any:
    try:
        return _sent_by_value[fn]
    except (KeyError, TypeError):
        pass
    wrapped = _ByValue(cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL))
    try:
        _sent_by_value[fn] = wrapped
    except TypeError:  # not weakly referenceable: just don't cache it
        pass
    return wrapped


_lookup_in_worker: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _found_by_name(fn: Any) -> bool:
    """Whether a worker can find this ``__main__`` function by its name.

    True for a function defined at the top level of a script: workers have it
    (``fork`` copies it; ``spawn`` and ``forkserver`` import the script again).
    Not for code typed at a prompt or given to ``python -c``, nor for a function
    defined inside ``if __name__ == "__main__":`` (workers skip that block).
    """
    try:
        return _lookup_in_worker[fn]
    except (KeyError, TypeError):
        pass
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    code = getattr(fn, "__code__", None)
    found = False
    if path and code is not None and getattr(main, fn.__name__, None) is fn:
        line = linecache.getline(path, code.co_firstlineno)
        found = bool(line) and not line[0].isspace()  # not indented: not in a block
    try:
        _lookup_in_worker[fn] = found
    except TypeError:
        pass
    return found


# A module-level function pickles as a reference (its module and name), and finding
# them again costs more than pickling a few arguments: a pool's calls carry the
# reference pickled once, cached here, followed by the arguments (``load_call``).
SPLIT = 1  # first byte of such a call (a pickle, protocol 2 or later, starts with 0x80)
MAX_REFERENCES = 1024  # cached functions; the cache starts over when it is full
_references: dict[Any, tuple[bytes, Any, str]] = {}  # fn -> (head, module, name)


def _reference(fn: Any) -> bytes | None:
    """``SPLIT | length | pickle(fn)`` for a plain module-level function, else None."""
    entry = _references.get(fn)
    if entry is not None:
        head, module, name = entry
        if getattr(module, name, None) is fn:  # still what a worker finds by that name
            return head
        del _references[fn]
        return None
    if type(fn) is not types.FunctionType or "." in fn.__qualname__:
        return None
    module, name = sys.modules.get(fn.__module__), fn.__qualname__
    if module is None or getattr(module, name, None) is not fn:
        return None
    try:
        data = dumps(fn)
    except Exception:  # the full pickle will say what is wrong
        return None
    if len(data) > 0xFFFF:
        return None
    if len(_references) >= MAX_REFERENCES:
        _references.clear()
    head = bytes((SPLIT,)) + len(data).to_bytes(2, "little") + data
    _references[fn] = (head, module, name)
    return head


_found: dict[bytes, Any] = {}  # in a worker: pickled reference -> the function it names


def load_call(payload: bytes | bytearray) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """In the worker: (fn, args, kwargs) from a CALL payload, in either form. A function
    is looked up by name once per worker, as a by-value one is unpickled once."""
    if payload[0] != SPLIT:
        call: tuple[Any, tuple[Any, ...], dict[str, Any]] = pickle.loads(payload)
        return call
    end = 3 + int.from_bytes(payload[1:3], "little")
    reference = bytes(payload[3:end])
    fn = _found.get(reference)
    if fn is None:
        if len(_found) >= MAX_REFERENCES:
            _found.clear()
        fn = _found[reference] = pickle.loads(reference)
    args, kwargs = pickle.loads(memoryview(payload)[end:])
    return fn, args, kwargs


def dump_call(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    segments: _segments.SegmentCache | None = None,
) -> bytes:
    """pickle((fn, args, kwargs)) for a CALL frame.

    Functions pickle by reference (module and name), as with any process pool;
    a job then shares its module's globals with the worker's ``initializer``.
    When that cannot work (lambdas, closures, functions a worker cannot find in
    ``__main__``) and the optional ``cloudpickle`` is installed, the function
    goes by value instead (pickled once and cached), and so do arguments plain
    pickle refuses. Raises ``PicklingFailed`` (a ``SerializationError`` and a
    ``pickle.PicklingError``) naming the problem otherwise.

    Given ``segments`` (a pool's), large buffers go into a shared-memory segment
    and the result is a ``_shm.SharedCall``: valid in this process only, and its
    ``segment`` must be released when the job ends. Leave it out for a call
    stored beyond this process (a durable broker): everything is then in the bytes.
    """
    user_fn = fn
    cloudpickle = _cloudpickle if _cloudpickle is not None else _load_cloudpickle()
    if cloudpickle and getattr(fn, "__module__", None) == "__main__" and not _found_by_name(fn):
        fn = _by_value(fn, cloudpickle)
    try:
        if segments is not None:
            if kwargs:
                kwargs = _shm.outband_kwargs(kwargs)
            return _shm.dump_call((fn, _shm.outband(args), kwargs), segments, _reference(fn))
        return dumps((fn, args, kwargs))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # user code (__reduce__) may raise anything, SystemExit too
        error: BaseException = exc
    name = getattr(user_fn, "__qualname__", repr(user_fn))
    if cloudpickle:
        try:
            return bytes(cloudpickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            error = exc
    hint = (
        ""
        if cloudpickle
        else (
            "; functions must be defined at module level (install 'taskq[cloudpickle]' "
            "for lambdas and closures)"
        )
    )
    raise PicklingFailed(
        f"cannot send {name}(...) to a worker: the call could not be pickled ({error!r}){hint}"
    ) from error
