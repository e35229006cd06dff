"""Real DER certificate chains (``cryptography``), deterministic per seed, kind and
domain: CA-signed leaves for a domain, wildcards and a hosting name, a self-signed
middlebox certificate, and leaves forged by an untrusted interception CA."""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

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
