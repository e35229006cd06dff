"""msgspec Structs for Hyperquack v1/v2 records (used by ``msgspec_hyperquack``).

One record type holds the keys of both versions (v1 when ``Server`` is present, else v2
when ``vp`` is), one roundtrip type the keys of v1 ``Results`` and v2 ``response``
elements. Every field is optional here; the flattener sends a record whose required keys
are missing to the reference path. Keys not listed are skipped by the decoder. Kept apart
from the flattener so that the flattener alone can be compiled (mypyc reads annotations
differently from msgspec).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Tls(Struct, gc=False):
    """A v1 ``Received.tls`` block."""

    version: Int64 | None = None
    cipher_suite: Int64 | None = None
    cert: Any = None


class Response(Struct, gc=False):
    """A v1 ``Received`` / v2 ``response`` object (v2 TLS fields are flat)."""

    status_line: str | None = None
    headers: dict[str, list[str]] | None = None
    body: str | None = None
    tls: Tls | None = None
    TlsVersion: Int64 | None = None
    CipherSuite: Int64 | None = None
    Certificate: Any = None


class Roundtrip(Struct, gc=False):
    """One element of v1 ``Results`` or v2 ``response`` (each uses its own keys)."""

    Sent: str | None = None
    Success: bool | None = None
    Error: str | None = None
    StartTime: str | None = None
    EndTime: str | None = None
    Received: Response | str | None = None
    control_url: str | None = None
    matches_template: bool | None = None
    error: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    response: Response | str | None = None


class Record(Struct, gc=False):
    """A Hyperquack record: v1 when ``Server`` is present, else v2 when ``vp`` is."""

    Server: str | UnsetType | None = UNSET
    Keyword: str | None = None
    Results: list[Roundtrip] | None = None
    Retries: int | None = None
    Blocked: bool | None = None
    FailSanity: bool | None = None
    StatefulBlock: bool | None = None
    vp: str | None = None
    test_url: str | None = None
    response: list[Roundtrip] | None = None
    anomaly: bool | None = None
    controls_failed: bool | None = None
    stateful_block: bool | None = None


class SatAnswer(Struct, gc=False):
    """One answer IP of a Satellite v2.2 roundtrip (its tags)."""

    http: str | None = None
    cert: str | None = None
    asnum: Int64 | str | None = None
    asname: str | None = None
    matched: list[str] | None = None


class SatRoundtrip(Struct, gc=False):
    """One element of a Satellite v2.2 ``response`` list."""

    url: str | None = None
    has_type_a: bool | None = None
    response: dict[str, SatAnswer] | None = None
    error: str | None = None
    rcode: Int64 | str | None = None


class SatConfidence(Struct, gc=False):
    """Satellite v2.2 ``confidence``."""

    average: float | None = None
    matches: list[float | None] | None = None
    untagged_controls: bool | None = None
    untagged_response: bool | None = None


class SatLocation(Struct, gc=False):
    """Satellite v2 ``location``."""

    country_code: str | None = None


class SatRecord(Struct, gc=False):
    """A Satellite v2.2 ``results.json`` record (the keys the pipeline reads)."""

    vp: str | None = None
    test_url: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    anomaly: bool | None = None
    passed_liveness: bool | UnsetType | None = UNSET
    location: SatLocation | None = None
    connect_error: bool | None = None
    in_control_group: bool | None = None
    excluded: bool | None = None
    exclude_reason: list[str] | None = None
    confidence: SatConfidence | None = None
    response: list[SatRoundtrip] | None = None
