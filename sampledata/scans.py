"""Which scans the sample holds and what one scan's files are: :class:`ScanSpec`, the
scan sets (:data:`DEFAULT_SCANS` gives every date both families: :data:`COMPANION_SCANS`
put a smaller Satellite scan on each Hyperquack date and a Hyperquack scan on the
Satellite date), :func:`build_scan_files` and the hosts a scan measures
(:func:`scan_hosts`, used by :mod:`sampledata.caida`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sampledata.common import EDT, EST, SATELLITE, hash_text, sample_keywords, source_name
from sampledata.hyperquack import HyperquackGenerator, iter_hyperquack_records
from sampledata.lines import render_results
from sampledata.satellite import SatelliteGenerator, build_satellite_files, satellite_domains

DEFAULT_SIZE: Final = 200


@dataclass(frozen=True)
class ScanSpec:
    """One scan to write: type, format version and (timezone-aware) start time.

    ``scan_type`` is a Hyperquack type (version 1 or 2) or ``"satellite"`` (version 2,
    written in the Satellite v2.2 format).
    """

    scan_type: str
    version: int
    start: datetime
    #: Written smaller (:func:`scan_size`): the Satellite scans of :data:`COMPANION_SCANS`.
    reduced: bool = False


#: Smallest reduced scan (when ``size`` allows): five test domains of a Satellite scan's
#: eight resolvers, so its control resolvers vouch for several domains' certificates.
REDUCED_MIN_SIZE: Final = 40


def scan_size(spec: ScanSpec, size: int) -> int:
    """Measurements written for ``spec`` when a run asks for ``size`` per scan: ``size``,
    or for a reduced scan a quarter of it (at least :data:`REDUCED_MIN_SIZE`, at most
    ``size``).

    >>> from datetime import UTC
    >>> scan_size(ScanSpec("echo", 1, datetime(2020, 1, 1, tzinfo=UTC)), 200)
    200
    >>> [scan_size(ScanSpec(SATELLITE, 2, datetime(2020, 1, 1, tzinfo=UTC), reduced=True), n)
    ...  for n in (0, 20, 100, 200, 1000)]
    [0, 20, 40, 50, 250]
    """
    if not spec.reduced:
        return size
    return min(size, max(REDUCED_MIN_SIZE, size // 4))


#: The eight Hyperquack scans (v1 and v2 of each type); the default of
#: :func:`write_scan_archives`.
HYPERQUACK_SCANS: Final[tuple[ScanSpec, ...]] = (
    ScanSpec("echo", 1, datetime(2020, 11, 14, 7, 30, 11, tzinfo=EST)),
    ScanSpec("discard", 1, datetime(2020, 11, 15, 8, 12, 40, tzinfo=EST)),
    ScanSpec("http", 1, datetime(2020, 11, 16, 1, 5, 22, tzinfo=EST)),
    ScanSpec("https", 1, datetime(2020, 11, 17, 15, 20, 3, tzinfo=EST)),
    ScanSpec("echo", 2, datetime(2021, 5, 30, 2, 15, 7, tzinfo=EDT)),
    ScanSpec("discard", 2, datetime(2021, 5, 31, 3, 40, 12, tzinfo=EDT)),
    ScanSpec("http", 2, datetime(2021, 5, 30, 5, 2, 33, tzinfo=EDT)),
    ScanSpec("https", 2, datetime(2021, 7, 25, 6, 11, 48, tzinfo=EDT)),
)
#: One Satellite v2.2 scan: ``CP_Satellite-2021-10-20-14-00-01``.
SATELLITE_SCANS: Final[tuple[ScanSpec, ...]] = (
    ScanSpec(SATELLITE, 2, datetime(2021, 10, 20, 14, 0, 1, tzinfo=EDT)),
)
#: Scans that give every date of the sample both families, so the derived table
#: ``merged_reduced_scans`` has Hyperquack and Satellite rows for each date: a reduced
#: Satellite scan (a quarter of the size, :func:`scan_size`) on each Hyperquack scan's date
#: (late morning local time, same UTC date) and a full-size Hyperquack http v2 scan on the
#: Satellite scan's date. The generator writes one Satellite
#: format, v2.2 with the page-fetch trust fields of 2022 (``trusted_cert``,
#: ``control_pages.json``), also on dates when the real prober wrote v1 (before 2021-03)
#: or v2.1 (until June 2021): ``merged_reduced_scans`` keeps Satellite rows only for
#: domains some answer proved HTTPS-capable with a trusted certificate, which only those
#: fields can show, so older formats would leave those dates without DNS rows.
COMPANION_SCANS: Final[tuple[ScanSpec, ...]] = (
    ScanSpec(SATELLITE, 2, datetime(2020, 11, 14, 10, 0, 2, tzinfo=EST), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2020, 11, 15, 11, 0, 3, tzinfo=EST), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2020, 11, 16, 9, 30, 1, tzinfo=EST), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2020, 11, 17, 10, 45, 2, tzinfo=EST), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2021, 5, 30, 12, 0, 1, tzinfo=EDT), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2021, 5, 31, 13, 20, 2, tzinfo=EDT), reduced=True),
    ScanSpec(SATELLITE, 2, datetime(2021, 7, 25, 11, 30, 1, tzinfo=EDT), reduced=True),
    ScanSpec("http", 2, datetime(2021, 10, 20, 9, 10, 44, tzinfo=EDT)),
)
#: The default scan set of :func:`generate` and the CLI: Hyperquack, Satellite, then the
#: companions, so every date has both families.
DEFAULT_SCANS: Final[tuple[ScanSpec, ...]] = HYPERQUACK_SCANS + SATELLITE_SCANS + COMPANION_SCANS


def build_scan_files(
    spec: ScanSpec, size: int, seed: int, bad_line_ratio: float = 0.0
) -> tuple[dict[str, bytes], int, int]:
    """Tar members of one scan (``results.json`` and, for v1, ``servers.txt``/``domains.txt``;
    for Satellite the :data:`SATELLITE_FILES`, see :func:`build_satellite_files`).

    Returns ``(members, records, bad lines)``; records are ``results.json`` lines. v2
    results end without a trailing newline, as in the real v2 files; v1 results end with one.
    """
    if spec.scan_type == SATELLITE:
        if spec.version != 2:
            raise ValueError(f"Satellite scans are written as v2.2 (version 2), not {spec.version}")
        return build_satellite_files(size, seed, spec.start, bad_line_ratio)
    servers: dict[str, None] = {}
    domains: dict[str, None] = {}

    def tracked() -> Iterator[dict[str, Any]]:
        for record in iter_hyperquack_records(spec.scan_type, spec.version, size, seed, spec.start):
            if spec.version == 1:
                servers[record["Server"]] = None
                domains[record["Keyword"]] = None
            yield record

    source = source_name(spec.scan_type, spec.start)
    data, n_bad = render_results(
        tracked(),
        seed=seed ^ hash_text(source),
        bad_line_ratio=bad_line_ratio,
        trailing_newline=spec.version == 1,
    )
    members = {"results.json": data}
    if spec.version == 1:
        members["servers.txt"] = "".join(s + "\n" for s in servers).encode()
        members["domains.txt"] = "".join(d + "\n" for d in domains).encode()
    return members, size, n_bad


@dataclass(frozen=True, slots=True)
class SampleHost:
    """An address a generated scan measures: a Hyperquack server or a Satellite resolver."""

    ip: str
    country_code: str
    country_name: str
    role: str  # "server" | "resolver" | "control_resolver"
    asn: int | None = None  # the network the generator gave it (control resolvers only)
    as_name: str | None = None


def scan_hosts(spec: ScanSpec, size: int, seed: int) -> list[SampleHost]:
    """The servers (Hyperquack) or resolvers (Satellite) of one scan, with the country the
    generator gave each, in generation order; the same arguments as for the scan's files.

    Only the generators' set-up runs (no records are built), so this is cheap.
    """
    if spec.scan_type == SATELLITE:
        sat = SatelliteGenerator(seed, spec.start, size, satellite_domains())
        return [
            SampleHost(
                r.ip,
                r.country[1],
                r.country[0],
                "control_resolver" if r.control else "resolver",
                r.isp[0] if r.control else None,
                r.isp[1] if r.control else None,
            )
            for r in sat.resolvers
        ]
    gen = HyperquackGenerator(
        spec.scan_type, spec.version, seed, spec.start, size, sample_keywords()
    )
    return [SampleHost(vp.ip, vp.country[1], vp.country[0], "server") for vp in gen.vps]


def extracted_members(spec: ScanSpec) -> tuple[str, ...] | None:
    """Members written under ``scans/<source>/``: ``results.json`` for Hyperquack (the only
    file the pipeline reads), every member (``None``) for Satellite, whose files join."""
    return None if spec.scan_type == SATELLITE else ("results.json",)
