"""Slices of one input file: together they give exactly the file's numbered lines.

The reference is :func:`services.common.storage.open_text_lines` (and the standard
library's :class:`gzip.GzipFile`, to check the ISA-L reader behind it). Boundaries are
made to fall everywhere by shrinking ``READ_CHUNK``/``OUT_CHUNK`` to a few bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import itertools
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.beam_launcher import slices
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.slices import FileSlice, iter_slice_batches, plan_slices
from services.common import storage
from tests.gcs_server import GcsBucket

pytest_plugins = ["tests.gcs_server"]

SCAN = "CP_Quack-http-2021-05-30-05-02-33"
Numbered = list[tuple[int, bytes]]


def task_for(url: str, size: int) -> FileTask:
    name = "results.json.gz" if url.endswith(".gz") else "results.json"
    return dataclasses.replace(FileTask.for_test(SCAN, name), url=url, size=size)


def reference(url: str) -> Numbered:
    with storage.open_text_lines(url) as fh:
        return list(enumerate(fh, start=1))


def read_slices(task: FileTask, count: int, batch_lines: int) -> list[Numbered]:
    """Each slice's numbered lines; checks the batch shape on the way."""
    out = []
    for index in range(count):
        got: Numbered = []
        batches = list(iter_slice_batches(FileSlice(task, index, count), batch_lines))
        for n, (first, lines) in enumerate(batches):
            assert lines and (len(lines) == batch_lines or n == len(batches) - 1)
            got.extend(enumerate(lines, start=first))
        out.append(got)
    return out


def slice_errors(task: FileTask, count: int) -> tuple[list[Numbered], list[Exception | None]]:
    """What each slice yielded and what it raised (None: it ended normally)."""
    got: list[Numbered] = []
    errors: list[Exception | None] = []
    for index in range(count):
        lines: Numbered = []
        try:
            for first, batch in iter_slice_batches(FileSlice(task, index, count), 3):
                lines.extend(enumerate(batch, start=first))
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
        got.append(lines)
    return got, errors


def gzip_members(text: bytes, cuts: list[int], levels: list[int], pads: list[int]) -> bytes:
    """``text`` as concatenated gzip members cut at ``cuts``, zero padding after some."""
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    out = b""
    for i, (a, b) in enumerate(zip(bounds, bounds[1:] or [len(text)], strict=False)):
        out += gzip.compress(text[a:b], compresslevel=levels[i % len(levels)], mtime=0)
        out += b"\0" * pads[i % len(pads)]
    return out


line_st = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"\r", b'{"a": 1}\r', b"\x00\xff"]),
    st.integers(40, 300).map(lambda n: b"L" * n),  # longer than many chunks
)
text_st = st.builds(
    lambda lines, end, crlf: (b"\r\n" if crlf else b"\n").join(lines) + end,
    st.lists(line_st, max_size=40),
    st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]),
    st.booleans(),
)
SMALL = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SMALL
@given(
    text=text_st,
    gz=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=3),
    levels=st.lists(st.integers(0, 9), min_size=1, max_size=3),
    pads=st.lists(st.sampled_from([0, 0, 1, 5]), min_size=1, max_size=3),
    read_chunk=st.integers(1, 64),
    out_chunk=st.integers(1, 64),
    batch_lines=st.integers(1, 7),
)
def test_slices_together_give_exactly_the_files_numbered_lines(
    tmp_path: Path,
    text: bytes,
    gz: bool,
    cuts: list[int],
    levels: list[int],
    pads: list[int],
    read_chunk: int,
    out_chunk: int,
    batch_lines: int,
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        path = Path(folder) / ("results.json.gz" if gz else "results.json")
        path.write_bytes(gzip_members(text, cuts, levels, pads) if gz else text)
        url = str(path)
        want = reference(url)
        assert [line for _, line in want] == io.BytesIO(text).readlines()
        if gz:  # the ISA-L reader behind open_text_lines reads what the gzip module reads
            with gzip.open(path, "rb") as fh:
                assert list(enumerate(fh, start=1)) == want
        task = task_for(url, path.stat().st_size)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(slices, "READ_CHUNK", read_chunk)
            mp.setattr(slices, "OUT_CHUNK", out_chunk)
            for count in range(1, 7):
                parts = read_slices(task, count, batch_lines)
                assert [pair for part in parts for pair in part] == want, count
                # Contiguous ranges, in slice order.
                numbers = [n for part in parts for n, _ in part]
                assert numbers == list(range(1, len(want) + 1))


def test_a_line_longer_than_many_chunks_is_read_whole_by_one_slice(tmp_path: Path) -> None:
    long_line = os.urandom(300_000).replace(b"\n", b"n") + b"\n"
    text = b"a\n" + long_line + b"b\n" * 5 + long_line + b"end"
    path = tmp_path / "results.json.gz"
    path.write_bytes(gzip.compress(text, compresslevel=1, mtime=0))
    task = task_for(str(path), path.stat().st_size)
    want = reference(str(path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 4096)
        mp.setattr(slices, "OUT_CHUNK", 1000)
        parts = read_slices(task, 6, 2)
    assert [pair for part in parts for pair in part] == want
    owners = [i for i, part in enumerate(parts) for _, line in part if line == long_line]
    assert len(owners) == 2  # each long line once, in one slice
    assert sum(1 for part in parts if not part) >= 1  # slices inside a long line are empty


def test_slices_of_a_large_file_split_the_work(tmp_path: Path) -> None:
    """Real chunk sizes: each of 3 slices gets about a third of a ~4.5 MB gzip file's lines."""
    lines = [os.urandom(n % 900 + 1).hex().encode() + b"\n" for n in range(9000)]
    path = tmp_path / "results.json.gz"
    path.write_bytes(gzip.compress(b"".join(lines), compresslevel=1, mtime=0))
    task = task_for(str(path), path.stat().st_size)
    assert task.size > 3 * slices.READ_CHUNK
    parts = read_slices(task, 3, 1000)
    assert [line for part in parts for _, line in part] == lines
    assert all(len(part) > len(lines) / 6 for part in parts)


@SMALL
@given(text=text_st, cut=st.floats(0.0, 1.0, exclude_max=True), read_chunk=st.integers(1, 32))
def test_truncated_gzip_fails_in_the_last_slice_and_earlier_lines_are_right(
    tmp_path: Path, text: bytes, cut: float, read_chunk: int
) -> None:
    """A truncated file raises (EOFError) in the last slice, and in any slice that reads
    past the cut; every line a slice yielded is the file's line with that number."""
    full = gzip.compress(text, mtime=0)
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        path = Path(folder) / "results.json.gz"
        path.write_bytes(full[: max(1, int(len(full) * cut))])
        with pytest.raises(EOFError):
            reference(str(path))
        task = task_for(str(path), path.stat().st_size)
        good = dict(enumerate(io.BytesIO(text).readlines(), start=1))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(slices, "READ_CHUNK", read_chunk)
            for count in range(1, 7):
                got, errors = slice_errors(task, count)
                assert isinstance(errors[-1], EOFError), (count, errors)
                for part, error in zip(got, errors, strict=True):
                    assert all(good.get(n) == line for n, line in part)
                    assert error is None or isinstance(error, EOFError)
                # Slices are contiguous up to the first failure.
                numbers = [n for part in got for n, _ in part]
                assert numbers == list(range(1, len(numbers) + 1))


def test_corrupt_gzip_fails_in_its_slice_and_every_later_one(tmp_path: Path) -> None:
    """Garbage in the middle of the deflate data: the slices before it read their lines,
    the slice holding it and all later slices (they inflate from the start) raise."""
    rng = random.Random(7)
    lines = [b"%d " % i + rng.randbytes(200).hex().encode() + b"\n" for i in range(4000)]
    # Stored blocks (level 0): 70 kB of 0xff always overwrite a block header, which then
    # names the reserved block type (deflate data would maybe decode as other data).
    data = bytearray(gzip.compress(b"".join(lines), compresslevel=0, mtime=0))
    at = len(data) * 6 // 10  # inside slice 2 of 4
    data[at : at + 70_000] = b"\xff" * 70_000
    path = tmp_path / "results.json.gz"
    path.write_bytes(bytes(data))
    task = task_for(str(path), len(data))
    with pytest.raises(Exception):  # noqa: B017 - zlib/isal error types differ
        reference(str(path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 4096)
        got, errors = slice_errors(task, 4)
    assert errors[0] is None and errors[1] is None
    assert all(isinstance(e, gzip.BadGzipFile) for e in errors[2:]), errors
    assert "corrupt gzip data" in str(errors[2])
    assert [line for part in got[:2] for _, line in part] == lines[: len(got[0]) + len(got[1])]
    assert len(got[0]) > 500 and len(got[1]) > 500


def test_bad_crc_fails_in_the_last_slice_only(tmp_path: Path) -> None:
    """The trailer is read only by the last slice: it raises, the others read their lines."""
    lines = [b"line %d\n" % i for i in range(3000)]
    data = bytearray(gzip.compress(b"".join(lines), mtime=0))
    data[-8] ^= 1
    path = tmp_path / "results.json.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        reference(str(path))
    task = task_for(str(path), len(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 512)
        got, errors = slice_errors(task, 3)
    assert errors[:2] == [None, None]
    assert isinstance(errors[2], gzip.BadGzipFile)
    assert [line for part in got[:2] for _, line in part] == lines[: len(got[0]) + len(got[1])]


def test_unreadable_file_raises_in_every_slice(tmp_path: Path) -> None:
    task = task_for(str(tmp_path / "gone" / "results.json.gz"), 50 << 20)
    for piece in plan_slices(task, 2):
        with pytest.raises(FileNotFoundError):
            list(iter_slice_batches(piece, 10))


def test_a_file_shorter_than_planned_is_read_whole_by_the_first_slices(tmp_path: Path) -> None:
    """Boundaries come from the planned size; a file that shrank since planning is still
    read once: slices whose start lies past its end are empty."""
    text = b"".join(b"row %d\n" % i for i in range(100))
    path = tmp_path / "results.json"
    path.write_bytes(text)
    task = task_for(str(path), 4 * len(text))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 16)
        parts = read_slices(task, 4, 8)
    assert [pair for part in parts for pair in part] == reference(str(path))
    assert parts[2] == parts[3] == []


def test_plan_slices_gives_small_files_one_slice() -> None:
    base = task_for("/x/results.json.gz", 0)
    mib = slices.MIN_SLICE_BYTES
    for size, count, want in [
        (0, 4, 1),
        (mib - 1, 4, 1),
        (2 * mib - 1, 4, 1),
        (2 * mib, 4, 2),
        (10 * mib, 4, 4),
        (10 * mib, 1, 1),
        (10 * mib, 0, 1),
    ]:
        task = dataclasses.replace(base, size=size)
        plan = plan_slices(task, count)
        assert [(s.task, s.index, s.count) for s in plan] == [
            (task, i, want) for i in range(want)
        ], (size, count)


def test_invalid_slice_and_batch_size_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(b"a\n")
    task = task_for(str(path), 2)
    with pytest.raises(ValueError):
        list(iter_slice_batches(FileSlice(task, 2, 2), 10))
    with pytest.raises(ValueError):
        list(iter_slice_batches(FileSlice(task, 0, 1), 0))


@pytest.mark.parametrize("gz", [True, False])
def test_gs_objects_are_sliced_like_local_files(gcs_bucket: GcsBucket, gz: bool) -> None:
    lines = [
        b'{"n": %d, "pad": "%s"}\r\n' % (i, os.urandom(i % 300).hex().encode()) for i in range(5000)
    ]
    text = b"".join(lines) + b"no newline at the end"
    half = len(text) // 2
    data = gzip.compress(text[:half], mtime=0) + gzip.compress(text[half:], mtime=0) if gz else text
    key = f"scans/{SCAN}/results.json" + (".gz" if gz else "")
    gcs_bucket.put(key, data)
    url = gcs_bucket.url(key)
    info = storage.storage_for(url).stat(url)
    assert info is not None
    task = dataclasses.replace(task_for(url, info.size), version=info.version)
    want = reference(url)
    assert len(want) == 5001
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 64 << 10)
        for count in (1, 2, 3, 5):
            parts = read_slices(task, count, 700)
            assert [pair for part in parts for pair in part] == want, count
            assert all(parts), count  # every slice got lines


def test_later_slices_are_shorter_by_the_prefix_they_inflate() -> None:
    """Each slice's modelled work (its own chunks + SKIP_COST x the chunks before it)
    is the same to within a chunk; without a skip cost the file is cut evenly."""
    chunks = 10_000
    for n in range(1, 9):
        starts = [slices._edge(k, n, chunks) for k in range(n)] + [chunks]
        assert starts[0] == 0 and starts == sorted(starts)
        work = [b - a + slices.SKIP_COST * a for a, b in itertools.pairwise(starts)]
        assert max(work) - min(work) <= 2, (n, work)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "SKIP_COST", 0.0)
        assert [slices._edge(k, 4, 1000) for k in range(4)] == [0, 250, 500, 750]


def test_a_file_replaced_after_planning_fails_its_slices(tmp_path: Path) -> None:
    """Slices of one file must all read the planned version; one slice reads any."""
    path = tmp_path / "results.json"
    path.write_bytes(b"".join(b"old %d\n" % i for i in range(50)))
    info = storage.storage_for(str(path)).stat(str(path))
    assert info is not None
    task = dataclasses.replace(task_for(str(path), info.size), version=info.version)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 16)
        assert all(read_slices(task, 2, 10))  # unchanged: fine
    replacement = tmp_path / "new.json"
    # Another size: the local version is size:mtime_ns, and mtimes come from a coarse clock.
    replacement.write_bytes(b"".join(b"new! %d\n" % i for i in range(50)))
    os.replace(replacement, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 16)  # both slices have lines to read
        for index in range(2):
            with pytest.raises(slices.FileChanged, match="changed since its slices were planned"):
                list(iter_slice_batches(FileSlice(task, index, 2), 10))
    assert read_slices(task, 1, 10)[0][0] == (1, b"new! 0\n")


def test_a_gs_object_rewritten_after_planning_fails_its_slices(gcs_bucket: GcsBucket) -> None:
    key = f"scans/{SCAN}/results.json.gz"
    gcs_bucket.put(key, gzip.compress(b"".join(b"a %d\n" % i for i in range(500)), mtime=0))
    url = gcs_bucket.url(key)
    info = storage.storage_for(url).stat(url)
    assert info is not None
    task = dataclasses.replace(task_for(url, info.size), version=info.version)
    gcs_bucket.put(key, gzip.compress(b"".join(b"b %d\n" % i for i in range(500)), mtime=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 64)
        for index in range(2):
            with pytest.raises(slices.FileChanged):
                list(iter_slice_batches(FileSlice(task, index, 2), 100))


class _CountingReader(io.RawIOBase):
    """A stored file that counts the bytes read from it and can fail after some."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.fail_after = fail_after

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise OSError("disk gone")
        end = len(self.data) if size < 0 else self.pos + size
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "slice-read-ahead"]


def test_read_ahead_stays_a_bounded_distance_ahead_and_stops_when_closed() -> None:
    """The background reader holds at most READ_AHEAD chunks the parser has not taken
    (memory per slice stays bounded on a huge file) and is gone once closed early."""
    raw = _CountingReader(b"x" * (slices.READ_CHUNK * (slices.READ_AHEAD + 20)))
    ahead = slices._ReadAhead(raw)
    chunks = iter(ahead)
    assert next(chunks) == b"x" * slices.READ_CHUNK
    deadline = time.monotonic() + 5
    while raw.pos < (slices.READ_AHEAD + 1) * slices.READ_CHUNK and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # would read on if it were unbounded
    # taken: 1; queued: READ_AHEAD; one more read and waiting to be queued
    assert raw.pos <= (slices.READ_AHEAD + 2) * slices.READ_CHUNK
    ahead.close()
    assert not _read_ahead_threads()


def test_a_read_error_reaches_the_slice_after_the_lines_before_it(tmp_path: Path) -> None:
    """A storage error raised in the read-ahead thread surfaces in the slice, after the
    batches of the complete lines read before it, and no reader thread is left."""
    lines = [f"{i:05d}".encode() * 40 + b"\n" for i in range(4000)]
    text = b"".join(lines)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 4096)
        fail_at = 10 * 4096
        mp.setattr(
            storage.LocalStorage,
            "open_read",
            lambda self, url: contextlib.closing(_CountingReader(text, fail_after=fail_at)),
        )
        task = task_for(str(tmp_path / "results.json"), len(text))
        got: list[bytes] = []
        with pytest.raises(OSError, match="disk gone"):
            for _, batch in iter_slice_batches(FileSlice(task, 0, 1), 7):
                got.extend(batch)
    assert got == lines[: len(got)]
    assert sum(map(len, got)) >= fail_at - len(lines[0])
    assert not _read_ahead_threads()


def test_a_slice_that_ends_early_leaves_no_reader_thread(tmp_path: Path) -> None:
    """Slice 1 of 3 stops long before the file ends; its read-ahead thread ends with it."""
    lines = [os.urandom(n % 500 + 1).hex().encode() + b"\n" for n in range(12000)]
    path = tmp_path / "results.json"
    path.write_bytes(b"".join(lines))
    task = task_for(str(path), path.stat().st_size)
    first = list(iter_slice_batches(FileSlice(task, 0, 3), 100))
    assert first and sum(len(b) for _, b in first) < len(lines) / 2
    assert not _read_ahead_threads()


# -- pieces claimed on demand -----------------------------------------------------------


def read_streams(
    task: FileTask, count: int, starts: list[int], batch_lines: int, jumps: random.Random | None
) -> list[tuple[list[int], Numbered]]:
    """One stream per start piece (all starts claimed first, as by other workers), run
    one after the other; with ``jumps``, a refused stream skips ahead to a random later
    unclaimed piece half of the time. Each stream's pieces and numbered lines."""
    claimed = set(starts)
    edges, _end, _skip = slices._work_layout(task, count)
    out = []
    for start in starts:
        held = [start]

        def claim(piece: int, held: list[int] = held) -> bool:
            if piece in claimed:
                return False
            claimed.add(piece)
            held.append(piece)
            return True

        def jump(pos: float, held: list[int] = held) -> int | None:
            later = [k for k in range(count) if k not in claimed and edges[k] > pos]
            if jumps is None or not later or jumps.random() < 0.5:
                return None
            piece = jumps.choice(later)
            claimed.add(piece)
            held.append(piece)
            return piece

        got: Numbered = []
        batches = list(slices.iter_stream_batches(task, count, start, claim, batch_lines, jump))
        for n, (first, lines) in enumerate(batches):
            assert lines and len(lines) <= batch_lines
            if jumps is None:
                assert len(lines) == batch_lines or n == len(batches) - 1
            got.extend(enumerate(lines, start=first))
        out.append((held, got))
    assert claimed == set(range(count))  # every piece taken by some stream
    return out


# The arguments of check_streams: pieces, extra start pieces, their order (and the
# random skips ahead), chunk sizes and batch lines.
STREAM_DRAWS = {
    "count": st.integers(1, 9),
    "starts": st.sets(st.integers(1, 8), max_size=4),
    "order": st.randoms(),
    "jumps": st.booleans(),
    "sizes": st.tuples(st.integers(1, 64), st.integers(1, 64), st.integers(1, 7)),
}


@SMALL
@given(
    text=text_st,
    gz=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=3),
    draws=st.fixed_dictionaries(STREAM_DRAWS),
)
def test_streams_over_claimed_pieces_give_exactly_the_files_numbered_lines(
    tmp_path: Path, text: bytes, gz: bool, cuts: list[int], draws: dict[str, Any]
) -> None:
    """Streams starting at any pieces, run in any order, skipping ahead to any later
    pieces, give every line once with its number, and each stream exactly the lines of
    the pieces it went through."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        path = Path(folder) / ("results.json.gz" if gz else "results.json")
        path.write_bytes(gzip_members(text, cuts, [1, 6], [0]) if gz else text)
        task = task_for(str(path), path.stat().st_size)
        check_streams(task, **draws)


def check_streams(
    task: FileTask,
    count: int,
    starts: set[int],
    order: random.Random,
    jumps: bool,
    sizes: tuple[int, int, int],
) -> list[Numbered]:
    """Streams from piece 0 and ``starts`` (in ``order``'s shuffle, skipping ahead at
    random with ``jumps``) give every line of the file once with its number, and each
    stream exactly the lines of the pieces it went through. ``sizes``: READ_CHUNK,
    OUT_CHUNK and the batch lines. Returns each piece's numbered lines."""
    read_chunk, out_chunk, batch_lines = sizes
    want = reference(task.url)
    shuffled = sorted({0} | {s for s in starts if s < count})
    order.shuffle(shuffled)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", read_chunk)
        mp.setattr(slices, "OUT_CHUNK", out_chunk)
        streams = read_streams(task, count, shuffled, batch_lines, order if jumps else None)
        pieces = read_slices(task, count, 1)
    assert sorted(pair for _, got in streams for pair in got) == want
    for held, got in streams:
        assert got == [pair for k in sorted(held) for pair in pieces[k]]
    return pieces


def test_two_workers_claiming_on_demand_share_a_file_and_end_together(tmp_path: Path) -> None:
    """Two threads taking pieces from one ClaimBoard (as two worker processes do): every
    line once; the one that runs out of work takes the later part of the other's."""
    lines = [os.urandom(n % 900 + 1).hex().encode() + b"\n" for n in range(9000)]
    path = tmp_path / "results.json.gz"
    path.write_bytes(gzip.compress(b"".join(lines), compresslevel=1, mtime=0))
    task = task_for(str(path), path.stat().st_size)
    count = 8
    board = slices.ClaimBoard(str(tmp_path / "claims"), [(task, count)])
    got: dict[str, list[tuple[int, int, Numbered]]] = {"slow": [], "fast": []}
    helds: list[list[int]] = []

    def worker(name: str, pause: float) -> None:
        while (nxt := board.next_start()) is not None:
            _task, n, start = nxt
            if not board.claim(task, start):
                continue
            held = [start]

            def claim(piece: int, held: list[int] = held) -> bool:
                ok = board.claim(task, piece)
                if ok:
                    held.append(piece)
                return ok

            def jump(pos: int, held: list[int] = held, n: int = n) -> int | None:
                piece = board.jump(task, n, pos)
                if piece is not None:
                    held.append(piece)
                return piece

            stream: Numbered = []
            for first, batch in slices.iter_stream_batches(task, n, start, claim, 200, jump):
                stream.extend(enumerate(batch, start=first))
                time.sleep(pause)
            board.mark_done(task, held)
            got[name].append((start, len(held), stream))
            helds.append(held)

    threads = [
        threading.Thread(target=worker, args=("slow", 0.02)),
        threading.Thread(target=worker, args=("fast", 0.0)),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "READ_CHUNK", 1 << 16)  # 70 chunks: room to split the tail
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    streams = got["slow"] + got["fast"]
    assert sorted(pair for _, _, s in streams for pair in s) == list(enumerate(lines, start=1))
    assert board.missing(task, count) == []
    assert sum(n for _, n, _ in streams) == count  # each piece in exactly one stream
    assert got["fast"] and got["slow"]
    # The fast worker did not leave the slow one alone with a long tail: it also took
    # pieces after a start of the slow one's (a new stream or a skip ahead).
    runs = sum(1 + sum(b != a + 1 for a, b in itertools.pairwise(sorted(held))) for held in helds)
    assert runs >= 3
