"""Line-aligned gzip members with an index at the end: gzip files a reader can enter
in the middle.

A plain gzip stream can only be read from its first byte, so a worker that parses the
second half of a scan file must first inflate the first half. ``untar`` therefore writes
each scan file as a series of gzip members (RFC 1952 allows any number), each holding
whole lines (the last member may end without a line end), and appends one *index member*:
an empty gzip member whose header carries, in an extra field, where each data member ends
and how many lines it holds. Any gzip reader reads such a file as usual (the index member
inflates to nothing); :func:`read_index` finds the index in the file's last bytes, so a
reader can start at any member with the right line number.

Layout of the index member (all integers little-endian)::

    1f 8b 08 04 00000000 00 ff      header: deflate, FEXTRA, no mtime, unknown OS
    XLEN (2)                        = 4 + LEN
    'C' 'P' LEN (2)                 the extra subfield
    DATA (LEN bytes)                01, then per data member: end offset (8), lines (8);
                                    then LEN (4) and b"CPIX"
    03 00                           an empty final deflate block
    00000000 00000000               CRC-32 and size of the (empty) text

Measured on the first 200 MiB of text of the 1M-line HTTP bench scan: members of 4 MiB
of text make the stored file 0.05% larger than one member at zlib level 6 (each member
starts with an empty 32 KiB window).

Example:
    >>> import gzip, io
    >>> buf = io.BytesIO()
    >>> with MemberWriter(buf, member_text=8) as w:
    ...     _ = w.write(b"line one\\nline two\\nthree\\n")
    >>> gzip.decompress(buf.getvalue())
    b'line one\\nline two\\nthree\\n'
    >>> index = parse_index(buf.getvalue())
    >>> [(m.lines_before, m.lines) for m in index.members]
    [(0, 1), (1, 1), (2, 1)]
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from services.common import storage

# Text per member. Entering a file costs at most one member of skipping (none: a piece
# starts at a member), and members this size cost 0.05% of compression (see above).
MEMBER_TEXT = 4 << 20
# The extra field holds at most 65,535 bytes: 16 per member. Larger files get larger
# members (a 64 GB file: 16 MiB members).
MAX_MEMBERS = 4000

_MEMBER_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no flags, no mtime
_INDEX_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"  # FEXTRA
_EMPTY_DEFLATE = b"\x03\x00"
_MAGIC = b"CPIX"
_VERSION = 1
_ENTRY = struct.Struct("<QQ")
# The index member around DATA: header 10, XLEN 2, subfield id and length 4; after it the
# empty deflate block and the trailer, 10.
_FIXED = 10 + 2 + 4 + 2 + 8
MAX_INDEX_BYTES = _FIXED + 1 + 16 * MAX_MEMBERS + 8


class Sink(Protocol):
    """Where :class:`MemberWriter` writes (a binary file, a storage writer)."""

    def write(self, data: bytes, /) -> object: ...


class BadIndex(ValueError):
    """The file's index member is malformed or does not describe the file."""


@dataclass(frozen=True, slots=True)
class Member:
    """One data member: stored bytes ``[start, end)``, holding ``lines`` lines (a last
    line without a line end counts), the first of them line ``lines_before + 1``."""

    start: int
    end: int
    lines_before: int
    lines: int


@dataclass(frozen=True, slots=True)
class GzIndex:
    """The data members of one indexed gzip file, in order (the first starts at 0)."""

    members: tuple[Member, ...]

    @property
    def data_end(self) -> int:
        """Where the index member starts (the end of the last data member)."""
        return self.members[-1].end


class MemberWriter:
    """Write text as line-aligned gzip members plus the index member (on :meth:`close`).

    A member ends at its first line end at or after byte ``member_text`` (default
    :data:`MEMBER_TEXT`, larger when ``expected_size`` would need more than
    :data:`MAX_MEMBERS` members; a longer file still fits: members grow as it goes).
    ``out`` receives only whole writes, in order; it is not closed.
    """

    def __init__(
        self,
        out: Sink,
        compresslevel: int = 6,
        member_text: int | None = None,
        expected_size: int = 0,
    ) -> None:
        base = MEMBER_TEXT if member_text is None else member_text
        if base < 1:
            raise ValueError(f"member_text must be positive, not {base}")
        self._out = out
        self._level = compresslevel
        self._target = max(base, -(-expected_size // MAX_MEMBERS))
        self._pos = 0  # stored bytes written
        self._entries: list[tuple[int, int]] = []
        self._comp: zlib._Compress | None = None
        self._crc = 0
        self._size = 0
        self._lines = 0
        self._last = b"\n"  # the last text byte fed
        self._next_growth = MAX_MEMBERS // 2  # members at which the target doubles
        self._closed = False

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._pos += len(data)

    def _feed(self, data: bytes) -> None:
        if self._comp is None:
            self._comp = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS)
            self._emit(_MEMBER_HEADER)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._lines += data.count(b"\n")
        if data:
            self._last = data[-1:]
        self._emit(self._comp.compress(data))

    def _end_member(self, last_line_open: bool = False) -> None:
        if self._comp is None:
            return
        self._emit(self._comp.flush(zlib.Z_FINISH))
        self._emit(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._entries.append((self._pos, self._lines + (1 if last_line_open else 0)))
        self._comp = None
        self._crc = self._size = self._lines = 0
        if len(self._entries) >= self._next_growth:  # a longer file than expected
            self._target *= 2
            self._next_growth += max(1, (MAX_MEMBERS - len(self._entries)) // 2)

    def write(self, data: bytes) -> int:
        """Add ``data`` (any cut, lines may span writes); returns its length."""
        if self._closed:
            raise ValueError("write to a closed MemberWriter")
        n = len(data)
        while data:
            room = self._target - self._size
            if room > 0:
                self._feed(data[:room])
                data = data[room:]
                continue
            if self._last == b"\n" and len(self._entries) < MAX_MEMBERS - 1:
                self._end_member()  # full, and at a line end
                continue
            cut = data.find(b"\n")
            if cut < 0 or len(self._entries) >= MAX_MEMBERS - 1:  # the last member grows
                self._feed(data)
                break
            self._feed(data[: cut + 1])
            self._end_member()
            data = data[cut + 1 :]
        return n

    def close(self) -> None:
        """End the last member and write the index member (once)."""
        if self._closed:
            return
        self._closed = True
        if self._comp is None and not self._entries:
            self._feed(b"")  # an empty text is still one (empty) member
        self._end_member(last_line_open=self._comp is not None and self._last != b"\n")
        self._emit(build_index_member(self._entries))

    def __enter__(self) -> MemberWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()


def build_index_member(entries: list[tuple[int, int]]) -> bytes:
    """The index member for data members ending at ``end`` and holding ``lines`` lines.

    >>> len(build_index_member([(20, 1)]))
    51
    """
    if not 1 <= len(entries) <= MAX_MEMBERS:
        raise ValueError(f"{len(entries)} members (1 to {MAX_MEMBERS})")
    body = bytes([_VERSION]) + b"".join(_ENTRY.pack(end, lines) for end, lines in entries)
    data = body + struct.pack("<I", len(body) + 8) + _MAGIC
    extra = b"CP" + struct.pack("<H", len(data)) + data
    return _INDEX_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE + bytes(8)


def parse_index(tail: bytes, file_size: int | None = None) -> GzIndex | None:
    """The index in ``tail``, the last bytes of a file of ``file_size`` bytes (default:
    ``tail`` is the whole file); None when the file does not end with an index member.

    Raises :class:`BadIndex` when it ends with one that is malformed (wrong lengths,
    members not in order, not ending where the index member starts).
    """
    size = len(tail) if file_size is None else file_size
    if len(tail) < _FIXED + 9 or tail[-10:] != _EMPTY_DEFLATE + bytes(8):
        return None
    if tail[-14:-10] != _MAGIC:
        return None
    (length,) = struct.unpack("<I", tail[-18:-14])
    total = _FIXED + length
    if length < 9 or total > len(tail) or (length - 9) % _ENTRY.size:
        raise BadIndex(f"index of {length} bytes does not fit the file's last {len(tail)}")
    member = tail[-total:]
    xlen, si, sub_len = struct.unpack("<H2sH", member[10:16])
    if member[:10] != _INDEX_HEADER or si != b"CP" or sub_len != length or xlen != length + 4:
        raise BadIndex("malformed index member header")
    data = member[16 : 16 + length]
    if data[0] != _VERSION:
        raise BadIndex(f"index version {data[0]} (this code reads {_VERSION})")
    members: list[Member] = []
    start = before = 0
    for end, lines in _ENTRY.iter_unpack(data[1 : length - 8]):
        if end <= start:
            raise BadIndex(f"member {len(members)} ends at {end}, not after {start}")
        members.append(Member(start, end, before, lines))
        start, before = end, before + lines
    if not members:
        raise BadIndex("an index of no members")
    if start != size - total:
        raise BadIndex(f"the members end at {start}, the index member starts at {size - total}")
    return GzIndex(tuple(members))


def read_index(url: str, size: int) -> GzIndex | None:
    """The index of the stored file ``url`` of ``size`` bytes (local or ``gs://``): one
    read of its last bytes. None when it has none; raises :class:`BadIndex` as
    :func:`parse_index`, and storage errors."""
    want = min(size, MAX_INDEX_BYTES)
    with storage.storage_for(url).open_read(url) as raw:
        raw.seek(size - want)
        tail = raw.read(want)
    if len(tail) != want:
        raise BadIndex(f"{url}: read {len(tail)} of its last {want} bytes")
    return parse_index(tail, size)
