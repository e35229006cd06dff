"""Hyperquack records (echo, discard, http, https; v1 and v2), imitating the raw
formats of ``shared/docs/formats.md`` §1.1 and §2: RFC3339 timestamps with nanoseconds and
a local offset, Go canonical header names, fixed v1 control domains and random v2
``control-<hex>.com`` controls, stateful blocks, failed controls, retries, the v1
path/host swap bug, blockpages that match the sample signatures and real certificates.

One :class:`HyperquackGenerator` handles both format versions: they share the
measurement model and most scenarios, and the version's differences (scenarios such as the
v1 swap bug or v2 alternate ports, error texts, the record layout) run through the whole
class, so v1 and v2 are not split into modules."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
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
    URL_KEYWORDS,
    epoch_ns,
    filler_text,
    sample_keywords,
)
from sampledata.pages import (
    AKAMAI_DENIED,
    AKAMAI_REDIRECT,
    BAD_REQUEST,
    BLOCKPAGES,
    FALSE_POSITIVE_PAGES,
    NOT_FOUND,
    PAGE_TEMPLATES,
    PROXY_ECHO,
    REDIRECT_HTTPS,
    SERVER_ERROR,
    SSH_BANNER,
    TLS_ALERT,
    PageTemplate,
    Response,
    fill_placeholders,
)

SCAN_TYPES: Final = ("echo", "discard", "http", "https")
PORTS: Final = {"echo": 7, "discard": 9, "http": 80, "https": 443}
ALT_PORTS: Final = {"echo": 8080, "discard": 8080, "http": 8080, "https": 8443}

V1_CONTROL_DOMAINS: Final = {
    "echo": "example5718349450314.com",
    "discard": "example5718349450314.com",
    "http": "rtyutgyhefdafioasfjhjhi.com",
    "https": "rtyutgyhefdafioasfjhjhi.com",
}
V1_KEYS: Final = (
    "Server",
    "Keyword",
    "Retries",
    "Results",
    "Blocked",
    "FailSanity",
    "StatefulBlock",
)
V2_KEYS: Final = (
    "vp",
    "location",
    "service",
    "test_url",
    "response",
    "anomaly",
    "controls_failed",
    "stateful_block",
    "tag",
)

#: Local address of the (synthetic) measurement machine, per format version.
_LOCAL_IP: Final = {1: "198.51.100.205", 2: "198.51.100.235"}
_NO_ERROR_WINDOW: Final = ("2021-04-26", "2021-07-21")


class _Clock:
    """Formats epoch nanoseconds like Go's RFC3339Nano in a fixed local offset."""

    __slots__ = ("_cache", "offset_s", "suffix")

    def __init__(self, start: datetime) -> None:
        off = start.utcoffset()
        if off is None:
            raise ValueError("start must be timezone-aware")
        self.offset_s = int(off.total_seconds())
        if self.offset_s == 0:
            self.suffix = "Z"
        else:
            sign = "-" if self.offset_s < 0 else "+"
            hh, mm = divmod(abs(self.offset_s) // 60, 60)
            self.suffix = f"{sign}{hh:02d}:{mm:02d}"
        self._cache: dict[int, str] = {}

    def fmt(self, ns: int) -> str:
        sec, frac = divmod(ns, NS)
        prefix = self._cache.get(sec)
        if prefix is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            prefix = (EPOCH + timedelta(seconds=sec + self.offset_s)).strftime("%Y-%m-%dT%H:%M:%S")
            self._cache[sec] = prefix
        if frac:
            return f"{prefix}.{frac:09d}".rstrip("0") + self.suffix
        return prefix + self.suffix


@dataclass(frozen=True, slots=True)
class _VP:
    ip: str
    country: tuple[str, str]
    port: int
    service: str


@dataclass(slots=True)
class _Probe:
    ok: bool
    error: str | None = None
    resp: Response | str | None = None
    sent_empty: bool = False
    dur: int = 0


@dataclass(slots=True)
class _Meas:
    keyword: str
    domain: str
    vp: _VP
    swapped: bool = False
    tests: list[_Probe] = field(default_factory=list)
    pre: _Probe | None = None
    post: list[_Probe] = field(default_factory=list)
    blocked: bool = False
    controls_failed: bool = False
    stateful: bool = False
    cert_list: bool = False


_Scenario = tuple[str, str]

_COMMON_FAMILIES: Final = (
    "dial_timeout",
    "dial_refused",
    "dial_reset",
    "net_unreachable",
    "no_route",
    "bind_in_use",
    "read_timeout",
    "read_reset",
)
_FAMILIES: Final = {
    "echo": (*_COMMON_FAMILIES, "write_pipe", "eof"),
    "discard": (*_COMMON_FAMILIES, "write_pipe"),
    "http": (
        *_COMMON_FAMILIES,
        "http_eof",
        "unexpected_eof",
        "request_canceled",
        "malformed_status",
    ),
    "https": (
        *_COMMON_FAMILIES,
        "http_eof",
        "request_canceled",
        "tls_handshake",
        "tls_oversized",
        "tls_timeout",
        "tls_not_tls",
    ),
}
_CONTENT_KINDS: Final = {
    "echo": ("echo_mismatch", "echo_proxy"),
    "discard": ("discard_data", "discard_bytes"),
    "http": (
        "status_mismatch",
        "body_mismatch",
        "big_body",
        "no_headers",
        "akamai_redirect",
        "akamai_denied",
        "header_mismatch",
    ),
    "https": (
        "status_mismatch",
        "body_mismatch",
        "big_body",
        "no_headers",
        "akamai_redirect",
        "akamai_denied",
        "header_mismatch",
        "cert_mismatch",
        "cipher_mismatch",
        "version_mismatch",
    ),
}
_TRANSIENT: Final = ("read_timeout", "read_reset", "dial_timeout", "dial_refused")
_V1_CONTENT_ERRORS: Final = {
    "status": "Incorrect web response: status lines don't match",
    "body": "Incorrect web response: bodies don't match",
    "cert": "Incorrect web response: certificates don't match",
    "cipher": "Incorrect web response: cipher suites don't match",
    "version": "Incorrect web response: TLS versions don't match",
}
_V2_CONTENT_ERRORS: Final = {
    "status": "Status lines do not match",
    "body": "Bodies do not match",
    "cert": "Certificates do not match",
    "cipher": "Cipher suites do not match",
    "version": "TLS versions do not match",
}


def _scenario_table(scan_type: str, version: int) -> list[tuple[_Scenario, float]]:
    """Weighted scenarios applicable to a scan type and format version."""
    table: list[tuple[_Scenario, float]] = [
        (("pass", ""), 75.0),
        (("retry_pass", ""), 6.0),
        (("stateful", ""), 2.5),
        (("controls_failed", ""), 2.5),
        (("mixed", ""), 1.0),
    ]
    families = _FAMILIES[scan_type]
    table += [(("error", f), 10.0 / len(families)) for f in families]
    kinds = [k for k in _CONTENT_KINDS[scan_type] if not (k == "header_mismatch" and version == 1)]
    table += [(("content", k), (0.3 if k == "big_body" else 6.0 / len(kinds))) for k in kinds]
    table += [(("blockpage", t.name), 7.0 / len(BLOCKPAGES)) for t in BLOCKPAGES]
    table += [
        (("false_positive", t.name), 2.0 / len(FALSE_POSITIVE_PAGES)) for t in FALSE_POSITIVE_PAGES
    ]
    if version == 1 and scan_type in ("echo", "discard"):
        table.append((("swapped", ""), 1.5))
    if version == 2:
        table.append((("alt_port", ""), 0.5))
        table.append((("noerror", ""), 0.01))
        if scan_type in ("http", "https"):
            table.append((("multi", ""), 1.0))
    return table


class HyperquackGenerator:
    """Builds the records of one scan; all randomness comes from one seeded ``Random``."""

    def __init__(
        self,
        scan_type: str,
        version: int,
        seed: int,
        start: datetime,
        n: int,
        keywords: Sequence[str],
    ) -> None:
        if scan_type not in PORTS:
            raise ValueError(f"unknown scan type {scan_type!r}")
        if version not in (1, 2):
            raise ValueError(f"unknown version {version!r}")
        self.scan_type = scan_type
        self.version = version
        self.seed = seed
        self.http = scan_type in ("http", "https")
        self.tls = scan_type == "https"
        self.rng = random.Random(f"hyperquack/{seed}/{scan_type}/v{version}/{start.isoformat()}")
        self.clock = _Clock(start)
        self.t_next = epoch_ns(start) + 1_000 * MS + self.rng.randrange(NS)
        self.local_ip = _LOCAL_IP[version]
        self.tag = start.strftime("%Y-%m-%dT%H:%M:%S")
        day = start.strftime("%Y-%m-%d")
        self.no_error_window = version == 2 and _NO_ERROR_WINDOW[0] <= day <= _NO_ERROR_WINDOW[1]
        self.keywords = list(keywords)
        self.vps = self._make_vps(max(12, n // 6))
        self.alt_vp = self.vps[-1]
        self._sent_cache: dict[tuple[str, bool], str] = {}
        self._filler = self._make_filler()

    # -- setup ---------------------------------------------------------------------------

    def _make_vps(self, count: int) -> list[_VP]:
        rng = self.rng
        seen: set[str] = set()
        vps: list[_VP] = []
        while len(vps) < count:
            first = rng.randint(1, 223)
            if first in RESERVED_FIRST_OCTETS:
                continue
            ip = f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip in seen:
                continue
            seen.add(ip)
            vps.append(_VP(ip, rng.choice(COUNTRIES), PORTS[self.scan_type], self.scan_type))
        last = vps[-1]
        port = ALT_PORTS[self.scan_type]
        vps[-1] = _VP(last.ip, last.country, port, f"{self.scan_type}:{port}")
        return vps

    def _make_filler(self) -> str:
        return filler_text(self.rng, BODY_CAP + 8192)

    # -- small helpers -------------------------------------------------------------------

    def _ms(self, lo: float, hi: float) -> int:
        return int(self.rng.uniform(lo, hi) * MS)

    def _control_url(self) -> str:
        return f"control-{self.rng.getrandbits(64):x}.com"

    def _lport(self) -> int:
        return self.rng.randint(1024, 65535)

    def _get_prefix(self, vp: _VP) -> str:
        scheme = "https" if self.tls else "http"
        host = vp.ip if vp.port == PORTS[self.scan_type] else f"{vp.ip}:{vp.port}"
        if self.version == 1:
            return f"Get {scheme}://{host}: "
        return f'Get "{scheme}://{host}": '

    def _sent_v1(self, keyword: str, swapped: bool) -> str:
        key = (keyword, swapped)
        sent = self._sent_cache.get(key)
        if sent is None:
            if self.http:
                sent = keyword
            else:
                host, slash, rest = keyword.partition("/")
                path = slash + rest if slash else "/"
                if swapped:
                    sent = f"GET {host} HTTP/1.1\r\nHost: {path}\r\n"
                else:
                    sent = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            self._sent_cache[key] = sent
        return sent

    # -- probes --------------------------------------------------------------------------

    def _ok(self) -> _Probe:
        lo, hi = (20, 400) if not self.tls else (60, 2500)
        return _Probe(True, dur=self._ms(lo, hi))

    def _error_probe(self, family: str, vp: _VP) -> _Probe:
        """A failed roundtrip with a Go network/system error string."""
        rng = self.rng
        ip, port = vp.ip, vp.port
        dial = f"dial tcp 0.0.0.0:0->{ip}:{port}: "
        conn = f"{self.local_ip}:{self._lport()}->{ip}:{port}"
        wrap = self._get_prefix(vp) if self.http else ""
        resp: str | None = None
        sent_empty = False
        if family == "dial_timeout":
            err, dur, sent_empty = (
                dial + "connect: connection timed out",
                self._ms(127_000, 131_500),
                True,
            )
        elif family == "dial_refused":
            err, dur, sent_empty = dial + "connect: connection refused", self._ms(0.2, 300), True
        elif family == "dial_reset":
            err, dur, sent_empty = (
                dial + "connect: connection reset by peer",
                self._ms(0.2, 300),
                True,
            )
        elif family == "net_unreachable":
            err, dur, sent_empty = dial + "connect: network is unreachable", self._ms(0.05, 5), True
        elif family == "no_route":
            err, dur, sent_empty = dial + "connect: no route to host", self._ms(2_900, 3_100), True
        elif family == "bind_in_use":
            err, dur, sent_empty = dial + "bind: address already in use", self._ms(0.05, 60), True
        elif family == "read_timeout":
            err = f"{wrap}read tcp {conn}: i/o timeout"
            dur = self._ms(10_000, 10_200) if self.version == 1 else self._ms(30_000, 30_200)
            sent_empty = self.scan_type == "discard" and self.version == 1
            if not self.http and (self.version == 2 or rng.random() < 0.2) and rng.random() < 0.7:
                resp = ""
        elif family == "read_reset":
            err = f"{wrap}read tcp {conn}: read: connection reset by peer"
            dur = self._ms(100, 900)
            if not self.http and self.version == 2 and rng.random() < 0.7:
                resp = ""
        elif family == "write_pipe":
            err, dur = f"write tcp {conn}: write: broken pipe", self._ms(50, 600)
        elif family == "eof":
            err, dur = "EOF", self._ms(50, 600)
        elif family == "http_eof":
            err, dur = wrap + "EOF", self._ms(80, 900)
        elif family == "unexpected_eof":
            err, dur = wrap + "unexpected EOF", self._ms(80, 900)
        elif family == "request_canceled":
            err = (
                wrap + "net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
            )
            dur = self._ms(10_000, 10_100)
        elif family == "malformed_status":
            junk = rng.choice(("HTTP/1.1 OK", "0x1F", "FORBIDDEN"))
            err = (
                wrap
                + "net/http: HTTP/1.x transport connection broken: "
                + f'malformed HTTP status code "{junk}"'
            )
            dur = self._ms(80, 900)
        elif family == "tls_handshake":
            err, dur = wrap + "remote error: tls: handshake failure", self._ms(60, 700)
        elif family == "tls_oversized":
            err = wrap + f"tls: oversized record received with length {rng.randint(16_700, 65_535)}"
            dur = self._ms(60, 700)
        elif family == "tls_timeout":
            err, dur = wrap + "net/http: TLS handshake timeout", self._ms(10_000, 10_100)
        elif family == "tls_not_tls":
            err = wrap + "tls: first record does not look like a TLS handshake"
            dur = self._ms(60, 700)
        else:
            raise ValueError(f"unknown error family {family!r}")
        return _Probe(False, err, resp, sent_empty, dur)

    def _page_resp(self, tpl: PageTemplate, m: _Meas, cert_kind: str | None = None) -> Response:
        rng = self.rng
        values = {
            "{{domain}}": m.domain,
            "{{url}}": m.keyword,
            "{{num3}}": f"{rng.randint(0, 999):03d}",
            "{{num}}": str(rng.randint(1000, 99999)),
            "{{ref}}": (
                f"{rng.randint(10, 99)}.{rng.getrandbits(40):x}.{rng.randint(10**9, 2 * 10**9)}"
            ),
            "{{local}}": self.local_ip,
            "{{cat}}": rng.choice(CATEGORY_WORDS),
        }
        body = fill_placeholders(tpl.body, values)
        blen = str(len(body.encode("utf-8")))
        headers = [
            (k, fill_placeholders(v, values).replace("{{len}}", blen)) for k, v in tpl.headers
        ]
        if tpl.name.startswith("akamai") and rng.random() < 0.15:
            headers = [(k, "GHost" if v == "AkamaiGHost" else v) for k, v in headers]
        return self._finish_resp(
            tpl.status_line,
            headers,
            body,
            cert_kind or tpl.cert,
            m,
            newline=tpl.newline,
            body_only=tpl.body_only,
            dated=tpl.dated,
        )

    def _finish_resp(
        self,
        status: str,
        headers: list[tuple[str, str]],
        body: str,
        cert_kind: str,
        m: _Meas,
        **kw: Any,
    ) -> Response:
        tls: tuple[int, int] | None = None
        certs: tuple[str, ...] = ()
        if self.tls:
            tls = (771, self.rng.choice((49195, 49199, 52393)))
            certs = certificate_chain(self.seed, cert_kind, m.domain)
        return Response(status, headers, body, tls=tls, certs=certs, **kw)

    def _site_resp(self, m: _Meas, size: int, cert_kind: str = "match", **kw: Any) -> Response:
        """A normal-looking 200 page (the site, a CDN, or a different site)."""
        rng = self.rng
        head = f"<!DOCTYPE html>\n<html>\n<head><title>{m.domain}</title></head>\n<body>\n"
        start = self._filler.find("<p", rng.randrange(0, 4096))
        body = (head + self._filler[start : start + size])[:size]
        headers = [
            ("Content-Type", "text/html; charset=UTF-8"),
            ("Server", rng.choice(("Apache/2.4.41 (Ubuntu)", "nginx/1.18.0", "Microsoft-IIS/8.5"))),
            ("Set-Cookie", f"sid={rng.getrandbits(64):016x}; path=/; HttpOnly"),
            ("Set-Cookie", f"lang=en; path=/; Max-Age={rng.randint(3600, 86400)}"),
            ("Vary", "Accept-Encoding"),
        ]
        return self._finish_resp("200 OK", headers, body, cert_kind, m, dated=True, **kw)

    def _content(self, kind: str, m: _Meas) -> tuple[Response, str]:
        """A non-matching response and its error class (status/body/cert/cipher/version/...)."""
        rng = self.rng
        if kind == "echo_mismatch":
            tpl = rng.choice((BAD_REQUEST, NOT_FOUND, SERVER_ERROR))
            return self._page_resp(tpl, m), "echo"
        if kind == "echo_proxy":
            return self._page_resp(PROXY_ECHO, m), "echo"
        if kind == "discard_data":
            return self._page_resp(rng.choice((BAD_REQUEST, SERVER_ERROR)), m), "discard"
        if kind == "discard_bytes":
            return self._page_resp(rng.choice((TLS_ALERT, SSH_BANNER)), m), "discard"
        if kind == "status_mismatch":
            tpl = rng.choice((REDIRECT_HTTPS, NOT_FOUND, SERVER_ERROR))
            return self._page_resp(tpl, m, rng.choice(("match", "wildcard"))), "status"
        if kind == "body_mismatch":
            cert = rng.choice(("match", "wildcard"))
            return self._site_resp(m, rng.randint(1_500, 12_000), cert), "body"
        if kind == "big_body":
            size = BODY_CAP if rng.random() < 0.5 else rng.randint(30_000, BODY_CAP - 1)
            return self._site_resp(m, size), "body"
        if kind == "no_headers":
            return self._site_resp(m, rng.randint(300, 2_000), no_headers=True), "body"
        if kind == "akamai_redirect":
            return self._page_resp(AKAMAI_REDIRECT, m), "status"
        if kind == "akamai_denied":
            return self._page_resp(AKAMAI_DENIED, m), "status"
        if kind == "header_mismatch":
            return self._site_resp(m, rng.randint(800, 4_000)), "header"
        if kind == "cert_mismatch":
            resp = self._site_resp(m, rng.randint(800, 4_000), rng.choice(("hosting", "middlebox")))
            return resp, "cert"
        if kind == "cipher_mismatch":
            resp = self._site_resp(m, rng.randint(800, 4_000))
            resp.tls = (771, rng.choice((156, 49172, 47)))
            return resp, "cipher"
        if kind == "version_mismatch":
            resp = self._site_resp(m, rng.randint(800, 4_000))
            resp.tls = (rng.choice((769, 770)), 49172)
            return resp, "version"
        raise ValueError(f"unknown content kind {kind!r}")

    def _page_error_class(self, resp: Response) -> str:
        if not self.http:
            return "echo" if self.scan_type == "echo" else "discard"
        if self.tls and resp.certs and len(resp.certs) == 1 and self.rng.random() < 0.3:
            return "cert"
        return "body" if resp.status_line == "200 OK" else "status"

    def _content_errors(
        self, cls: str, *, force_none: bool = False, force_multi: bool = False
    ) -> tuple[str, str | None]:
        """``(v1 error, v2 error or None)`` for a content mismatch class."""
        rng = self.rng
        if cls == "echo":
            v1, v2 = "Incorrect echo response", "echo response does not match echo request"
        elif cls == "discard":
            v1, v2 = "Received response", "discard response is not empty"
        elif cls == "header":
            name = rng.choice(("Content-Type", "Server", "Location", "Set-Cookie"))
            v1 = _V1_CONTENT_ERRORS["body"]
            v2 = f"{name} header field {rng.choice(('missing', 'mismatch'))}"
        else:
            v1 = _V1_CONTENT_ERRORS[cls]
            v2 = _V2_CONTENT_ERRORS[cls]
            if cls == "status" and rng.random() < 0.4:
                v2 = "Status lines does not match"
        if self.version == 2:
            if force_none or (self.no_error_window and not force_multi and rng.random() < 0.3):
                return v1, None
            if self.http and (force_multi or rng.random() < 0.2):
                extra = (
                    "Bodies do not match"
                    if cls != "body"
                    else "Content-Length header field mismatch"
                )
                v2 = f"{v2};{extra}"
        return v1, v2

    def _content_probe(self, resp: Response, errors: tuple[str, str | None]) -> _Probe:
        err = errors[0] if self.version == 1 else errors[1]
        return _Probe(False, err, resp, False, self._ms(150, 950))

    # -- measurements --------------------------------------------------------------------

    def _n_tests(self) -> int:
        return 5 if self.version == 1 else 4

    def _failing_tests(self, make: Callable[[], _Probe], n: int | None = None) -> list[_Probe]:
        return [make() for _ in range(self._n_tests() if n is None else n)]

    def _blocked(self, m: _Meas, tests: list[_Probe]) -> None:
        m.tests = tests
        m.pre = self._ok() if self.version == 2 else None
        m.post = [self._ok()]
        m.blocked = True

    def _page_tests(
        self,
        m: _Meas,
        resp: Response,
        cls: str,
        *,
        force_none: bool = False,
        force_multi: bool = False,
    ) -> list[_Probe]:
        errors = self._content_errors(cls, force_none=force_none, force_multi=force_multi)
        return self._failing_tests(lambda: self._content_probe(resp, errors))

    def build(self, scenario: _Scenario) -> _Meas:
        """Turn a scenario into a measurement (probes and flags, no times yet)."""
        rng = self.rng
        kind, arg = scenario
        keyword = rng.choice(self.keywords)
        vp = rng.choice(self.vps)
        if kind == "swapped":
            keyword = rng.choice(URL_KEYWORDS)
        elif kind == "alt_port":
            vp = self.alt_vp
        domain = keyword.partition("/")[0]
        m = _Meas(keyword, domain, vp)
        if self.version == 1 and not self.http:
            m.swapped = kind == "swapped" or ("/" in keyword and rng.random() < 0.5)
        m.cert_list = self.version == 2 and rng.random() < 0.5

        if kind in ("pass", "swapped", "alt_port"):
            m.tests = [self._ok()]
            m.pre = self._ok() if self.version == 2 else None
        elif kind == "retry_pass":
            k = rng.randint(1, 4) if self.version == 1 else rng.randint(1, 3)
            if rng.random() < 0.7:
                family = rng.choice(_TRANSIENT)
                fails = [self._error_probe(family, vp) for _ in range(k)]
            else:
                resp, cls = self._content(rng.choice(self._content_kinds()), m)
                errors = self._content_errors(cls)
                fails = [self._content_probe(resp, errors) for _ in range(k)]
            m.tests = [*fails, self._ok()]
            m.pre = self._ok() if self.version == 2 else None
        elif kind == "error":
            first = [self._error_probe(arg, vp) for _ in range(self._n_tests())]
            if rng.random() < 0.2:  # a different failure in the middle, like real data
                first[rng.randrange(1, len(first))] = self._error_probe(
                    rng.choice(_FAMILIES[self.scan_type]), vp
                )
            self._blocked(m, first)
        elif kind == "content":
            resp, cls = self._content(arg, m)
            self._blocked(m, self._page_tests(m, resp, cls))
        elif kind in ("blockpage", "false_positive"):
            tpl = next(t for t in PAGE_TEMPLATES if t.name == arg)
            resp = self._page_resp(tpl, m)
            self._blocked(m, self._page_tests(m, resp, self._page_error_class(resp)))
        elif kind == "noerror":
            tpl = rng.choice(BLOCKPAGES)
            resp = self._page_resp(tpl, m)
            self._blocked(
                m, self._page_tests(m, resp, self._page_error_class(resp), force_none=True)
            )
        elif kind == "multi":
            tpl = rng.choice(BLOCKPAGES)
            resp = self._page_resp(tpl, m)
            self._blocked(m, self._page_tests(m, resp, "status", force_multi=True))
        elif kind == "mixed":
            resp = self._page_resp(rng.choice(BLOCKPAGES), m)
            errors = self._content_errors(self._page_error_class(resp))
            tests = []
            for i in range(self._n_tests()):
                if i % 3 == 1:
                    tests.append(self._error_probe("dial_timeout", vp))
                else:
                    tests.append(self._content_probe(resp, errors))
            self._blocked(m, tests)
        elif kind == "stateful":
            if rng.random() < 0.5:
                resp = self._page_resp(rng.choice(BLOCKPAGES), m)
                errors = self._content_errors(self._page_error_class(resp))
                tests = self._failing_tests(lambda: self._content_probe(resp, errors))
            else:
                family = rng.choice(("read_reset", "read_timeout"))
                tests = self._failing_tests(lambda: self._error_probe(family, vp))
            self._blocked(m, tests)
            first_control = self._error_probe(
                rng.choice(("read_reset", "dial_timeout", "bind_in_use")), vp
            )
            m.post = [first_control, self._ok()]
            m.stateful = True
        elif kind == "controls_failed":
            self._controls_failed(m)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        return m

    def _content_kinds(self) -> tuple[str, ...]:
        return tuple(
            k
            for k in _CONTENT_KINDS[self.scan_type]
            if not (k == "header_mismatch" and self.version == 1)
        )

    def _controls_failed(self, m: _Meas) -> None:
        rng = self.rng
        vp = m.vp
        family = rng.choice(("dial_timeout", "read_timeout", "dial_refused", "net_unreachable"))
        m.controls_failed = True
        if self.version == 2 and rng.random() < 0.6:
            # The first control fails, so no test is sent.
            if self.http and rng.random() < 0.4:
                resp, cls = self._content(rng.choice(("body_mismatch", "status_mismatch")), m)
                m.pre = self._content_probe(resp, self._content_errors(cls))
            else:
                m.pre = self._error_probe(family, vp)
            return
        m.tests = self._failing_tests(lambda: self._error_probe(family, vp))
        m.pre = self._ok() if self.version == 2 else None
        n_controls = 2 if rng.random() < 0.5 else 1
        m.post = [self._error_probe(family, vp) for _ in range(n_controls)]

    # -- rendering -----------------------------------------------------------------------

    def _v1_rt(self, p: _Probe, sent: str, t: int, m: _Meas) -> dict[str, Any]:
        rt: dict[str, Any] = {"Sent": "" if p.sent_empty else sent}
        if p.resp is not None:
            rt["Received"] = p.resp if isinstance(p.resp, str) else self._render(p.resp, t, m)
        rt["Success"] = p.ok
        if p.error is not None:
            rt["Error"] = p.error
        rt["StartTime"] = self.clock.fmt(t)
        rt["EndTime"] = self.clock.fmt(t + p.dur)
        return rt

    def _v2_rt(self, p: _Probe, control: bool, t: int, m: _Meas) -> dict[str, Any]:
        rt: dict[str, Any] = {"matches_template": p.ok}
        if p.resp is not None:
            rt["response"] = p.resp if isinstance(p.resp, str) else self._render(p.resp, t, m)
        if p.error is not None:
            rt["error"] = p.error
        if control:
            rt["control_url"] = self._control_url()
        rt["start_time"] = self.clock.fmt(t)
        rt["end_time"] = self.clock.fmt(t + p.dur)
        return rt

    def _render(self, resp: Response, t: int, m: _Meas) -> Any:
        if self.http:
            return resp.http(t, self.version, m.cert_list)
        return resp.raw(t)

    def _gap(self) -> int:
        return self._ms(5_600, 6_400) if self.version == 1 else self._ms(2_995, 3_020)

    def render(self, m: _Meas) -> dict[str, Any]:
        """Assign times and produce the raw v1 or v2 record dict."""
        rng = self.rng
        t = self.t_next
        self.t_next += rng.randint(0, 1_800) * MS + rng.randint(0, MS)
        if self.version == 1:
            results: list[dict[str, Any]] = []
            sent = self._sent_v1(m.keyword, m.swapped)
            for i, p in enumerate(m.tests):
                if i:
                    t += self._gap()
                results.append(self._v1_rt(p, sent, t, m))
                t += p.dur
            control_sent = self._sent_v1(V1_CONTROL_DOMAINS[self.scan_type], False)
            for j, p in enumerate(m.post):
                t += rng.randint(1_000, 9_000) if j == 0 else self._ms(119_000, 121_000)
                results.append(self._v1_rt(p, control_sent, t, m))
                t += p.dur
            return {
                "Server": m.vp.ip,
                "Keyword": m.keyword,
                "Retries": len(m.tests) - 1 if m.tests else 0,
                "Results": results,
                "Blocked": m.blocked,
                "FailSanity": m.controls_failed,
                "StatefulBlock": m.stateful,
            }
        response: list[dict[str, Any]] = []
        if m.pre is not None:
            response.append(self._v2_rt(m.pre, True, t, m))
            t += m.pre.dur + rng.randint(1_000, 9_000)
        for i, p in enumerate(m.tests):
            if i:
                t += self._gap()
            response.append(self._v2_rt(p, False, t, m))
            t += p.dur
        for j, p in enumerate(m.post):
            t += self._gap() if j == 0 else self._ms(119_000, 121_000)
            response.append(self._v2_rt(p, True, t, m))
            t += p.dur
        return {
            "vp": m.vp.ip,
            "location": {"country_name": m.vp.country[0], "country_code": m.vp.country[1]},
            "service": m.vp.service,
            "test_url": m.keyword,
            "response": response,
            "anomaly": m.blocked,
            "controls_failed": m.controls_failed,
            "stateful_block": m.stateful,
            "tag": self.tag,
        }

    def scenarios(self, n: int) -> list[_Scenario]:
        """Every applicable scenario once (while ``n`` allows), the rest drawn by weight."""
        rng = self.rng
        table = _scenario_table(self.scan_type, self.version)
        guaranteed = [s for s, _ in table]
        if self.version == 2:
            guaranteed.append(("noerror", ""))
        rng.shuffle(guaranteed)
        chosen = guaranteed[:n]
        rest = n - len(chosen)
        if rest > 0:
            population = [s for s, _ in table]
            weights = [w for _, w in table]
            chosen += rng.choices(population, weights=weights, k=rest)
        rng.shuffle(chosen)
        return chosen


def iter_hyperquack_records(
    scan_type: str,
    version: int,
    n_measurements: int,
    seed: int,
    start: datetime,
    keywords: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Lazy form of :func:`generate_hyperquack_records` (same records, same order)."""
    if n_measurements < 0:
        raise ValueError("n_measurements must be >= 0")
    gen = HyperquackGenerator(
        scan_type, version, seed, start, n_measurements, keywords or sample_keywords()
    )
    return (gen.render(gen.build(s)) for s in gen.scenarios(n_measurements))


def generate_hyperquack_records(
    scan_type: str,
    version: int,
    n_measurements: int,
    seed: int,
    start: datetime,
    keywords: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n_measurements`` raw Hyperquack records (v1 or v2 dicts, in file order).

    ``start`` must be timezone-aware: its offset is used for every timestamp (e.g. -05:00
    for the 2020-11 v1 scans, -04:00 for the 2021 v2 scans). The output depends only on
    the arguments. When ``n_measurements`` is at least the number of scenarios (33-49
    depending on scan type and version), every scenario appears at least once.
    """
    return list(iter_hyperquack_records(scan_type, version, n_measurements, seed, start, keywords))
