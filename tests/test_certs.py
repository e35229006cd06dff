"""Tests for services.beam_launcher.hyperquack.certs.

Leaf certificate parsing and hostname matching.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(_PROJECT_ROOT) not in sys.path:  # plain `pytest` does not put the project root on the path
    sys.path.insert(0, str(_PROJECT_ROOT))

from services.beam_launcher.hyperquack import certs  # noqa: E402
from services.beam_launcher.hyperquack.certs import (  # noqa: E402
    CertInfo,
    leaf_certificate,
    parse_certificate,
)

REAL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"
HTTPS_V1 = REAL_FIXTURES / "https_v1" / "https_results_v1.json"
HTTPS_V2 = REAL_FIXTURES / "https_v2" / "https_results_v2.json"

NOT_BEFORE = dt.datetime(2021, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2022, 2, 3, 4, 5, 6, tzinfo=dt.UTC)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- certificate factory ------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str | None, org: str | None = None) -> x509.Name:
    attributes = []
    if org is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


def make_cert(
    key: ec.EllipticCurvePrivateKey,
    *,
    cn: str | None = "example.com",
    subject: x509.Name | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    issuer: x509.Name | None = None,
    issuer_key: PrivateKey | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
    not_before: dt.datetime = NOT_BEFORE,
    not_after: dt.datetime = NOT_AFTER,
) -> bytes:
    """DER of a certificate; self-signed unless ``issuer``/``issuer_key`` are given."""
    subject = subject if subject is not None else _name(cn, org="Test Org")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    general_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    return cert.public_bytes(Encoding.DER)


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


# --- minimal DER helpers, to build what CertificateBuilder refuses to ---------------------


def _der_tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


def _der_children(data: bytes) -> list[bytes]:
    """Split the content of a constructed DER value into its child TLVs (raw bytes)."""
    children = []
    pos = 0
    while pos < len(data):
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header = 2 + count
            length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        children.append(data[pos : pos + header + length])
        pos += header + length
    return children


def _header_len(tlv: bytes) -> int:
    return 2 if tlv[1] < 0x80 else 2 + (tlv[1] & 0x7F)


V3_VERSION_FIELD = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2


def resign_with_tbs_change(
    der: bytes, key: ec.EllipticCurvePrivateKey, change: Callable[[bytes], bytes]
) -> bytes:
    """Apply ``change`` to the TBSCertificate content, then re-sign with ``key`` (ECDSA)."""
    tbs, signature_algorithm, _signature = _der_children(der[_header_len(der) :])
    new_tbs = _der_tlv(0x30, change(tbs[_header_len(tbs) :]))
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    return _der_tlv(0x30, new_tbs + signature_algorithm + _der_tlv(0x03, b"\x00" + signature))


def drop_version(tbs_content: bytes) -> bytes:
    assert tbs_content.startswith(V3_VERSION_FIELD)
    return tbs_content[len(V3_VERSION_FIELD) :]


def set_version(value: int) -> Callable[[bytes], bytes]:
    def change(tbs_content: bytes) -> bytes:
        assert tbs_content.startswith(V3_VERSION_FIELD)
        return V3_VERSION_FIELD[:-1] + bytes([value]) + tbs_content[len(V3_VERSION_FIELD) :]

    return change


# --- leaf_certificate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("MIIB", "MIIB"),
        (["LEAF", "INTERMEDIATE", "ROOT"], "LEAF"),
        (("LEAF", "ROOT"), "LEAF"),
        (["LEAF"], "LEAF"),
        ("", None),
        ("   \n", None),
        ([], None),
        ((), None),
        (None, None),
        (["", "ROOT"], None),
        ([None], None),
        ([123], None),
        (123, None),
        ({"cert": "MIIB"}, None),
        (b"MIIB", None),
    ],
)
def test_leaf_certificate(value: object, expected: str | None) -> None:
    assert leaf_certificate(value) == expected


# --- field extraction ---------------------------------------------------------------------


def test_self_signed_with_sans(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(
        leaf_key,
        cn="www.example.com",
        dns=["www.example.com", "example.com", "static.example.net"],
        ips=["192.0.2.7", "2001:db8::1"],
    )
    info = parse_certificate(b64(der), "www.example.com")
    assert info == CertInfo(
        common_name="www.example.com",
        issuer="www.example.com",
        alternative_names=(
            "www.example.com",
            "example.com",
            "static.example.net",
            "192.0.2.7",
            "2001:db8::1",
        ),
        not_before="2021-01-02T03:04:05Z",
        not_after="2022-02-03T04:05:06Z",
        matches_domain=True,
    )


def test_ca_signed(leaf_key: ec.EllipticCurvePrivateKey, ca_key: rsa.RSAPrivateKey) -> None:
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Let's Encrypt"),
            x509.NameAttribute(NameOID.COMMON_NAME, "R3"),
        ]
    )
    der = make_cert(
        leaf_key, cn="shop.example.org", dns=["shop.example.org"], issuer=issuer, issuer_key=ca_key
    )
    cert = x509.load_der_x509_certificate(der)
    ca_key.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    info = parse_certificate(b64(der), "shop.example.org")
    assert info is not None
    assert info.common_name == "shop.example.org"
    assert info.issuer == "R3"
    assert info.alternative_names == ("shop.example.org",)
    assert info.matches_domain is True


def test_no_common_name_anywhere(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "No CN Inc")])
    der = make_cert(leaf_key, subject=subject, dns=["nocn.example"])
    info = parse_certificate(b64(der), "nocn.example")
    assert info is not None
    assert info.common_name is None
    assert info.issuer is None
    assert info.alternative_names == ("nocn.example",)
    assert info.matches_domain is True


def test_no_cn_and_no_san_matches_nothing(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(leaf_key, subject=x509.Name([]))
    info = parse_certificate(b64(der), "example.com")
    assert info is not None
    assert (info.common_name, info.issuer, info.alternative_names) == (None, None, ())
    assert info.matches_domain is False


def test_unicode_names_and_first_cn(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "中国测试"),
            x509.NameAttribute(NameOID.COMMON_NAME, "first.example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "second.example"),
        ]
    )
    der = make_cert(leaf_key, subject=subject)
    info = parse_certificate(b64(der), "second.example")
    assert info is not None
    assert info.common_name == "first.example"
    # Without dNSName SANs every CN is a reference identifier (as ssl.match_hostname did).
    assert info.matches_domain is True
    assert parse_certificate(b64(der), "first.example") == info


def test_dates_are_utc_with_z(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    # A non-UTC input time is stored in UTC; 2051 forces GeneralizedTime encoding.
    eastern = dt.timezone(dt.timedelta(hours=-5))
    der = make_cert(
        leaf_key,
        not_before=dt.datetime(2020, 11, 6, 15, 24, 18, tzinfo=eastern),
        not_after=dt.datetime(2051, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    )
    info = parse_certificate(b64(der), "")
    assert info is not None
    assert info.not_before == "2020-11-06T20:24:18Z"
    assert info.not_after == "2051-12-31T23:59:59Z"


# --- hostname matching --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wildcard_b64(leaf_key: ec.EllipticCurvePrivateKey) -> str:
    return b64(make_cert(leaf_key, cn="example.com", dns=["*.example.com", "Other.Example.NET"]))


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("a.example.com", True),  # wildcard
        ("WWW.EXAMPLE.COM", True),  # case-insensitive
        ("www.example.com.", True),  # trailing dot
        ("example.com", False),  # wildcard does not cover the apex; CN not used (has SANs)
        ("a.b.example.com", False),  # wildcard covers exactly one label
        (".example.com", False),  # empty left-most label
        ("badexample.com", False),
        ("*.example.com", False),  # a wildcard in the reference host is not a pattern
        ("other.example.net", True),  # SAN is stored mixed-case
        ("x.other.example.net", False),
        ("https://www.example.com:443/path?x=1#frag", True),
        ("www.example.com/path?x", True),
        ("www.example.com:8443", True),
        ("http://user:pw@www.example.com/", True),
        ("//cdn.example.com/lib.js", True),
        ("  www.example.com  ", True),
        ("www.example.org", False),
        ("", None),
        ("/only/a/path", None),
        ("https://", None),
    ],
)
def test_wildcard_matching(wildcard_b64: str, domain: str, expected: bool | None) -> None:
    info = parse_certificate(wildcard_b64, domain)
    assert info is not None
    assert info.matches_domain is expected


def test_apex_and_wildcard(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    cert = b64(make_cert(leaf_key, cn="example.com", dns=["example.com", "*.example.com"]))
    results = {
        d: parse_certificate(cert, d) for d in ("example.com", "m.example.com", "a.m.example.com")
    }
    assert {d: i.matches_domain for d, i in results.items() if i} == {
        "example.com": True,
        "m.example.com": True,
        "a.m.example.com": False,
    }


@pytest.mark.parametrize(
    ("san", "domain", "expected"),
    [
        ("f*.example.com", "foo.example.com", False),  # partial wildcard: not supported
        ("*oo.example.com", "foo.example.com", False),
        ("f*o.example.com", "foo.example.com", False),
        ("*.com", "example.com", False),  # wildcard over a single label (TLD)
        ("*.*.example.com", "a.b.example.com", False),
        ("a.*.example.com", "a.b.example.com", False),
        ("*", "localhost", False),
        ("*.example.com.", "a.example.com", True),  # trailing dot in the SAN
        ("xn--bcher-kva.example", "bücher.example", True),  # IDN domain vs A-label SAN
        ("xn--bcher-kva.example", "xn--bcher-kva.example", True),
        ("*.xn--bcher-kva.example", "www.bücher.example", True),
    ],
)
def test_wildcard_rules(
    leaf_key: ec.EllipticCurvePrivateKey, san: str, domain: str, expected: bool
) -> None:
    info = parse_certificate(b64(make_cert(leaf_key, cn="cn.invalid", dns=[san])), domain)
    assert info is not None
    assert info.matches_domain is expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("192.0.2.7", True),
        ("https://192.0.2.7:443/x", True),
        ("2001:db8::1", True),
        ("2001:0db8:0:0::0001", True),  # same address, other spelling
        ("[2001:db8::1]:443", True),
        ("https://[2001:DB8::1]/", True),
        ("192.0.2.8", False),
        ("198.51.100.1", False),  # present only as a dNSName string: IPs match IP SANs only
        ("ip.example", True),
    ],
)
def test_ip_matching(leaf_key: ec.EllipticCurvePrivateKey, domain: str, expected: bool) -> None:
    der = make_cert(
        leaf_key,
        cn="192.0.2.8",
        dns=["ip.example", "198.51.100.1"],
        ips=["192.0.2.7", "2001:db8::1"],
    )
    info = parse_certificate(b64(der), domain)
    assert info is not None
    assert info.alternative_names == ("ip.example", "198.51.100.1", "192.0.2.7", "2001:db8::1")
    assert info.matches_domain is expected


def test_ip_only_san_keeps_cn_fallback_for_dns(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    # No dNSName SAN: the CN is used for DNS hosts even though an iPAddress SAN exists.
    cert = b64(make_cert(leaf_key, cn="device.example", ips=["10.0.0.1"]))
    assert parse_certificate(cert, "device.example") == CertInfo(
        common_name="device.example",
        issuer="device.example",
        alternative_names=("10.0.0.1",),
        not_before="2021-01-02T03:04:05Z",
        not_after="2022-02-03T04:05:06Z",
        matches_domain=True,
    )
    info = parse_certificate(cert, "10.0.0.1")
    assert info is not None and info.matches_domain is True
    info = parse_certificate(cert, "10.0.0.2")
    assert info is not None and info.matches_domain is False


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("legacy.example", True),
        ("LEGACY.example.", True),
        ("www.legacy.example", False),
        ("other.example", False),
    ],
)
def test_cn_only_fallback(
    leaf_key: ec.EllipticCurvePrivateKey, domain: str, expected: bool
) -> None:
    info = parse_certificate(b64(make_cert(leaf_key, cn="legacy.example")), domain)
    assert info is not None
    assert info.alternative_names == ()
    assert info.matches_domain is expected


def test_wildcard_cn_fallback(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    cert = b64(make_cert(leaf_key, cn="*.legacy.example"))
    infos = [parse_certificate(cert, d) for d in ("a.legacy.example", "legacy.example")]
    assert [i.matches_domain for i in infos if i] == [True, False]


def test_cn_ip_address_fallback(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    # Self-signed device certificates often carry just CN=<ip>.
    cert = b64(make_cert(leaf_key, cn="192.168.1.1"))
    matches = [
        parse_certificate(cert, d)
        for d in ("192.168.1.1", "https://192.168.1.1:8443/", "192.168.1.2")
    ]
    assert [i.matches_domain for i in matches if i] == [True, True, False]


def test_cn_ignored_when_dns_san_present(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    cert = b64(make_cert(leaf_key, cn="cn-only.example", dns=["san.example"]))
    info = parse_certificate(cert, "cn-only.example")
    assert info is not None
    assert info.common_name == "cn-only.example"
    assert info.matches_domain is False


# --- chains and encodings -----------------------------------------------------------------


def test_chain_leaf_first(leaf_key: ec.EllipticCurvePrivateKey, ca_key: rsa.RSAPrivateKey) -> None:
    ca_name = _name("Test Root CA", org="Test CA")
    leaf = make_cert(
        leaf_key, cn="chain.example", dns=["chain.example"], issuer=ca_name, issuer_key=ca_key
    )
    ca = x509.CertificateBuilder(
        subject_name=ca_name,
        issuer_name=ca_name,
        public_key=ca_key.public_key(),
        serial_number=1,
        not_valid_before=NOT_BEFORE,
        not_valid_after=NOT_AFTER,
    ).sign(ca_key, hashes.SHA256())
    chain = [b64(leaf), b64(ca.public_bytes(Encoding.DER))]
    chosen = leaf_certificate(chain)
    assert chosen == chain[0]
    info = parse_certificate(chosen, "chain.example")
    assert info is not None
    assert (info.common_name, info.issuer, info.matches_domain) == (
        "chain.example",
        "Test Root CA",
        True,
    )
    assert leaf_certificate([]) is None


def test_tolerant_base64(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(leaf_key, cn="pad.example", dns=["pad.example"])
    text = b64(der)
    expected = parse_certificate(text, "pad.example")
    assert expected is not None and expected.matches_domain is True
    unpadded = text.rstrip("=")
    wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    pem = f"-----BEGIN CERTIFICATE-----\n{wrapped}\n-----END CERTIFICATE-----\n"
    urlsafe = base64.urlsafe_b64encode(der).decode("ascii")
    for variant in (unpadded, f"  {wrapped}\r\n", pem, urlsafe, text + "=="):
        assert parse_certificate(variant, "pad.example") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not base64 at all!",
        "@@@@",
        "A",  # impossible length
        "AAAA",  # valid base64, 3 zero bytes
        base64.b64encode(b"hello world, not a certificate").decode(),
        base64.b64encode(bytes(range(256))).decode(),
        base64.b64encode(b"\x30\x82\xff\xff").decode(),  # SEQUENCE header, no content
    ],
)
def test_garbage_gives_none(text: str) -> None:
    assert parse_certificate(text, "example.com") is None


def test_non_string_input_gives_none() -> None:
    assert parse_certificate(None, "example.com") is None  # type: ignore[arg-type]
    assert parse_certificate(b"MIIB", "example.com") is None  # type: ignore[arg-type]


def test_truncated_der(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(leaf_key, dns=["example.com"])
    for cut in (1, 10, len(der) // 2, len(der) - 1):
        assert parse_certificate(b64(der[:cut]), "example.com") is None
    assert parse_certificate(b64(der + b"\x00"), "example.com") is None  # trailing garbage


# --- versions and malformed contents ------------------------------------------------------


def test_x509_v1_certificate(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    v3 = make_cert(leaf_key, cn="v1.example")
    v1 = resign_with_tbs_change(v3, leaf_key, drop_version)
    cert = x509.load_der_x509_certificate(v1)
    assert cert.version is x509.Version.v1
    leaf_key.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
    )
    info = parse_certificate(b64(v1), "v1.example")
    assert info == CertInfo(
        common_name="v1.example",
        issuer="v1.example",
        alternative_names=(),
        not_before="2021-01-02T03:04:05Z",
        not_after="2022-02-03T04:05:06Z",
        matches_domain=True,
    )


def test_resigned_v3_still_parses(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    # Sanity check of the DER helpers: re-signing with version 2 (= v3) is a no-op change.
    v3 = make_cert(leaf_key, cn="v3.example", dns=["v3.example"])
    again = resign_with_tbs_change(v3, leaf_key, set_version(2))
    info = parse_certificate(b64(again), "v3.example")
    assert info is not None and info.alternative_names == ("v3.example",)


@pytest.mark.parametrize(
    "version_byte",
    [
        0,  # v1 encoded explicitly: DER forbids encoding the default, cryptography rejects it
        1,  # X.509 v2: cryptography raises InvalidVersion
        3,
        5,
        0x7F,
    ],
)
def test_bad_version_gives_none(leaf_key: ec.EllipticCurvePrivateKey, version_byte: int) -> None:
    v3 = make_cert(leaf_key, cn="vx.example", dns=["vx.example"])
    patched = resign_with_tbs_change(v3, leaf_key, set_version(version_byte))
    assert parse_certificate(b64(patched), "vx.example") is None


def test_invalid_version_raises_in_cryptography(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    # Documents why the module must catch more than ValueError.
    v3 = make_cert(leaf_key, cn="v2.example")
    v2 = resign_with_tbs_change(v3, leaf_key, set_version(1))
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_certificate(v2)


def test_duplicate_extension_gives_none(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(
        leaf_key,
        dns=["dup.example"],
        extensions=[
            x509.UnrecognizedExtension(ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
            x509.UnrecognizedExtension(ObjectIdentifier("1.2.3.5"), b"\x05\x00"),
        ],
    )
    assert parse_certificate(b64(der), "dup.example") is not None
    oid_4, oid_5 = b"\x06\x03\x2a\x03\x04", b"\x06\x03\x2a\x03\x05"
    assert der.count(oid_5) == 1
    duplicated = der.replace(oid_5, oid_4)
    with pytest.raises(x509.DuplicateExtension):
        _ = x509.load_der_x509_certificate(duplicated).extensions
    assert parse_certificate(b64(duplicated), "dup.example") is None


def test_malformed_san_gives_none(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(
        leaf_key,
        extensions=[x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x01\x02")],
    )
    assert parse_certificate(b64(der), "example.com") is None


def test_unknown_extension_is_fine(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(
        leaf_key,
        dns=["ext.example"],
        extensions=[x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x01")],
    )
    info = parse_certificate(b64(der), "ext.example")
    assert info is not None and info.matches_domain is True


def test_invalid_utf8_name_gives_none(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    der = make_cert(leaf_key, cn="Xample-utf8", dns=["x.example"])
    assert der.count(b"Xample-utf8") == 2  # subject and issuer (self-signed)
    broken = der.replace(b"Xample-utf8", b"X\xffmple-utf8")
    assert parse_certificate(b64(broken), "x.example") is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300), domain=st.text(max_size=60))
def test_never_raises_on_any_text(text: str, domain: str) -> None:
    result = parse_certificate(text, domain)
    assert result is None or isinstance(result, CertInfo)


_FUZZ_KEY = ec.generate_private_key(ec.SECP256R1())
_FUZZ_DER = make_cert(_FUZZ_KEY, cn="fuzz.example", dns=["fuzz.example", "*.fuzz.example"])


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_FUZZ_DER) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(1, len(_FUZZ_DER)),
    domain=st.sampled_from(["fuzz.example", "a.fuzz.example", "1.2.3.4", "", "x:y:z"]),
)
def test_never_raises_on_mutated_der(edits: list[tuple[int, int]], cut: int, domain: str) -> None:
    data = bytearray(_FUZZ_DER)
    for position, value in edits:
        data[position] = value
    result = parse_certificate(b64(bytes(data[:cut])), domain)
    assert result is None or isinstance(result, CertInfo)


# --- caching --------------------------------------------------------------------------------


def test_parse_is_cached_per_certificate(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    cert = b64(make_cert(leaf_key, cn="cache.example", dns=["cache.example"]))
    certs.clear_cache()
    first = parse_certificate(cert, "cache.example")
    # A fresh but equal string (as a new JSON row would give) hits the cache.
    second = parse_certificate("".join(list(cert)), "other.example")
    info = certs._parse_cached.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert first is not None and second is not None
    assert (first.matches_domain, second.matches_domain) == (True, False)
    assert first.alternative_names is second.alternative_names  # shared, immutable
    assert parse_certificate("garbage!", "x") is None
    assert parse_certificate("garbage!", "x") is None
    assert certs._parse_cached.cache_info().hits == 2  # failures are cached too


# --- real Hyperquack fixtures ---------------------------------------------------------------


def _walk_certs(node: Any) -> Iterator[object]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("cert", "Certificate"):
                yield value
            else:
                yield from _walk_certs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_certs(item)


def _real_certs(path: Path) -> list[tuple[str, object]]:
    """(row domain, raw certificate field) for every certificate field in a fixture."""
    if not path.exists():
        pytest.skip(f"real fixture {path} not found (expected beside the repo in ../shared)")
    found = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                domain = row.get("Keyword") or row.get("test_url") or ""
                found += [(domain, raw) for raw in _walk_certs(row)]
    return found


@pytest.mark.parametrize("path", [HTTPS_V1, HTTPS_V2], ids=["v1", "v2"])
def test_real_certificates_all_parse(path: Path) -> None:
    found = _real_certs(path)
    assert found, f"no certificates found in {path}"
    for domain, raw in found:
        leaf = leaf_certificate(raw)
        assert leaf is not None, (domain, raw)
        info = parse_certificate(leaf, domain)
        assert info is not None, domain
        assert info.common_name and info.issuer and info.alternative_names
        assert info.not_before and info.not_after
        assert info.matches_domain is not None


def _real_cert_for(path: Path, domain: str) -> str:
    for row_domain, raw in _real_certs(path):
        if row_domain == domain:
            leaf = leaf_certificate(raw)
            assert leaf is not None
            return leaf
    raise AssertionError(f"no certificate for {domain} in {path}")


def test_real_v1_bank_audi_certificate() -> None:
    # A v1 row for www.arabhra.org that received Bank Audi's Entrust EV certificate.
    leaf = _real_cert_for(HTTPS_V1, "www.arabhra.org")
    assert parse_certificate(leaf, "www.arabhra.org") == CertInfo(
        common_name="jobs.bankaudi.com.lb",
        issuer="Entrust Certification Authority - L1M",
        alternative_names=("jobs.bankaudi.com.lb", "www.jobs.bankaudi.com.lb"),
        not_before="2020-05-12T11:23:03Z",
        not_after="2021-05-12T11:53:02Z",
        matches_domain=False,
    )
    info = parse_certificate(leaf, "https://WWW.jobs.bankaudi.com.lb/OA_HTML/IrcVisitor.jsp")
    assert info is not None and info.matches_domain is True


def test_real_v1_tabikore_certificate() -> None:
    leaf = _real_cert_for(HTTPS_V1, "discover.com")
    info = parse_certificate(leaf, "discover.com")
    assert info == CertInfo(
        common_name="www.tabikore.jp",
        issuer="DigiCert SHA2 Extended Validation Server CA",
        alternative_names=("tabikore.jp", "www.tabikore.jp"),
        not_before="2020-10-05T00:00:00Z",
        not_after="2021-10-06T12:00:00Z",
        matches_domain=False,
    )


def test_real_v2_udi_certificate() -> None:
    # Subject starts with serialNumber, not CN; six SANs.
    leaf = _real_cert_for(HTTPS_V2, "4genderjustice.org")
    assert parse_certificate(leaf, "4genderjustice.org") == CertInfo(
        common_name="selfservice.udi.no",
        issuer="Buypass Class 3 CA 2",
        alternative_names=(
            "selfservice.udi.no",
            "edialog.udi.no",
            "udi.no",
            "www.edialog.udi.no",
            "www.selfservice.udi.no",
            "www.udi.no",
        ),
        not_before="2019-07-19T13:29:49Z",
        not_after="2021-07-19T21:59:00Z",
        matches_domain=False,
    )
    info = parse_certificate(leaf, "udi.no")
    assert info is not None and info.matches_domain is True


def test_real_v2_cebbank_certificate() -> None:
    # Subject has UTF-8 Chinese O/OU/ST attributes.
    leaf = _real_cert_for(HTTPS_V2, "104.com.tw")
    info = parse_certificate(leaf, "104.com.tw")
    assert info == CertInfo(
        common_name="e.cebbank.com",
        issuer="Secure Site Extended Validation CA G2",
        alternative_names=("e.cebbank.com",),
        not_before="2020-07-28T00:00:00Z",
        not_after="2022-09-13T12:00:00Z",
        matches_domain=False,
    )
    assert leaf_certificate([leaf, "SOMEINTERMEDIATE"]) == leaf
