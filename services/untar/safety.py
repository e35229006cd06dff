"""Rules that keep a hostile archive from escaping, exhausting memory or filling disks.

* :func:`check_member` judges one tar header before any of its data is read: only
  regular files (and directories, ignored) are accepted; absolute paths, ``..``,
  backslashes or control characters, symlinks, hard links, devices, FIFOs, sparse
  files, members deeper than ``<folder>/<file>`` and members larger than the limit
  reject the whole archive.
* :class:`GuardedStream` sits between the gzip decoder and ``tarfile``. It counts
  decompressed bytes against compressed bytes actually consumed and aborts as soon as
  the ratio exceeds the limit (a zip bomb is stopped while streaming; sizes in headers
  are not trusted). It also caps how much ``tarfile`` may read between two members:
  ``tarfile`` buffers PAX and GNU long-name headers in memory, so a multi-GB "header"
  is refused after ``max_header_bytes``.

Example:
    >>> lim = Limits()
    >>> check_member("CP_Quack-echo-2021-05-30-01-01-01/results.json", "file", 10, lim)
    'results.json'
    >>> check_member("../etc/passwd", "file", 10, lim)
    Traceback (most recent call last):
    ...
    services.untar.safety.HostileArchive: member '../etc/passwd': '..' in path
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import IO, Any

DEFAULT_MAX_MEMBER_BYTES = 32 * 1024**3  # 32 GiB uncompressed per member
DEFAULT_MAX_RATIO = 100.0  # real scan files compress 3-11:1; gzip's maximum is ~1030:1
DEFAULT_RATIO_GRACE_BYTES = 1024 * 1024  # the ratio is judged once this much is inflated
DEFAULT_MAX_HEADER_BYTES = 1024 * 1024  # tar headers (incl. PAX) between two members

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


class HostileArchive(ValueError):
    """The archive breaks a safety rule; it is rejected as a whole."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_grace_bytes: int = DEFAULT_RATIO_GRACE_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES


def member_kind(member: tarfile.TarInfo) -> str:
    """A coarse type: file, dir, symlink, hardlink, device, fifo, sparse or other."""
    if member.issparse():
        return "sparse"
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "other"


def check_member(name: str, kind: str, size: int, limits: Limits) -> str | None:
    """Validate one member; return its basename for a regular file, None for a folder.

    Raises HostileArchive. Accepted layouts: ``file`` and ``<folder>/file`` (``.``
    components and a trailing ``/`` are ignored).
    """

    def reject(why: str) -> HostileArchive:
        return HostileArchive(f"member {name!r}: {why}")

    if not name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise reject("absolute path")
    if _UNSAFE_CHARS.search(name):
        raise reject("backslash or control character in name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise reject("'..' in path")
    if kind not in ("file", "dir"):
        raise reject(f"{kind} members are not allowed")
    if kind == "dir":
        if len(parts) > 1:
            raise reject("nested folders are not allowed (layout is <folder>/<file>)")
        return None
    if not parts:
        raise reject("empty file name")
    if len(parts) > 2:
        raise reject("nested folders are not allowed (layout is <folder>/<file>)")
    if size < 0 or size > limits.max_member_bytes:
        raise reject(f"size {size} is over the limit of {limits.max_member_bytes} bytes")
    return parts[-1]


class CountingReader:
    """Reads through ``raw`` counting bytes and feeding a hash (the archive's MD5)."""

    def __init__(self, raw: IO[bytes], digest: Any) -> None:
        self.raw = raw
        self.digest = digest
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.bytes += len(data)
            self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


class GuardedStream:
    """The decompressed tar stream, with the ratio and header-size limits applied."""

    def __init__(self, inflated: Any, compressed: CountingReader, limits: Limits) -> None:
        self.inflated = inflated
        self.compressed = compressed
        self.limits = limits
        self.bytes = 0
        self._budget_end: float = limits.max_header_bytes

    def allow(self, data_bytes: int) -> None:
        """Let tarfile read ``data_bytes`` of member data plus the next headers."""
        padded = -(-data_bytes // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self._budget_end = self.bytes + padded + self.limits.max_header_bytes

    def read(self, size: int = -1) -> bytes:
        data = self.inflated.read(size)
        self.bytes += len(data)
        if self.bytes > self._budget_end:
            raise HostileArchive(
                f"tar headers/metadata larger than {self.limits.max_header_bytes} bytes"
            )
        if self.bytes > self.limits.ratio_grace_bytes:
            ratio = self.bytes / max(self.compressed.bytes, 1)
            if ratio > self.limits.max_ratio:
                raise HostileArchive(
                    f"compression ratio over {self.limits.max_ratio:g}:1 "
                    f"({self.bytes} bytes from {self.compressed.bytes})"
                )
        return data

    def readable(self) -> bool:
        return True

    def drain(self, chunk: int = 1024 * 1024) -> int:
        """Read to the end (verifies the gzip trailer); return the bytes read."""
        total = 0
        self._budget_end = float("inf")
        while data := self.read(chunk):
            total += len(data)
        return total
