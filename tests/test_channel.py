"""Unit tests for taskq._channel: FrameReader, Outbox, write_all and enlarge_pipe over real
``os.pipe()`` pairs, in-process and deterministic (no workers).

Most tests run in one thread: the write end is non-blocking and the test drains the reader
whenever the pipe is full, so every read boundary is exactly where the test put it. A thread
is used only where a blocking writer (``write_all``) needs a reader to drain a full pipe.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskq._channel import (
    IOV_MAX,
    LARGE_FRAME,
    PIPE_SIZE,
    READ_SIZE,
    FrameReader,
    Outbox,
    enlarge_pipe,
    write_all,
)
from taskq._protocol import HEADER, Frame, Kind, encode, encode_parts

SYSTEM_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
THREAD_JOIN = 30


# -- helpers ------------------------------------------------------------------------------


class Pipe:
    """An ``os.pipe()`` with a non-blocking read end (FrameReader's parent-side use)."""

    def __init__(self, *, nonblocking_write: bool = True):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, not nonblocking_write)
        self.reader = FrameReader(self.r)

    def close_write(self) -> None:
        if self.w != -1:
            os.close(self.w)
            self.w = -1

    def close_read(self) -> None:
        if self.r != -1:
            os.close(self.r)
            self.r = -1

    def close(self) -> None:
        self.close_write()
        self.close_read()

    def drain(self) -> list[Frame]:
        """Every frame completed by what is in the pipe now (reads until it would block)."""
        frames: list[Frame] = []
        while True:
            try:
                frames += self.reader.read()
            except BlockingIOError:
                return frames

    def send(self, *pieces: bytes) -> list[Frame]:
        """Write each piece; the reader drains the pipe after each one (and whenever it fills),
        so a piece boundary is also a read boundary."""
        frames: list[Frame] = []
        for piece in pieces:
            view = memoryview(piece)
            while view:
                try:
                    view = view[os.write(self.w, view) :]
                except BlockingIOError:
                    frames += self.drain()
            frames += self.drain()
        return frames

    def read_raw(self) -> bytes:
        """Every byte in the pipe now, bypassing the FrameReader."""
        out = bytearray()
        while True:
            try:
                chunk = os.read(self.r, 1 << 20)
            except BlockingIOError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


@pytest.fixture
def pipe():
    p = Pipe()
    yield p
    p.close()


def payload_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def as_tuples(frames: list[Frame]) -> list[tuple[int, int, float, bytes]]:
    return [(f.kind, f.job_id, f.seconds, bytes(f.payload)) for f in frames]


def spec(kind: Kind, job_id: int, payload: bytes, seconds: float = 0.0):
    return (int(kind), job_id, seconds, payload)


def wire(specs) -> bytes:
    return b"".join(encode(Kind(k), j, payload, seconds) for k, j, seconds, payload in specs)


# -- FrameReader: splits ----------------------------------------------------------------------


def test_one_small_frame(pipe):
    frames = pipe.send(encode(Kind.OK, 5, b"hello", 0.125))
    assert as_tuples(frames) == [spec(Kind.OK, 5, b"hello", 0.125)]
    assert type(frames[0]) is Frame


SMALL = encode(Kind.OK, 9, b"0123456789", 2.0)


@pytest.mark.parametrize("cut", range(1, len(SMALL)))
def test_a_small_frame_split_at_every_byte(pipe, cut):
    """Covers every header boundary (1..24) and every payload boundary."""
    assert pipe.send(SMALL[:cut]) == []
    frames = pipe.send(SMALL[cut:])
    assert as_tuples(frames) == [spec(Kind.OK, 9, b"0123456789", 2.0)]


@pytest.mark.parametrize("cut", range(1, HEADER.size + 1))
def test_a_header_split_after_a_complete_frame(pipe, cut):
    first = encode(Kind.READY)
    second = encode(Kind.ERROR, -3, b"payload", 0.5)
    frames = pipe.send(first + second[:cut])
    assert as_tuples(frames) == [spec(Kind.READY, 0, b"")]
    frames = pipe.send(second[cut:])
    assert as_tuples(frames) == [spec(Kind.ERROR, -3, b"payload", 0.5)]


@pytest.mark.parametrize("cut", range(1, HEADER.size + 1))
def test_a_large_frames_header_split_at_every_byte(pipe, cut):
    payload = payload_of(LARGE_FRAME + 1, seed=cut)
    data = encode(Kind.OK, 1, payload, 1.0) + SMALL
    assert pipe.send(data[:cut]) == []
    frames = pipe.send(data[cut:])
    assert as_tuples(frames) == [
        spec(Kind.OK, 1, payload, 1.0),
        spec(Kind.OK, 9, b"0123456789", 2.0),
    ]


def test_a_payload_split_across_many_writes(pipe):
    payload = payload_of(10_000)
    data = encode(Kind.CALL, 42, payload)
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    frames = pipe.send(*pieces)
    assert as_tuples(frames) == [spec(Kind.CALL, 42, payload)]


def test_many_small_frames_in_one_write_come_out_of_one_read(pipe):
    specs = [spec(Kind.OK, i, str(i).encode(), i / 8) for i in range(1500)]
    data = wire(specs)
    assert len(data) < 64 * 1024  # fits the default pipe buffer: one write
    assert os.write(pipe.w, data) == len(data)
    assert as_tuples(pipe.reader.read()) == specs  # one read: every frame it completed
    with pytest.raises(BlockingIOError):
        pipe.reader.read()


def test_an_empty_payload(pipe):
    frames = pipe.send(encode(Kind.STOP), b"".join(encode_parts(Kind.OK, 3, b"", 0.0)))
    assert as_tuples(frames) == [spec(Kind.STOP, 0, b""), spec(Kind.OK, 3, b"")]
    assert all(bytes(f.payload) == b"" for f in frames)


BIG_SIZES = {
    "LARGE-1": LARGE_FRAME - 1,
    "LARGE": LARGE_FRAME,
    "LARGE+1": LARGE_FRAME + 1,
    "READ_SIZE-header": READ_SIZE - HEADER.size,
    "READ_SIZE": READ_SIZE,
    "3xLARGE+7": 3 * LARGE_FRAME + 7,
}


@pytest.mark.parametrize("size", BIG_SIZES.values(), ids=BIG_SIZES.keys())
def test_big_frames_between_small_ones_in_the_same_write(pipe, size):
    payload = payload_of(size, seed=size)
    specs = [
        spec(Kind.READY, 0, b""),
        spec(Kind.OK, 1, b"before"),
        spec(Kind.OK, 2, payload, 3.5),
        *(spec(Kind.OK, 3 + i, b"after %d" % i) for i in range(50)),
    ]
    frames = pipe.send(wire(specs))
    assert as_tuples(frames) == specs
    # above LARGE_FRAME a payload is read straight into its own buffer (no copy, a bytearray)
    assert type(frames[2].payload) is (bytearray if size > LARGE_FRAME else bytes)


def test_two_large_frames_back_to_back(pipe):
    a, b = payload_of(LARGE_FRAME + 1, 1), payload_of(2 * LARGE_FRAME, 2)
    specs = [spec(Kind.OK, 1, a), spec(Kind.OK, 2, b), spec(Kind.OK, 3, b"tail")]
    assert as_tuples(pipe.send(wire(specs))) == specs


def test_a_large_frame_arriving_a_byte_at_a_time_near_its_end(pipe):
    payload = payload_of(LARGE_FRAME + 10, 3)
    data = encode(Kind.OK, 1, payload) + encode(Kind.OK, 2, b"x")
    split = len(data) - HEADER.size - 1 - 5  # the last 5 bytes of the large payload, one by one
    assert pipe.send(data[:split]) == []
    for i in range(split, split + 4):
        assert pipe.send(data[i : i + 1]) == []
    frames = pipe.send(data[split + 4 : split + 5])
    assert as_tuples(frames) == [spec(Kind.OK, 1, payload)]
    assert as_tuples(pipe.send(data[split + 5 :])) == [spec(Kind.OK, 2, b"x")]


# -- FrameReader: EOF and no data ---------------------------------------------------------------


def test_eof_on_an_empty_pipe(pipe):
    pipe.close_write()
    with pytest.raises(EOFError):
        pipe.reader.read()


def test_eof_at_a_frame_boundary_comes_after_every_frame(pipe):
    specs = [spec(Kind.OK, 1, b"one"), spec(Kind.ERROR, 2, b"two")]
    os.write(pipe.w, wire(specs))
    pipe.close_write()
    assert as_tuples(pipe.reader.read()) == specs
    with pytest.raises(EOFError):
        pipe.reader.read()
    with pytest.raises(EOFError):  # and stays at EOF
        pipe.reader.read()


@pytest.mark.parametrize(
    "cut",
    [1, HEADER.size - 1, HEADER.size, HEADER.size + 3, HEADER.size + 16],
    ids=["in-header", "header-less-one", "header-only", "in-payload", "payload-less-one"],
)
def test_eof_mid_frame_raises_eof_error_after_the_complete_frames(pipe, cut):
    """Documented: EOFError at end of stream. Frames completed before the cut are all delivered
    first; the truncated one cannot be (it is incomplete) and the reader does not hang on it."""
    complete = encode(Kind.OK, 1, b"complete")
    truncated = encode(Kind.OK, 2, b"truncated payload")[:cut]
    os.write(pipe.w, complete + truncated)
    pipe.close_write()
    assert as_tuples(pipe.reader.read()) == [spec(Kind.OK, 1, b"complete")]
    with pytest.raises(EOFError):
        pipe.reader.read()
    with pytest.raises(EOFError):
        pipe.reader.read()


def test_eof_in_the_middle_of_a_large_frame(pipe):
    payload = payload_of(LARGE_FRAME + 100)
    data = encode(Kind.OK, 0, b"small first") + encode(Kind.OK, 1, payload)
    frames = pipe.send(data[: len(data) // 2])
    assert as_tuples(frames) == [spec(Kind.OK, 0, b"small first")]
    pipe.close_write()
    with pytest.raises(EOFError):
        pipe.reader.read()


def test_no_data_on_a_nonblocking_pipe_raises_blocking_io_error(pipe):
    with pytest.raises(BlockingIOError):
        pipe.reader.read()
    assert as_tuples(pipe.send(SMALL)) == [spec(Kind.OK, 9, b"0123456789", 2.0)]


def test_no_data_mid_frame_raises_blocking_io_error_and_keeps_the_partial_frame(pipe):
    os.write(pipe.w, SMALL[: HEADER.size + 2])
    assert pipe.reader.read() == []
    with pytest.raises(BlockingIOError):
        pipe.reader.read()
    assert as_tuples(pipe.send(SMALL[HEADER.size + 2 :])) == [spec(Kind.OK, 9, b"0123456789", 2.0)]


def test_no_data_in_the_middle_of_a_large_frame_raises_blocking_io_error(pipe):
    payload = payload_of(LARGE_FRAME + 1)
    data = encode(Kind.OK, 1, payload)
    assert pipe.send(data[: LARGE_FRAME // 2]) == []
    with pytest.raises(BlockingIOError):
        pipe.reader.read()
    assert as_tuples(pipe.send(data[LARGE_FRAME // 2 :])) == [spec(Kind.OK, 1, payload)]


def test_a_blocking_reader_with_a_writer_thread():
    """The worker side: a blocking descriptor, frames bigger than the pipe."""
    r, w = os.pipe()
    specs = [spec(Kind.CALL, i, payload_of(size, i)) for i, size in
             enumerate([0, 10, LARGE_FRAME + 1, 5, 2 * LARGE_FRAME, 1])]  # fmt: skip
    data = wire(specs) + encode(Kind.STOP)

    def write():
        try:
            write_all(w, [data])
        finally:
            os.close(w)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reader = FrameReader(r)
    frames: list[Frame] = []
    try:
        while True:
            try:
                frames += reader.read()
            except EOFError:
                break
    finally:
        writer.join(THREAD_JOIN)
        os.close(r)
    assert not writer.is_alive()
    assert as_tuples(frames) == [*specs, spec(Kind.STOP, 0, b"")]


# -- Outbox ---------------------------------------------------------------------------------


def test_an_empty_outbox_is_flushed():
    p = Pipe()
    try:
        outbox = Outbox(p.w)
        assert not outbox
        assert outbox.flush() is True
        outbox.push([b"", b""])
        assert outbox.flush() is True
        assert not outbox
        assert p.read_raw() == b""
    finally:
        p.close()


def test_outbox_partial_writes_against_a_full_pipe(pipe):
    outbox = Outbox(pipe.w)
    buffers = [encode(Kind.CALL, i, payload_of(1000 + i, i)) for i in range(300)]  # ~330 KB
    expected = b"".join(buffers)
    outbox.push(buffers)
    assert outbox.flush() is False  # the pipe filled up: the rest waits
    assert outbox
    received = bytearray()
    flushes = 1
    while True:
        assert outbox.flush() is False  # nothing drained since: still full
        received += pipe.read_raw()
        flushes += 1
        if outbox.flush():
            break
    received += pipe.read_raw()
    assert not outbox
    assert flushes > 2
    assert bytes(received) == expected


def test_outbox_keeps_order_across_pushes_between_partial_flushes(pipe):
    outbox = Outbox(pipe.w)
    specs = []
    frames: list[Frame] = []
    for i in range(40):
        payload = payload_of(7000 * (i % 5), i)  # 0..28 KB: some flushes end mid-buffer
        specs.append(spec(Kind.CALL, i, payload, float(i)))
        outbox.push(encode_parts(Kind.CALL, i, payload, float(i)))
        outbox.flush()
        if i % 3 == 0:
            frames += pipe.drain()
    while not outbox.flush():
        frames += pipe.drain()
    frames += pipe.drain()
    assert as_tuples(frames) == specs


def test_outbox_frame_bigger_than_the_pipe_buffer(pipe):
    size = fcntl.fcntl(pipe.w, fcntl.F_GETPIPE_SZ)
    payload = payload_of(4 * max(size, LARGE_FRAME) + 3)
    outbox = Outbox(pipe.w)
    outbox.push(encode_parts(Kind.CALL, 7, payload))
    outbox.push([encode(Kind.STOP)])
    frames: list[Frame] = []
    rounds = 0
    while not outbox.flush():
        rounds += 1
        frames += pipe.drain()
    frames += pipe.drain()
    assert rounds >= 4
    assert as_tuples(frames) == [spec(Kind.CALL, 7, payload), spec(Kind.STOP, 0, b"")]


@pytest.mark.parametrize("count", [IOV_MAX - 1, IOV_MAX, IOV_MAX + 1, SYSTEM_IOV_MAX + 1, 5000])
def test_outbox_more_buffers_than_iov_max_in_one_flush(pipe, count):
    buffers = [b"%05d|" % i for i in range(count)]
    outbox = Outbox(pipe.w)
    outbox.push(buffers)
    assert outbox.flush() is True  # 6 bytes each: it all fits the pipe at once
    assert not outbox
    assert pipe.read_raw() == b"".join(buffers)


def test_outbox_many_frames_as_parts_in_one_flush(pipe):
    specs = [spec(Kind.CALL, i, b"" if i % 7 == 0 else b"p%d" % i) for i in range(1500)]
    outbox = Outbox(pipe.w)
    for _kind, job_id, seconds, payload in specs:
        outbox.push(encode_parts(Kind.CALL, job_id, payload, seconds))
    assert outbox.flush() is True  # 3000 buffers, ~43 KB
    assert as_tuples(pipe.drain()) == specs


def test_outbox_raises_broken_pipe_when_the_reader_is_gone(pipe):
    outbox = Outbox(pipe.w)
    outbox.push([b"x" * 10])
    pipe.close_read()
    with pytest.raises(BrokenPipeError):
        outbox.flush()


# -- write_all -------------------------------------------------------------------------------


def _drain_in_thread(r: int, into: bytearray) -> threading.Thread:
    def run():
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                return
            into.extend(chunk)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_write_all_more_than_the_pipe_holds_and_more_than_iov_max_buffers():
    r, w = os.pipe()
    received = bytearray()
    drainer = _drain_in_thread(r, received)
    buffers = [payload_of(i % 300, i) for i in range(3 * SYSTEM_IOV_MAX)]
    buffers.append(payload_of(3 * LARGE_FRAME, 99))
    buffers += [b"", b"end"]
    try:
        write_all(w, buffers)
    finally:
        os.close(w)
        drainer.join(THREAD_JOIN)
        os.close(r)
    assert not drainer.is_alive()
    assert bytes(received) == b"".join(buffers)


def test_write_all_raises_broken_pipe_when_the_reader_is_gone():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(BrokenPipeError):
            write_all(w, [b"x"])
    finally:
        os.close(w)


# -- enlarge_pipe ----------------------------------------------------------------------------


def test_enlarge_pipe_grows_a_pipe_and_ignores_what_is_not_a_pipe(pipe):
    before = fcntl.fcntl(pipe.w, fcntl.F_GETPIPE_SZ)
    enlarge_pipe(pipe.w)
    after = fcntl.fcntl(pipe.w, fcntl.F_GETPIPE_SZ)
    assert after >= before
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            allowed = int(f.read())
    except OSError:
        allowed = 0
    if allowed >= PIPE_SIZE:
        assert after == PIPE_SIZE
    with tempfile.TemporaryFile() as f:
        enlarge_pipe(f.fileno())  # EBADF/EINVAL: best effort, no error
    # still a working pipe
    assert as_tuples(pipe.send(SMALL)) == [spec(Kind.OK, 9, b"0123456789", 2.0)]


# -- property: any frames, any split points -------------------------------------------------------

SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(0, 70_000),
    st.sampled_from([LARGE_FRAME - 1, LARGE_FRAME, LARGE_FRAME + 1]),
    st.integers(LARGE_FRAME - HEADER.size, 3 * LARGE_FRAME),
)
FRAMES = st.lists(
    st.tuples(
        st.sampled_from(list(Kind)),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        SIZES,
    ),
    max_size=6,
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # deterministic: the same examples on every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(frames=FRAMES, data=st.data())
def test_any_frames_with_any_split_points_arrive_intact_and_in_order(frames, data):
    specs = [spec(kind, job_id, payload_of(size, i), seconds)
             for i, (kind, job_id, seconds, size) in enumerate(frames)]  # fmt: skip
    stream = wire(specs)
    starts, pos = [], 0
    for _k, _j, _s, payload in specs:
        starts.append(pos)
        pos += HEADER.size + len(payload)
    near_headers = [min(s + d, len(stream)) for s in starts for d in (1, 8, 9, 17, 24, 25)]
    cut_points = data.draw(
        st.lists(
            st.one_of(st.integers(0, len(stream)), st.sampled_from(near_headers or [0])),
            max_size=12,
        )
    )
    cuts = sorted({0, len(stream), *cut_points})
    pieces = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    p = Pipe()
    try:
        frames_out = p.send(*pieces)
        p.close_write()
        with pytest.raises(EOFError):
            p.reader.read()
    finally:
        p.close()
    assert as_tuples(frames_out) == specs


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    frames=st.lists(
        st.tuples(st.sampled_from(list(Kind)), st.integers(0, 2**20), st.integers(0, 40_000)),
        max_size=12,
    ),
    schedule=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_any_frames_pushed_through_an_outbox_arrive_intact_and_in_order(frames, schedule):
    """Pushes interleaved with flushes and drains in any order: partial writes end anywhere."""
    specs = [spec(kind, job_id, payload_of(size, job_id), 0.5) for kind, job_id, size in frames]
    p = Pipe()
    out: list[Frame] = []
    try:
        outbox = Outbox(p.w)
        for (kind, job_id, _seconds, payload), drain_now in zip(specs, schedule, strict=False):
            outbox.push(encode_parts(Kind(kind), job_id, payload, 0.5))
            outbox.flush()
            if drain_now:
                out += p.drain()
        while not outbox.flush():
            out += p.drain()
        out += p.drain()
    finally:
        p.close()
    assert as_tuples(out) == specs
