"""Large reads into new bytes objects, their pages made in one call (``_prefault.py``)."""

from __future__ import annotations

import os

import pytest

from taskq import _prefault


@pytest.fixture
def memfd():
    fd = os.memfd_create("taskq-test-prefault", os.MFD_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("length", [1, 4096, _prefault.WORTH_IT - 1, _prefault.WORTH_IT, 3 << 20])
@pytest.mark.parametrize("offset", [0, 64, 4097])
def test_a_read_gives_a_new_bytes_of_exactly_the_file_s_bytes(memfd, length, offset):
    content = os.urandom(offset + length + 100)
    os.pwrite(memfd, content, 0)
    data = _prefault.pread_bytes(memfd, length, offset)
    assert type(data) is bytes and len(data) == length
    assert data == content[offset : offset + length]
    assert hash(data) == hash(bytes(content[offset : offset + length]))  # an ordinary bytes
    again = _prefault.pread_bytes(memfd, length, offset)
    assert again == data and (length < 2 or again is not data)  # each read its own object


@pytest.mark.parametrize("length", [4096, 1 << 20])
def test_a_file_shorter_than_asked_raises_instead_of_returning_garbage(memfd, length):
    os.pwrite(memfd, b"x" * (length // 2), 0)
    with pytest.raises(_prefault.ShortRead, match="the file ended"):
        _prefault.pread_bytes(memfd, length, 0)


def test_the_c_api_path_is_the_one_taken_here():
    # CPython on Linux: the populated path must be live, or the speed-up is silently gone.
    assert _prefault._new_bytes is not None and _prefault._madvise is not None
