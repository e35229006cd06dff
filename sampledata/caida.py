"""Synthetic CAIDA reference files for the sample scans, so the demo has IP metadata.

:func:`write_caida` writes, under ``out``, the folder layout of CAIDA's datasets site
(``services/routeviews/caida.py``), which ``python -m services.routeviews sync
--base-url <out>`` mirrors like the real one:

    routing/routeviews-prefix2as/pfx2as-creation.log
    routing/routeviews-prefix2as/YYYY/MM/routeviews-rv2-YYYYMMDD-1200.pfx2as.gz
    as-organizations/YYYYMMDD.as-org2info.txt.gz
    as-classification/YYYYMMDD.as2types.txt.gz

One file of each kind per scan date (the UTC date the scan started, which is the first
date its rows carry). Every file covers every host of every scan:

* each Hyperquack server and Satellite resolver: its /24, routed by a synthetic AS of
  the country the generator gave the host (so rows get that country back);
* the control resolvers 1.1.1.1 and 8.8.8.8: their /24, with the AS the scan files name;
* the CDN and hosting /16s Satellite answers come from, with the AS the answer tags name
  (so answer ASNs agree with the tags and the outcomes do not change).

The organisations are made up and say so ("… (synthetic)"); synthetic ASes use the
private-use range 4200000000–4294967294. Two hosts in one /24 share the first one's AS.
All output is deterministic: same scans, size and seed, same bytes (gzip mtime 0).

Example:
    >>> from sampledata.scans import DEFAULT_SCANS
    >>> sorted({d.isoformat() for d in scan_dates(DEFAULT_SCANS)})[:2]
    ['2020-11-14', '2020-11-15']
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sampledata.common import hash_text
from sampledata.satellite import answer_networks
from sampledata.scans import DEFAULT_SCANS, DEFAULT_SIZE, ScanSpec, scan_hosts, scan_size

PRIVATE_ASN_BASE = 4_200_000_000  # RFC 6996 private-use 32-bit ASNs
RIB_TIME = "1200"
PFX2AS_DIR = "routing/routeviews-prefix2as"
AS2ORG_DIR = "as-organizations"
AS2TYPES_DIR = "as-classification"

#: The synthetic networks of each country: (AS-name word, organisation word, AS class).
_NETWORKS = (
    ("TELECOM", "Telecom", "Transit/Access"),
    ("BROADBAND", "Broadband", "Transit/Access"),
    ("HOSTING", "Hosting", "Content"),
)
#: Registration country of the (sample) CDN and hosting organisations; others: US.
_PROVIDER_COUNTRIES = {24940: "DE", 16276: "FR"}


@dataclass(frozen=True, slots=True)
class SampleAs:
    asn: int
    as_name: str
    org_id: str
    org_name: str
    country: str
    as_class: str


@dataclass
class CaidaSample:
    """What :func:`build_caida` made: prefixes → ASN, and the ASes they name."""

    prefixes: dict[str, int] = field(default_factory=dict)  # "a.b.c.0/24" → asn
    ases: dict[int, SampleAs] = field(default_factory=dict)


@dataclass
class CaidaSummary:
    files: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    prefixes: int = 0
    ases: int = 0
    bytes: int = 0


def scan_dates(scans: Sequence[ScanSpec]) -> list[dt.date]:
    """Distinct UTC start dates of the scans, in order."""
    return sorted({s.start.astimezone(dt.UTC).date() for s in scans})


def _country_as(cc: str, name: str, slot: int) -> SampleAs:
    word, org_word, as_class = _NETWORKS[slot]
    # A stable number per country code (two letters → 0..675), then the slot.
    index = (ord(cc[0]) - 65) * 26 + (ord(cc[1]) - 65)
    asn = PRIVATE_ASN_BASE + index * 10 + slot
    return SampleAs(
        asn,
        f"SAMPLE-{cc}-{word}",
        f"SAMPLE-{cc}-{word}-ORG",
        f"Sample {org_word} {name} (synthetic)",
        cc,
        as_class,
    )


def build_caida(scans: Sequence[ScanSpec], size: int, seed: int) -> CaidaSample:
    """Prefixes and ASes covering every host of ``scans`` (each generated with
    :func:`scan_size` measurements, as the sample does) and the Satellite answer networks."""
    out = CaidaSample()
    for prefix, asn, as_name in answer_networks():
        cc = _PROVIDER_COUNTRIES.get(asn, "US")
        out.prefixes.setdefault(prefix, asn)
        out.ases.setdefault(
            asn,
            SampleAs(asn, as_name, f"SAMPLE-AS{asn}-ORG", f"{as_name} (synthetic)", cc, "Content"),
        )
    for spec in scans:
        for host in scan_hosts(spec, scan_size(spec, size), seed):
            net = str(ipaddress.ip_network(f"{host.ip}/24", strict=False))
            if net in out.prefixes:
                continue
            if host.asn is not None:  # a control resolver: the AS its scan files name
                name = host.as_name or f"AS{host.asn}"
                a = SampleAs(
                    host.asn,
                    name,
                    f"SAMPLE-AS{host.asn}-ORG",
                    f"{name} (synthetic)",
                    host.country_code,
                    "Content",
                )
            else:
                slots = 3 if host.role == "server" else 2  # resolvers sit in access networks
                a = _country_as(host.country_code, host.country_name, hash_text(host.ip) % slots)
            out.prefixes[net] = a.asn
            out.ases.setdefault(a.asn, a)
    return out


def pfx2as_text(sample: CaidaSample) -> str:
    """``prefix<TAB>length<TAB>asn`` lines in address order."""
    nets = sorted(
        (ipaddress.ip_network(p) for p in sample.prefixes), key=lambda n: (n, n.prefixlen)
    )
    return "".join(f"{n.network_address}\t{n.prefixlen}\t{sample.prefixes[str(n)]}\n" for n in nets)


def as2org_text(sample: CaidaSample, date: dt.date) -> str:
    """The pipe format of ``as-org2info.txt``: organisations, then ASes."""
    changed = f"{date:%Y%m%d}"
    orgs = {a.org_id: a for a in sample.ases.values()}
    lines = [
        "# name: AS Org (synthetic sample for the Censored Planet pipeline demo)",
        "# format:org_id|changed|org_name|country|source",
        *(f"{o}|{changed}|{a.org_name}|{a.country}|SAMPLE" for o, a in sorted(orgs.items())),
        "# format:aut|changed|aut_name|org_id|opaque_id|source",
        *(
            f"{a.asn}|{changed}|{a.as_name}|{a.org_id}||SAMPLE"
            for a in sorted(sample.ases.values(), key=lambda a: a.asn)
        ),
    ]
    return "\n".join(lines) + "\n"


def as2types_text(sample: CaidaSample, date: dt.date) -> str:
    """``as|source|type`` lines."""
    lines = [
        "# format: as|source|type",
        f"# date: {date:%Y%m%d}",
        *(
            f"{a.asn}|sample_synthetic|{a.as_class}"
            for a in sorted(sample.ases.values(), key=lambda a: a.asn)
        ),
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, data: bytes, summary: CaidaSummary, root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    summary.files.append(str(path.relative_to(root)))
    summary.bytes += len(data)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def write_caida(
    out: Path,
    scans: Sequence[ScanSpec] = DEFAULT_SCANS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> CaidaSummary:
    """Write the CAIDA-layout files for ``scans`` (generated with ``size`` and ``seed``;
    reduced scans with their :func:`scan_size`)."""
    out = Path(out)
    sample = build_caida(scans, size, seed)
    summary = CaidaSummary(prefixes=len(sample.prefixes), ases=len(sample.ases))
    pfx2as = _gz(pfx2as_text(sample))
    log = ["# synthetic sample: seq<TAB>unix_time<TAB>path"]
    for seq, date in enumerate(scan_dates(scans), start=1):
        summary.dates.append(date.isoformat())
        name = f"routeviews-rv2-{date:%Y%m%d}-{RIB_TIME}.pfx2as.gz"
        rel = f"{date:%Y}/{date:%m}/{name}"
        _write(out / PFX2AS_DIR / rel, pfx2as, summary, out)
        created = dt.datetime(date.year, date.month, date.day, 14, tzinfo=dt.UTC)
        log.append(f"{seq}\t{int(created.timestamp())}\t{rel}")
        stamp = f"{date:%Y%m%d}"
        _write(
            out / AS2ORG_DIR / f"{stamp}.as-org2info.txt.gz",
            _gz(as2org_text(sample, date)),
            summary,
            out,
        )
        _write(
            out / AS2TYPES_DIR / f"{stamp}.as2types.txt.gz",
            _gz(as2types_text(sample, date)),
            summary,
            out,
        )
    _write(out / PFX2AS_DIR / "pfx2as-creation.log", ("\n".join(log) + "\n").encode(), summary, out)
    return summary
