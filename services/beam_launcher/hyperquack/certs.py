"""Parse the leaf TLS certificate of a Hyperquack HTTPS roundtrip.

Hyperquack stores the server's certificate as base64 DER: in v1 data at
``Received.tls.cert`` (a string), in v2 data at ``response.Certificate`` (a string, or from
2022 a list of strings holding the chain, leaf first). This module turns that raw value into
a :class:`CertInfo` with the fields the pipeline writes per row, and checks whether the
certificate is valid for the row's domain.

Example (``response`` is one v2 roundtrip's response object)::

    from services.beam_launcher.hyperquack.certs import leaf_certificate, parse_certificate

    leaf = leaf_certificate(response.get("Certificate"))  # str | list[str] | "" | [] | None
    info = parse_certificate(leaf, "www.example.com") if leaf else None
    if leaf and info is None:
        unparsable_certs.inc()  # counting is the caller's job; this module never logs
    # info == CertInfo(common_name='example.com', issuer='R3',
    #                  alternative_names=('example.com', 'www.example.com'),
    #                  not_before='2021-01-02T03:04:05Z', not_after='2021-04-02T03:04:04Z',
    #                  matches_domain=True)

Design notes

* :func:`parse_certificate` never raises and never logs. Anything that cannot be read (bad
  base64, bad DER, X.509 v2 or unknown version, malformed or duplicate extensions, names
  that are not valid strings, ...) gives ``None``; callers count those.
* Many rows carry the same certificate, so the DER parse and everything derived from the
  certificate alone is cached per base64 string (bounded LRU, :data:`CACHE_SIZE` entries).
  The per-domain part is a couple of set lookups. Host normalisation is cached too.
* Dates are ISO 8601 UTC with a ``Z`` suffix, to the second: ``2021-01-02T03:04:05Z``.

Hostname matching (:attr:`CertInfo.matches_domain`), following RFC 6125 and browsers:

* ``domain`` may be a bare host or a URL-ish string: scheme, userinfo, port, path, query and
  fragment are dropped (``https://WWW.Example.com:443/a?b`` → ``www.example.com``). The host
  is lowercased and one trailing dot is removed; a non-ASCII host is converted to its IDNA
  A-label form so it compares with certificate names. Empty domain (or no host left) → None.
* DNS hosts are compared with the SAN dNSName entries, case-insensitively.
* A wildcard is honoured only when it is the whole left-most label and is followed by at
  least two labels: ``*.example.com`` matches ``a.example.com`` but neither ``example.com``
  nor ``a.b.example.com``; ``*.com`` matches nothing. Partial-label wildcards (``f*.com``,
  ``*oo.example.com``) are deliberately **not** supported (as in Python 3.7+'s
  ``ssl.match_hostname`` and in browsers): such names never match.
* Only when the certificate has no dNSName SAN at all are the subject commonName values used
  instead (all of them, same wildcard rules), as the old ``ssl.match_hostname`` did. Unlike
  it, an iPAddress-only SAN does not disable this fallback (RFC 6125 §6.4.4 lists only
  DNS-ID, SRV-ID and URI-ID as suppressing the CN).
* A domain that itself contains ``*`` never matches.
* An IP-address host is compared with the SAN iPAddress entries only, never with dNSName
  entries. If the certificate has no SAN entries of either kind, a commonName that parses as
  the same IP address matches (legacy behaviour).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import ipaddress
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = [
    "CACHE_SIZE",
    "CertInfo",
    "clear_cache",
    "leaf_certificate",
    "parse_certificate",
]

#: Maximum number of distinct certificates (and of distinct domains) kept in the caches.
CACHE_SIZE = 4096

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Fields derived from a leaf certificate for one row."""

    common_name: str | None
    """First subject commonName, or None when the subject has none."""
    issuer: str | None
    """First issuer commonName, or None."""
    alternative_names: tuple[str, ...]
    """SAN dNSName entries in certificate order, then SAN iPAddress entries as strings."""
    not_before: str | None
    """Start of validity, ISO 8601 UTC with ``Z``."""
    not_after: str | None
    """End of validity, ISO 8601 UTC with ``Z``."""
    matches_domain: bool | None
    """Whether the certificate is valid for the row's domain; None when no domain."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """Everything derived from the certificate alone (cached per base64 string)."""

    common_name: str | None
    issuer: str | None
    alternative_names: tuple[str, ...]
    not_before: str | None
    not_after: str | None
    # Reference identifiers used for matching, already normalised.
    exact_names: frozenset[str]
    wildcard_parents: frozenset[str]  # "example.com" for "*.example.com"
    ip_addresses: frozenset[_IPAddress]


def leaf_certificate(value: object) -> str | None:
    """Return the base64 leaf certificate from a raw Hyperquack field, or None.

    Accepts a base64 string, a list/tuple whose first element is the leaf (the rest of the
    chain is ignored), or an empty/missing value (``""``, ``[]``, ``None``).
    """
    if isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    if isinstance(value, str) and value.strip():
        return value
    return None


def parse_certificate(cert_b64: str, domain: str) -> CertInfo | None:
    """Parse a base64 DER certificate and check it against ``domain``.

    Returns None when the certificate cannot be decoded or parsed for any reason; never
    raises. ``matches_domain`` is None when ``domain`` is empty.
    """
    if not isinstance(cert_b64, str):
        return None
    parsed = _parse_cached(cert_b64)
    if parsed is None:
        return None
    return CertInfo(
        common_name=parsed.common_name,
        issuer=parsed.issuer,
        alternative_names=parsed.alternative_names,
        not_before=parsed.not_before,
        not_after=parsed.not_after,
        matches_domain=_matches(parsed, domain),
    )


def clear_cache() -> None:
    """Empty the certificate and host caches (for tests and benchmarks)."""
    _parse_cached.cache_clear()
    _host_key.cache_clear()


# --- certificate parsing ------------------------------------------------------------------


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(cert_b64: str) -> _Parsed | None:
    try:
        der = _decode_base64(cert_b64)
        if der is None:
            return None
        return _parse_der(der)
    except Exception:  # any parse problem means "no certificate info"
        return None


def decode_certificate_text(text: str) -> bytes | None:
    """DER bytes of a base64 certificate (PEM armour, whitespace, URL-safe tolerated)."""
    return _decode_base64(text)


def _decode_base64(text: str) -> bytes | None:
    if "-----" in text:  # tolerate PEM armour
        text = "\n".join(line for line in text.splitlines() if not line.startswith("-----"))
    text = "".join(text.split())
    if "-" in text or "_" in text:  # tolerate the URL-safe alphabet
        text = text.replace("-", "+").replace("_", "/")
    text = text.rstrip("=")
    if not text or len(text) % 4 == 1:
        return None
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_der(der: bytes) -> _Parsed:
    cert = x509.load_der_x509_certificate(der)
    subject_cns = _common_names(cert.subject)
    issuer_cns = _common_names(cert.issuer)

    dns_names: list[str] = []
    ips: list[_IPAddress] = []
    # Reading .extensions parses all of them: malformed or duplicate ones raise here.
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    if isinstance(san, x509.SubjectAlternativeName):
        for general_name in san:
            if isinstance(general_name, x509.DNSName):
                dns_names.append(general_name.value)
            elif isinstance(general_name, x509.IPAddress):
                address = general_name.value
                if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    ips.append(address)

    # RFC 6125 §6.4.4: the CN is only a fallback when there is no dNSName SAN.
    reference_names = dns_names if dns_names else subject_cns
    exact: set[str] = set()
    wildcard: set[str] = set()
    for name in reference_names:
        _add_reference_name(name, exact, wildcard)
    ip_set = set(ips)
    if not dns_names and not ips:
        for name in subject_cns:
            cn_ip = _parse_ip(name.strip())
            if cn_ip is not None:
                ip_set.add(cn_ip)

    return _Parsed(
        common_name=subject_cns[0] if subject_cns else None,
        issuer=issuer_cns[0] if issuer_cns else None,
        alternative_names=(*dns_names, *(str(ip) for ip in ips)),
        not_before=_iso_utc(cert.not_valid_before_utc),
        not_after=_iso_utc(cert.not_valid_after_utc),
        exact_names=frozenset(exact),
        wildcard_parents=frozenset(wildcard),
        ip_addresses=frozenset(ip_set),
    )


def _common_names(name: x509.Name) -> list[str]:
    values: list[str] = []
    for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8")  # raises on non-UTF-8: caller returns None
        values.append(value)
    return values


def _iso_utc(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _add_reference_name(name: str, exact: set[str], wildcard: set[str]) -> None:
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return
    if "*" not in name:
        exact.add(name)
        return
    label, _, parent = name.partition(".")
    # Only a whole left-most "*" label, with at least two labels after it, is a wildcard.
    if label == "*" and "*" not in parent and "." in parent and "" not in parent.split("."):
        wildcard.add(parent)


# --- hostname matching --------------------------------------------------------------------


def _matches(parsed: _Parsed, domain: object) -> bool | None:
    if not isinstance(domain, str) or not domain:
        return None
    key = _host_key(domain)
    if key is None:
        return None
    host, ip = key
    if ip is not None:
        return ip in parsed.ip_addresses
    if "*" in host:
        return False
    if host in parsed.exact_names:
        return True
    if parsed.wildcard_parents:
        label, _, parent = host.partition(".")
        return bool(label) and parent in parsed.wildcard_parents
    return False


@functools.lru_cache(maxsize=CACHE_SIZE)
def _host_key(domain: str) -> tuple[str, _IPAddress | None] | None:
    """Normalise a row's domain to ``(host, ip_or_None)``; None when no host is left."""
    text = domain.strip()
    scheme_end = text.find("://")
    if scheme_end != -1:
        text = text[scheme_end + 3 :]
    elif text.startswith("//"):
        text = text[2:]
    for separator in "/?#":
        cut = text.find(separator)
        if cut != -1:
            text = text[:cut]
    text = text.rpartition("@")[2]  # drop userinfo
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        host = text[1:end] if end != -1 else text[1:]
    elif text.count(":") == 1:  # host:port
        host = text.partition(":")[0]
    else:  # plain host or bare IPv6 literal
        host = text
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return None
    ip = _parse_ip(host)
    if ip is not None:
        return host, ip
    if not host.isascii():
        # Compare in A-label form; an invalid IDN keeps its Unicode form and simply won't match.
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host, None


def _parse_ip(text: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
