"""The JSON Lines of ``taskq run``: input lines to checked jobs, job results to output lines."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeAlias

import taskq

__all__ = [
    "InvalidJob",
    "Job",
    "JobId",
    "Record",
    "check_call",
    "encode_record",
    "error_record",
    "iter_lines",
    "parse_job",
    "write_line",
]

JobId: TypeAlias = "str | int | float | bool | None"
Record: TypeAlias = "dict[str, Any]"

JOB_FIELDS = ("id", "args", "kwargs", "priority", "timeout", "retries")


# ---------------------------------------------------------------------------------------------
# Input: JSON Lines to jobs


@dataclass(frozen=True)
class Job:
    """One input line, checked: what to pass to ``pool.schedule``."""

    line: int
    id: JobId
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: float = 0
    timeout: float | None = None  # None: the pool's default (--timeout)
    retries: int | None = None  # None: --retries


class InvalidJob(ValueError):
    """Raised for an input line that is not a valid job; the message names the line."""

    def __init__(self, line: int, problem: str, job_id: JobId = None) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.job_id = line if job_id is None else job_id


def iter_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` for the non-blank lines of ``source``, lazily."""
    for number, raw in enumerate(source, start=1):
        if raw.strip():
            yield number, raw


def parse_job(line: int, raw: bytes | str) -> Job:
    """Turn one input line into a :class:`Job`, or raise :class:`InvalidJob` saying why."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text.lstrip("\ufeff"))  # JSON Lines is UTF-8, maybe with a BOM
    except UnicodeDecodeError as exc:
        raise InvalidJob(line, f"not UTF-8 text: {exc}") from None
    except ValueError as exc:
        raise InvalidJob(line, f"not valid JSON: {exc}") from None
    if isinstance(value, dict):
        return _job_from_object(line, value)
    args = tuple(value) if isinstance(value, list) else (value,)
    return Job(line=line, id=line, args=args)


def _job_from_object(line: int, obj: dict[str, Any]) -> Job:
    job_id = line if obj.get("id") is None else obj["id"]
    if isinstance(job_id, (dict, list)):
        raise InvalidJob(line, f"'id' must be a string or a number, not {_json_type(job_id)}")
    unknown = [key for key in obj if key not in JOB_FIELDS]
    if unknown:
        raise InvalidJob(
            line,
            f"unknown field {', '.join(map(repr, unknown))}"
            f" (the fields are {', '.join(JOB_FIELDS)})",
            job_id,
        )
    try:
        return Job(
            line=line,
            id=job_id,
            args=tuple(_field(obj, "args", list, "an array", [])),
            kwargs=_field(obj, "kwargs", dict, "an object", {}),
            priority=_field(obj, "priority", (int, float), "a number", 0),
            timeout=_checked_timeout(obj),
            retries=_checked_retries(obj),
        )
    except ValueError as exc:
        raise InvalidJob(line, str(exc), job_id) from None


def _field(
    obj: dict[str, Any], name: str, kinds: type | tuple[type, ...], wanted: str, default: Any
) -> Any:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name!r} must be {wanted}, not {_json_type(value)}")
    if isinstance(value, float) and math.isnan(value):  # Python's JSON reader takes NaN
        raise ValueError(f"{name!r} must be {wanted}, not NaN")
    return value


def _checked_timeout(obj: dict[str, Any]) -> float | None:
    if obj.get("timeout") is None:
        return None
    timeout: float = _field(obj, "timeout", (int, float), "a number", None)
    if timeout <= 0:
        raise ValueError(f"'timeout' must be more than 0 seconds, not {timeout}")
    return timeout


def _checked_retries(obj: dict[str, Any]) -> int | None:
    if obj.get("retries") is None:
        return None
    retries: int = _field(obj, "retries", int, "an integer", None)
    if retries < 0:
        raise ValueError(f"'retries' must be 0 or more, not {retries}")
    return retries


def _json_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def check_call(target: Callable[..., Any], job: Job) -> None:
    """Raise :class:`InvalidJob` if the job's arguments cannot bind to ``target``'s signature."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        signature.bind(*job.args, **job.kwargs)
    except TypeError as exc:
        name = getattr(target, "__name__", "the function")
        problem = f"arguments do not fit {name}{signature}: {exc}"
        raise InvalidJob(job.line, problem, job.id) from None


# ---------------------------------------------------------------------------------------------
# Output: results to JSON Lines


def error_record(
    job_id: JobId, line: int, error: BaseException, attempts: int, seconds: float
) -> Record:
    """The result line of a job that failed (or of a line that was not a valid job)."""
    return {
        "id": job_id,
        "line": line,
        "ok": False,
        "error": {"type": _error_type(error), "message": str(error)},
        "attempts": attempts,
        "seconds": round(seconds, 6),
    }


def _error_type(error: BaseException) -> str:
    if isinstance(error, taskq.RemoteError):
        return error.type_name  # the job's own exception type, which could not be unpickled
    return type(error).__name__


def encode_record(record: Record) -> tuple[Record, str]:
    """The record and its JSON line; a result that JSON cannot hold makes it an error record."""
    try:
        return record, json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = TypeError(f"the result cannot be written as JSON: {exc}")
        fallback = error_record(record["id"], record["line"], problem, record["attempts"], 0)
        fallback["seconds"] = record["seconds"]
        return fallback, json.dumps(fallback)


def write_line(stream: IO[str], line: str) -> None:
    # One write per line, then flush: an interruption never leaves half a line behind.
    stream.write(line + "\n")
    stream.flush()
