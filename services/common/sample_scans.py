"""Deterministic generator of sample Censored Planet scans: Hyperquack (echo, discard,
http, https; v1 and v2) and Satellite v2.2 (DNS).

Hyperquack records imitate the raw formats described in ``shared/docs/formats.md`` §1.1
and §2: compact Go-style JSON lines (HTML-safe escaping, raw UTF-8), RFC3339 timestamps
with nanoseconds and a local offset, Go canonical header names, fixed v1 control domains
and random v2 ``control-<hex>.com`` controls, stateful blocks, failed controls, retries,
the v1 path/host swap bug, blockpages that match the project's sample signatures, and real
DER certificates built with ``cryptography``.

A Satellite scan (§3.3) has ``results.json`` (Go ``time.String()`` times, ``"null"`` error
strings, int rcodes, inline answer tags, ``confidence`` with ``untagged_response``,
``exclude_reason`` lists, liveness roundtrips to ``a.root-servers.net``), ``resolvers.json``
(with a duplicated line), ``resolvers_profile.json`` (rates as decimal strings),
``blockpages.json`` and ``control_pages.json`` (http/https as a response object or an error
string, certificate chains as lists, ``trusted_cert``/``cert_hostname_match``), the
prober's ``dns.pkt`` and an unknown ``resolvers_extra.json``. It covers control resolvers,
NXDOMAIN/SERVFAIL/REFUSED, timeouts, refused connections, empty and private/zero answers,
blockpages whose status line + headers match the sample signatures, certificate mismatches,
untrusted CAs and CDN answers.

Everything is derived from ``random.Random`` seeded with the caller's seed: no wall
clock, no ``uuid4``, no OS randomness. The same arguments give byte-identical files.

The default set (:data:`DEFAULT_SCANS`) gives every date both families: companion scans
(:data:`COMPANION_SCANS`) put a smaller Satellite scan on each Hyperquack date and a
Hyperquack scan on the Satellite date.

Pure functions build records and file contents; only :func:`write_scan_archives`,
:func:`generate` and :func:`main` touch the file system. The CLI also writes synthetic
CAIDA IP-metadata files for the scans' servers and resolvers under ``OUT/caida``
(``services/common/sample_caida.py``; ``--no-caida`` leaves them out).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import itertools
import json
import random
import struct
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

__all__ = [
    "COMPANION_SCANS",
    "DEFAULT_SCANS",
    "DEFAULT_SIZE",
    "HYPERQUACK_SCANS",
    "LIVENESS_DOMAIN",
    "PAGE_FETCH_KEYS",
    "PAGE_TEMPLATES",
    "PROFILE_KEYS",
    "REDUCED_MIN_SIZE",
    "SAMPLE_DOMAIN_CATEGORIES",
    "SATELLITE",
    "SATELLITE_CONTROL_RESOLVERS",
    "SATELLITE_FILES",
    "SATELLITE_FORMAT",
    "SATELLITE_RESULT_KEYS",
    "SATELLITE_SCANS",
    "SATELLITE_SCENARIOS",
    "SCAN_TYPES",
    "V1_CONTROL_DOMAINS",
    "V1_KEYS",
    "V2_KEYS",
    "GenerationSummary",
    "PageTemplate",
    "SampleHost",
    "SatelliteScan",
    "ScanSpec",
    "answer_networks",
    "archive_name",
    "build_satellite_files",
    "build_scan_files",
    "certificate_chain",
    "extracted_members",
    "generate",
    "generate_hyperquack_records",
    "generate_satellite_scan",
    "go_json_line",
    "iter_hyperquack_records",
    "main",
    "python_json_line",
    "render_results",
    "sample_keywords",
    "satellite_domains",
    "scan_hosts",
    "scan_size",
    "source_name",
    "write_scan_archives",
]

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

SCAN_TYPES: Final = ("echo", "discard", "http", "https")
DEFAULT_SIZE: Final = 200
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

#: Mirrors ``resources/sample/domain_categories.csv`` (checked by the tests).
SAMPLE_DOMAIN_CATEGORIES: Final[tuple[tuple[str, str], ...]] = (
    ("www.bbc.co.uk", "News Media"),
    ("www.nytimes.com", "News Media"),
    ("www.rferl.org", "News Media"),
    ("www.dw.com", "News Media"),
    ("www.voanews.com", "News Media"),
    ("www.facebook.com", "Social Networking"),
    ("twitter.com", "Social Networking"),
    ("www.instagram.com", "Social Networking"),
    ("vk.com", "Social Networking"),
    ("www.hrw.org", "Human Rights Issues"),
    ("www.amnesty.org", "Human Rights Issues"),
    ("www.article19.org", "Human Rights Issues"),
    ("www.pokerstars.com", "Gambling"),
    ("www.bet365.com", "Gambling"),
    ("www.torproject.org", "Anonymization and circumvention tools"),
    ("psiphon.ca", "Anonymization and circumvention tools"),
    ("www.youtube.com", "Media sharing"),
    ("vimeo.com", "Media sharing"),
    ("telegram.org", "Communication Tools"),
    ("www.whatsapp.com", "Communication Tools"),
    ("www.grindr.com", "LGBT"),
    ("ilga.org", "LGBT"),
    ("www.who.int", "Public Health"),
    ("www.un.org", "Intergovernmental Organizations"),
    ("www.greenpeace.org", "Environment"),
    ("thepiratebay.org", "File-sharing"),
    ("www.bittorrent.com", "File-sharing"),
    ("www.tinder.com", "Online Dating"),
    ("www.jw.org", "Religion"),
    ("www.bahai.org", "Religion"),
    ("www.metasploit.com", "Hacking Tools"),
    ("www.erowid.org", "Alcohol & Drugs"),
    ("www.plannedparenthood.org", "Sex Education"),
    ("www.amazon.com", "E-commerce"),
    ("duckduckgo.com", "Search Engines"),
    ("wordpress.com", "Hosting and Blogging Platforms"),
    ("www.gov.uk", "Government"),
    ("www.imf.org", "Economics"),
    ("store.steampowered.com", "Gaming"),
    ("en.wikipedia.org", "Culture"),
    ("www.pornhub.com", "Pornography"),
    ("www.sample-opposition-news.example", "Political Criticism"),
)
#: Test domains that are deliberately missing from the category file.
UNLISTED_DOMAINS: Final = (
    "www.unlisted-forum.example",
    "news.sample-unknown.org",
    "mirror.sample-files.net",
    "blog.example-dissent.org",
)
#: Test URLs with a path (v1 echo/discard ``Sent`` shows the path/host swap bug for these).
URL_KEYWORDS: Final = (
    "www.hrw.org/world-report/2020/country-chapters",
    "www.rferl.org/a/article.html?id=31523",
    "www.unlisted-forum.example/thread/881?page=2",
)

_COUNTRIES: Final = (
    ("United States", "US"),
    ("China", "CN"),
    ("Russia", "RU"),
    ("Iran", "IR"),
    ("Pakistan", "PK"),
    ("Turkey", "TR"),
    ("India", "IN"),
    ("Germany", "DE"),
    ("Brazil", "BR"),
    ("Indonesia", "ID"),
    ("Kazakhstan", "KZ"),
    ("Thailand", "TH"),
    ("United Kingdom", "GB"),
    ("Norway", "NO"),
    ("Colombia", "CO"),
    ("Egypt", "EG"),
    ("Saudi Arabia", "SA"),
    ("Canada", "CA"),
    ("Vietnam", "VN"),
    ("Belarus", "BY"),
)
_CATEGORY_WORDS: Final = ("adult", "gambling", "proxy-avoidance", "news", "social-networking")
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_NO_ERROR_WINDOW: Final = ("2021-04-26", "2021-07-21")
#: First octets never used for synthetic public addresses (private, loopback, CGN, TEST-NETs).
_RESERVED_FIRST_OCTETS: Final = frozenset({0, 10, 100, 127, 169, 172, 192, 198, 203})
_BODY_CAP: Final = 65536
_NS: Final = 1_000_000_000
_MS: Final = 1_000_000
_EPOCH: Final = datetime(1970, 1, 1)

EST: Final = timezone(timedelta(hours=-5))
EDT: Final = timezone(timedelta(hours=-4))


def sample_keywords() -> tuple[str, ...]:
    """All test keywords: listed domains, unlisted domains and URLs with a path."""
    return tuple(d for d, _ in SAMPLE_DOMAIN_CATEGORIES) + UNLISTED_DOMAINS + URL_KEYWORDS


# --------------------------------------------------------------------------------------
# Response pages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageTemplate:
    """An HTTP response a middlebox or server may send instead of the expected one.

    ``fingerprint`` is the sample signature the page is built to match (``None`` for
    ordinary pages); ``false_positive`` says whether it is a false-positive signature.
    Placeholders ``{{domain}}``, ``{{url}}``, ``{{num}}``, ``{{num3}}``, ``{{ref}}``,
    ``{{local}}`` and ``{{cat}}`` are filled per measurement; ``{{len}}`` in a header
    value becomes the body length in bytes.
    """

    name: str
    fingerprint: str | None
    false_positive: bool
    status_line: str
    headers: tuple[tuple[str, str], ...]
    body: str
    newline: str = "\r\n"
    body_only: bool = False
    dated: bool = False
    cert: str = "middlebox"


_HTML_CT = ("Content-Type", "text/html; charset=UTF-8")

PAGE_TEMPLATES: Final[tuple[PageTemplate, ...]] = (
    PageTemplate(
        "isp_restricted",
        "a_prod_sample_isp_1",
        False,
        "403 Forbidden",
        (
            _HTML_CT,
            ("Content-Length", "{{len}}"),
            ("Connection", "close"),
            ("Cache-Control", "no-cache"),
        ),
        "<html>\r\n<head>\r\n<title>Web Page Restricted by Sample ISP</title>\r\n"
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n</head>\r\n'
        '<body>\r\n<div id="notice">\r\n<h2>This page is restricted</h2>\r\n'
        "<p>The address <b>{{url}}</b> is not available on this network.</p>\r\n"
        "<p>If you think this is a mistake, contact customer care and quote the reference "
        "below.</p>\r\n<p>Reference: {{ref}}</p>\r\n</div>\r\n</body>\r\n</html>\r\n",
    ),
    PageTemplate(
        "isp_notice",
        "a_prod_sample_isp_2",
        False,
        "200 OK",
        (("Content-Type", "text/html; charset=utf-8"), ("Server", "Sample-Proxy/3.1")),
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Notice</title></head>\n'
        "<body><h3>Content unavailable</h3>\n<p>Sample ISP Notice ID: 4{{num3}}</p>\n"
        "<p>Requested host: {{domain}}</p>\n</body></html>\n",
        newline="\n",
        dated=True,
    ),
    PageTemplate(
        "guard_server",
        "a_prod_sampleguard_1",
        False,
        "503 Service Unavailable",
        (
            ("Server", "SampleGuard/2.4"),
            ("Content-Type", "text/html"),
            ("Connection", "close"),
            ("Pragma", "no-cache"),
        ),
        "<html><body><h1>Request denied</h1><p>Category: {{cat}}</p>"
        "<p>Host: {{domain}}</p></body></html>",
    ),
    PageTemplate(
        "guard_filter",
        "a_prod_sampleguard_2",
        False,
        "403 Forbidden",
        (("Content-Type", "text/html; charset=utf-8"), ("X-Frame-Options", "DENY")),
        "<html>\r\n<head><title>Request Blocked</title></head>\r\n<body>\r\n"
        "<h1>Blocked by SampleGuard URL Filtering</h1>\r\n<p>URL: http://{{url}}</p>\r\n"
        "<p>User: {{local}}</p>\r\n<p>Group: default &amp; guests</p>\r\n</body>\r\n</html>\r\n",
    ),
    PageTemplate(
        "regulator",
        "b_nat_sample_regulator_1",
        False,
        "451 Unavailable For Legal Reasons",
        (("Content-Type", "text/html; charset=utf-8"), ("Connection", "close")),
        "<html>\n<head><title>Access restricted</title></head>\n<body>\n"
        "<p>The website {{domain}} has been blocked in accordance with a decision of the "
        "Sample Telecommunications Regulatory Authority.</p>\n<p>Decision no. {{num}}/2020</p>\n"
        "</body>\n</html>\n",
        newline="\n",
    ),
    PageTemplate(
        "iframe",
        "b_nat_sample_iframe_1",
        False,
        "200 OK",
        (("Content-Type", "text/html"), ("Connection", "close")),
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
        '<title>M</title></head><body><iframe src="http://blocked.sample-filter.example/?'
        'u={{domain}}&amp;c={{num}}" style="width: 100%; height: 100%" scrolling="no" '
        'marginwidth="0" marginheight="0" frameborder="0"></iframe></body></html>',
    ),
    PageTemplate(
        "warning_redirect",
        "b_nat_sample_redirect_1",
        False,
        "302 Found",
        (
            ("Location", "http://warning.sample-telecom.example/?site={{domain}}"),
            ("Content-Length", "0"),
            ("Connection", "close"),
        ),
        "",
    ),
    PageTemplate(
        "cn_restricted",
        "c_isp_sample_cn_1",
        False,
        "403 Forbidden",
        (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Server", "Sample-WAF"),
            ("Connection", "close"),
        ),
        '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">\n'
        "<title>访问受限</title>\n</head>\n<body>\n<p>您访问的网站 {{domain}} 暂时无法访问。</p>\n"
        "<p>编号: {{num}}</p>\n</body>\n</html>",
        newline="\n",
    ),
    PageTemplate(
        "ru_restricted",
        "c_isp_sample_ru_1",
        False,
        "200 OK",
        (("Content-Type", "text/html; charset=utf-8"), ("Server", "nginx")),
        '<!DOCTYPE html>\n<html lang="ru">\n<head><meta charset="utf-8">'
        "<title>Ресурс заблокирован</title></head>\n<body>\n<h2>Доступ к ресурсу ограничен</h2>\n"
        "<p>Доступ к {{domain}} ограничен на основании решения органа власти.</p>\n"
        "</body>\n</html>\n",
        newline="\n",
        dated=True,
    ),
    PageTemplate(
        "not_reachable",
        "c_isp_sample_pk_1",
        False,
        "200 OK",
        (("Content-Type", "text/html"),),
        "<html><head><title>Notice</title></head><body><p>This website is not reachable from "
        "your network (code {{num3}}).</p><p>Please contact your service provider for "
        "details.</p></body></html>",
        body_only=True,
    ),
    PageTemplate(
        "site_blocked",
        "e_unk_sample_blocked",
        False,
        "403 Forbidden",
        (("Content-Type", "text/html"), ("Cache-Control", "no-store")),
        "<html><head><title>Blocked Site</title></head><body><h1>Site Blocked</h1>"
        "<p>{{domain}}</p></body></html>",
    ),
    PageTemplate(
        "access_denied",
        "f_gen_sample_access_denied",
        False,
        "403 Forbidden",
        (_HTML_CT, ("Connection", "close"), ("P3P", 'CP="NOI DSP COR"')),
        "<HTML><HEAD>\r\n<title>Access Denied</title>\r\n</HEAD>\r\n<BODY>\r\n"
        "<h2>Access Denied</h2>\r\n"
        "<p>Your request for {{url}} was denied because of a policy violation.</p>\r\n"
        "<p>Transaction: {{ref}}</p>\r\n</BODY></HTML>\r\n",
    ),
    # False positives.
    PageTemplate(
        "parked",
        "x_sample_parked",
        True,
        "200 OK",
        (_HTML_CT, ("Server", "Apache")),
        "<html><head><title>{{domain}}</title></head><body><h1>{{domain}}</h1><p>This domain is "
        "parked free of charge with Sample Registrar.</p><p>Interested in this domain? Contact "
        "the owner.</p></body></html>",
        dated=True,
        cert="hosting",
    ),
    PageTemplate(
        "bad_gateway",
        "x_sample_bad_gateway",
        True,
        "502 Bad Gateway",
        (("Content-Type", "text/html"), ("Server", "sample-edge/1.18")),
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>sample-edge/1.18</center>\r\n"
        "</body>\r\n</html>\r\n",
        dated=True,
        cert="hosting",
    ),
    PageTemplate(
        "captive_portal",
        "x_sample_captive_portal",
        True,
        "200 OK",
        (("Content-Type", "text/html"), ("Cache-Control", "no-cache")),
        '<html><head><title>Welcome</title></head><body><form method="post" action="/login">'
        "<p>Sign in to the Sample Hotspot portal to continue browsing.</p>"
        '<input name="user"><input name="pass" type="password"></form></body></html>',
    ),
    PageTemplate(
        "maintenance",
        "x_sample_maintenance",
        True,
        "503 Service Unavailable",
        (("Content-Type", "text/html; charset=utf-8"), ("Retry-After", "3600")),
        "<!DOCTYPE html><html><head><title>Site Under Maintenance | Sample Hosting</title></head>"
        "<body><h1>We'll be back soon</h1><p>{{domain}} is undergoing scheduled maintenance.</p>"
        "</body></html>",
        cert="hosting",
    ),
)
_BLOCKPAGES: Final = tuple(t for t in PAGE_TEMPLATES if not t.false_positive)
_FALSE_POSITIVES: Final = tuple(t for t in PAGE_TEMPLATES if t.false_positive)

# Ordinary (signature-less) responses.
_AKAMAI_DENIED = PageTemplate(
    "akamai_denied",
    "x_sample_cdn_denied",
    True,
    "403 Forbidden",
    (
        ("Server", "AkamaiGHost"),
        ("Mime-Version", "1.0"),
        ("Content-Type", "text/html"),
        ("Content-Length", "{{len}}"),
        ("Expires", "{{date}}"),
    ),
    "<HTML><HEAD>\n<TITLE>Access Denied</TITLE>\n</HEAD><BODY>\n<H1>Access Denied</H1>\n \n"
    'You don\'t have permission to access "http&#58;&#47;&#47;{{domain}}&#47;" on this server.<P>\n'
    "Reference&#32;&#35;{{ref}}\n</BODY>\n</HTML>\n",
    newline="\n",
    dated=True,
    cert="wildcard",
)
_AKAMAI_REDIRECT = PageTemplate(
    "akamai_redirect",
    None,
    False,
    "301 Moved Permanently",
    (
        ("Content-Length", "0"),
        ("Location", "https://{{domain}}/"),
        ("Server", "AkamaiGHost"),
        ("Server-Timing", "cdn-cache; desc=HIT"),
        ("Server-Timing", "edge; dur=1"),
    ),
    "",
    dated=True,
    cert="wildcard",
)
_REDIRECT_HTTPS = PageTemplate(
    "redirect_https",
    None,
    False,
    "301 Moved Permanently",
    (("Location", "https://{{domain}}/"), ("Content-Length", "0"), ("Server", "nginx")),
    "",
    dated=True,
    cert="match",
)
_NOT_FOUND = PageTemplate(
    "not_found",
    None,
    False,
    "404 Not Found",
    (("Content-Type", "text/html"), ("Server", "nginx")),
    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    "<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n",
    dated=True,
    cert="wildcard",
)
_SERVER_ERROR = PageTemplate(
    "server_error",
    None,
    False,
    "500 Internal Server Error",
    (("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")),
    "Internal Server Error\n",
    cert="match",
)
_BAD_REQUEST = PageTemplate(
    "bad_request",
    None,
    False,
    "400 Bad Request",
    (("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")),
    "400 Bad Request",
)
_PROXY_ECHO = PageTemplate(
    "proxy_echo",
    None,
    False,
    "",
    (),
    "GET / HTTP/1.1\r\nHost: {{domain}}\r\nX-Forwarded-For: {{local}}\r\n"
    "Via: 1.1 sample-cache\r\n\r\n",
    body_only=True,
)
_TLS_ALERT = PageTemplate(
    "tls_alert", None, False, "", (), "\x15\x03\x01\x00\x02\x02\x16", body_only=True
)
_SSH_BANNER = PageTemplate(
    "ssh_banner", None, False, "", (), "SSH-2.0-OpenSSH_7.4\r\n", body_only=True
)


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------

_CERT_CACHE: dict[tuple[int, str, str], tuple[str, ...]] = {}
_CA_CACHE: dict[int, tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]] = {}
_INTERCEPT_CA_CACHE: dict[int, tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]] = {}
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_LEAF_VALIDITY: Final = (datetime(2020, 6, 1, tzinfo=UTC), datetime(2022, 6, 1, tzinfo=UTC))
_CA_VALIDITY: Final = (datetime(2018, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
_MIDDLEBOX_VALIDITY: Final = (datetime(2019, 3, 1, tzinfo=UTC), datetime(2029, 3, 1, tzinfo=UTC))
_HOSTING_NAME: Final = "edge.sample-hosting.example"
_MIDDLEBOX_NAME: Final = "*.sample-filter.example"
_INTERCEPT_CA_NAME: Final = "SampleGuard Inspection CA"


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ec_key(rng: random.Random) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(rng.randrange(1, _P256_ORDER), ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    rng: random.Random,
    validity: tuple[datetime, datetime],
    san: Sequence[str],
    is_ca: bool,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(rng.getrandbits(120) | (1 << 119))
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in san]), critical=False
        )
    return builder


def _b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _sample_ca(seed: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]:
    cached = _CA_CACHE.get(seed)
    if cached is None:
        rng = random.Random(f"cert/{seed}/ca")
        key = _ec_key(rng)
        name = _name("Sample Demo Root CA", "Sample Demo Trust")
        builder = _builder(name, name, key.public_key(), rng, _CA_VALIDITY, (), True)
        cert = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        cached = (key, cert, _b64(cert))
        _CA_CACHE[seed] = cached
    return cached


def _interception_ca(seed: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]:
    """A second, untrusted CA: what a TLS-inspecting middlebox signs its forged leaves with."""
    cached = _INTERCEPT_CA_CACHE.get(seed)
    if cached is None:
        rng = random.Random(f"cert/{seed}/intercept-ca")
        key = _ec_key(rng)
        name = _name(_INTERCEPT_CA_NAME, "SampleGuard Appliance")
        builder = _builder(name, name, key.public_key(), rng, _MIDDLEBOX_VALIDITY, (), True)
        cert = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        cached = (key, cert, _b64(cert))
        _INTERCEPT_CA_CACHE[seed] = cached
    return cached


def _wildcard_base(domain: str) -> str:
    labels = domain.split(".")
    return ".".join(labels[1:]) if len(labels) >= 3 else domain


def certificate_chain(seed: int, kind: str, domain: str = "") -> tuple[str, ...]:
    """Base64 DER certificate chain, leaf first, deterministic for ``(seed, kind, domain)``.

    ``kind``: ``match`` (CN/SAN = domain), ``wildcard`` (``*.parent`` + parent), ``hosting``
    (a CA-signed cert for an unrelated hosting name), ``middlebox`` (self-signed Ed25519
    cert for ``*.sample-filter.example``) or ``intercept`` (CN/SAN = domain, like ``match``,
    but signed by the untrusted "SampleGuard Inspection CA" of a TLS-inspecting middlebox).
    The ``match``/``wildcard``/``hosting`` chains share the "Sample Demo Root CA". Results
    are cached.
    """
    if kind in ("hosting", "middlebox"):
        domain = ""
    key = (seed, kind, domain)
    chain = _CERT_CACHE.get(key)
    if chain is not None:
        return chain
    rng = random.Random(f"cert/{seed}/{kind}/{domain}")
    if kind == "middlebox":
        mb_key = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        name = _name(_MIDDLEBOX_NAME, "SampleGuard Appliance")
        builder = _builder(
            name, name, mb_key.public_key(), rng, _MIDDLEBOX_VALIDITY, (_MIDDLEBOX_NAME,), False
        )
        chain = (_b64(builder.sign(mb_key, None)),)
    else:
        if kind in ("match", "intercept"):
            alt = domain[4:] if domain.startswith("www.") else "www." + domain
            cn, san = domain, (domain, alt)
        elif kind == "wildcard":
            base = _wildcard_base(domain)
            cn, san = "*." + base, ("*." + base, base)
        elif kind == "hosting":
            cn, san = _HOSTING_NAME, (_HOSTING_NAME, "*.sample-hosting.example")
        else:
            raise ValueError(f"unknown certificate kind {kind!r}")
        ca_key, ca_cert, ca_b64 = (_interception_ca if kind == "intercept" else _sample_ca)(seed)
        leaf_key = _ec_key(rng)
        builder = _builder(
            _name(cn, "Sample Sites Inc"),
            ca_cert.subject,
            leaf_key.public_key(),
            rng,
            _LEAF_VALIDITY,
            san,
            False,
        )
        chain = (_b64(builder.sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)), ca_b64)
    _CERT_CACHE[key] = chain
    return chain


# --------------------------------------------------------------------------------------
# Time formatting
# --------------------------------------------------------------------------------------


def _epoch_ns(dt: datetime) -> int:
    delta = dt.astimezone(UTC).replace(tzinfo=None) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000


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
        sec, frac = divmod(ns, _NS)
        prefix = self._cache.get(sec)
        if prefix is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            prefix = (_EPOCH + timedelta(seconds=sec + self.offset_s)).strftime("%Y-%m-%dT%H:%M:%S")
            self._cache[sec] = prefix
        if frac:
            return f"{prefix}.{frac:09d}".rstrip("0") + self.suffix
        return prefix + self.suffix


def _http_date(ns: int) -> str:
    d = _EPOCH + timedelta(seconds=ns // _NS)
    return (
        f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} GMT"
    )


_FILLER_WORDS: Final = (
    "news",
    "report",
    "press",
    "freedom",
    "election",
    "court",
    "rights",
    "media",
    "government",
    "police",
    "protest",
    "health",
    "economy",
    "market",
    "climate",
    "energy",
    "sport",
    "culture",
    "music",
    "film",
    "travel",
    "science",
    "education",
    "technology",
    "internet",
    "mobile",
    "world",
    "region",
    "city",
    "people",
)


def _filler_text(rng: random.Random, min_chars: int) -> str:
    """Paragraphs of random filler words, at least ``min_chars`` characters long."""
    parts: list[str] = []
    size = 0
    while size < min_chars:
        sentence = " ".join(rng.choice(_FILLER_WORDS) for _ in range(rng.randint(6, 18)))
        chunk = f'<p class="c{rng.randint(1, 9)}">{sentence.capitalize()}.</p>\n'
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts)


# --------------------------------------------------------------------------------------
# Measurement model
# --------------------------------------------------------------------------------------


_CANONICAL_CACHE: dict[str, str] = {}


def _canonical_header(name: str) -> str:
    """Go ``textproto.CanonicalMIMEHeaderKey`` for ASCII names (``P3P`` -> ``P3p``)."""
    canon = _CANONICAL_CACHE.get(name)
    if canon is None:
        canon = "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))
        _CANONICAL_CACHE[name] = canon
    return canon


class _Resp:
    """A concrete (per-measurement) response; rendered per roundtrip for dates."""

    __slots__ = (
        "_http_headers",
        "_raw",
        "body",
        "body_only",
        "certs",
        "dated",
        "headers",
        "newline",
        "no_headers",
        "status_line",
        "tls",
    )

    def __init__(
        self,
        status_line: str,
        headers: list[tuple[str, str]],
        body: str,
        *,
        newline: str = "\r\n",
        body_only: bool = False,
        dated: bool = False,
        no_headers: bool = False,
        tls: tuple[int, int] | None = None,
        certs: tuple[str, ...] = (),
    ) -> None:
        self.status_line = status_line
        self.headers = headers
        self.body = body
        self.newline = newline
        self.body_only = body_only
        self.dated = dated
        self.no_headers = no_headers
        self.tls = tls
        self.certs = certs
        self._raw: str | None = None
        self._http_headers: dict[str, list[str]] | None = None

    def _headers_at(self, ns: int) -> list[tuple[str, str]]:
        if not self.dated:
            return self.headers
        date = _http_date(ns)
        out = [(k, v.replace("{{date}}", date)) for k, v in self.headers]
        out.append(("Date", date))
        return out

    def raw(self, ns: int) -> str:
        """Echo/discard form: the bytes on the wire as one string."""
        if self.body_only:
            return self.body
        if self._raw is not None:
            return self._raw
        nl = self.newline
        head = "".join(f"{k}: {v}{nl}" for k, v in self._headers_at(ns))
        text = f"HTTP/1.1 {self.status_line}{nl}{head}{nl}{self.body}"
        if not self.dated:
            self._raw = text
        return text

    def http(self, ns: int, version: int, cert_list: bool) -> dict[str, Any]:
        """HTTP(S) form: ``status_line``, canonical ``headers`` (dict of lists), ``body``, TLS."""
        out: dict[str, Any] = {"status_line": self.status_line}
        if not self.no_headers:
            headers = self._http_headers
            if headers is None or self.dated:
                grouped: dict[str, list[str]] = {}
                for k, v in self._headers_at(ns):
                    grouped.setdefault(_canonical_header(k), []).append(v)
                headers = {k: grouped[k] for k in sorted(grouped)}
                self._http_headers = headers
            out["headers"] = headers
        out["body"] = self.body
        if self.tls is not None:
            tls_version, suite = self.tls
            if version == 1:
                out["tls"] = {"version": tls_version, "cipher_suite": suite, "cert": self.certs[0]}
            else:
                out["TlsVersion"] = tls_version
                out["CipherSuite"] = suite
                out["Certificate"] = list(self.certs) if cert_list else self.certs[0]
        return out


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
    resp: _Resp | str | None = None
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
    table += [(("blockpage", t.name), 7.0 / len(_BLOCKPAGES)) for t in _BLOCKPAGES]
    table += [(("false_positive", t.name), 2.0 / len(_FALSE_POSITIVES)) for t in _FALSE_POSITIVES]
    if version == 1 and scan_type in ("echo", "discard"):
        table.append((("swapped", ""), 1.5))
    if version == 2:
        table.append((("alt_port", ""), 0.5))
        table.append((("noerror", ""), 0.01))
        if scan_type in ("http", "https"):
            table.append((("multi", ""), 1.0))
    return table


class _Generator:
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
        self.t_next = _epoch_ns(start) + 1_000 * _MS + self.rng.randrange(_NS)
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
            if first in _RESERVED_FIRST_OCTETS:
                continue
            ip = f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip in seen:
                continue
            seen.add(ip)
            vps.append(_VP(ip, rng.choice(_COUNTRIES), PORTS[self.scan_type], self.scan_type))
        last = vps[-1]
        port = ALT_PORTS[self.scan_type]
        vps[-1] = _VP(last.ip, last.country, port, f"{self.scan_type}:{port}")
        return vps

    def _make_filler(self) -> str:
        return _filler_text(self.rng, _BODY_CAP + 8192)

    # -- small helpers -------------------------------------------------------------------

    def _ms(self, lo: float, hi: float) -> int:
        return int(self.rng.uniform(lo, hi) * _MS)

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

    @staticmethod
    def _fill(text: str, values: dict[str, str]) -> str:
        if "{{" not in text:
            return text
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    def _page_resp(self, tpl: PageTemplate, m: _Meas, cert_kind: str | None = None) -> _Resp:
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
            "{{cat}}": rng.choice(_CATEGORY_WORDS),
        }
        body = self._fill(tpl.body, values)
        blen = str(len(body.encode("utf-8")))
        headers = [(k, self._fill(v, values).replace("{{len}}", blen)) for k, v in tpl.headers]
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
    ) -> _Resp:
        tls: tuple[int, int] | None = None
        certs: tuple[str, ...] = ()
        if self.tls:
            tls = (771, self.rng.choice((49195, 49199, 52393)))
            certs = certificate_chain(self.seed, cert_kind, m.domain)
        return _Resp(status, headers, body, tls=tls, certs=certs, **kw)

    def _site_resp(self, m: _Meas, size: int, cert_kind: str = "match", **kw: Any) -> _Resp:
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

    def _content(self, kind: str, m: _Meas) -> tuple[_Resp, str]:
        """A non-matching response and its error class (status/body/cert/cipher/version/...)."""
        rng = self.rng
        if kind == "echo_mismatch":
            tpl = rng.choice((_BAD_REQUEST, _NOT_FOUND, _SERVER_ERROR))
            return self._page_resp(tpl, m), "echo"
        if kind == "echo_proxy":
            return self._page_resp(_PROXY_ECHO, m), "echo"
        if kind == "discard_data":
            return self._page_resp(rng.choice((_BAD_REQUEST, _SERVER_ERROR)), m), "discard"
        if kind == "discard_bytes":
            return self._page_resp(rng.choice((_TLS_ALERT, _SSH_BANNER)), m), "discard"
        if kind == "status_mismatch":
            tpl = rng.choice((_REDIRECT_HTTPS, _NOT_FOUND, _SERVER_ERROR))
            return self._page_resp(tpl, m, rng.choice(("match", "wildcard"))), "status"
        if kind == "body_mismatch":
            cert = rng.choice(("match", "wildcard"))
            return self._site_resp(m, rng.randint(1_500, 12_000), cert), "body"
        if kind == "big_body":
            size = _BODY_CAP if rng.random() < 0.5 else rng.randint(30_000, _BODY_CAP - 1)
            return self._site_resp(m, size), "body"
        if kind == "no_headers":
            return self._site_resp(m, rng.randint(300, 2_000), no_headers=True), "body"
        if kind == "akamai_redirect":
            return self._page_resp(_AKAMAI_REDIRECT, m), "status"
        if kind == "akamai_denied":
            return self._page_resp(_AKAMAI_DENIED, m), "status"
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

    def _page_error_class(self, resp: _Resp) -> str:
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

    def _content_probe(self, resp: _Resp, errors: tuple[str, str | None]) -> _Probe:
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
        resp: _Resp,
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
            tpl = rng.choice(_BLOCKPAGES)
            resp = self._page_resp(tpl, m)
            self._blocked(
                m, self._page_tests(m, resp, self._page_error_class(resp), force_none=True)
            )
        elif kind == "multi":
            tpl = rng.choice(_BLOCKPAGES)
            resp = self._page_resp(tpl, m)
            self._blocked(m, self._page_tests(m, resp, "status", force_multi=True))
        elif kind == "mixed":
            resp = self._page_resp(rng.choice(_BLOCKPAGES), m)
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
                resp = self._page_resp(rng.choice(_BLOCKPAGES), m)
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

    def _render(self, resp: _Resp, t: int, m: _Meas) -> Any:
        if self.http:
            return resp.http(t, self.version, m.cert_list)
        return resp.raw(t)

    def _gap(self) -> int:
        return self._ms(5_600, 6_400) if self.version == 1 else self._ms(2_995, 3_020)

    def render(self, m: _Meas) -> dict[str, Any]:
        """Assign times and produce the raw v1 or v2 record dict."""
        rng = self.rng
        t = self.t_next
        self.t_next += rng.randint(0, 1_800) * _MS + rng.randint(0, _MS)
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
    gen = _Generator(scan_type, version, seed, start, n_measurements, keywords or sample_keywords())
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


# --------------------------------------------------------------------------------------
# Serialisation and malformed lines
# --------------------------------------------------------------------------------------


def go_json_line(record: Any) -> bytes:
    """Compact JSON like Go's ``encoding/json``: HTML-safe escapes, raw UTF-8, no newline."""
    raw = orjson.dumps(record)
    data = raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    if data is raw:  # orjson's buffer is over-allocated; keep a tight copy instead
        data = bytes(memoryview(raw))
    if b"\xe2\x80" in data:  # U+2028 / U+2029, escaped by Go as well
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return data


BAD_LINE_KINDS: Final = (
    "truncated",
    "text",
    "array",
    "missing_key",
    "wrong_type",
    "unknown_format",
)
_GARBAGE_TEXT: Final = (
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "2021/05/30 01:01:01 worker 17: too many open files",
    "<html><body>Internal error</body></html>",
    "NaN",
)


def _bad_line(kind: str, rng: random.Random, good: list[bytes]) -> bytes:
    base = orjson.loads(rng.choice(good)) if good else {"vp": "192.0.2.1", "response": []}
    if kind == "truncated":
        text = rng.choice(good).decode("utf-8") if good else '{"vp":"192.0.2.1"}'
        return text[: rng.randint(1, max(1, len(text) - 2))].encode("utf-8")
    if kind == "text":
        return rng.choice(_GARBAGE_TEXT).encode("utf-8")
    if kind == "array":
        return go_json_line([base])
    if kind == "missing_key":
        key = "response" if "vp" in base else "Results"
        base.pop(key, None)
        return go_json_line(base)
    if kind == "wrong_type":
        key = "response" if "vp" in base else "Results"
        base[key] = "x"
        return go_json_line(base)
    if kind == "unknown_format":
        return go_json_line(
            {"ip": "192.0.2.44", "domain": "example.org", "status": "ok", "time": "2021-05-30"}
        )
    raise ValueError(kind)


def render_results(
    records: Iterable[dict[str, Any]],
    *,
    seed: int = 0,
    bad_line_ratio: float = 0.0,
    trailing_newline: bool = True,
) -> tuple[bytes, int]:
    """Serialise records as JSON lines, optionally mixing in malformed lines.

    ``bad_line_ratio`` is the fraction of all lines that are malformed (cycling through
    :data:`BAD_LINE_KINDS`). Returns ``(file bytes, number of bad lines)``.
    """
    if not 0.0 <= bad_line_ratio < 1.0:
        raise ValueError("bad_line_ratio must be in [0, 1)")
    lines = [go_json_line(r) for r in records]
    n_bad = round(bad_line_ratio * len(lines) / (1.0 - bad_line_ratio)) if bad_line_ratio else 0
    if n_bad:
        rng = random.Random(f"bad-lines/{seed}/{len(lines)}/{bad_line_ratio}")
        positions = sorted(rng.randrange(len(lines) + 1) for _ in range(n_bad))
        bad = [_bad_line(BAD_LINE_KINDS[i % len(BAD_LINE_KINDS)], rng, lines) for i in range(n_bad)]
        merged: list[bytes] = []
        j = 0
        for i, line in enumerate(lines):
            while j < n_bad and positions[j] == i:
                merged.append(bad[j])
                j += 1
            merged.append(line)
        merged.extend(bad[j:])
        lines = merged
    if trailing_newline and lines:
        lines.append(b"")
    return b"\n".join(lines), n_bad


# --------------------------------------------------------------------------------------
# Satellite v2.2 (DNS)
# --------------------------------------------------------------------------------------

SATELLITE: Final = "satellite"
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
        sec, frac = divmod(ns, _NS)
        prefix = self._cache.get(sec)
        if prefix is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            prefix = (_EPOCH + timedelta(seconds=sec + self._offset)).strftime("%Y-%m-%d %H:%M:%S")
            self._cache[sec] = prefix
        text = prefix + (f".{frac:09d}".rstrip("0") if frac else "") + self.suffix
        if mono is not None:
            m_sec, m_frac = divmod(abs(mono), _NS)
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


class _SatelliteGenerator:
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
        self.start_ns = _epoch_ns(start)
        self.domains = list(domains)
        n_resolvers = max(_SAT_MIN_RESOLVERS, -(-n // len(self.domains)))
        self.resolvers = self._make_resolvers(n_resolvers)
        self._provider_turn = {True: self.rng.randrange(5), False: self.rng.randrange(5)}
        self.sites = {d: self._make_site(d) for d in self.domains}
        self.filler = _filler_text(self.rng, _BODY_CAP + 8192)

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
            if first in _RESERVED_FIRST_OCTETS:
                continue
            ip = f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if ip in seen:
                continue
            seen.add(ip)
            country = rng.choice(_COUNTRIES)
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
        return int(self.rng.uniform(lo, hi) * _MS)

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

    def _template_page(self, tpl: PageTemplate, domain: str) -> _Resp:
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
            "{{cat}}": rng.choice(_CATEGORY_WORDS),
        }
        body = _Generator._fill(tpl.body, values)
        blen = str(len(body.encode("utf-8")))
        headers = [
            (k, _Generator._fill(v, values).replace("{{len}}", blen)) for k, v in tpl.headers
        ]
        return _Resp(tpl.status_line, headers, body, dated=True)

    def _redirect(self, domain: str, server: str) -> _Resp:
        headers = [("Content-Length", "0"), ("Location", f"https://{domain}/"), ("Server", server)]
        return _Resp("301 Moved Permanently", headers, "", dated=True)

    def _site_page(self, domain: str, server: str) -> _Resp:
        rng = self.rng
        size = rng.randint(200, 3_000) if rng.random() < 0.95 else rng.randint(30_000, _BODY_CAP)
        head = f"<!DOCTYPE html>\n<html>\n<head><title>{domain}</title></head>\n<body>\n"
        start = self.filler.find("<p", rng.randrange(0, 4096))
        body = (head + self.filler[start : start + size])[:size]
        headers = [
            ("Cache-Control", f"max-age={rng.choice((60, 300, 3600))}"),
            ("Content-Length", str(len(body.encode("utf-8")))),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Server", server),
        ]
        return _Resp("200 OK", headers, body, dated=True)

    def _https(self, resp: _Resp, chain: tuple[str, ...], t: int) -> dict[str, Any]:
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
                dur += 10 * _NS if "Timeout" in https else 0
        elif kind == "middlebox":
            guard = next(p for p in PAGE_TEMPLATES if p.name == "guard_server")
            filt = next(p for p in PAGE_TEMPLATES if p.name == "guard_filter")
            http = self._template_page(guard, domain).http(t, 2, True)
            chain = certificate_chain(self.seed, "middlebox")
            https = self._https(self._template_page(filt, domain), chain, t)
            trusted, hostname = False, False
        elif kind == "cert_mismatch":
            http = self._template_page(_NOT_FOUND, domain).http(t, 2, True)
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
        batch_t = self.start_ns + (51 * 60 + 40) * _NS + rng.randrange(_NS)
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
        t = last_end + (3 * 3600 + rng.randint(0, 3000)) * _NS
        mono_base = self.start_ns - rng.randint(0, 2 * _NS)
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
    return _SatelliteGenerator(seed, start, n_measurements, domains or satellite_domains()).build()


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


# --------------------------------------------------------------------------------------
# Scans, archives and files
# --------------------------------------------------------------------------------------


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


def source_name(scan_type: str, start: datetime) -> str:
    """Scan id, e.g. ``CP_Quack-echo-2020-11-14-07-30-11`` or ``CP_Satellite-2021-10-20-14-00-01``
    (local start time)."""
    stamp = start.strftime("%Y-%m-%d-%H-%M-%S")
    if scan_type == SATELLITE:
        return f"CP_Satellite-{stamp}"
    return f"CP_Quack-{scan_type}-{stamp}"


def archive_name(scan_type: str, start: datetime) -> str:
    """Tarball name, e.g. ``CP_Quack-echo-2020-11-14-07-30-11.tar.gz``."""
    return source_name(scan_type, start) + ".tar.gz"


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
        sat = _SatelliteGenerator(seed, spec.start, size, satellite_domains())
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
    gen = _Generator(spec.scan_type, spec.version, seed, spec.start, size, sample_keywords())
    return [SampleHost(vp.ip, vp.country[1], vp.country[0], "server") for vp in gen.vps]


def answer_networks() -> tuple[tuple[str, int, str], ...]:
    """``(prefix/16, asn, as_name)`` of the CDN and hosting networks that Satellite answers
    (outside the documentation ranges) are drawn from."""
    return tuple(
        (f"{prefix}.0.0/16", p.asn, p.asname)
        for p in (*_CDN_PROVIDERS, *_HOSTING_PROVIDERS)
        for prefix in p.prefixes
    )


def hash_text(text: str) -> int:
    """Stable 32-bit FNV-1a hash (``hash()`` is salted per process)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def extracted_members(spec: ScanSpec) -> tuple[str, ...] | None:
    """Members written under ``scans/<source>/``: ``results.json`` for Hyperquack (the only
    file the pipeline reads), every member (``None``) for Satellite, whose files join."""
    return None if spec.scan_type == SATELLITE else ("results.json",)


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
            mtime = _epoch_ns(spec.start) // _NS
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a one-line JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m services.common.sample_scans",
        description=(
            "Write deterministic sample Hyperquack and Satellite scans "
            "(archives and extracted files)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=(
            "measurements per scan (Satellite: results.json lines, resolvers x domains); "
            "the extra Satellite scans that give every date both families get a quarter "
            f"of it (at least {REDUCED_MIN_SIZE})"
        ),
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--bad-line-ratio", type=float, default=0.0, help="fraction of bad lines")
    parser.add_argument("--plain", action="store_true", help="extract the files uncompressed")
    parser.add_argument(
        "--compresslevel", type=int, default=6, choices=range(1, 10), help="gzip level (default 6)"
    )
    parser.add_argument(
        "--no-caida",
        action="store_true",
        help="do not write the synthetic CAIDA IP-metadata files under OUT/caida",
    )
    args = parser.parse_args(argv)
    if args.size < 0:
        parser.error("--size must be >= 0")
    if not 0.0 <= args.bad_line_ratio < 1.0:
        parser.error("--bad-line-ratio must be in [0, 1)")
    summary = generate(
        args.out,
        args.size,
        args.seed,
        args.bad_line_ratio,
        args.plain,
        compresslevel=args.compresslevel,
    )
    report = summary.to_json()
    if not args.no_caida:
        from services.common.sample_caida import write_caida

        caida = write_caida(args.out / "caida", DEFAULT_SCANS, args.size, args.seed)
        report["caida_files"] = len(caida.files)
        report["caida_dates"] = caida.dates
        report["bytes"] += caida.bytes
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
