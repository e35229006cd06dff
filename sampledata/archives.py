"""Writing scans to disk: ``archives/<source>.tar.gz`` and the extracted
``scans/<source>/<file>[.gz]``, with fixed gzip headers and tar metadata so the same
arguments always give the same bytes. Only this module and the CLI touch the file system
(besides :mod:`sampledata.caida`)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampledata.common import NS, archive_name, epoch_ns, source_name
from sampledata.scans import (
    DEFAULT_SCANS,
    DEFAULT_SIZE,
    HYPERQUACK_SCANS,
    ScanSpec,
    build_scan_files,
    extracted_members,
    scan_size,
)


@dataclass
class GenerationSummary:
    """What :func:`write_scan_archives` wrote."""

    out_dir: str
    files: list[str] = field(default_factory=list)
    records: int = 0
    bad_lines: int = 0
    bytes: int = 0
    scans: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Summary as a JSON-friendly dict (file count instead of the file list)."""
        return {
            "out": self.out_dir,
            "scans": len(self.scans),
            "files_written": len(self.files),
            "records": self.records,
            "bad_lines": self.bad_lines,
            "bytes": self.bytes,
        }


def _tar_gz(
    members: Sequence[tuple[str, bytes]], directory: str, mtime: int, level: int = 6
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(directory)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = mtime
        tar.addfile(info)
        for name, data in sorted(members):
            info = tarfile.TarInfo(f"{directory}/{name}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    return _gzip(buf.getbuffer(), level)


def write_scan_archives(
    out_dir: Path,
    scans: Sequence[ScanSpec] = HYPERQUACK_SCANS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    bad_line_ratio: float = 0.0,
    plain: bool = False,
    compresslevel: int = 6,
) -> GenerationSummary:
    """Write ``archives/<source>.tar.gz`` and the extracted ``scans/<source>/<file>[.gz]``.

    Hyperquack scans get ``scans/<source>/results.json[.gz]``; Satellite scans get every
    member (see :func:`extracted_members`). Each scan has :func:`scan_size` measurements.
    The default ``scans`` are the eight Hyperquack scans (:func:`generate` adds the
    Satellite and companion scans).
    Gzip headers carry mtime 0 and no file name; tar members are sorted, owned by 0:0 and
    stamped with the scan start, so the same arguments always give identical bytes.
    The compressions of a scan run in parallel threads (zlib releases the GIL); peak
    memory is about three times the largest uncompressed ``results.json``.
    """
    out_dir = Path(out_dir)
    summary = GenerationSummary(out_dir=str(out_dir))
    (out_dir / "archives").mkdir(parents=True, exist_ok=True)

    def finish(
        spec: ScanSpec,
        n_records: int,
        n_bad: int,
        archive_future: Future[bytes],
        extracted: list[tuple[str, Future[bytes]]],
    ) -> None:
        source = source_name(spec.scan_type, spec.start)
        archive = out_dir / "archives" / archive_name(spec.scan_type, spec.start)
        archive.write_bytes(archive_future.result())
        scan_dir = out_dir / "scans" / source
        scan_dir.mkdir(parents=True, exist_ok=True)
        paths = [archive]
        for name, future in extracted:
            path = scan_dir / (name if plain else name + ".gz")
            path.write_bytes(future.result())
            paths.append(path)
        for path in paths:
            summary.files.append(str(path.relative_to(out_dir)))
            summary.bytes += path.stat().st_size
        summary.scans.append(source)
        summary.records += n_records
        summary.bad_lines += n_bad

    with ThreadPoolExecutor(max_workers=2) as pool:
        for spec in scans:
            members, n_records, n_bad = build_scan_files(
                spec, scan_size(spec, size), seed, bad_line_ratio
            )
            source = source_name(spec.scan_type, spec.start)
            mtime = epoch_ns(spec.start) // NS
            archive_future = pool.submit(
                _tar_gz, list(members.items()), source, mtime, compresslevel
            )
            names = extracted_members(spec) or tuple(sorted(members))
            extracted: list[tuple[str, Future[bytes]]] = []
            for name in names:
                future: Future[bytes]
                if plain:
                    future = Future()
                    future.set_result(members[name])
                else:
                    future = pool.submit(_gzip, members[name], compresslevel)
                extracted.append((name, future))
            del members
            finish(spec, n_records, n_bad, archive_future, extracted)
    return summary


def _gzip(data: bytes | memoryview, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def generate(
    out_dir: Path,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    bad_line_ratio: float = 0.0,
    plain: bool = False,
    scans: Sequence[ScanSpec] = DEFAULT_SCANS,
    compresslevel: int = 6,
) -> GenerationSummary:
    """Write the default scans under ``out_dir`` (:data:`DEFAULT_SCANS`): the eight
    Hyperquack scans (v1 and v2 of each type), one Satellite v2.2 scan and the
    :data:`COMPANION_SCANS`, so that every date has Hyperquack and Satellite scans."""
    return write_scan_archives(
        out_dir,
        scans=scans,
        size=size,
        seed=seed,
        bad_line_ratio=bad_line_ratio,
        plain=plain,
        compresslevel=compresslevel,
    )
