"""Input files as slices of consecutive lines: the unit of work of the local runner.

A large file is cut into ``count`` slices so several worker processes parse it at once;
every line belongs to exactly one slice and keeps its 1-based line number in the file.

How a file is cut (the same rule for plain and gzip files, local or ``gs://``):

* The stored bytes are read in :data:`READ_CHUNK`-sized chunks. Slice ``k`` of ``n``
  starts at the *edge* ``e_k`` (a chunk count, from the planned size alone, see
  :func:`_edge`); its *start offset* ``s_k`` is the number of text bytes produced once
  the first ``e_k`` chunks have been read (plain: ``e_k * READ_CHUNK``; gzip: what
  inflating exactly those chunks gave). ``s_0 = 0`` and the last slice runs to the end
  of the file.
* A line belongs to slice ``k`` when it *starts* in ``[s_k, s_(k+1))``: a slice starts at
  the first line beginning at or after ``s_k`` and ends with the line that contains byte
  ``s_(k+1) - 1``. Its line numbers come from counting the newlines before it.
* Every slice reads the file from its first byte (gzip cannot be entered in the middle,
  and the line numbers need the newlines before the slice), so slices ``k - 1`` and
  ``k`` feed the same inflater the same chunks up to ``e_k`` and agree on ``s_k`` with
  no coordination: the cut depends only on the bytes, the planned size and the chunk
  size, never on timing. Each slice stops after its last line, so the work of slice
  ``k`` is inflating its prefix (cheap, :mod:`isal`) plus parsing its own lines.
* Concatenated gzip members are read one after another (zero padding between members
  is skipped, as :mod:`gzip` does); the ISIZE trailer (size mod 2**32) is not used.

A gzip file with an index (what ``services.untar`` writes, :mod:`services.common.gzindex`;
the planner attaches it to the task, :func:`with_index`) is cut at its members instead:
piece ``k`` of ``n`` is the members from the first one starting at or after ``k / n`` of
the stored data (:func:`piece_members`) up to the next piece's, a stream seeks to its
first member and numbers lines from the index's counts, and every member read is
checked against the index (:class:`_Members`), so the lines and numbers are those of
reading the file from its start.

Errors: a slice raises when the bytes it reads are bad, after yielding the batches of
the complete lines before that point. A gzip file truncated or corrupt at some point
fails in every slice that reads past it, and always in the **last** slice (it reads to
the end and checks each member's CRC and length), so a file with any fault fails in at
least one slice: the caller must reject the file when any of its slices raised.

Example:
    >>> from services.beam_launcher.hyperquack.processing import FileTask
    >>> task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> [(s.index, s.count) for s in plan_slices(task, 2)]
    [(0, 1)]
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import gzip
import io
import itertools
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, cast

from isal import igzip_lib

from services.beam_launcher.hyperquack.processing import FileTask
from services.common import storage
from services.common.gzindex import BadIndex, GzIndex, read_index
from services.common.logsetup import get_logger

# Stored bytes read per step; slice boundaries fall on multiples of it. Inflating 1 MiB
# steps runs at the same speed as 4 MiB ones (isal, measured on the 44 MB test scan).
READ_CHUNK = 1 << 20
# At most this many text bytes per inflate call, so memory stays flat however well a
# chunk compresses. 1 MiB blocks stay in cache for the line split that follows: a 259 MB
# scan reads in 0.27 s of CPU, against 0.45 s with 8 MiB blocks.
OUT_CHUNK = 1 << 20
# A file gets one slice per MIN_SLICE_BYTES of stored size (at most ``count``). 16 MiB of
# gzip is ~38k HTTP lines, seconds of one core's work; a split costs the later slice
# ~7 ms of CPU per MiB it skips (114 vs 227 ms to read the two halves of a 33 MiB scan)
# and each slice writes its own Parquet files, so smaller slices gain little and
# multiply files.
MIN_SLICE_BYTES = 16 << 20
# Inflating and counting the lines of a stored byte a slice skips costs about this share
# of processing it (read, parse, enrich, write): for the 1M-line HTTP bench scan (415 MiB,
# gzip level 1) 2.5-2.7 CPU-s against ~21.5 CPU-s for the workers' processing (a run's
# 24.4-25.1 CPU-s less ~2 of launcher and ~1.3 of skipping), 2026-12-04. Files with a
# gzip index skip nothing (_work_layout).
SKIP_COST = 0.12
# Stored chunks read ahead of the parser by a background thread (:class:`_ReadAhead`):
# 8 MiB per slice, so a page-cache miss is read while earlier chunks are parsed.
READ_AHEAD = 8

# isal's stubs declare its exception class as an instance.
_INFLATE_ERROR = cast(type[Exception], igzip_lib.IsalError)
_EDGE = None  # marks, in the text stream, the end of one READ_CHUNK of stored bytes


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Slice ``index`` of ``count`` of one input file."""

    task: FileTask
    index: int
    count: int


def plan_slices(task: FileTask, count: int) -> list[FileSlice]:
    """The slices of ``task`` when up to ``count`` workers may share it.

    One slice per :data:`MIN_SLICE_BYTES` of the file's stored size, at most ``count``;
    small files (and unknown sizes, ``size == 0``) get one slice.
    """
    n = max(1, min(count, task.size // MIN_SLICE_BYTES))
    return [FileSlice(task, i, n) for i in range(n)]


def _edge(k: int, n: int, chunks: int) -> int:
    """Where slice ``k`` of ``n`` starts, in chunks: equal work per slice.

    Slice ``k`` also inflates the ``k`` slices before it, at :data:`SKIP_COST` of the
    cost of processing them, so later slices are made shorter: with ``q = 1 - SKIP_COST``
    the start is ``(1 - q**k) / (1 - q**n)`` of the file (``k / n`` when skipping is free).
    """
    if SKIP_COST <= 0:
        return k * chunks // n
    q = 1.0 - SKIP_COST
    return min(chunks, int(chunks * (1.0 - q**k) / (1.0 - q**n)))


def _edges(piece: FileSlice) -> tuple[int, int | None]:
    """The slice's start and end edges in chunks (``None``: the end of the file)."""
    k, n = piece.index, piece.count
    if not 0 <= k < n:
        raise ValueError(f"slice {k} of {n}")
    chunks = -(-piece.task.size // READ_CHUNK)
    return _edge(k, n, chunks), None if k == n - 1 else _edge(k + 1, n, chunks)


def _read_exact(raw: IO[bytes], n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the file (a read may return less)."""
    data = raw.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    have = len(data)
    while have < n:
        more = raw.read(n - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)


class _ReadAhead:
    """The stored chunks of ``raw`` (:data:`READ_CHUNK` bytes, the last one fewer), read
    by a background thread up to :data:`READ_AHEAD` chunks ahead of the consumer.

    A read that has to wait (input pages not in the page cache, a ``gs://`` round trip)
    then overlaps the parsing of earlier chunks instead of stalling it. Seen on the shared
    2-core machine: in three 1M-line runs without read-ahead the workers' parsing threads
    were blocked in such reads (kernel ``filemap_read`` waiting for pages), at most 29%
    of one worker's samples (6% for the other worker of that run); with read-ahead, none
    in two runs. The stall depends on what else uses the disk: without read-ahead two runs
    on an evicted input (one with a competing O_DIRECT reader) did not stall. A read error is raised
    to the consumer at the chunk where it happened. :meth:`close` stops the thread and
    waits for it (before ``raw`` is closed).
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="slice-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            while chunk := _read_exact(self._raw, READ_CHUNK):
                if not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(b"")

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item

    def close(self) -> None:
        """Stop reading ahead; returns once the thread no longer touches ``raw``."""
        self._stop.set()
        self._thread.join()


def _plain_stream(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    for chunk in chunks:
        yield chunk
        yield _EDGE


def _gzip_stream(chunks: Iterable[bytes], url: str) -> Iterator[bytes | None]:
    """Inflate every member; after each stored chunk has been fully inflated, ``_EDGE``."""
    inflater: igzip_lib.IgzipDecompressor | None = None
    members = 0
    try:
        for chunk in chunks:
            data = chunk
            while data:
                if inflater is None:
                    if members:
                        # Zero padding after a member is allowed, as in the gzip module.
                        data = data.lstrip(b"\0")
                        if not data:
                            break
                    inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
                out = inflater.decompress(data, OUT_CHUNK)
                if out:
                    yield out
                while not inflater.eof and not inflater.needs_input:
                    out = inflater.decompress(b"", OUT_CHUNK)
                    if out:
                        yield out
                if not inflater.eof:
                    break
                data = inflater.unused_data
                inflater = None
                members += 1
            yield _EDGE
    except _INFLATE_ERROR as exc:
        raise gzip.BadGzipFile(f"{url}: corrupt gzip data: {exc}") from exc
    if inflater is not None:
        raise EOFError(f"{url}: compressed file ended before the end-of-stream marker")


class FileChanged(OSError):
    """The file is not the version its slices were planned on."""


def _text_stream(piece: FileSlice) -> Generator[bytes | None, None, None]:
    """The file's text (gunzipped ``*.gz``) in blocks, with ``_EDGE`` after each chunk.

    A file cut into several slices must be the planned version (``task.version``) in
    each of them, or the slices would cut two different files: checked once opened (a
    change after that point fails the read, or is caught as a false alarm).
    """
    url = piece.task.url
    st = storage.storage_for(url)
    with st.open_read(url) as raw:
        _check_version(piece.task, piece.count, st)
        chunks = _ReadAhead(raw)
        try:
            if url.endswith(".gz"):
                yield from _gzip_stream(chunks, url)
            else:
                yield from _plain_stream(chunks)
        finally:
            chunks.close()


def _slice_lines(
    piece: FileSlice, stream: Iterator[bytes | None]
) -> Iterator[tuple[int, list[bytes]]]:
    """``(line number of the first, complete lines)`` runs of the slice, in order."""
    start, end = _edges(piece)
    edges = 0
    newlines = 0  # before the current position
    last = b"\n"  # the byte before the current position ("\n" at the file's start)
    # 1. Up to the start edge: count newlines only.
    if start > 0:
        for block in stream:
            if block is _EDGE:
                edges += 1
                if edges == start:
                    break
                continue
            newlines += block.count(b"\n")
            last = block[-1:]
        else:
            return  # the file ends before this slice's start: nothing in it
    # 2. A line that crosses the start offset belongs to the slice before.
    pending = b""
    if last != b"\n":
        for block in stream:
            if block is _EDGE:
                edges += 1
                continue
            cut = block.find(b"\n")
            if cut >= 0:
                newlines += 1
                pending = block[cut + 1 :]
                break
        else:
            return
    if end is not None and edges >= end:
        return  # no line starts in [start, end)
    # 3. Whole lines, until the end edge has passed; then finish the line it cut.
    line_no = newlines + 1
    carry: list[bytes] = []
    blocks: Iterator[bytes | None] = stream
    if pending:
        blocks = _prepend(pending, stream)
    for block in blocks:
        if block is _EDGE:
            edges += 1
            if edges == end:
                break
            continue
        cut = block.find(b"\n")
        if cut < 0:
            carry.append(block)
            continue
        head = block[: cut + 1]
        if carry:
            carry.append(head)
            head = b"".join(carry)
        rest = io.BytesIO(block)
        rest.seek(cut + 1)
        lines = rest.readlines()
        carry = [lines.pop()] if lines and not lines[-1].endswith(b"\n") else []
        lines.insert(0, head)
        yield line_no, lines
        line_no += len(lines)
    else:
        if carry:
            yield line_no, [b"".join(carry)]  # the last line, without a line end
        return
    if not carry:
        return
    for block in blocks:
        if block is _EDGE:
            continue
        cut = block.find(b"\n")
        if cut >= 0:
            carry.append(block[: cut + 1])
            break
        carry.append(block)
    yield line_no, [b"".join(carry)]


def _prepend(first: bytes, rest: Iterator[bytes | None]) -> Iterator[bytes | None]:
    yield first
    yield from rest


def iter_slice_batches(piece: FileSlice, batch_lines: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` batches of the slice's lines, line ends kept.

    Batches hold ``batch_lines`` lines (the last one fewer). Raises what reading the file
    raises (storage errors; :class:`gzip.BadGzipFile` or :class:`EOFError` for a corrupt
    or truncated gzip file; :class:`FileChanged`) once the batches of the complete lines
    read before that point have been yielded.
    """
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be positive, not {batch_lines}")
    if piece.task.gz_index is not None and piece.count > 1:  # the piece of that number
        yield from iter_stream_batches(
            piece.task, piece.count, piece.index, lambda _k: False, batch_lines
        )
        return
    with contextlib.closing(_text_stream(piece)) as stream:
        yield from _batched(_slice_lines(piece, stream), batch_lines)


def _batched(
    numbered: Iterable[tuple[int, list[bytes]]], batch_lines: int
) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` batches of ``batch_lines`` consecutive lines from
    ``(line number, lines)`` runs; a gap in the numbers ends a batch early. On an error
    from ``numbered``, the lines gathered so far are yielded before it is raised."""
    batch: list[bytes] = []
    first = 1
    try:
        for line_no, lines in numbered:
            if batch and line_no != first + len(batch):  # jumped: not consecutive
                yield first, batch
                batch = []
            if not batch:
                first = line_no
            batch.extend(lines)
            while len(batch) >= batch_lines:
                yield first, batch[:batch_lines]
                del batch[:batch_lines]
                first += batch_lines
    except Exception:
        if batch:
            yield first, batch
        raise
    if batch:
        yield first, batch


# -- pieces claimed on demand: one stream runs through consecutive pieces ---------------

# A file shared by worker processes is cut into up to MAX_PIECES pieces (at least
# MIN_PIECE_BYTES of stored file each; the same cut as FileSlice(task, k, count)). A
# worker streams from one piece on through the next ones while it can claim them, so it
# inflates the file's prefix once per stream, not once per piece; a worker with nothing
# left starts a new stream in the later part of another's unclaimed pieces (see
# ClaimBoard.next_start). The pieces near the end are the smallest (_edge), so the
# workers end close together.
MAX_PIECES = 32
MIN_PIECE_BYTES = 4 << 20


def plan_pieces(task: FileTask, workers: int, piece_bytes: int | None = None) -> int:
    """How many pieces ``task`` is cut into when ``workers`` processes may share it.

    One piece per :data:`MIN_PIECE_BYTES` (or ``piece_bytes``) of stored size, at most
    :data:`MAX_PIECES`; one with a single worker, for small files and unknown sizes.

    >>> from services.beam_launcher.hyperquack.processing import FileTask
    >>> t = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> plan_pieces(t, 2), plan_pieces(t, 1)
    (1, 1)
    """
    if workers <= 1:
        return 1
    step = MIN_PIECE_BYTES if piece_bytes is None else max(1, piece_bytes)
    most = MAX_PIECES if task.gz_index is None else min(MAX_PIECES, len(task.gz_index.members))
    return max(1, min(most, task.size // step))


def with_index(task: FileTask) -> FileTask:
    """``task`` with its gzip index (:mod:`services.common.gzindex`), or as it is when
    the file has none. An index that cannot be read or does not fit the file is logged
    (``gz_index_unusable``) and not used: the file is then read from its start as any
    gzip file, so nothing is lost."""
    if task.gz_index is not None or not task.url.endswith(".gz") or task.size <= 0:
        return task
    try:
        index = read_index(task.url, task.size)
    except (BadIndex, OSError) as exc:
        get_logger("beam_launcher").warning(
            "gz_index_unusable", file=task.url, reason=f"{type(exc).__name__}: {exc}"
        )
        return task
    return task if index is None else dataclasses.replace(task, gz_index=index)


def piece_starts(task: FileTask, count: int) -> list[int]:
    """Where each of the ``count`` pieces of ``task`` starts, in stored chunks (a file
    without a gzip index)."""
    chunks = -(-task.size // READ_CHUNK)
    return [_edge(k, count, chunks) for k in range(count)]


def piece_members(index: GzIndex, count: int) -> list[int]:
    """The member each of ``count`` pieces of an indexed file starts at: piece ``k`` at
    the first member starting at or after ``k / count`` of the data (pieces of equal
    stored size as near as members allow; one that holds no member is empty).

    >>> from services.common.gzindex import Member
    >>> ms = tuple(Member(i * 10, i * 10 + 10, i, 1) for i in range(5))
    >>> piece_members(GzIndex(ms), 2), piece_members(GzIndex(ms[:1]), 2)
    ([0, 3], [0, 1])
    """
    starts = [m.start for m in index.members]
    end = index.data_end
    return [bisect.bisect_left(starts, -(-k * end // count)) for k in range(count)]


def _work_layout(task: FileTask, count: int) -> tuple[list[float], float, float]:
    """``(piece starts, end, skip cost)`` of ``task`` in stored chunks, for planning: a
    stream entering an indexed file skips nothing (cost 0), else :data:`SKIP_COST` per
    chunk before its start."""
    index = task.gz_index
    if index is None or count == 1:
        return list(map(float, piece_starts(task, count))), -(-task.size // READ_CHUNK), SKIP_COST
    firsts = piece_members(index, count)
    starts = [
        (index.members[j].start if j < len(index.members) else index.data_end) / READ_CHUNK
        for j in firsts
    ]
    return starts, index.data_end / READ_CHUNK, 0.0


class _Reach:
    """A stream's claims: it holds the pieces up to ``held``; ``reach(k)`` claims the
    pieces after that up to ``k`` in order and says whether all were granted."""

    def __init__(self, claim: Callable[[int], bool], held: int) -> None:
        self.claim = claim
        self.held = held

    def __call__(self, piece: int) -> bool:
        while self.held < piece:
            if not self.claim(self.held + 1):
                return False
            self.held += 1
        return True


def _stream_lines(
    task: FileTask,
    count: int,
    start: int,
    stream: Iterator[bytes | None],
    claim: Callable[[int], bool],
    jump: Callable[[int], int | None] | None = None,
) -> Iterator[tuple[int, list[bytes]]]:
    """``(line number of the first, complete lines)`` of pieces ``start``, ``start + 1``…

    A line belongs to the piece it starts in (the rule of :func:`_slice_lines`). Before
    the first line of a later piece, that piece (and any empty one before it) must be
    granted by ``claim``. At the first piece refused, ``jump(chunks read so far)`` may
    name a later piece it has claimed: the stream skips ahead to it (counting newlines,
    as before its start) and goes on from there; else the stream ends. At the end of the
    file it claims the (empty) pieces left.
    """
    starts = piece_starts(task, count)
    reach = _Reach(claim, start)
    edges = 0
    newlines = 0
    last = b"\n"
    pending = b""  # text at the current position, not yet looked at
    target = start
    while True:
        # 1. Up to the target's start edge: count newlines only.
        if edges < starts[target]:
            if pending:
                newlines += pending.count(b"\n")
                last = pending[-1:]
                pending = b""
            for block in stream:
                if block is _EDGE:
                    edges += 1
                    if edges == starts[target]:
                        break
                    continue
                newlines += block.count(b"\n")
                last = block[-1:]
            else:
                reach(count - 1)
                return
        # 2. A line that crosses the start offset belongs to the piece before.
        if last != b"\n":
            for block in stream:
                if block is _EDGE:
                    edges += 1
                    continue
                cut = block.find(b"\n")
                if cut >= 0:
                    newlines += 1
                    pending = block[cut + 1 :]
                    break
            else:
                reach(count - 1)
                return
        # 3. Whole lines; each block's lines start in the piece its position is in.
        line_no = newlines + 1
        carry: list[bytes] = []
        # chain, not _prepend: a generator left suspended in ``yield from`` would close
        # ``stream`` when it is dropped at a skip ahead.
        blocks: Iterator[bytes | None] = itertools.chain([pending], stream) if pending else stream
        pending = b""
        refused = False
        for block in blocks:
            if block is _EDGE:
                edges += 1
                continue
            out: list[bytes] = []
            pos = 0
            if carry:
                cut = block.find(b"\n")
                if cut < 0:
                    carry.append(block)
                    continue
                carry.append(block[: cut + 1])
                out.append(b"".join(carry))
                carry = []
                pos = cut + 1
            if pos < len(block):
                if not reach(bisect.bisect_right(starts, edges) - 1):
                    pending = block[pos:]  # starts a line of a piece another stream has
                    refused = True
                more = [] if refused else io.BytesIO(block[pos:]).readlines()
                if more and not more[-1].endswith(b"\n"):
                    carry = [more.pop()]
                out += more
            if out:
                yield line_no, out
                line_no += len(out)
            if refused:
                break
        if not refused:
            if carry:
                yield line_no, [b"".join(carry)]  # the last line, without a line end
            reach(count - 1)
            return
        nxt = jump(edges) if jump is not None else None
        if nxt is None:
            return
        newlines, last, target, reach.held = line_no - 1, b"\n", nxt, nxt


class _Members:
    """Reads the data members of an indexed gzip file from any member on, checking each
    one against the index: it must inflate to exactly its stored bytes (CRC and length
    checked), hold the index's number of lines and, unless it is the last, end with a
    line end. A file that does not match fails where it differs, as a corrupt one does.
    """

    def __init__(self, raw: IO[bytes], url: str, index: GzIndex) -> None:
        self._raw = raw
        self._url = url
        self._index = index
        self._ahead: _ReadAhead | None = None
        self._chunks: Iterator[bytes] = iter(())
        self._buf = b""
        self._pos = -1  # stored offset of self._buf's first byte; -1: not positioned

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def _seek(self, offset: int) -> None:
        self.close()
        self._raw.seek(offset)  # local files and gs:// readers seek
        self._ahead = _ReadAhead(self._raw)
        self._chunks = iter(self._ahead)
        self._buf = b""
        self._pos = offset

    def lines(self, j: int) -> Iterator[tuple[int, list[bytes]]]:
        """``(line number of the first, lines)`` runs of member ``j``, in order."""
        member = self._index.members[j]
        if self._pos != member.start:
            self._seek(member.start)
        last = j == len(self._index.members) - 1
        inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        line_no = member.lines_before + 1
        carry: list[bytes] = []
        try:
            while not inflater.eof:
                data = self._buf
                if not data:
                    data = next(self._chunks, b"")
                    if not data:
                        raise EOFError(f"{self._url}: ends inside member {j} of its index")
                fed = len(data)
                self._buf = b""
                out = inflater.decompress(data, OUT_CHUNK)
                while True:
                    if out:
                        more = io.BytesIO(out).readlines()
                        tail = None if more[-1].endswith(b"\n") else more.pop()
                        if more:
                            if carry:  # the line begun in earlier blocks ends here
                                carry.append(more[0])
                                more[0] = b"".join(carry)
                                carry = []
                            yield line_no, more
                            line_no += len(more)
                        if tail is not None:  # joined once its line end arrives
                            carry.append(tail)
                    if inflater.eof or inflater.needs_input:
                        break
                    out = inflater.decompress(b"", OUT_CHUNK)
                if inflater.eof:
                    self._buf = inflater.unused_data
                    self._pos += fed - len(self._buf)
                else:
                    self._pos += fed
        except _INFLATE_ERROR as exc:
            raise gzip.BadGzipFile(f"{self._url}: corrupt gzip data: {exc}") from exc
        if self._pos != member.end:
            raise gzip.BadGzipFile(
                f"{self._url}: member {j} ends at {self._pos}, its index says {member.end}"
            )
        if carry and not last:
            raise gzip.BadGzipFile(f"{self._url}: member {j} ends inside a line")
        if carry:
            yield line_no, [b"".join(carry)]  # the last line, without a line end
            line_no += 1
        if line_no - 1 - member.lines_before != member.lines:
            raise gzip.BadGzipFile(
                f"{self._url}: member {j} holds {line_no - 1 - member.lines_before} lines, "
                f"its index says {member.lines}"
            )


def _indexed_lines(
    task: FileTask,
    index: GzIndex,
    count: int,
    start: int,
    claim: Callable[[int], bool],
    jump: Callable[[float], int | None] | None = None,
) -> Generator[tuple[int, list[bytes]], None, None]:
    """:func:`_stream_lines` for a file with a gzip index: piece ``k`` is the members
    from ``piece_members(index, count)[k]`` on; a stream reads from its piece's first
    member (no prefix to inflate) and skips ahead by seeking."""
    firsts = piece_members(index, count)
    reach = _Reach(claim, start)
    url = task.url
    st = storage.storage_for(url)
    with st.open_read(url) as raw:
        _check_version(task, count, st)
        members = _Members(raw, url, index)
        try:
            j = firsts[start]
            while j < len(index.members):
                if not reach(bisect.bisect_right(firsts, j) - 1):
                    nxt = jump(index.members[j].start / READ_CHUNK) if jump is not None else None
                    if nxt is None:
                        return
                    reach.held, j = nxt, firsts[nxt]
                    continue
                yield from members.lines(j)
                j += 1
            reach(count - 1)
        finally:
            members.close()


def _check_version(task: FileTask, count: int, st: storage.Storage) -> None:
    """A file cut into several pieces must be the planned version (``task.version``) in
    each of them, or they would cut two different files."""
    if count > 1 and task.version is not None:
        info = st.stat(task.url)
        have = None if info is None else info.version
        if have != task.version:
            raise FileChanged(
                f"{task.url} changed since its slices were planned: {task.version} -> {have}"
            )


def iter_stream_batches(
    task: FileTask,
    count: int,
    start: int,
    claim: Callable[[int], bool],
    batch_lines: int,
    jump: Callable[[float], int | None] | None = None,
) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` batches of pieces ``start``… of ``task`` cut into
    ``count`` pieces, for as long as ``claim(k)`` grants each next piece ``k`` (piece
    ``start`` is the caller's already); at a refused piece, ``jump`` may send the stream
    on to a later piece (:func:`_stream_lines`). A batch holds consecutive lines only.
    Lines and errors as :func:`iter_slice_batches`; the lines of piece ``k`` are exactly
    those of ``FileSlice(task, k, count)``.
    """
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be positive, not {batch_lines}")
    if not 0 <= start < count:
        raise ValueError(f"piece {start} of {count}")
    if task.gz_index is not None and count > 1:
        lines = _indexed_lines(task, task.gz_index, count, start, claim, jump)
        with contextlib.closing(lines):
            yield from _batched(lines, batch_lines)
        return
    with contextlib.closing(_text_stream(FileSlice(task, start, count))) as stream:
        yield from _batched(_stream_lines(task, count, start, stream, claim, jump), batch_lines)


class ClaimBoard:
    """Which pieces of a run's files are taken: one empty file ``<folder>/<key>/<k>`` per
    claimed piece, created with ``O_EXCL`` (so exactly one process gets each), and
    ``<k>.done`` once the piece's rows are written. Local folders only (the local runner's
    worker processes share the machine).
    """

    def __init__(self, folder: str, plan: list[tuple[FileTask, int]]) -> None:
        self.folder = folder
        self.plan = plan

    def _dir(self, task: FileTask) -> str:
        return os.path.join(self.folder, task.file_key.replace("/", "__"))

    def claim(self, task: FileTask, piece: int) -> bool:
        """Take ``piece`` of ``task``; False when another stream has it."""
        folder = self._dir(task)
        os.makedirs(folder, exist_ok=True)
        try:
            os.close(os.open(os.path.join(folder, str(piece)), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def mark_done(self, task: FileTask, pieces: Iterable[int]) -> None:
        """Record that the rows of ``pieces`` (claimed by the caller) are written."""
        for piece in pieces:
            with open(os.path.join(self._dir(task), f"{piece}.done"), "wb"):
                pass

    def _names(self, task: FileTask) -> set[str]:
        try:
            return set(os.listdir(self._dir(task)))
        except FileNotFoundError:
            return set()

    def missing(self, task: FileTask, count: int) -> list[int]:
        """Pieces of ``task`` whose rows are not (yet) recorded as written."""
        names = self._names(task)
        return [k for k in range(count) if f"{k}.done" not in names]

    def _best_split(
        self, task: FileTask, count: int, taken: set[int], pos: float | None
    ) -> tuple[float, int] | None:
        """``(gain, x)``: the piece ``x`` where a stream that has read ``pos`` stored chunks
        of ``task`` (None: a new stream, from the file's start) should take over the
        unclaimed pieces ``[x, b)`` of a run ``[a, b)`` another stream will reach: both
        then end at the same time, counting the skipping (:data:`SKIP_COST` per chunk)
        it must do first. ``gain``: how much sooner than that stream alone, in chunks of
        work; at least one, or None.
        """
        starts, end, skip_cost = _work_layout(task, count)
        here = 0.0 if pos is None else pos
        best: tuple[float, int] | None = None
        k = 0
        while k < count:
            if k in taken:
                k += 1
                continue
            a = k
            while k < count and k not in taken:
                k += 1
            b_chunks = end if k == count else starts[k]
            alone = b_chunks - starts[a]
            for x in range(a + 1, k):
                if starts[x] <= here:
                    continue
                ours = skip_cost * (starts[x] - here) + b_chunks - starts[x]
                gain = alone - max(starts[x] - starts[a], ours)
                if gain >= 1 and (best is None or gain > best[0]):
                    best = (gain, x)
        return best

    def _taken(self, task: FileTask) -> set[int]:
        return {int(n) for n in self._names(task) if n.isdigit()}

    def jump(self, task: FileTask, count: int, pos: float) -> int | None:
        """For a stream of ``task`` refused a piece after reading ``pos`` stored chunks:
        the later piece (claimed here) it should skip ahead to, or None (it ends)."""
        while (best := self._best_split(task, count, self._taken(task), pos)) is not None:
            if self.claim(task, best[1]):
                return best[1]
        return None

    def next_start(self) -> tuple[FileTask, int, int] | None:
        """Where a worker with nothing to do starts its next stream: ``(task, count,
        piece)``, or None when every piece is taken or taking one would not end sooner.

        A file nobody has started is started at its first piece (largest such file
        first). Otherwise the run of unclaimed pieces behind another stream is split
        (:meth:`_best_split`, inflating the file from its start), where that gains most.
        """
        fresh: tuple[int, FileTask, int] | None = None
        best: tuple[float, FileTask, int, int] | None = None
        for task, count in self.plan:
            taken = self._taken(task)
            if 0 not in taken:
                if fresh is None or task.size > fresh[0]:
                    fresh = (task.size, task, count)
                continue
            split = self._best_split(task, count, taken, None)
            if split is not None and (best is None or split[0] > best[0]):
                best = (split[0], task, count, split[1])
        if fresh is not None:
            return fresh[1], fresh[2], 0
        if best is not None:
            return best[1], best[2], best[3]
        return None
