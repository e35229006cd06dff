"""Satellite v2.2 (DNS) scans (``shared/docs/formats.md`` §3.3): ``results.json`` (Go
``time.String()`` times, ``"null"`` error strings, int rcodes, inline answer tags,
``confidence`` with ``untagged_response``, ``exclude_reason`` lists, liveness roundtrips to
``a.root-servers.net``), ``resolvers.json`` (with a duplicated line),
``resolvers_profile.json`` (rates as decimal strings), ``blockpages.json`` and
``control_pages.json`` (http/https as a response object or an error string, certificate
chains as lists, ``trusted_cert``/``cert_hostname_match``), the prober's ``dns.pkt`` and an
unknown ``resolvers_extra.json``. It covers control resolvers, NXDOMAIN/SERVFAIL/REFUSED,
timeouts, refused connections, empty and private/zero answers, blockpages whose status
line and headers match the sample signatures, certificate mismatches, untrusted CAs and
CDN answers. The generator writes no older Satellite format (v1, v2.1)."""

from __future__ import annotations

import itertools
import json
import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sampledata.certs import certificate_chain
from sampledata.common import (
    BODY_CAP,
    CATEGORY_WORDS,
    COUNTRIES,
    EPOCH,
    MS,
    NS,
    RESERVED_FIRST_OCTETS,
    SAMPLE_DOMAIN_CATEGORIES,
    SATELLITE,
    UNLISTED_DOMAINS,
    epoch_ns,
    filler_text,
    hash_text,
    source_name,
)
from sampledata.lines import go_json_line, render_results
from sampledata.pages import NOT_FOUND, PAGE_TEMPLATES, PageTemplate, Response, fill_placeholders

#: The only Satellite format the generator writes; a ``ScanSpec`` for it has version 2.
SATELLITE_FORMAT: Final = "v2.2"
LIVENESS_DOMAIN: Final = "a.root-servers.net"
#: Control resolvers measured in every Satellite scan: (IP, PTR name).
SATELLITE_CONTROL_RESOLVERS: Final[tuple[tuple[str, str], ...]] = (
    ("1.1.1.1", "one.one.one.one."),
    ("8.8.8.8", "dns.google."),
)
#: Members of a generated Satellite scan. ``resolvers_extra.json`` is deliberately not a
#: known Satellite file name (a pipeline must skip it); ``dns.pkt`` is the prober's binary
#: query template (known, never read).
SATELLITE_FILES: Final = (
    "blockpages.json",
    "control_pages.json",
    "dns.pkt",
    "resolvers.json",
    "resolvers_extra.json",
    "resolvers_profile.json",
    "results.json",
)
SATELLITE_RESULT_KEYS: Final = (
    "confidence",
    "passed_liveness",
    "connect_error",
    "in_control_group",
    "anomaly",
    "excluded",
    "vp",
    "test_url",
    "start_time",
    "end_time",
    "exclude_reason",
    "location",
    "response",
)
PAGE_FETCH_KEYS: Final = (
    "ip",
    "keyword",
    "http",
    "https",
    "fetched",
    "start_time",
    "end_time",
    "trusted_cert",
    "cert_hostname_match",
)
PROFILE_KEYS: Final = (
    "resolver",
    "non_zero_rcode",
    "private_ip",
    "zero_ip",
    "connect_error",
    "invalid_cert",
)

#: Test-resolver scenarios and their weights. Every scenario appears at least once when
#: the scan has enough test measurements (about 30; the default size has ~150).
SATELLITE_SCENARIOS: Final[tuple[tuple[str, float], ...]] = (
    ("match", 55.0),  # answers = the control answers (all tags matched)
    ("match_partial", 6.0),  # another address of the same provider: some tags matched
    ("match_mixed", 2.0),  # one matching and one unrelated answer
    ("retry_pass", 3.0),  # timeouts / refusals, then a matching answer
    ("liveness_retry", 2.0),  # first a.root-servers.net probe got no A record
    ("nxdomain", 4.0),
    ("nxdomain_excluded", 0.5),  # verify step: excluded, domain_below_threshold
    ("servfail", 2.5),
    ("refused", 2.5),
    ("timeout", 3.0),  # 4 x "read udp ...: i/o timeout"
    ("connerr_null", 0.7),  # rcode -1 with the error "null" (seen in real data)
    ("connrefused", 1.5),  # 4 x "read udp ...: read: connection refused"
    ("liveness_failed", 1.5),  # both liveness probes failed: passed_liveness false
    ("empty", 1.5),  # NOERROR without A records
    ("zero_ip", 1.0),  # 0.0.0.0
    ("localhost", 0.7),  # 127.0.0.1
    ("private", 1.0),  # 10/8, 172.16/12, 192.168/16
    ("blockpage:guard_server", 1.5),  # blockpage with a Server-header signature
    ("blockpage:warning_redirect", 1.5),  # blockpage with a Location-header signature
    ("sinkhole", 1.0),  # fetches fail with EOF / refused
    ("cert_mismatch", 1.0),  # https cert of an unrelated hosting name (trusted CA)
    ("middlebox", 0.7),  # self-signed middlebox cert + blockpage
    ("untrusted_ca", 0.7),  # cert for the domain, signed by an untrusted inspection CA
    ("cdn_anomaly", 1.5),  # another CDN's edge: anomaly, excluded is_CDN, valid cert
)
_SAT_ANOMALIES: Final = frozenset(
    {
        "nxdomain",
        "nxdomain_excluded",
        "servfail",
        "refused",
        "timeout",
        "connerr_null",
        "connrefused",
        "empty",
        "blockpage:guard_server",
        "blockpage:warning_redirect",
        "sinkhole",
        "cert_mismatch",
        "middlebox",
        "untrusted_ca",
        "cdn_anomaly",
    }
)
_SAT_RCODES: Final = {"nxdomain": 3, "nxdomain_excluded": 3, "servfail": 2, "refused": 5}

#: Local address of the (synthetic) Satellite prober.
_SAT_LOCAL_IP: Final = "198.51.100.185"
_SAT_MIN_RESOLVERS: Final = 8
_GO_ZONES: Final = {-18000: "EST", -14400: "EDT", 0: "UTC"}
_TAG_NAMES: Final = ("http", "cert", "asnum", "asname")


@dataclass(frozen=True, slots=True)
class _Provider:
    """Where a site is hosted: AS, /16 prefixes its addresses come from, Server header."""

    asname: str
    asn: int
    prefixes: tuple[str, ...]
    server: str


_CDN_PROVIDERS: Final = (
    _Provider("AMAZON-02", 16509, ("13.224", "13.225", "52.84", "99.86"), "CloudFront"),
    _Provider("AKAMAI-AS", 16625, ("23.1", "23.54", "184.25"), "AkamaiGHost"),
    _Provider("CLOUDFLARENET", 13335, ("104.16", "104.21", "172.67"), "cloudflare"),
    _Provider("GOOGLE", 15169, ("142.250", "172.217"), "gws"),
    _Provider("FASTLY", 54113, ("151.101",), "Varnish"),
)
#: CDNs a verify step flags as ``is_CDN`` (AMAZON|Akamai|OPENDNS|CLOUDFLARENET|GOOGLE).
_EXCLUDED_CDNS: Final = _CDN_PROVIDERS[:4]
_HOSTING_PROVIDERS: Final = (
    _Provider("HETZNER-AS", 24940, ("88.198", "136.243"), "nginx"),
    _Provider("OVH", 16276, ("51.68", "54.36"), "Apache"),
    _Provider("DIGITALOCEAN-ASN", 14061, ("159.89", "167.99"), "nginx/1.18.0"),
    _Provider("AS-CHOOPA", 20473, ("45.76", "108.61"), "Apache/2.4.41 (Ubuntu)"),
    _Provider("LINODE-AP Linode, LLC", 63949, ("172.104", "139.162"), "nginx"),
)
_PTR_WORDS: Final = (
    "sample-telecom",
    "isp-sample",
    "metro-sample",
    "citynet-sample",
    "backbone-sample",
    "cable-sample",
)
_FETCH_ERRORS_HTTPS: Final = (
    "remote error: handshake failure",
    "remote error: protocol version not supported",
    "net/http: request canceled (Client.Timeout exceeded while awaiting headers)",
)


def satellite_domains() -> tuple[str, ...]:
    """Test domains of the generated Satellite scans: the sample domains (no URL paths),
    in alphabetical order, the order the prober walks them in the real files."""
    return tuple(sorted([d for d, _ in SAMPLE_DOMAIN_CATEGORIES] + list(UNLISTED_DOMAINS)))


class _GoClock:
    """Formats epoch nanoseconds like Go's ``time.String()`` in a fixed zone.

    ``2021-10-20 14:51:41.221546144 -0400 EDT``: trailing zeros of the fraction trimmed
    (no fraction at all on a whole second); with ``mono`` the monotonic reading is
    appended as `` m=+24069.053224779`` (always 9 digits), as in ``blockpages.json``.
    """

    __slots__ = ("_cache", "_offset", "suffix")

    def __init__(self, start: datetime) -> None:
        off = start.utcoffset()
        if off is None:
            raise ValueError("start must be timezone-aware")
        offset_s = int(off.total_seconds())
        sign = "-" if offset_s < 0 else "+"
        hh, mm = divmod(abs(offset_s) // 60, 60)
        numeric = f"{sign}{hh:02d}{mm:02d}"
        self.suffix = f" {numeric} {_GO_ZONES.get(offset_s, numeric)}"
        self._offset = offset_s
        self._cache: dict[int, str] = {}

    def fmt(self, ns: int, mono: int | None = None) -> str:
        sec, frac = divmod(ns, NS)
        prefix = self._cache.get(sec)
        if prefix is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            prefix = (EPOCH + timedelta(seconds=sec + self._offset)).strftime("%Y-%m-%d %H:%M:%S")
            self._cache[sec] = prefix
        text = prefix + (f".{frac:09d}".rstrip("0") if frac else "") + self.suffix
        if mono is not None:
            m_sec, m_frac = divmod(abs(mono), NS)
            text += f" m={'-' if mono < 0 else '+'}{m_sec}.{m_frac:09d}"
        return text


@dataclass(frozen=True, slots=True)
class _Site:
    """A test domain's hosting: what the control resolvers answer and its tags."""

    domain: str
    provider: _Provider
    ips: tuple[str, ...]
    alt_ips: tuple[str, ...]  # other addresses of the same provider
    http: str  # sha256 of the body Censys saw ("" = none)
    cert: str  # sha256 of the certificate ("" = no TLS seen)
    cert_kind: str  # match | wildcard


@dataclass(frozen=True, slots=True)
class _Resolver:
    ip: str
    name: str
    country: tuple[str, str]
    control: bool
    isp: tuple[int, str]  # (asn, asname) of the resolver's network (censor answers)
    index: int


@dataclass(slots=True)
class _Answer:
    ip: str
    http: str = ""
    cert: str = ""
    asnum: int = 0
    asname: str = ""
    matched: list[str] | None = None

    def confidence(self) -> float:
        """Percent of this answer's tags that matched a control answer (100 if the IP did)."""
        if self.matched is None:
            return 0
        if "ip" in self.matched:
            return 100
        tags = [t for t in _TAG_NAMES if getattr(self, t)]
        if not tags:
            return 0
        return _go_number(100 * sum(t in self.matched for t in tags) / len(tags))

    def to_json(self) -> dict[str, Any]:
        return {
            "http": self.http,
            "cert": self.cert,
            "asnum": self.asnum,
            "asname": self.asname,
            "matched": self.matched,
        }


@dataclass(slots=True)
class _Roundtrip:
    url: str
    rcode: int
    error: str  # "null" when there is none, as the prober writes it
    answers: list[_Answer]
    dur: int


@dataclass(slots=True)
class _SatMeas:
    resolver: _Resolver
    site: _Site
    scenario: str
    rts: list[_Roundtrip]
    anomaly: bool = False
    passed_liveness: bool = True
    connect_error: bool = False
    excluded: bool = False
    exclude_reason: list[str] = field(default_factory=list)
    start: int = 0
    end: int = 0
    order: int = 0


@dataclass
class SatelliteScan:
    """The records of one generated Satellite v2.2 scan, per file, in file order."""

    results: list[dict[str, Any]]
    resolvers: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    blockpages: list[dict[str, Any]]
    control_pages: list[dict[str, Any]]
    extra: list[dict[str, Any]]
    dns_packet: bytes
    scenarios: list[str]  # scenario of each results.json record (same order)


def _go_number(value: float) -> float:
    """An int when whole, as Go's encoder writes float64 100 as ``100``."""
    return int(value) if float(value).is_integer() else value


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _is_private(ip: str) -> bool:
    a, b = (int(x) for x in ip.split(".")[:2])
    return a in (10, 127) or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)


class SatelliteGenerator:
    """Builds the files of one Satellite v2.2 scan from one seeded ``Random``."""

    def __init__(self, seed: int, start: datetime, n: int, domains: Sequence[str]) -> None:
        if n < 0:
            raise ValueError("n_measurements must be >= 0")
        if not domains:
            raise ValueError("domains must not be empty")
        self.seed = seed
        self.n = n
        self.rng = random.Random(f"satellite/{seed}/{SATELLITE_FORMAT}/{start.isoformat()}")
        self.clock = _GoClock(start)
        self.start_ns = epoch_ns(start)
        self.domains = list(domains)
        n_resolvers = max(_SAT_MIN_RESOLVERS, -(-n // len(self.domains)))
        self.resolvers = self._make_resolvers(n_resolvers)
        self._provider_turn = {True: self.rng.randrange(5), False: self.rng.randrange(5)}
        self.sites = {d: self._make_site(d) for d in self.domains}
        self.filler = filler_text(self.rng, BODY_CAP + 8192)

    # -- setup ---------------------------------------------------------------------------

    def _ptr_name(self, ip: str, cc: str) -> str:
        rng = self.rng
        tld = {"US": "net", "GB": "co.uk", "CA": "ca"}.get(cc, cc.lower())
        word = rng.choice(_PTR_WORDS)
        style = rng.randrange(4)
        if style == 0:
            return f"ns{rng.randint(1, 4)}.{word}.{tld}."
        if style == 1:
            return f"dns{rng.randint(1, 9)}.{word}.{tld}."
        if style == 2:
            return f"{'-'.join(reversed(ip.split('.')))}.static.{word}.{tld}."
        return f"resolver{rng.randint(1, 30)}.{word}.{tld}."

    def _make_resolvers(self, count: int) -> list[_Resolver]:
        rng = self.rng
        out = [
            _Resolver(ip, name, ("United States", "US"), True, isp, i)
            for i, ((ip, name), isp) in enumerate(
                zip(
                    SATELLITE_CONTROL_RESOLVERS,
                    ((13335, "CLOUDFLARENET"), (15169, "GOOGLE")),
                    strict=False,
                )
            )
        ]
        seen = {r.ip for r in out}
        while len(out) < count:
            first = rng.randint(1, 223)
            if first in RESERVED_FIRST_OCTETS:
                continue
            ip = f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip in seen:
                continue
            seen.add(ip)
            country = rng.choice(COUNTRIES)
            i = len(out) - len(SATELLITE_CONTROL_RESOLVERS)
            asn = 64496 + i if i < 16 else 65536 + (i - 16) % 16  # documentation ASNs
            isp = (asn, f"SAMPLENET-{country[1]} Sample Telecom {country[0]}")
            out.append(_Resolver(ip, self._ptr_name(ip, country[1]), country, False, isp, len(out)))
        return out

    def _addresses(self, provider: _Provider, count: int, avoid: set[str]) -> tuple[str, ...]:
        rng = self.rng
        out: list[str] = []
        while len(out) < count:
            ip = f"{rng.choice(provider.prefixes)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip not in avoid:
                avoid.add(ip)
                out.append(ip)
        return tuple(out)

    def _make_site(self, domain: str) -> _Site:
        rng = self.rng
        cdn = rng.random() < 0.45
        # Providers in turn (CDNs and hosters separately), so a few sites show every one.
        pool = _CDN_PROVIDERS if cdn else _HOSTING_PROVIDERS
        provider = pool[self._provider_turn[cdn] % len(pool)]
        self._provider_turn[cdn] += 1
        n_ips = rng.choice((1, 2, 2, 3, 4)) if cdn else rng.choice((1, 1, 1, 2))
        used: set[str] = set()
        ips = self._addresses(provider, n_ips, used)
        alt = self._addresses(provider, 2, used)
        cert = "" if rng.random() < 0.2 else _sha(rng)
        kind = "wildcard" if cdn and rng.random() < 0.5 else "match"
        return _Site(domain, provider, ips, alt, _sha(rng), cert, kind)

    # -- answers and roundtrips ----------------------------------------------------------

    def _ms(self, lo: float, hi: float) -> int:
        return int(self.rng.uniform(lo, hi) * MS)

    def _tagged(self, ip: str, site: _Site, matched: list[str] | None, http: str = "") -> _Answer:
        p = site.provider
        return _Answer(ip, http or site.http, site.cert, p.asn, p.asname, matched)

    def _full_match(self, site: _Site, ip: str) -> _Answer:
        tags = ["ip"] + [t for t in ("http", "cert") if getattr(site, t)] + ["asnum", "asname"]
        return self._tagged(ip, site, tags)

    def _matching(self, site: _Site, control: bool) -> list[_Answer]:
        ips = site.ips
        if not control and len(ips) > 1:
            ips = tuple(self.rng.sample(ips, self.rng.randint(1, len(ips))))
        return [self._full_match(site, ip) for ip in ips]

    def _partial(self, site: _Site) -> _Answer:
        """Another address of the site's provider: AS tags match, maybe not the body."""
        rng = self.rng
        same_body = rng.random() < 0.5
        matched = [t for t in ("http", "cert") if getattr(site, t) and (t == "cert" or same_body)]
        http = site.http if same_body else _sha(rng)
        return self._tagged(rng.choice(site.alt_ips), site, [*matched, "asnum", "asname"], http)

    def _foreign(self, provider: _Provider, ip: str) -> _Answer:
        """An answer from another network, tagged by Censys, sharing no tag with the controls."""
        rng = self.rng
        return _Answer(ip, _sha(rng), _sha(rng), provider.asn, provider.asname, None)

    def _isp_answer(self, res: _Resolver, ip: str, http: str = "") -> _Answer:
        return _Answer(ip, http, "", res.isp[0], res.isp[1], None)

    def _ok(self, url: str, answers: list[_Answer]) -> _Roundtrip:
        return _Roundtrip(url, 0, "null", sorted(answers, key=lambda a: a.ip), self._ms(15, 450))

    def _rcode(self, url: str, rcode: int) -> _Roundtrip:
        return _Roundtrip(url, rcode, "null", [], self._ms(20, 600))

    def _failed(self, url: str, res: _Resolver, kind: str) -> _Roundtrip:
        where = f"read udp {_SAT_LOCAL_IP}:{self.rng.randint(1024, 65535)}->{res.ip}:53: "
        if kind == "timeout":
            return _Roundtrip(url, -1, where + "i/o timeout", [], self._ms(2_000, 2_004))
        return _Roundtrip(url, -1, where + "read: connection refused", [], self._ms(40, 260))

    def _liveness_failure(self, res: _Resolver) -> _Roundtrip:
        rng = self.rng
        pick = rng.random()
        if pick < 0.5:
            return self._failed(LIVENESS_DOMAIN, res, "timeout")
        if pick < 0.75:
            return self._failed(LIVENESS_DOMAIN, res, "refused")
        return self._rcode(LIVENESS_DOMAIN, rng.choice((2, 5)))

    # -- measurements --------------------------------------------------------------------

    def measure(self, res: _Resolver, site: _Site, scenario: str) -> _SatMeas:
        """Roundtrips and flags of one (resolver, domain) measurement."""
        rng = self.rng
        url = site.domain
        m = _SatMeas(res, site, scenario, [], anomaly=scenario in _SAT_ANOMALIES)
        if scenario == "control":
            m.rts = [self._ok(url, self._matching(site, True))]
        elif scenario == "control_retry":
            m.rts = [self._failed(url, res, "timeout"), self._ok(url, self._matching(site, True))]
        elif scenario == "match":
            m.rts = [self._ok(url, self._matching(site, False))]
        elif scenario == "match_partial":
            m.rts = [self._ok(url, [self._partial(site)])]
        elif scenario == "match_mixed":
            hosting = rng.choice(_HOSTING_PROVIDERS)
            other = self._foreign(hosting, self._addresses(hosting, 1, set(site.ips))[0])
            m.rts = [self._ok(url, [self._full_match(site, site.ips[0]), other])]
        elif scenario == "retry_pass":
            kind = rng.choice(("timeout", "refused"))
            fails = [self._failed(url, res, kind) for _ in range(rng.randint(1, 3))]
            m.rts = [*fails, self._ok(url, self._matching(site, False))]
        elif scenario == "liveness_retry":
            m.rts = [self._liveness_failure(res), self._ok(url, self._matching(site, False))]
        elif scenario in _SAT_RCODES:
            m.rts = [self._rcode(url, _SAT_RCODES[scenario])]
            if scenario == "nxdomain_excluded":
                m.excluded = True
                m.exclude_reason = ["domain_below_threshold"]
        elif scenario in ("timeout", "connrefused"):
            kind = "timeout" if scenario == "timeout" else "refused"
            m.rts = [self._failed(url, res, kind) for _ in range(4)]
            m.connect_error = True
        elif scenario == "connerr_null":
            m.rts = [_Roundtrip(url, -1, "null", [], self._ms(100, 400))]
        elif scenario == "liveness_failed":
            kind = rng.choice(("timeout", "refused"))
            tests = [self._failed(url, res, kind) for _ in range(4)]
            live = [self._failed(LIVENESS_DOMAIN, res, kind) for _ in range(2)]
            m.rts = [live[0], *tests, live[1]]
            m.passed_liveness = False
            m.connect_error = True
        elif scenario == "empty":
            m.rts = [_Roundtrip(url, 0, "null", [], self._ms(15, 450))]
        elif scenario in ("zero_ip", "localhost", "private"):
            if scenario == "zero_ip":
                ip = "0.0.0.0"
            elif scenario == "localhost":
                ip = "127.0.0.1"
            else:
                ip = rng.choice(
                    (
                        f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                        f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                        f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                    )
                )
            m.rts = [self._ok(url, [_Answer(ip)])]  # untagged: anomaly conservatively false
        elif scenario.startswith("blockpage:"):
            offset = 50 if scenario.endswith("redirect") else 0  # one server per blockpage
            ip = f"203.0.113.{1 + offset + (res.index * 7) % 49}"
            page_hash = f"{hash_text(scenario + ip):08x}" * 8
            m.rts = [self._ok(url, [self._isp_answer(res, ip, page_hash)])]
        elif scenario == "sinkhole":
            ip = f"192.0.2.{1 + (res.index * 7) % 250}"
            m.rts = [self._ok(url, [self._isp_answer(res, ip)])]
        elif scenario == "middlebox":
            ip = f"203.0.113.{100 + (res.index * 7) % 80}"
            m.rts = [self._ok(url, [self._isp_answer(res, ip, _sha(rng))])]
        elif scenario == "untrusted_ca":
            ip = f"203.0.113.{180 + (res.index * 7) % 75}"
            m.rts = [self._ok(url, [self._isp_answer(res, ip, _sha(rng))])]
        elif scenario == "cert_mismatch":
            hosting = rng.choice(_HOSTING_PROVIDERS)
            ip = self._addresses(hosting, 1, set(site.ips))[0]
            m.rts = [self._ok(url, [self._foreign(hosting, ip)])]
        elif scenario == "cdn_anomaly":
            cdn = rng.choice([p for p in _EXCLUDED_CDNS if p is not site.provider])
            ips = self._addresses(cdn, rng.randint(1, 2), set(site.ips))
            m.rts = [self._ok(url, [self._foreign(cdn, ip) for ip in ips])]
            m.excluded = True
            m.exclude_reason = ["is_CDN"]
        else:
            raise ValueError(f"unknown Satellite scenario {scenario!r}")
        return m

    def scenarios(self, pairs: list[tuple[_Resolver, _Site]]) -> list[str]:
        """A scenario per pair: control resolvers answer normally; each test scenario
        appears once while the test pairs allow, the rest are drawn by weight."""
        rng = self.rng
        tests = [i for i, (res, _) in enumerate(pairs) if not res.control]
        guaranteed = [s for s, _ in SATELLITE_SCENARIOS]
        rng.shuffle(guaranteed)
        slots = rng.sample(tests, min(len(tests), len(guaranteed)))
        out = ["control_retry" if rng.random() < 0.03 else "control" for _ in pairs]
        population = [s for s, _ in SATELLITE_SCENARIOS]
        weights = [w for _, w in SATELLITE_SCENARIOS]
        for i, scenario in zip(tests, rng.choices(population, weights, k=len(tests)), strict=True):
            out[i] = scenario
        for i, scenario in zip(slots, guaranteed, strict=False):
            out[i] = scenario
        return out

    # -- rendering -----------------------------------------------------------------------

    def render(self, m: _SatMeas, in_control_group: bool) -> dict[str, Any]:
        final = m.rts[-1]
        answers = final.answers if final.rcode == 0 else []
        matches: list[float] | None = None
        average: float = 0
        untagged = False
        if answers:
            matches = [a.confidence() for a in answers]
            average = _go_number(sum(matches) / len(matches))
            untagged = not any(getattr(a, t) for a in answers for t in _TAG_NAMES)
        response = [
            {
                "url": rt.url,
                "has_type_a": bool(rt.answers),
                "response": {a.ip: a.to_json() for a in rt.answers},
                "error": rt.error,
                "rcode": rt.rcode,
            }
            for rt in m.rts
        ]
        res = m.resolver
        return {
            "confidence": {
                "average": average,
                "matches": matches,
                "untagged_controls": False,
                "untagged_response": untagged,
            },
            "passed_liveness": m.passed_liveness,
            "connect_error": m.connect_error,
            "in_control_group": in_control_group,
            "anomaly": m.anomaly,
            "excluded": m.excluded,
            "vp": res.ip,
            "test_url": m.site.domain,
            "start_time": self.clock.fmt(m.start),
            "end_time": self.clock.fmt(m.end),
            "exclude_reason": m.exclude_reason,
            "location": {"country_name": res.country[0], "country_code": res.country[1]},
            "response": response,
        }

    # -- page fetches --------------------------------------------------------------------

    def _tls(self) -> tuple[int, int]:
        rng = self.rng
        if rng.random() < 0.3:
            return 772, rng.choice((4865, 4866))
        return 771, rng.choice((49199, 49195, 52392))

    def _template_page(self, tpl: PageTemplate, domain: str) -> Response:
        rng = self.rng
        values = {
            "{{domain}}": domain,
            "{{url}}": domain,
            "{{num3}}": f"{rng.randint(0, 999):03d}",
            "{{num}}": str(rng.randint(1000, 99999)),
            "{{ref}}": (
                f"{rng.randint(10, 99)}.{rng.getrandbits(40):x}.{rng.randint(10**9, 2 * 10**9)}"
            ),
            "{{local}}": _SAT_LOCAL_IP,
            "{{cat}}": rng.choice(CATEGORY_WORDS),
        }
        body = fill_placeholders(tpl.body, values)
        blen = str(len(body.encode("utf-8")))
        headers = [
            (k, fill_placeholders(v, values).replace("{{len}}", blen)) for k, v in tpl.headers
        ]
        return Response(tpl.status_line, headers, body, dated=True)

    def _redirect(self, domain: str, server: str) -> Response:
        headers = [("Content-Length", "0"), ("Location", f"https://{domain}/"), ("Server", server)]
        return Response("301 Moved Permanently", headers, "", dated=True)

    def _site_page(self, domain: str, server: str) -> Response:
        rng = self.rng
        size = rng.randint(200, 3_000) if rng.random() < 0.95 else rng.randint(30_000, BODY_CAP)
        head = f"<!DOCTYPE html>\n<html>\n<head><title>{domain}</title></head>\n<body>\n"
        start = self.filler.find("<p", rng.randrange(0, 4096))
        body = (head + self.filler[start : start + size])[:size]
        headers = [
            ("Cache-Control", f"max-age={rng.choice((60, 300, 3600))}"),
            ("Content-Length", str(len(body.encode("utf-8")))),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Server", server),
        ]
        return Response("200 OK", headers, body, dated=True)

    def _https(self, resp: Response, chain: tuple[str, ...], t: int) -> dict[str, Any]:
        resp.tls = self._tls()
        resp.certs = chain
        return resp.http(t, 2, True)

    def _fetch_error(self, scheme: str, ip: str) -> str:
        rng = self.rng
        port = 443 if scheme == "https" else 80
        if scheme == "http" or rng.random() < 0.3:
            return (
                f'Get "{scheme}://{ip}:{port}/": dial tcp {ip}:{port}: connect: connection refused'
            )
        return f'Get "{scheme}://{ip}:{port}/": {rng.choice(_FETCH_ERRORS_HTTPS)}'

    def fetch(self, ip: str, site: _Site, kind: str, t: int) -> tuple[dict[str, Any], int]:
        """A blockpages.json / control_pages.json record (without times) and its duration."""
        rng = self.rng
        domain = site.domain
        http: Any
        https: Any
        trusted: bool | None = None
        hostname: bool | None = None
        dur = self._ms(40, 900)
        if kind.startswith("blockpage:"):
            tpl = next(p for p in PAGE_TEMPLATES if p.name == kind.partition(":")[2])
            http = self._template_page(tpl, domain).http(t, 2, True)
            https = self._fetch_error("https", ip)
        elif kind == "sinkhole":
            if rng.random() < 0.6:
                http, https = "EOF", "EOF"
            else:
                http, https = self._fetch_error("http", ip), self._fetch_error("https", ip)
                dur += 10 * NS if "Timeout" in https else 0
        elif kind == "middlebox":
            guard = next(p for p in PAGE_TEMPLATES if p.name == "guard_server")
            filt = next(p for p in PAGE_TEMPLATES if p.name == "guard_filter")
            http = self._template_page(guard, domain).http(t, 2, True)
            chain = certificate_chain(self.seed, "middlebox")
            https = self._https(self._template_page(filt, domain), chain, t)
            trusted, hostname = False, False
        elif kind == "cert_mismatch":
            http = self._template_page(NOT_FOUND, domain).http(t, 2, True)
            chain = certificate_chain(self.seed, "hosting")
            https = self._https(self._site_page(domain, "nginx"), chain, t)
            trusted, hostname = True, False
        elif kind == "untrusted_ca":
            http = self._redirect(domain, "nginx").http(t, 2, True)
            chain = certificate_chain(self.seed, "intercept", domain)
            https = self._https(self._site_page(domain, "nginx"), chain, t)
            trusted, hostname = False, True
        elif kind in ("cdn_anomaly", "control"):
            server = site.provider.server
            if kind == "control" and rng.random() < 0.3:
                http = self._site_page(domain, server).http(t, 2, True)
            else:
                http = self._redirect(domain, server).http(t, 2, True)
            if kind == "control" and not site.cert:
                https = self._fetch_error("https", ip)
            else:
                chain = certificate_chain(self.seed, site.cert_kind, domain)
                https = self._https(self._site_page(domain, server), chain, t)
                trusted, hostname = True, True
        else:
            raise ValueError(f"unknown page fetch kind {kind!r}")
        record = {
            "ip": ip,
            "keyword": domain,
            "http": http,
            "https": https,
            "fetched": isinstance(http, dict) or isinstance(https, dict),
            "start_time": "",
            "end_time": "",
            "trusted_cert": trusted,
            "cert_hostname_match": hostname,
        }
        return record, dur

    # -- the scan ------------------------------------------------------------------------

    def build(self) -> SatelliteScan:
        rng = self.rng
        per_domain = len(self.resolvers)
        pairs = [
            (res, self.sites[self.domains[(i // per_domain) % len(self.domains)]])
            for i, res in zip(range(self.n), itertools.cycle(self.resolvers), strict=False)
        ]
        scenarios = self.scenarios(pairs)
        # Measurements: the prober walks the domains, querying every resolver at once.
        batch_t = self.start_ns + (51 * 60 + 40) * NS + rng.randrange(NS)
        measurements: list[_SatMeas] = []
        for i, ((res, site), scenario) in enumerate(zip(pairs, scenarios, strict=True)):
            if i and i % per_domain == 0:
                batch_t += self._ms(150, 900)
            m = self.measure(res, site, scenario)
            m.start = batch_t + self._ms(0, 120)
            m.end = m.start + sum(rt.dur + self._ms(0.05, 2) for rt in m.rts)
            m.order = i
            measurements.append(m)
        controlled = {m.site.domain for m in measurements if m.resolver.control}
        by_end = sorted(measurements, key=lambda m: (m.end, m.order))
        results = [self.render(m, m.site.domain in controlled) for m in by_end]

        # Page fetches of anomalous answers (blockpages) and control answers (control_pages).
        fetch_specs: list[tuple[str, str, _Site, str]] = []  # (file, ip, site, kind)
        seen: set[tuple[str, str, str]] = set()
        invalid_cert: dict[str, int] = {}
        for m in by_end:
            if m.resolver.control:
                kind, file = "control", "control_pages"
            elif m.anomaly:
                kind, file = m.scenario, "blockpages"
            else:
                continue
            for a in m.rts[-1].answers:
                key = (file, a.ip, m.site.domain)
                if key not in seen:
                    seen.add(key)
                    fetch_specs.append((file, a.ip, m.site, kind))
            if kind in ("middlebox", "cert_mismatch", "untrusted_ca"):
                invalid_cert[m.resolver.ip] = invalid_cert.get(m.resolver.ip, 0) + 1
        last_end = max((m.end for m in measurements), default=self.start_ns)
        t = last_end + (3 * 3600 + rng.randint(0, 3000)) * NS
        mono_base = self.start_ns - rng.randint(0, 2 * NS)
        fetches: dict[str, list[tuple[int, int, dict[str, Any]]]] = {
            "blockpages": [],
            "control_pages": [],
        }
        for order, (file, ip, site, kind) in enumerate(fetch_specs):
            t += self._ms(0.1, 40)
            record, dur = self.fetch(ip, site, kind, t)
            end = t + dur
            record["start_time"] = self.clock.fmt(t, t - mono_base)
            record["end_time"] = self.clock.fmt(end, end - mono_base)
            fetches[file].append((end, order, record))

        # Resolver files.
        appeared: dict[str, _Resolver] = {}
        counts: dict[str, Counter[str]] = {}
        for m in by_end:
            appeared.setdefault(m.resolver.ip, m.resolver)
            c = counts.setdefault(m.resolver.ip, Counter())
            c["n"] += 1
            c["non_zero_rcode"] += any(rt.rcode > 0 for rt in m.rts if rt.url == m.site.domain)
            answers = m.rts[-1].answers
            c["private_ip"] += any(_is_private(a.ip) for a in answers)
            c["zero_ip"] += any(a.ip == "0.0.0.0" for a in answers)
            c["connect_error"] += m.connect_error
        resolvers = [
            {
                "vp": r.ip,
                "name": r.name,
                "location": {"country_name": r.country[0], "country_code": r.country[1]},
            }
            for r in appeared.values()
        ]
        tests = [i for i, r in enumerate(appeared.values()) if not r.control]
        if tests:  # a duplicated line, as in the real files
            dup = rng.choice(tests)
            resolvers.insert(rng.randint(dup + 1, len(resolvers)), dict(resolvers[dup]))
        profiles = []
        for ip, c in counts.items():
            n = c["n"]
            rates = {
                "non_zero_rcode": c["non_zero_rcode"] / n,
                "private_ip": c["private_ip"] / n,
                "zero_ip": c["zero_ip"] / n,
                "connect_error": c["connect_error"] / n,
                "invalid_cert": invalid_cert.get(ip, 0) / n,
            }
            profiles.append({"resolver": ip, **{k: f"{v:.4f}" for k, v in rates.items()}})
        if profiles:  # a resolver profiled but not measured in this scan
            retired = f"{rng.choice((45, 77, 114, 185))}.{rng.randint(0, 255)}"
            retired += f".{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            profiles.insert(
                rng.randint(0, len(profiles)),
                {
                    "resolver": retired,
                    **{k: f"{rng.random() * 0.2:.4f}" for k in PROFILE_KEYS[1:]},
                },
            )
        extra = [dict(p) for p in profiles if rng.random() < 0.6]
        return SatelliteScan(
            results=results,
            resolvers=resolvers,
            profiles=profiles,
            blockpages=[r for _, _, r in sorted(fetches["blockpages"], key=lambda x: x[:2])],
            control_pages=[r for _, _, r in sorted(fetches["control_pages"], key=lambda x: x[:2])],
            extra=extra,
            dns_packet=_dns_query(rng.getrandbits(16), LIVENESS_DOMAIN),
            scenarios=[m.scenario for m in by_end],
        )


def _dns_query(query_id: int, name: str) -> bytes:
    """A DNS query for ``name`` (A/IN, recursion desired, EDNS0 with 4096-byte payload)."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 1)
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split("."))
    question = qname + b"\x00" + struct.pack(">HH", 1, 1)
    opt = b"\x00" + struct.pack(">HHIH", 41, 4096, 0, 0)
    return header + question + opt


def generate_satellite_scan(
    n_measurements: int,
    seed: int,
    start: datetime,
    domains: Sequence[str] | None = None,
) -> SatelliteScan:
    """Generate the records of one Satellite v2.2 scan (``n_measurements`` results lines).

    The scan has ``max(8, ceil(n / len(domains)))`` resolvers, 1.1.1.1 and 8.8.8.8 among
    them; the prober's walk over domains × resolvers is cut after ``n_measurements``
    (resolver-major within each domain, controls first). ``start`` must be
    timezone-aware; the output depends only on the arguments.
    """
    return SatelliteGenerator(seed, start, n_measurements, domains or satellite_domains()).build()


def python_json_line(record: Any) -> bytes:
    """JSON like Python's ``json.dumps`` defaults (``", "``/``": "``, ASCII-only), no newline.

    The format of the later Satellite files written by Python tooling
    (``control_pages.json``, ``resolvers_profile.json``, ``resolver_info.json``).
    """
    return json.dumps(record).encode("ascii")


def _jsonl(lines: Iterable[bytes]) -> bytes:
    """JSON lines without a trailing newline, as the real Satellite v2.2 files end."""
    return b"\n".join(lines)


def build_satellite_files(
    size: int, seed: int, start: datetime, bad_line_ratio: float = 0.0
) -> tuple[dict[str, bytes], int, int]:
    """Members of one Satellite v2.2 scan; returns ``(members, results records, bad lines)``.

    ``results.json``, ``resolvers.json`` and ``blockpages.json`` are compact Go JSON (HTML-safe
    escapes, like the 2021 files); ``control_pages.json``, ``resolvers_profile.json`` and
    the unknown ``resolvers_extra.json`` use Python's ``json.dumps`` style (like the real
    2022/2023 ones). No file ends with a newline. Bad lines go into ``results.json`` only.
    """
    scan = generate_satellite_scan(size, seed, start)
    source = source_name(SATELLITE, start)
    results, n_bad = render_results(
        scan.results,
        seed=seed ^ hash_text(source),
        bad_line_ratio=bad_line_ratio,
        trailing_newline=False,
    )
    members = {
        "results.json": results,
        "resolvers.json": _jsonl(go_json_line(r) for r in scan.resolvers),
        "resolvers_profile.json": _jsonl(python_json_line(r) for r in scan.profiles),
        "blockpages.json": _jsonl(go_json_line(r) for r in scan.blockpages),
        "control_pages.json": _jsonl(python_json_line(r) for r in scan.control_pages),
        "resolvers_extra.json": _jsonl(python_json_line(r) for r in scan.extra),
        "dns.pkt": scan.dns_packet,
    }
    assert sorted(members) == list(SATELLITE_FILES)
    return members, len(scan.results), n_bad


def answer_networks() -> tuple[tuple[str, int, str], ...]:
    """``(prefix/16, asn, as_name)`` of the CDN and hosting networks that Satellite answers
    (outside the documentation ranges) are drawn from."""
    return tuple(
        (f"{prefix}.0.0/16", p.asn, p.asname)
        for p in (*_CDN_PROVIDERS, *_HOSTING_PROVIDERS)
        for prefix in p.prefixes
    )
