"""Large reads into new ``bytes`` objects whose pages are made in one call (Linux, CPython).

``os.pread`` of a large buffer into a new ``bytes`` takes a page fault per 4 KiB
as the kernel copies into memory nobody touched yet: 0.4-0.5 ms a MiB on the VMs
measured, most of what a large result costs the parent. ``madvise`` with
``MADV_POPULATE_WRITE`` (Linux 5.14) makes those pages in one call instead, 30-55 %
cheaper there (``benchmarks/README.md``). ``os.pread`` allocates its ``bytes``
itself, so ``pread_bytes`` does what it does in C: it makes the ``bytes`` object
uninitialized (``PyBytes_FromStringAndSize(NULL, n)``, seen by nobody yet),
populates its pages, and reads into its buffer.

Without ctypes or CPython's C API (another implementation), this falls back to
``os.pread``; an older kernel refuses the advice (EINVAL) and the read faults as
before.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

MADV_POPULATE_WRITE = 23  # <linux/mman.h>; not in the mmap module of Python 3.11
PAGE = os.sysconf("SC_PAGE_SIZE")
WORTH_IT = 64 * 1024  # smaller reads: the faults are few, the ctypes calls cost more

_new_bytes: Callable[[None, int], bytes] | None
_madvise: Callable[[int, int, int], int] | None
try:
    _api: Any = ctypes.pythonapi.PyBytes_FromStringAndSize
    _api.restype = ctypes.py_object
    _api.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    _libc: Any = ctypes.CDLL(None, use_errno=True).madvise
    _libc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _new_bytes, _madvise = _api, _libc
except (AttributeError, OSError):  # not CPython, or no libc to load
    _new_bytes = _madvise = None


class ShortRead(OSError):
    """The file ended before ``length`` bytes were read."""


def pread_bytes(fd: int, length: int, offset: int) -> bytes:
    """The ``length`` bytes at ``offset`` of ``fd``, in a new ``bytes`` object."""
    if _new_bytes is None or _madvise is None or length < WORTH_IT:
        data = os.pread(fd, length, offset)
        if len(data) < length:
            data += _read_rest(fd, length - len(data), offset + len(data))
        return data
    data = _new_bytes(None, length)
    address: int = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    first, last = -(-address // PAGE) * PAGE, (address + length) // PAGE * PAGE
    if last > first:
        _madvise(first, last - first, MADV_POPULATE_WRITE)  # advice: a refusal only costs faults
    buffer = (ctypes.c_char * length).from_address(address)  # ``data`` stays alive: a local
    with memoryview(buffer) as view:
        done = 0
        while done < length:  # preadv may stop short (2 GiB per call on Linux)
            got = os.preadv(fd, [view[done:]], offset + done)
            if not got:
                raise ShortRead(f"expected {length} bytes at offset {offset}, the file ended")
            done += got
    return data


def _read_rest(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise ShortRead(f"expected {length} more bytes at offset {offset}, the file ended")
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
