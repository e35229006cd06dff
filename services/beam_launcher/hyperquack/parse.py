"""Hyperquack v1/v2 records → one flattened row per roundtrip (pure functions).

The format version is chosen per record from its keys (``Server`` → v1, ``vp`` → v2),
never from dates. Structural problems raise :class:`BadRecord` with a stable error class,
which the caller turns into a dead letter.

Example:
    >>> ctx = FileContext("echo", "CP_Quack-echo-2021-05-30-01-01-01", "results.json", "dev")
    >>> rec = {"vp": "1.2.3.4", "test_url": "a.com", "anomaly": False, "response": [
    ...     {"matches_template": True, "start_time": "2021-05-30T01:01:03.1-04:00",
    ...      "end_time": "2021-05-30T01:01:03.2-04:00"}]}
    >>> [(r["domain"], r["date"], r["retry"]) for r in flatten_record(rec, 1, b"x", ctx)]
    [('a.com', '2021-05-30', 0)]
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.rowschema import Row

# Control domains the v1 prober used (v2 marks controls with `control_url`).
V1_CONTROL_DOMAINS = frozenset({"example5718349450314.com", "rtyutgyhefdafioasfjhjhi.com"})

_SENT_RE = re.compile(r"GET (.*) HTTP/1.1\r\nHost: (.*)\r\n")
_TIME_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?[0-5]\d)\Z"
)


class BadRecord(ValueError):
    """A record that cannot become rows; ``error_class`` is stable and machine-readable."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


@dataclass(frozen=True, slots=True)
class FileContext:
    """What the parser knows about the file a line comes from."""

    scan_type: str
    source: str
    source_file: str
    pipeline_version: str


def measurement_id(ctx: FileContext, line_no: int) -> str:
    """Deterministic id from the file and the line position: 32 hex characters.

    The first 24 are a digest of ``source/source_file``, the last 8 the line number in
    hex (more digits past 2**32 lines). Same file position → same id; two identical lines
    of one file still get distinct ids. Unlike the seed (uuid5 of bucket path + line), it
    does not depend on where the file is stored, nor on the line's content (a re-run over
    the same file keeps its ids).

    >>> ctx = FileContext("echo", "CP_Quack-echo-2021-05-30-01-01-01", "results.json", "v")
    >>> measurement_id(ctx, 1)[-8:], len(measurement_id(ctx, 1))
    ('00000001', 32)
    """
    return f"{file_digest(ctx.source, ctx.source_file)}{line_no:08x}"


@functools.lru_cache(maxsize=4096)
def file_digest(source: str, source_file: str) -> str:
    """24 hex characters identifying one input file (the id prefix of its measurements)."""
    return hashlib.blake2b(f"{source}/{source_file}".encode(), digest_size=12).hexdigest()


def normalize_timestamp(value: Any, field: str) -> tuple[str, str]:
    """RFC 3339 with up to 9 fraction digits → (date prefix, microsecond-precision string).

    >>> normalize_timestamp("2020-11-14T07:54:49.246304766-05:00", "t")
    ('2020-11-14', '2020-11-14T07:54:49.246304-05:00')
    """
    if type(value) is str and len(value) >= 20 and value[10] == "T":
        # Fast path for the prober's own layout: fixed positions, one C-level validation.
        offset = value[-6:]
        if offset[0] in "+-" and offset[3] == ":" and offset[4] < "6":
            body = value[:-6]
        elif value[-1] == "Z":
            offset, body = "Z", value[:-1]
        else:
            body = ""
        if len(body) == 19 or (20 < len(body) <= 29 and body[19] == "."):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise BadRecord("invalid_timestamp", f"{field}: {value[:80]!r}") from None
            return value[:10], body[:26] + offset
    if not isinstance(value, str):
        raise BadRecord("missing_field" if value is None else "wrong_type", f"{field}: {value!r}")
    m = _TIME_RE.match(value)
    if m is None:
        raise BadRecord("invalid_timestamp", f"{field}: {value[:80]!r}")
    day, clock, frac, offset = m.groups()
    if len(offset) == 5:  # +hhmm
        offset = f"{offset[:3]}:{offset[3:]}"
    frac_part = f".{frac[:6]}" if frac else ""
    out = f"{day}T{clock}{frac_part}{offset}"
    try:
        datetime.fromisoformat(out)  # rejects impossible dates, times and offsets
    except ValueError:
        raise BadRecord("invalid_timestamp", f"{field}: {value[:80]!r}") from None
    return day, out


def _need(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record or record[key] is None:
        raise BadRecord("missing_field", f"{where}: missing {key}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRecord("wrong_type", f"{where}: {key} is {type(value).__name__}")
    return value


def _opt_bool(record: dict[str, Any], key: str, where: str) -> bool | None:
    value = record.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRecord("wrong_type", f"{where}: {key} is {type(value).__name__}")


def _opt_str(record: dict[str, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRecord("wrong_type", f"{where}: {key} is {type(value).__name__}")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise BadRecord("wrong_type", f"{where}: integer out of range")
        return value
    raise BadRecord("wrong_type", f"{where}: expected an integer, got {type(value).__name__}")


def domain_from_sent(sent: str) -> str | None:
    """Domain/URL a v1 probe asked for, from its ``Sent`` text; None if unparsable.

    >>> domain_from_sent("GET / HTTP/1.1\\r\\nHost: www.89.com\\r\\n\\r\\n")
    'www.89.com'
    >>> domain_from_sent("GET www.bbc.co.uk HTTP/1.1\\r\\nHost: /news\\r\\n\\r\\n")
    'www.bbc.co.uk/news'
    >>> domain_from_sent("scribd.com")
    'scribd.com'
    """
    if " " not in sent:
        return sent
    m = _SENT_RE.search(sent)
    if m is None:
        return None
    path, host = m.group(1), m.group(2)
    if host.startswith("/"):  # the v1 prober sometimes swapped path and host
        path, host = host, path
    return host if path == "/" else host + path


def _received_fields(received: Any, where: str) -> dict[str, Any]:
    """Flatten a v1 ``Received`` / v2 ``response`` value into received_* fields."""
    out: dict[str, Any] = {}
    if received is None:
        return out
    if isinstance(received, str):
        out["received_status"] = received
        return out
    if not isinstance(received, dict):
        raise BadRecord("wrong_type", f"{where}: response is {type(received).__name__}")
    status = received.get("status_line")
    if status is not None and not isinstance(status, str):
        raise BadRecord("wrong_type", f"{where}: status_line is {type(status).__name__}")
    out["received_status"] = status
    headers = received.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise BadRecord("wrong_type", f"{where}: headers is {type(headers).__name__}")
        flat: list[str] = []
        for name, values in headers.items():
            if not isinstance(values, list):
                flat.append(f"{name}: {values}")
            elif len(values) == 1:  # the usual case; a generator per header costs ~0.2 µs
                flat.append(f"{name}: {values[0]}")
            else:
                flat.extend([f"{name}: {v}" for v in values])
        out["received_headers"] = flat
    body = received.get("body")
    if body is not None and not isinstance(body, str):
        raise BadRecord("wrong_type", f"{where}: body is {type(body).__name__}")
    out["received_body"] = body
    tls = received.get("tls")
    if isinstance(tls, dict):  # v1
        out["received_tls_version"] = _opt_int(tls.get("version"), where + ".tls.version")
        out["received_tls_cipher_suite"] = _opt_int(tls.get("cipher_suite"), where + ".tls")
        out["_cert"] = tls.get("cert")
    elif tls is not None:
        raise BadRecord("wrong_type", f"{where}: tls is {type(tls).__name__}")
    else:  # v2 flat fields
        if "TlsVersion" in received:
            out["received_tls_version"] = _opt_int(received["TlsVersion"], where + ".TlsVersion")
        if "CipherSuite" in received:
            out["received_tls_cipher_suite"] = _opt_int(
                received["CipherSuite"], where + ".CipherSuite"
            )
        if "Certificate" in received:
            out["_cert"] = received["Certificate"]
    return out


def _base_row(ctx: FileContext, line_no: int, mid: str, server_ip: str) -> Row:
    return {
        "server_ip": server_ip,
        "measurement_id": mid,
        "source": ctx.source,
        "source_file": ctx.source_file,
        "source_line": line_no,
        "pipeline_version": ctx.pipeline_version,
    }


def _flatten_v1(rec: dict[str, Any], line_no: int, mid: str, ctx: FileContext) -> list[Row]:
    server = _need(rec, "Server", str, "v1")
    keyword = _need(rec, "Keyword", str, "v1")
    results = _need(rec, "Results", list, "v1")
    retries = rec.get("Retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)):
        raise BadRecord("wrong_type", "v1: Retries is not an integer")
    anomaly = _opt_bool(rec, "Blocked", "v1")
    controls_failed = _opt_bool(rec, "FailSanity", "v1")
    stateful = _opt_bool(rec, "StatefulBlock", "v1")
    rows: list[Row] = []
    for index, rt in enumerate(results):
        where = f"v1.Results[{index}]"
        if not isinstance(rt, dict):
            raise BadRecord("wrong_type", f"{where} is {type(rt).__name__}")
        sent = _opt_str(rt, "Sent", where) or ""
        if sent:
            domain = domain_from_sent(sent)
            if domain is None:
                raise BadRecord("unparsable_sent", f"{where}: Sent {sent[:120]!r}")
            is_control = domain in V1_CONTROL_DOMAINS
        else:
            is_control = retries is not None and index > retries
            domain = "" if is_control else keyword
        date, start = normalize_timestamp(rt.get("StartTime"), where + ".StartTime")
        _, end = normalize_timestamp(rt.get("EndTime"), where + ".EndTime")
        row = _base_row(ctx, line_no, mid, server)
        row.update(
            domain=domain,
            domain_is_control=is_control,
            date=date,
            start_time=start,
            end_time=end,
            retry=None if is_control else index,
            received_error=_opt_str(rt, "Error", where),
            matches_template=_opt_bool(rt, "Success", where),
            no_response_in_measurement_matches_template=anomaly,
            controls_failed=controls_failed,
            stateful_block=stateful,
        )
        if "Received" in rt:
            row.update(_received_fields(rt["Received"], where + ".Received"))
        rows.append(row)
    return rows


def _flatten_v2(rec: dict[str, Any], line_no: int, mid: str, ctx: FileContext) -> list[Row]:
    vp = _need(rec, "vp", str, "v2")
    test_url = _need(rec, "test_url", str, "v2")
    responses = _need(rec, "response", list, "v2")
    anomaly = _opt_bool(rec, "anomaly", "v2")
    controls_failed = _opt_bool(rec, "controls_failed", "v2")
    stateful = _opt_bool(rec, "stateful_block", "v2")
    rows: list[Row] = []
    retry = 0
    for index, rt in enumerate(responses):
        where = f"v2.response[{index}]"
        if not isinstance(rt, dict):
            raise BadRecord("wrong_type", f"{where} is {type(rt).__name__}")
        control_url = _opt_str(rt, "control_url", where)
        is_control = control_url is not None
        date, start = normalize_timestamp(rt.get("start_time"), where + ".start_time")
        _, end = normalize_timestamp(rt.get("end_time"), where + ".end_time")
        row = _base_row(ctx, line_no, mid, vp)
        row.update(
            domain=control_url if is_control else test_url,
            domain_is_control=is_control,
            date=date,
            start_time=start,
            end_time=end,
            retry=None if is_control else retry,
            received_error=_opt_str(rt, "error", where),
            matches_template=_opt_bool(rt, "matches_template", where),
            no_response_in_measurement_matches_template=anomaly,
            controls_failed=controls_failed,
            stateful_block=stateful,
        )
        if not is_control:
            retry += 1
        if "response" in rt:
            row.update(_received_fields(rt["response"], where + ".response"))
        rows.append(row)
    return rows


def flatten_record(record: Any, line_no: int, raw: bytes, ctx: FileContext) -> list[Row]:
    """Flatten one decoded Hyperquack record; rows still lack the analysis columns.

    A record with no roundtrips yields no rows (and is not an error). Rows may carry a
    private ``_cert`` key (the raw certificate field) for the annotation step.
    """
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"record is a JSON {type(record).__name__}")
    mid = measurement_id(ctx, line_no)
    if "Server" in record:
        return _flatten_v1(record, line_no, mid, ctx)
    if "vp" in record:
        return _flatten_v2(record, line_no, mid, ctx)
    raise BadRecord("unknown_format", "neither Hyperquack v1 (Server) nor v2 (vp) keys")
