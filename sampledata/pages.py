"""HTTP responses the generated measurements show: the blockpages and false-positive
pages (:data:`PAGE_TEMPLATES`, each built to match one sample signature in
``resources/sample``), ordinary pages (CDN denials, redirects, errors, non-HTTP replies),
and :class:`Response`, a concrete response rendered with HTTP dates per roundtrip and Go
canonical header names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sampledata.common import EPOCH, NS

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
BLOCKPAGES: Final = tuple(t for t in PAGE_TEMPLATES if not t.false_positive)
FALSE_POSITIVE_PAGES: Final = tuple(t for t in PAGE_TEMPLATES if t.false_positive)


# Ordinary (signature-less) responses.
AKAMAI_DENIED = PageTemplate(
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
AKAMAI_REDIRECT = PageTemplate(
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
REDIRECT_HTTPS = PageTemplate(
    "redirect_https",
    None,
    False,
    "301 Moved Permanently",
    (("Location", "https://{{domain}}/"), ("Content-Length", "0"), ("Server", "nginx")),
    "",
    dated=True,
    cert="match",
)
NOT_FOUND = PageTemplate(
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
SERVER_ERROR = PageTemplate(
    "server_error",
    None,
    False,
    "500 Internal Server Error",
    (("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")),
    "Internal Server Error\n",
    cert="match",
)
BAD_REQUEST = PageTemplate(
    "bad_request",
    None,
    False,
    "400 Bad Request",
    (("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")),
    "400 Bad Request",
)
PROXY_ECHO = PageTemplate(
    "proxy_echo",
    None,
    False,
    "",
    (),
    "GET / HTTP/1.1\r\nHost: {{domain}}\r\nX-Forwarded-For: {{local}}\r\n"
    "Via: 1.1 sample-cache\r\n\r\n",
    body_only=True,
)
TLS_ALERT = PageTemplate(
    "tls_alert", None, False, "", (), "\x15\x03\x01\x00\x02\x02\x16", body_only=True
)
SSH_BANNER = PageTemplate(
    "ssh_banner", None, False, "", (), "SSH-2.0-OpenSSH_7.4\r\n", body_only=True
)


def http_date(ns: int) -> str:
    """An HTTP ``Date`` header value (IMF-fixdate, GMT) for epoch nanoseconds."""
    d = EPOCH + timedelta(seconds=ns // NS)
    return (
        f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} GMT"
    )


_CANONICAL_CACHE: dict[str, str] = {}


def _canonical_header(name: str) -> str:
    """Go ``textproto.CanonicalMIMEHeaderKey`` for ASCII names (``P3P`` -> ``P3p``)."""
    canon = _CANONICAL_CACHE.get(name)
    if canon is None:
        canon = "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))
        _CANONICAL_CACHE[name] = canon
    return canon


class Response:
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
        date = http_date(ns)
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


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{{key}}`` of ``values`` replaced (unchanged when it has none)."""
    if "{{" not in text:
        return text
    for key, value in values.items():
        text = text.replace(key, value)
    return text
