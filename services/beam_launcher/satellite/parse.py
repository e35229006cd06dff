"""Satellite (DNS) scan files → flattened rows and join values (pure functions).

A Satellite scan is a folder of JSON-lines files; :func:`file_role` says what each file is
for. Observation files (``results.json``, ``interference.json``, ...) become one row per DNS
query (roundtrip) with :func:`flatten_observation`; the other files give values that are
joined onto those rows later: resolver tags (:func:`parse_resolver_tag`, merged with
:func:`merge_resolver_tags`), answer-IP tags (:func:`parse_answer_tag`, applied with
:func:`apply_answer_tags`) and HTTP(S) page fetches of answer IPs
(:func:`parse_page_fetch`, applied with :func:`apply_page_fetch`).

The format version is chosen per record from its keys and value types, never from dates
(formats.md §6.2): ``resolver``/``ip`` + ``query`` → v1; ``response`` an object → v2.1;
``response`` a list with ``passed_liveness`` (or roundtrip ``response`` objects) → v2.2;
``response`` a list with ``passed_control`` (or roundtrip ``response`` lists) → the v2.1
control-resolver file. Structural problems raise
:class:`~services.beam_launcher.hyperquack.parse.BadRecord` with a stable error class; the caller
turns it into a dead letter (invalid JSON is the caller's job too).

Rows have exactly the keys of
:data:`~services.beam_launcher.warehouse.rows.SATELLITE_SCAN`, with the
columns that later stages fill (domain category, resolver metadata from tags and CAIDA,
outcome, confidence post-processing) left None, plus private keys starting with ``_`` that
the caller strips: ``_format`` (``"v1"``, ``"v2.1"``, ``"v2.1-control"`` or ``"v2.2"``) on
every row and ``_warnings`` (a list of short codes) on rows that have something to count.

Example:
    >>> ctx = FileContext("satellite", "CP_Satellite-2021-10-20-12-00-01", "results.json", "t")
    >>> rec = {"vp": "9.9.9.9", "test_url": "a.com", "passed_liveness": True,
    ...        "start_time": "2021-10-20 14:51:41.221546144 -0400 EDT", "response": [
    ...            {"url": "a.com", "has_type_a": True, "rcode": 0, "error": "null",
    ...             "response": {"1.2.3.4": {"asnum": 13335, "matched": ["ip"]}}}]}
    >>> row, = flatten_observation(rec, "results.json", 1, b"x", ctx, "2021-10-20")
    >>> row["start_time"], row["received_rcode"], row["answers"][0]["asn"], row["_format"]
    ('2021-10-20T14:51:41.221546-04:00', 0, 13335, 'v2.2')
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from services.beam_launcher.enrichment.signatures import SignatureMatcher
from services.beam_launcher.hyperquack.certs import (
    decode_certificate_text,
    leaf_certificate,
    parse_certificate,
)
from services.beam_launcher.hyperquack.parse import (
    BadRecord,
    FileContext,
    _received_fields,
    measurement_id,
    normalize_timestamp,
)
from services.beam_launcher.hyperquack.processing import page_text
from services.beam_launcher.warehouse.rows import SATELLITE_SCAN
from services.common.countries import country_code
from services.common.rowschema import REPEATED, Row

__all__ = [
    "ANSWER_FIELDS",
    "CONTROL_DOMAINS",
    "CONTROL_IPS",
    "ERROR_MISSING",
    "FILE_ROLES",
    "SKIP_REASONS",
    "UNKNOWN_FILE_REASON",
    "apply_answer_tags",
    "apply_page_fetch",
    "detect_format",
    "file_role",
    "flatten_observation",
    "go_timestamp",
    "merge_resolver_tags",
    "new_answer",
    "parse_answer_tag",
    "parse_page_fetch",
    "parse_resolver_tag",
    "skip_reason",
]

# --- file roles ---------------------------------------------------------------------------

OBSERVATIONS = "observations"
RESOLVER_TAGS = "resolver_tags"
ANSWER_TAGS = "answer_tags"
PAGE_FETCHES = "page_fetches"
UNUSED = "unused"
UNKNOWN = "unknown"

#: Role of every Satellite file name we know (basename without ``.gz``), formats.md §1.1.
FILE_ROLES: dict[str, str] = {
    # DNS queries: one or more rows per line.
    "results.json": OBSERVATIONS,  # v2.1 / v2.2 test resolvers
    "interference.json": OBSERVATIONS,  # v1, answers compared with the controls
    "interference_err.json": OBSERVATIONS,  # v1, no control answer to compare with
    "answers_control.json": OBSERVATIONS,  # v1 control resolvers
    "answers_err.json": OBSERVATIONS,  # v1 failed queries (no_answer, NXDOMAIN, ...)
    "responses_control.json": OBSERVATIONS,  # v2.1 control resolvers
    # Joined on (source, resolver IP).
    "resolvers.json": RESOLVER_TAGS,
    "tagged_resolvers.json": RESOLVER_TAGS,
    "resolvers_profile.json": RESOLVER_TAGS,
    # Joined on (source, answer IP), before v2.2 (v2.2 carries its tags inline).
    "tagged_answers.json": ANSWER_TAGS,
    "tagged_responses.json": ANSWER_TAGS,
    # Joined on (source, domain, answer IP).
    "blockpages.json": PAGE_FETCHES,
    "control_pages.json": PAGE_FETCHES,
}

#: Known files we deliberately do not read, and why (shown in run reports).
SKIP_REASONS: dict[str, str] = {
    "resolvers_raw.json": (
        "resolver discovery: raw ZMap probe responses (saddr, data) from before the "
        "measurement; no test query in it"
    ),
    "resolvers_ip.json": (
        "resolver discovery: the answer each candidate resolver gave to the probe domain; "
        "not a test query"
    ),
    "resolvers_err.json": (
        "PTR lookup failures of resolvers; the chosen resolver names come from resolvers.json"
    ),
    "resolvers_ptr.json": (
        "every PTR name of each resolver; resolvers.json holds the one name we keep"
    ),
    "answers_raw.json": (
        "raw DNS response bytes per query; the decoded answers are in interference*.json "
        "and answers_*.json"
    ),
    "answers.json": (
        "v1 answers of the non-control resolvers without the comparison: the same queries "
        "appear, compared, in interference.json / interference_err.json, so reading it "
        "would count them twice"
    ),
    "answers_ip.json": (
        "the list of answer IPs sent for tagging; their tags are in tagged_answers.json"
    ),
    "dns.pkt": "binary DNS query template used by the prober; not JSON, no measurement",
    "log.json": "v2.0 run log (progress and timing), no measurement",
    "results_verified.json": (
        "copy of results.json after the prober's verify step; reading both would count "
        "every measurement twice (results.json is the file the pipeline reads)"
    ),
    "responses.json": (
        "v2.0 raw answers without the control comparison; the same queries are in "
        "results.json, so reading it would count them twice"
    ),
    "responses_ip.json": (
        "the list of answer IPs sent for tagging; their tags are in tagged_responses.json"
    ),
    "responses_raw.json": (
        "raw DNS response bytes per query; the decoded answers are in results.json"
    ),
    "resolver_info.json": (
        "same schema as resolvers_profile.json but never produced by the prober (only in "
        "the reference e2e folder, hand-edited); resolvers_profile.json is authoritative"
    ),
}

UNKNOWN_FILE_REASON = "not a known Satellite file name (formats.md §1.1); not read"


def _base_name(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base[:-3] if base.endswith(".gz") else base


def file_role(basename: str) -> str:
    """Role of a file in a Satellite scan: observations, resolver_tags, answer_tags,
    page_fetches, unused or unknown. A leading path and one ``.gz`` suffix are ignored.

    >>> file_role("results.json.gz"), file_role("dns.pkt"), file_role("notes.txt")
    ('observations', 'unused', 'unknown')
    """
    base = _base_name(basename)
    role = FILE_ROLES.get(base)
    if role is not None:
        return role
    return UNUSED if base in SKIP_REASONS else UNKNOWN


def skip_reason(basename: str) -> str | None:
    """Why a file is not read (unused or unknown), or None for a file we read."""
    base = _base_name(basename)
    if base in FILE_ROLES:
        return None
    return SKIP_REASONS.get(base, UNKNOWN_FILE_REASON)


# --- constants and templates --------------------------------------------------------------

#: Trusted public resolvers (control resolvers), as in the reference pipeline.
CONTROL_IPS = frozenset({"1.1.1.1", "8.8.8.8", "8.8.4.4", "64.6.64.6", "64.6.65.6"})

#: Control (liveness) domains, formats.md §3: a.root-servers.net (v2.1+), www.example.com
#: (v2.0) and the other control URLs the reference pipeline lists.
CONTROL_DOMAINS = frozenset(
    {
        "a.root-servers.net",
        "www.example.com",
        "gstatic.com",
        "captive.apple.com",
        "cse.engin.umich.edu",
        "eecs.umich.edu",
        "yr-in-f94.1e100.net",
        "usmia1-vip-bx-006.aaplimg.com",
    }
)

_CONTROL_RESOLVER_FILES = frozenset({"answers_control.json", "responses_control.json"})

V1, V2_1, V2_1_CONTROL, V2_2 = "v1", "v2.1", "v2.1-control", "v2.2"

#: ``_warnings`` code of a v2.1 rcode -1 attempt whose error text the prober did not record
#: (counted as ``row_warnings.rcode_error_missing``; the row is kept).
ERROR_MISSING = "rcode_error_missing"

_COLUMNS = SATELLITE_SCAN.column_names
_ANSWERS_COLUMN = SATELLITE_SCAN.column("answers")
ANSWER_FIELDS: tuple[str, ...] = tuple(c.name for c in _ANSWERS_COLUMN.fields)
_REPEATED_ANSWER_FIELDS = tuple(c.name for c in _ANSWERS_COLUMN.fields if c.mode == REPEATED)
_MATCHES_CONTROL_FIELDS = tuple(
    c.name for c in next(c for c in _ANSWERS_COLUMN.fields if c.name == "matches_control").fields
)
_ROW_TEMPLATE: Row = dict.fromkeys(_COLUMNS)
_ANSWER_TEMPLATE: dict[str, Any] = dict.fromkeys(ANSWER_FIELDS)

# Matched-tag names (v1 / v2.1 answer lists, v2.2 `matched`) → matches_control fields.
_MATCH_TAGS = {
    "ip": "ip",
    "http": "censys_http_body_hash",
    "cert": "censys_ip_cert",
    "asnum": "asn",
    "asname": "as_name",
}
# Raw tag values (v2.2 inline, tagged_answers/tagged_responses) → answer fields.
_TAG_VALUE_FIELDS = (
    ("http", "censys_http_body_hash"),
    ("cert", "censys_ip_cert"),
    ("asnum", "asn"),
    ("asname", "as_name"),
)
_ANSWER_TAG_FIELDS = tuple(field for _, field in _TAG_VALUE_FIELDS)

# Page-fetch answer fields per protocol ("https_" does not start with "http_").
_FETCH_GROUPS: dict[str, tuple[str, ...]] = {
    proto: tuple(f for f in ANSWER_FIELDS if f.startswith(proto + "_"))
    for proto in ("http", "https")
}

assert set(_MATCHES_CONTROL_FIELDS) == set(_MATCH_TAGS.values())
assert set(_ANSWER_TAG_FIELDS) <= set(ANSWER_FIELDS)


def new_answer(ip: str) -> dict[str, Any]:
    """An answer record with all 30 fields: None, or [] for the repeated ones."""
    answer = _ANSWER_TEMPLATE.copy()
    answer["ip"] = ip
    for name in _REPEATED_ANSWER_FIELDS:
        answer[name] = []
    return answer


# --- small validators ---------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _req_str(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        raise BadRecord("missing_field", f"{where}: missing {key}")
    if not isinstance(value, str):
        raise BadRecord("wrong_type", f"{where}: {key} is {_type_name(value)}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRecord("wrong_type", f"{where} is {_type_name(value)}")


def _opt_bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadRecord("wrong_type", f"{where} is {_type_name(value)}")


def _opt_number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise BadRecord("wrong_type", f"{where} is {_type_name(value)}")


def _opt_int(value: Any, where: str) -> int | None:
    """An integer; a string of digits (with optional sign) is accepted too."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise BadRecord("wrong_type", f"{where}: expected an integer, got {value!r:.40}")


def _rcode(value: Any, where: str) -> int:
    """An rcode: int in v1/v2.2, decimal string in v2.1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise BadRecord("invalid_rcode", f"{where}: rcode {value!r:.40}") from None
    if value is None:
        raise BadRecord("missing_field", f"{where}: missing rcode")
    raise BadRecord("wrong_type", f"{where}: rcode is {_type_name(value)}")


def _str_list(value: Any, where: str) -> list[str]:
    """A list of strings; None counts as empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRecord("wrong_type", f"{where} is not a list of strings")
    return value


def _blank_to_none(value: str | None) -> str | None:
    return value if value else None


def _roundtrip_error(value: Any, where: str) -> str | None:
    """v2 roundtrip error: the string "null" (or "") means no error."""
    text = _opt_str(value, where)
    return None if not text or text == "null" else text


def _is_control_domain(domain: str) -> bool:
    return domain.lower().rstrip(".") in CONTROL_DOMAINS


# --- timestamps ---------------------------------------------------------------------------


def go_timestamp(value: Any, field: str) -> tuple[str, str]:
    """Go ``time.String()`` output → (local date, ISO 8601 with microseconds and offset).

    The monotonic ``m=+...`` part and the zone abbreviation are ignored; an RFC 3339
    string is accepted as well.

    >>> go_timestamp("2021-04-25 14:49:26.030082621 -0400 EDT m=+10164.3", "t")
    ('2021-04-25', '2021-04-25T14:49:26.030082-04:00')
    """
    if not isinstance(value, str):
        raise BadRecord("missing_field" if value is None else "wrong_type", f"{field}: {value!r}")
    tokens = value.split()
    if len(tokens) >= 3:
        offset = tokens[2]
        if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
            # Go's "-0400" → RFC 3339's "-04:00": normalize_timestamp's fast path applies
            # (no regex), ~0.7 us saved per timestamp, two per results.json line.
            offset = f"{offset[:3]}:{offset[3:]}"
        text = f"{tokens[0]}T{tokens[1]}{offset}"
    elif len(tokens) == 1:
        text = tokens[0]
    else:
        raise BadRecord("invalid_timestamp", f"{field}: {value[:80]!r}")
    return normalize_timestamp(text, field)


def _times(record: dict[str, Any], where: str) -> tuple[str, str, str | None]:
    """(date, start_time, end_time) of a record or roundtrip.

    A missing or blank ``start_time`` is a bad record (the row would have no date); a
    missing or blank ``end_time`` only leaves end_time NULL.
    """
    start = record.get("start_time")
    if start is None or (isinstance(start, str) and not start.strip()):
        raise BadRecord("missing_start_time", f"{where}: start_time is {start!r}")
    date, start_iso = go_timestamp(start, where + ".start_time")
    end = record.get("end_time")
    if end is None or (isinstance(end, str) and not end.strip()):
        return date, start_iso, None
    _, end_iso = go_timestamp(end, where + ".end_time")
    return date, start_iso, end_iso


# --- answers ------------------------------------------------------------------------------


def _matches_control(tags: list[str]) -> dict[str, bool]:
    out = dict.fromkeys(_MATCHES_CONTROL_FIELDS, False)
    for tag in tags:
        field = _MATCH_TAGS.get(tag)
        if field is not None:
            out[field] = True
    return out


def _tagged_answers(answers: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """v1 interference / v2.1 results answers: {ip: [matched tags]}."""
    out = []
    for ip, tags in answers.items():
        answer = new_answer(ip)
        answer["matches_control"] = _matches_control(_str_list(tags, f"{where}[{ip}]"))
        out.append(answer)
    return out


def _plain_answers(ips: Any, where: str) -> list[dict[str, Any]]:
    """v1 control/err and v2.1 control answers: a list of IPs (no comparison)."""
    return [new_answer(ip) for ip in _str_list(ips, where)]


def _v2_2_answers(answers: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """v2.2 answers: {ip: {http, cert, asnum, asname, matched}} with tags inline."""
    out = []
    for ip, tags in answers.items():
        w = f"{where}[{ip}]"
        if not isinstance(tags, dict):
            raise BadRecord("wrong_type", f"{w} is {_type_name(tags)}")
        answer = new_answer(ip)
        answer["censys_http_body_hash"] = _blank_to_none(_opt_str(tags.get("http"), w + ".http"))
        answer["censys_ip_cert"] = _blank_to_none(_opt_str(tags.get("cert"), w + ".cert"))
        answer["asn"] = _opt_int(tags.get("asnum"), w + ".asnum")
        answer["as_name"] = _blank_to_none(_opt_str(tags.get("asname"), w + ".asname"))
        matched = tags.get("matched")
        if matched is not None:  # null: Go nil slice, no comparison information
            answer["matches_control"] = _matches_control(_str_list(matched, w + ".matched"))
        out.append(answer)
    return out


# --- flattening ---------------------------------------------------------------------------


def detect_format(record: dict[str, Any]) -> str:
    """The Satellite format of an observation record, from its keys and value types."""
    if "vp" in record or "test_url" in record:
        response = record.get("response")
        if isinstance(response, dict):
            return V2_1
        if isinstance(response, list):
            if "passed_liveness" in record:
                return V2_2
            if "passed_control" in record:
                return V2_1_CONTROL
            for rt in response:
                inner = rt.get("response") if isinstance(rt, dict) else None
                if isinstance(inner, dict):
                    return V2_2
                if isinstance(inner, list):
                    return V2_1_CONTROL
            raise BadRecord("unknown_format", "v2 record without passed_liveness/passed_control")
        if response is None:
            raise BadRecord("missing_field", "v2: missing response")
        raise BadRecord("wrong_type", f"v2: response is {_type_name(response)}")
    if "query" in record and ("resolver" in record or "ip" in record):
        return V1
    raise BadRecord(
        "unknown_format", "neither Satellite v1 (resolver/ip + query) nor v2 (vp/test_url)"
    )


_Origin = tuple[FileContext, int, bytes]  # (file context, line number, raw line)


class _RowMaker:
    """Builds rows that share one record's provenance and resolver."""

    __slots__ = ("base",)

    def __init__(self, origin: _Origin, fmt: str, resolver_ip: str, trusted_file: bool) -> None:
        ctx, line_no, _raw = origin
        base = _ROW_TEMPLATE.copy()
        base.update(
            resolver_ip=resolver_ip,
            resolver_is_trusted=trusted_file or resolver_ip in CONTROL_IPS,
            measurement_id=measurement_id(ctx, line_no),
            source=ctx.source,
            source_file=ctx.source_file,
            source_line=line_no,
            pipeline_version=ctx.pipeline_version,
            _format=fmt,
        )
        self.base = base

    def row(
        self,
        domain: str,
        retry_counter: list[int],
        rcode: int | None,
        error: str | None,
        answers: list[dict[str, Any]],
        **fields: Any,
    ) -> Row:
        """One row; ``retry_counter`` is a one-item list counting test queries so far."""
        is_control = _is_control_domain(domain)
        retry = None
        if not is_control:
            retry = retry_counter[0]
            retry_counter[0] += 1
        row = self.base.copy()
        row.update(
            domain=domain,
            domain_is_control=is_control,
            retry=retry,
            received_rcode=rcode,
            received_error=error,
            success=rcode == 0,
            answers=answers,
            **fields,
        )
        return row


def _flatten_v1(
    rec: dict[str, Any], origin: _Origin, scan_date: str, trusted_file: bool
) -> list[Row]:
    query = _req_str(rec, "query", "v1")
    resolver = rec.get("resolver")
    key = "resolver"
    if resolver is None:
        resolver, key = rec.get("ip"), "ip"
    if resolver is None:
        raise BadRecord("missing_field", "v1: missing resolver")
    if not isinstance(resolver, str):
        raise BadRecord("wrong_type", f"v1: {key} is {_type_name(resolver)}")
    passed = _opt_bool(rec.get("passed"), "v1.passed")
    error_value = rec.get("error")
    if error_value is None or isinstance(error_value, str):
        error = error_value
    else:  # objects (and anything else) are kept as JSON text
        error = json.dumps(error_value)
    answers_value = rec.get("answers")
    if isinstance(answers_value, dict):
        answers = _tagged_answers(answers_value, "v1.answers")
    else:
        answers = _plain_answers(answers_value, "v1.answers")
    maker = _RowMaker(origin, V1, resolver, trusted_file)
    return [
        maker.row(
            query,
            [0],
            -1 if error is not None else 0,
            error,
            answers,
            date=scan_date,
            anomaly=None if passed is None else not passed,
        )
    ]


def _v2_common(rec: dict[str, Any], fmt: str) -> tuple[str, str, dict[str, Any]]:
    """vp, test_url and the record-level fields every v2 row shares."""
    vp = _req_str(rec, "vp", fmt)
    test_url = _req_str(rec, "test_url", fmt)
    fields: dict[str, Any] = {}
    location = rec.get("location")
    if location is not None:
        if not isinstance(location, dict):
            raise BadRecord("wrong_type", f"{fmt}: location is {_type_name(location)}")
        fields["resolver_country"] = _blank_to_none(
            _opt_str(location.get("country_code"), f"{fmt}.location.country_code")
        )
    return vp, test_url, fields


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def _flatten_v2_1(rec: dict[str, Any], origin: _Origin, trusted: bool) -> list[Row]:
    vp, test_url, fields = _v2_common(rec, V2_1)
    date, start, end = _times(rec, V2_1)
    fields.update(
        date=date,
        start_time=start,
        end_time=end,
        anomaly=_opt_bool(rec.get("anomaly"), "v2.1.anomaly"),
        domain_controls_failed=_not(_opt_bool(rec.get("passed_control"), "v2.1.passed_control")),
    )
    response: dict[str, Any] = rec["response"]
    rcodes = [_rcode(v, "v2.1.response.rcode") for v in _rcode_list(response.get("rcode"))]
    errors = _str_list(response.get("error"), "v2.1.response.error")
    ips = {k: v for k, v in response.items() if k not in ("rcode", "error")}
    maker = _RowMaker(origin, V2_1, vp, trusted)
    retry = [0]
    if not rcodes and not errors and not ips:  # {}: the test was never sent
        return [maker.row(test_url, retry, None, None, [], **fields)]

    successes = rcodes.count(0)
    if successes > 1:
        raise BadRecord("satellite_multiple_success_rcodes", f"v2.1: rcodes {rcodes}")
    if successes == 1 and rcodes[-1] != 0:
        raise BadRecord("satellite_success_rcode_not_last", f"v2.1: rcodes {rcodes}")
    if ips and not successes:
        raise BadRecord(
            "satellite_ips_without_success_rcode", f"v2.1: {len(ips)} answers, rcodes {rcodes}"
        )
    failed = rcodes[:-1] if successes else rcodes
    rows: list[Row] = []
    pending = iter(errors)
    for rcode in failed:  # failed attempts in order; each -1 takes the next error
        if rcode != -1:
            rows.append(maker.row(test_url, retry, rcode, None, [], **fields))
            continue
        error = next(pending, None)
        if error is not None:
            rows.append(maker.row(test_url, retry, rcode, error, [], **fields))
        else:  # the prober recorded the failed attempt but not its error text
            rows.append(
                maker.row(test_url, retry, rcode, None, [], _warnings=[ERROR_MISSING], **fields)
            )
    for error in pending:  # errors whose -1 rcode was not recorded (a prober bug)
        rows.append(maker.row(test_url, retry, -1, error, [], **fields))
    if successes:
        answers = _tagged_answers(ips, "v2.1.response")
        rows.append(maker.row(test_url, retry, 0, None, answers, **fields))
    return rows


def _rcode_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRecord("wrong_type", f"v2.1: response.rcode is {_type_name(value)}")
    return value


def _roundtrips(rec: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    response: list[Any] = rec["response"]
    for index, rt in enumerate(response):
        if not isinstance(rt, dict):
            raise BadRecord("wrong_type", f"{fmt}.response[{index}] is {_type_name(rt)}")
    return response


def _flatten_v2_1_control(rec: dict[str, Any], origin: _Origin, trusted: bool) -> list[Row]:
    vp, test_url, fields = _v2_common(rec, V2_1_CONTROL)
    fields.update(
        anomaly=None,
        domain_controls_failed=_not(
            _opt_bool(rec.get("passed_control"), "v2.1-control.passed_control")
        ),
    )
    maker = _RowMaker(origin, V2_1_CONTROL, vp, trusted)
    retry = [0]
    rows = []
    for index, rt in enumerate(_roundtrips(rec, V2_1_CONTROL)):
        where = f"v2.1-control.response[{index}]"
        date, start, end = _times(rt, where)
        domain = _opt_str(rt.get("url"), where + ".url") or test_url
        rcode = _rcode(rt.get("rcode"), where)
        inner = rt.get("response")
        if isinstance(inner, dict):
            raise BadRecord("wrong_type", f"{where}.response is an object in a v2.1 control")
        rows.append(
            maker.row(
                domain,
                retry,
                rcode,
                _roundtrip_error(rt.get("error"), where + ".error"),
                _plain_answers(inner, where + ".response"),
                date=date,
                start_time=start,
                end_time=end,
                has_type_a=_opt_bool(rt.get("has_type_a"), where + ".has_type_a"),
                **fields,
            )
        )
    return rows


def _flatten_v2_2(rec: dict[str, Any], origin: _Origin, trusted: bool) -> list[Row]:
    vp, test_url, fields = _v2_common(rec, V2_2)
    date, start, end = _times(rec, V2_2)
    confidence = rec.get("confidence")
    if confidence is None:
        confidence = {}
    elif not isinstance(confidence, dict):
        raise BadRecord("wrong_type", f"v2.2: confidence is {_type_name(confidence)}")
    average = _opt_number(confidence.get("average"), "v2.2.confidence.average")
    matches = confidence.get("matches")
    if matches is not None:
        if not isinstance(matches, list):
            raise BadRecord("wrong_type", f"v2.2: confidence.matches is {_type_name(matches)}")
        matches = [_opt_number(m, "v2.2.confidence.matches[]") for m in matches]
    reasons = rec.get("exclude_reason")
    fields.update(
        date=date,
        start_time=start,
        end_time=end,
        anomaly=_opt_bool(rec.get("anomaly"), "v2.2.anomaly"),
        domain_controls_failed=_not(_opt_bool(rec.get("passed_liveness"), "v2.2.passed_liveness")),
        untagged_controls=_opt_bool(
            confidence.get("untagged_controls"), "v2.2.confidence.untagged_controls"
        ),
        untagged_response=_opt_bool(
            confidence.get("untagged_response"), "v2.2.confidence.untagged_response"
        ),
        excluded=_opt_bool(rec.get("excluded"), "v2.2.excluded"),
        exclude_reason=None
        if reasons is None
        else " ".join(_str_list(reasons, "v2.2.exclude_reason")),
    )
    maker = _RowMaker(origin, V2_2, vp, trusted)
    retry = [0]
    rows = []
    for index, rt in enumerate(_roundtrips(rec, V2_2)):
        where = f"v2.2.response[{index}]"
        domain = _opt_str(rt.get("url"), where + ".url") or test_url
        rcode = _rcode(rt.get("rcode"), where)
        inner = rt.get("response")
        if inner is None:
            inner = {}
        elif not isinstance(inner, dict):
            raise BadRecord("wrong_type", f"{where}.response is {_type_name(inner)}")
        has_type_a = _opt_bool(rt.get("has_type_a"), where + ".has_type_a")
        answers = _v2_2_answers(inner, where + ".response")
        extra: dict[str, Any] = {"has_type_a": True if rcode == 0 and has_type_a else None}
        if answers:
            # confidence describes the measurement's answers: only rows with answers get it.
            extra["average_confidence"] = average
            if matches is not None:
                if len(matches) == len(answers):
                    for answer, match in zip(answers, matches, strict=True):
                        answer["match_confidence"] = match
                else:
                    extra["_warnings"] = ["confidence_matches_length_mismatch"]
        error = _roundtrip_error(rt.get("error"), where + ".error")
        rows.append(maker.row(domain, retry, rcode, error, answers, **fields, **extra))
    return rows


def flatten_observation(
    record: Any,
    basename: str,
    line_no: int,
    raw: bytes,
    ctx: FileContext,
    scan_date: str,
) -> list[Row]:
    """Flatten one decoded line of a Satellite observation file into rows.

    Args:
        record: the decoded JSON value of the line.
        basename: the file's name (``.gz`` ignored); ``answers_control.json`` and
            ``responses_control.json`` mark every row's resolver as trusted.
        line_no: 1-based line number, raw: the raw line (both feed ``measurement_id``).
        ctx: provenance of the file.
        scan_date: ``YYYY-MM-DD`` from the scan name; the date of v1 rows (v1 has no times).

    Rows are one per DNS query: v1 one per record (retry 0); v2.1 one per attempt (failed
    rcodes in order, each -1 taking the next error; a -1 left without an error, which
    real April 2021 data has, keeps error None and gets ``_warnings``
    ``[ERROR_MISSING]``; errors left over as -1 rows; then the rcode-0 row with all
    answer IPs); v2.1 control and v2.2 one per roundtrip. ``retry`` counts the test
    queries of the record from 0 and is None for queries of control domains. A record
    with no roundtrips gives no rows.

    Field notes: ``success`` is ``rcode == 0`` in every format, a property of the row's
    query (v1 has no rcode: 0 without ``error``, -1 with one; False for the rcode-NULL
    row of an empty v2.1 response). It is not the seed's v2.1 ``not connect_error``,
    which is the measurement's and was also True on its failed attempts (docs/tables.md
    has the reasons). ``has_type_a`` is the raw value in the v2.1 control file, True for
    a v2.2 rcode-0 roundtrip with an A record and None otherwise (as the reference), None
    elsewhere; ``domain_controls_failed`` is ``not passed_control`` / ``not
    passed_liveness`` (None for v1, which has neither). ``matches_control`` is a dict of
    five booleans wherever the prober compared the answer with the controls (v1
    interference, v2.1 results, v2.2 ``matched`` lists; ``[]`` and ``["no_tags"]`` mean
    nothing matched) and None where it did not (plain IP lists, v2.2 ``matched: null``).
    v2.2 ``confidence.matches`` is paired with the answers by position (only when both
    have the same length; otherwise ``_warnings`` gets
    ``confidence_matches_length_mismatch``); v2.1 confidence is not copied, because its
    ``matches`` order does not follow the answers (post-processing recomputes it).
    Empty tag strings (v2.2 ``"http": ""``) become None.
    """
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"record is a JSON {_type_name(record)}")
    fmt = detect_format(record)
    trusted_file = _base_name(basename) in _CONTROL_RESOLVER_FILES
    origin = (ctx, line_no, raw)
    if fmt == V1:
        return _flatten_v1(record, origin, scan_date, trusted_file)
    if fmt == V2_1:
        return _flatten_v2_1(record, origin, trusted_file)
    if fmt == V2_1_CONTROL:
        return _flatten_v2_1_control(record, origin, trusted_file)
    return _flatten_v2_2(record, origin, trusted_file)


# --- resolver tags ------------------------------------------------------------------------

_RATE_FIELDS = (
    ("non_zero_rcode", "resolver_non_zero_rcode_rate"),
    ("private_ip", "resolver_private_ip_rate"),
    ("zero_ip", "resolver_zero_ip_rate"),
    ("connect_error", "resolver_connect_error_rate"),
    ("invalid_cert", "resolver_invalid_cert_rate"),
)


def _rate(value: Any, where: str) -> float | None:
    """A resolver profile rate: a decimal string (or number) between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRecord("invalid_resolver_rate", f"{where}: {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        try:
            rate = float(value)
        except ValueError:
            raise BadRecord("invalid_resolver_rate", f"{where}: {value[:40]!r}") from None
    else:
        raise BadRecord("invalid_resolver_rate", f"{where}: {_type_name(value)}")
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise BadRecord("invalid_resolver_rate", f"{where}: {value!r:.40} is not in [0, 1]")
    return rate


def parse_resolver_tag(record: Any, basename: str) -> tuple[str, dict[str, Any]]:
    """One line of resolvers.json / tagged_resolvers.json / resolvers_profile.json.

    Returns ``(resolver IP, values)`` where values holds only the row columns the line
    provides: ``resolver_name`` (``name``), ``resolver_country`` (v2
    ``location.country_code``, or the v1 full ``country`` name mapped to ISO-2) and the
    five ``resolver_*_rate`` floats of the profile. A v1 country name we cannot map is
    passed through unchanged and flagged with ``_unmapped_country``.
    """
    where = _base_name(basename)
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"{where}: record is a JSON {_type_name(record)}")
    key = "resolver" if record.get("resolver") is not None else "vp"
    ip = _req_str(record, key, where)
    values: dict[str, Any] = {}
    if "name" in record:
        values["resolver_name"] = _blank_to_none(_opt_str(record["name"], where + ".name"))
    location = record.get("location")
    if location is not None:
        if not isinstance(location, dict):
            raise BadRecord("wrong_type", f"{where}: location is {_type_name(location)}")
        values["resolver_country"] = _blank_to_none(
            _opt_str(location.get("country_code"), where + ".location.country_code")
        )
    if values.get("resolver_country") is None and "country" in record:
        name = _blank_to_none(_opt_str(record["country"], where + ".country"))
        if name is None:
            values["resolver_country"] = None
        else:
            code, known = country_code(name)
            values["resolver_country"] = code
            if not known:
                values["_unmapped_country"] = name
    for raw_key, column in _RATE_FIELDS:
        if raw_key in record:
            values[column] = _rate(record[raw_key], f"{where}.{raw_key}")
    return ip, values


def merge_resolver_tags(tags: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the tag values of one resolver from several lines/files, in the given order.

    For each key the *last non-null* value wins; a null never erases an earlier value
    (duplicate lines such as v2.2 resolvers.json's are harmless). Pass the values in
    a deterministic order (e.g. by file name then line) so the result is reproducible.
    The ``_unmapped_country`` flag survives only if it still describes the final country.
    """
    merged: dict[str, Any] = {}
    for values in tags:
        for key, value in values.items():
            if value is not None or key not in merged:
                merged[key] = value
    flag = merged.get("_unmapped_country")
    if flag is not None and merged.get("resolver_country") != flag:
        del merged["_unmapped_country"]
    return merged


# --- answer tags --------------------------------------------------------------------------


def parse_answer_tag(record: Any) -> tuple[str, dict[str, Any]]:
    """One line of tagged_answers.json / tagged_responses.json → (answer IP, tag values).

    Values: ``censys_http_body_hash`` (``http``), ``censys_ip_cert`` (``cert``), ``asn``
    (``asnum``, int) and ``as_name`` (``asname``); null, missing or empty → None.
    """
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"answer tag is a JSON {_type_name(record)}")
    ip = _req_str(record, "ip", "answer tag")
    return ip, {
        "censys_http_body_hash": _blank_to_none(_opt_str(record.get("http"), "tag.http")),
        "censys_ip_cert": _blank_to_none(_opt_str(record.get("cert"), "tag.cert")),
        "asn": _opt_int(record.get("asnum"), "tag.asnum"),
        "as_name": _blank_to_none(_opt_str(record.get("asname"), "tag.asname")),
    }


def apply_answer_tags(answer: dict[str, Any], tags: dict[str, Any]) -> bool:
    """Fill an answer's empty tag fields from a tag file's values (in place).

    Values already on the answer (v2.2 inline tags) are kept. Returns whether any field
    was set.
    """
    changed = False
    for field in _ANSWER_TAG_FIELDS:
        value = tags.get(field)
        if value is not None and answer.get(field) is None:
            answer[field] = value
            changed = True
    return changed


# --- page fetches -------------------------------------------------------------------------


def _canonical_b64(text: str) -> str | None:
    der = decode_certificate_text(text)
    return None if der is None else base64.b64encode(der).decode("ascii")


def _fetch_protocol(
    proto: str,
    value: Any,
    domain: str,
    matcher: SignatureMatcher | None,
    keep_bodies: bool,
    out: dict[str, Any],
) -> None:
    """Fill ``out``'s ``<proto>_*`` fields from one side (http or https) of a fetch."""
    if value is None:
        return
    if isinstance(value, str):
        out[f"{proto}_error"] = value
        return
    if not isinstance(value, dict):
        raise BadRecord("wrong_type", f"page fetch: {proto} is {_type_name(value)}")
    received = _received_fields(value, f"page fetch.{proto}")
    status = received.get("received_status")
    headers = received.get("received_headers")
    body = received.get("received_body") if keep_bodies else None
    out[f"{proto}_response_status"] = status
    out[f"{proto}_response_headers"] = headers or []
    out[f"{proto}_response_body"] = body
    if matcher is not None:
        text = page_text(
            {"received_status": status, "received_headers": headers, "received_body": body}
        )
        match = matcher.match(text) if text else None
        if match is not None:
            out[f"{proto}_analysis_is_known_blockpage"] = match.is_known_blockpage
            out[f"{proto}_analysis_page_signature"] = match.signature.id
    if proto != "https":
        return
    out["https_tls_version"] = received.get("received_tls_version")
    out["https_tls_cipher_suite"] = received.get("received_tls_cipher_suite")
    leaf = leaf_certificate(received.get("_cert"))
    if not leaf:
        return
    out["https_tls_cert"] = _canonical_b64(leaf)
    info = parse_certificate(leaf, domain)
    if info is None:
        out["_cert_parse_error"] = True
        return
    out["https_tls_cert_common_name"] = info.common_name
    out["https_tls_cert_issuer"] = info.issuer
    out["https_tls_cert_start_date"] = info.not_before
    out["https_tls_cert_end_date"] = info.not_after
    out["https_tls_cert_alternative_names"] = list(info.alternative_names)
    out["https_tls_cert_matches_domain"] = info.matches_domain


def parse_page_fetch(
    record: Any, matcher: SignatureMatcher | None, keep_bodies: bool
) -> list[tuple[str, str, dict[str, Any]]]:
    """One line of blockpages.json / control_pages.json → ``[(domain, ip, fields)]``.

    One tuple per line, holding both protocols: ``fields`` has every ``http_*`` and
    ``https_*`` answer field (None / [] when absent). A string side is the fetch error
    (``*_error``); an object side gives status, headers as ``'Name: value'`` in order,
    the body (None unless ``keep_bodies``), and for https TLS version, cipher suite and
    the leaf certificate's fields, with ``https_tls_cert_matches_domain`` recomputed
    against the domain (the raw ``cert_hostname_match`` is known to be wrong) and
    ``https_tls_cert_has_trusted_ca`` the raw ``trusted_cert``. Signatures are matched
    against status line + headers (+ body when kept) of each side. ``_cert_parse_error``
    is set when a certificate is present but unreadable (the caller counts it).
    ``domain`` is the fetch's ``keyword``: with ``ip`` and the scan it is the join key.
    """
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"page fetch is a JSON {_type_name(record)}")
    domain = _req_str(record, "keyword", "page fetch")
    ip = _req_str(record, "ip", "page fetch")
    fields: dict[str, Any] = {}
    for group in _FETCH_GROUPS.values():
        for name in group:
            fields[name] = [] if name in _REPEATED_ANSWER_FIELDS else None
    _fetch_protocol("http", record.get("http"), domain, matcher, keep_bodies, fields)
    _fetch_protocol("https", record.get("https"), domain, matcher, keep_bodies, fields)
    fields["https_tls_cert_has_trusted_ca"] = _opt_bool(
        record.get("trusted_cert"), "page fetch.trusted_cert"
    )
    return [(domain, ip, fields)]


def _has_data(values: dict[str, Any], names: tuple[str, ...]) -> bool:
    return any(values.get(n) not in (None, []) for n in names)


def apply_page_fetch(answer: dict[str, Any], fetch: dict[str, Any]) -> bool:
    """Copy a fetch's http/https fields onto an answer (in place); first fetch wins.

    Each protocol is handled on its own, as in the reference pipeline: a side the answer
    already has (from an earlier fetch of the same domain and IP, e.g. in both
    blockpages.json and control_pages.json) is left unchanged. Returns True when the
    fetch duplicated data already present (the caller counts those).
    """
    duplicate = False
    for names in _FETCH_GROUPS.values():
        if not _has_data(fetch, names):
            continue
        if _has_data(answer, names):
            duplicate = True
            continue
        for name in names:
            value = fetch.get(name)
            answer[name] = list(value) if isinstance(value, list) else value
    return duplicate
