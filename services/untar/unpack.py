"""Unpack one archive: stream, check, gzip each ``.json`` member, then write the marker.

The archive is read once, as a stream (``tarfile`` in ``r|`` mode over our own gzip
decoder, so that the inflated/compressed ratio can be measured and the gzip trailer
verified at the end). Each member is checked (``safety.check_member``) before any of
its data is read; a ``.json`` member is written through ``open_write`` (atomic) as
``<basename>.gz``, in line-aligned gzip members with an index at the end
(:mod:`services.common.gzindex`: the launcher's workers can start reading it in the
middle); other members are skipped and listed in the marker. Any error
removes the archive's whole output folder, so only complete, marked folders remain.

Example (see tests/test_untar.py for real archives):
    >>> output_name("results.json")
    'results.json.gz'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common import storage
from services.common.gzindex import MemberWriter
from services.common.scans import ScanName, parse_scan_name
from services.untar.markers import MARKER_FORMAT, archive_folder, marker_url
from services.untar.safety import (
    SAFE_NAME,
    CountingReader,
    GuardedStream,
    HostileArchive,
    Limits,
    check_member,
    member_kind,
)

CHUNK = 1024 * 1024
DATA_SUFFIX = ".json"


class CorruptArchive(ValueError):
    """The archive is not a complete, valid .tar.gz (truncated, bad CRC, bad headers)."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    name: str  # stored file name, e.g. results.json.gz
    member: str  # path inside the archive
    bytes: int  # uncompressed
    stored_bytes: int  # gzip as stored
    md5: str  # hex MD5 of the stored gzip


@dataclass
class UnpackResult:
    archive: str
    scan: str
    scan_type: str
    folder: str
    archive_bytes: int = 0
    archive_md5: str = ""
    inflated_bytes: int = 0
    files: list[FileRecord] = field(default_factory=list)
    skipped_members: list[str] = field(default_factory=list)

    @property
    def written_bytes(self) -> int:
        return sum(f.stored_bytes for f in self.files)

    def marker(self) -> dict[str, Any]:
        return {
            "format": MARKER_FORMAT,
            "archive": self.archive,
            "scan": self.scan,
            "scan_type": self.scan_type,
            "archive_bytes": self.archive_bytes,
            "archive_md5": self.archive_md5,
            "inflated_bytes": self.inflated_bytes,
            "files": [asdict(f) for f in self.files],
            "skipped_members": self.skipped_members,
            "completed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }


def output_name(basename: str) -> str:
    return basename + ".gz"


def _write_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    url: str,
    out: storage.StreamStorage,
    limits: Limits,
    compresslevel: int,
) -> tuple[int, storage.AtomicWriter]:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - regular members always have a file object
        raise CorruptArchive(f"member {member.name!r} has no data")
    n = 0
    with out.open_write(url) as w:
        gz = MemberWriter(w, compresslevel=compresslevel, expected_size=member.size)
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > limits.max_member_bytes:  # headers are not trusted
                raise HostileArchive(f"member {member.name!r}: more data than the size limit")
            gz.write(chunk)
        gz.close()
    if n != member.size:
        raise CorruptArchive(f"member {member.name!r}: {n} bytes, header says {member.size}")
    return n, w


def _stream(
    archive_url: str,
    scan: ScanName,
    target: str,
    limits: Limits,
    source: storage.Storage,
    out: storage.StreamStorage,
    compresslevel: int,
) -> UnpackResult:
    folder = archive_folder(target, scan)
    result = UnpackResult(archive_url, scan.source, scan.scan_type, folder)
    digest = hashlib.md5()
    seen: dict[str, str] = {}
    with source.open_read(archive_url) as raw:
        counted = CountingReader(raw, digest)
        compressed: Any = counted
        guard = GuardedStream(gzip.GzipFile(fileobj=compressed, mode="rb"), counted, limits)
        try:
            with tarfile.open(fileobj=guard, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    base = check_member(member.name, member_kind(member), member.size, limits)
                    guard.allow(member.size if base is not None else 0)
                    if base is None:
                        continue  # a folder entry
                    if not base.endswith(DATA_SUFFIX) or base.startswith("."):
                        result.skipped_members.append(member.name)
                        continue
                    if not SAFE_NAME.match(base):
                        raise HostileArchive(f"member {member.name!r}: unsafe file name")
                    if base in seen:
                        raise HostileArchive(
                            f"member {member.name!r}: duplicate file name (also {seen[base]!r})"
                        )
                    seen[base] = member.name
                    url = storage.join(folder, output_name(base))
                    n, w = _write_member(tar, member, url, out, limits, compresslevel)
                    result.files.append(
                        FileRecord(output_name(base), member.name, n, w.size, w.md5_hex())
                    )
            guard.drain()  # to the gzip trailer: a truncated or corrupt stream fails here
            while counted.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise CorruptArchive(f"{type(exc).__name__}: {exc}") from exc
    result.archive_bytes = counted.bytes
    result.archive_md5 = digest.hexdigest()
    result.inflated_bytes = guard.bytes
    return result


def unpack_archive(
    archive_url: str,
    target: str,
    *,
    limits: Limits | None = None,
    source: storage.Storage | None = None,
    out: storage.StreamStorage | None = None,
    expected_md5: str | None = None,
    compresslevel: int = 6,
) -> UnpackResult:
    """Unpack one archive under ``target`` and write its marker; all or nothing.

    Raises UnknownScanName (nothing written), HostileArchive or CorruptArchive (the
    archive's output folder is removed), or the storage error.
    """
    scan = parse_scan_name(storage.basename(archive_url))
    limits = limits or Limits()
    src = source or storage.storage_for(archive_url)
    dst = out or storage.storage_for(target)
    folder = archive_folder(target, scan)
    dst.delete(folder)  # leftovers of an interrupted run (there is no marker)
    try:
        result = _stream(archive_url, scan, target, limits, src, dst, compresslevel)
        if not result.files:
            raise CorruptArchive(
                f"no {DATA_SUFFIX} members (members: {result.skipped_members[:5]})"
            )
        if expected_md5 and expected_md5.lower() != result.archive_md5:
            raise CorruptArchive(
                f"archive MD5 {result.archive_md5} differs from the stored {expected_md5}"
            )
        url = marker_url(target, scan)
        dst.write_bytes(url, json.dumps(result.marker(), indent=1).encode() + b"\n")
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error; no marker anyway
            dst.delete(folder)
        raise
    return result
