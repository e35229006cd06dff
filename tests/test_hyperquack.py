"""Tests for services.beam_launcher.hyperquack.parse (Hyperquack v1/v2 records → flat rows)."""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.beam_launcher.hyperquack.parse import (
    V1_CONTROL_DOMAINS,
    BadRecord,
    FileContext,
    domain_from_sent,
    flatten_record,
    measurement_id,
    normalize_timestamp,
)

CTX = FileContext("echo", "CP_Quack-echo-2020-11-14-07-54-49", "results.json", "test")
RAW = b'{"raw": "line"}'

ECHO_CONTROL = "example5718349450314.com"
HTTP_CONTROL = "rtyutgyhefdafioasfjhjhi.com"

T_START = "2020-11-14T10:58:31.064933276-05:00"
T_END = "2020-11-14T10:58:31.565868581-05:00"


def sent(host: str, path: str = "/") -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"


def v1_rt(sent_text: str | None = None, **extra: Any) -> dict[str, Any]:
    rt: dict[str, Any] = {"Success": True, "StartTime": T_START, "EndTime": T_END}
    if sent_text is not None:
        rt["Sent"] = sent_text
    rt.update(extra)
    return rt


def v1_record(results: list[Any], keyword: str = "www.89.com", **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "Server": "122.155.84.41",
        "Keyword": keyword,
        "Retries": 4,
        "Results": results,
        "Blocked": False,
        "FailSanity": False,
        "StatefulBlock": False,
    }
    rec.update(extra)
    return rec


def v2_rt(**extra: Any) -> dict[str, Any]:
    rt: dict[str, Any] = {
        "matches_template": True,
        "start_time": "2021-05-30T01:01:03.123456789-04:00",
        "end_time": "2021-05-30T01:01:04.5-04:00",
    }
    rt.update(extra)
    return rt


def v2_record(
    responses: list[Any], test_url: str = "www.bbc.co.uk", **extra: Any
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "vp": "1.2.3.4",
        "location": {"country_name": "Thailand", "country_code": "TH"},
        "service": "echo",
        "test_url": test_url,
        "response": responses,
        "anomaly": False,
        "controls_failed": False,
        "stateful_block": False,
    }
    rec.update(extra)
    return rec


def flat(record: Any, line_no: int = 7, raw: bytes = RAW) -> list[dict[str, Any]]:
    return flatten_record(record, line_no, raw, CTX)


def bad_class(record: Any) -> str:
    with pytest.raises(BadRecord) as info:
        flat(record)
    return info.value.error_class


# --- format detection -------------------------------------------------------------------


def test_v1_is_detected_by_server_key() -> None:
    rows = flat(v1_record([v1_rt(sent("www.89.com"))]))
    assert len(rows) == 1
    assert rows[0]["server_ip"] == "122.155.84.41"
    assert rows[0]["domain"] == "www.89.com"


def test_v2_is_detected_by_vp_key() -> None:
    rows = flat(v2_record([v2_rt()]))
    assert len(rows) == 1
    assert rows[0]["server_ip"] == "1.2.3.4"
    assert rows[0]["domain"] == "www.bbc.co.uk"


def test_record_with_both_v1_and_v2_keys_is_read_as_v1() -> None:
    record = {**v2_record([v2_rt(), v2_rt()]), **v1_record([v1_rt(sent("www.89.com"))])}
    rows = flat(record)
    assert [(r["server_ip"], r["domain"]) for r in rows] == [("122.155.84.41", "www.89.com")]


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"server": "1.2.3.4", "Keyword": "a.com", "Results": []},  # keys are case-sensitive
        {"ip": "1.2.3.4", "test_url": "a.com", "response": []},
    ],
)
def test_record_with_neither_key_is_unknown_format(record: dict[str, Any]) -> None:
    assert bad_class(record) == "unknown_format"


@pytest.mark.parametrize("record", [[], [v2_record([v2_rt()])], "text", 12, 1.5, None, True])
def test_non_object_record_is_not_an_object(record: Any) -> None:
    assert bad_class(record) == "not_an_object"


# --- v1 Sent parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent_text", "expected"),
    [
        (sent("www.89.com"), "www.89.com"),
        (sent("www.bbc.co.uk", "/news"), "www.bbc.co.uk/news"),
        (sent("www.example.org", "/a/b?c=d&e=f"), "www.example.org/a/b?c=d&e=f"),
        # The v1 prober's bug: path and host swapped.
        ("GET www.bbc.co.uk HTTP/1.1\r\nHost: /\r\n\r\n", "www.bbc.co.uk"),
        (
            "GET www.guaribas.pi.gov.br HTTP/1.1\r\nHost: /portal1/intro.asp?iIdMun=100122\r\n",
            "www.guaribas.pi.gov.br/portal1/intro.asp?iIdMun=100122",
        ),
        # http/https v1 probes send only the domain.
        ("scribd.com", "scribd.com"),
        ("www.bbc.co.uk/news", "www.bbc.co.uk/news"),
    ],
)
def test_domain_from_sent(sent_text: str, expected: str) -> None:
    assert domain_from_sent(sent_text) == expected


@pytest.mark.parametrize(
    "sent_text",
    [
        "GET / HTTP/1.0\r\nHost: a.com\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.com\r\n\r\n",
        "some words with spaces",
        "GET / HTTP/1.1 Host: a.com",
    ],
)
def test_domain_from_sent_unparsable_is_none(sent_text: str) -> None:
    assert domain_from_sent(sent_text) is None


def test_flatten_v1_sent_variants_give_domains() -> None:
    record = v1_record(
        [
            v1_rt(sent("www.bbc.co.uk", "/news")),
            v1_rt("GET www.bbc.co.uk HTTP/1.1\r\nHost: /news\r\n\r\n"),
            v1_rt("www.bbc.co.uk"),
        ],
        keyword="www.bbc.co.uk/news",
    )
    assert [r["domain"] for r in flat(record)] == [
        "www.bbc.co.uk/news",
        "www.bbc.co.uk/news",
        "www.bbc.co.uk",
    ]


def test_unparsable_sent_is_bad_record() -> None:
    record = v1_record([v1_rt(sent("a.com")), v1_rt("GET me a coffee please")])
    with pytest.raises(BadRecord) as info:
        flat(record)
    assert info.value.error_class == "unparsable_sent"
    assert "Results[1]" in info.value.message


# --- v1 controls and retries --------------------------------------------------------------


def test_v1_control_domains() -> None:
    assert frozenset({ECHO_CONTROL, HTTP_CONTROL}) == V1_CONTROL_DOMAINS


def test_v1_echo_control_detected_from_sent() -> None:
    record = v1_record(
        [v1_rt(sent("www.89.com"), Success=False) for _ in range(5)] + [v1_rt(sent(ECHO_CONTROL))],
        Blocked=True,
    )
    rows = flat(record)
    assert [r["domain"] for r in rows] == ["www.89.com"] * 5 + [ECHO_CONTROL]
    assert [r["domain_is_control"] for r in rows] == [False] * 5 + [True]
    assert [r["retry"] for r in rows] == [0, 1, 2, 3, 4, None]


def test_v1_http_control_detected_from_bare_sent() -> None:
    rows = flat(v1_record([v1_rt("scribd.com"), v1_rt(HTTP_CONTROL)], keyword="scribd.com"))
    assert [(r["domain"], r["domain_is_control"], r["retry"]) for r in rows] == [
        ("scribd.com", False, 0),
        (HTTP_CONTROL, True, None),
    ]


def test_v1_control_detection_ignores_keyword_for_parsed_sent() -> None:
    # A probe whose Sent names a control domain is a control even within the retries.
    rows = flat(v1_record([v1_rt(sent(ECHO_CONTROL))], Retries=4))
    assert rows[0]["domain_is_control"] is True
    assert rows[0]["retry"] is None


def test_v1_empty_sent_after_retries_is_control_with_empty_domain() -> None:
    results = [v1_rt(sent("www.89.com"), Success=False) for _ in range(2)]
    results.append(v1_rt("", Success=True))  # index 2 > Retries=1
    rows = flat(v1_record(results, Retries=1))
    last = rows[-1]
    assert last["domain"] == ""
    assert last["domain_is_control"] is True
    assert last["retry"] is None
    assert [r["retry"] for r in rows] == [0, 1, None]


def test_v1_empty_sent_within_retries_uses_keyword() -> None:
    results = [
        v1_rt(sent("www.89.com"), Success=False),
        v1_rt(
            "",
            Success=False,
            Error="dial tcp 0.0.0.0:0->122.155.84.41:7: connect: connection timed out",
        ),
        v1_rt(None, Success=False),  # no Sent key at all behaves like ""
    ]
    rows = flat(v1_record(results, Retries=2))
    assert [(r["domain"], r["domain_is_control"], r["retry"]) for r in rows] == [
        ("www.89.com", False, 0),
        ("www.89.com", False, 1),
        ("www.89.com", False, 2),
    ]


def test_v1_empty_sent_at_index_equal_to_retries_is_a_test_probe() -> None:
    rows = flat(v1_record([v1_rt(sent("a.com")), v1_rt("")], keyword="a.com", Retries=1))
    assert rows[1]["domain"] == "a.com"
    assert rows[1]["domain_is_control"] is False
    assert rows[1]["retry"] == 1


def test_v1_empty_sent_without_retries_field_is_a_test_probe() -> None:
    record = v1_record([v1_rt(""), v1_rt(""), v1_rt("")], keyword="a.com")
    del record["Retries"]
    rows = flat(record)
    assert [(r["domain"], r["retry"]) for r in rows] == [("a.com", 0), ("a.com", 1), ("a.com", 2)]


def test_v1_retry_is_results_index_for_test_probes() -> None:
    # Test probes keep their index in Results even after a control.
    results = [
        v1_rt(sent("a.com"), Success=False),
        v1_rt(sent(ECHO_CONTROL)),
        v1_rt(sent("a.com")),
    ]
    rows = flat(v1_record(results, keyword="a.com"))
    assert [r["retry"] for r in rows] == [0, None, 2]


# --- v2 controls and retries --------------------------------------------------------------


def test_v2_retry_counts_only_test_probes_and_controls_use_control_url() -> None:
    responses = [
        v2_rt(control_url="control-1a2b.com"),
        v2_rt(matches_template=False),
        v2_rt(matches_template=False),
        v2_rt(control_url="control-3c4d.com", matches_template=False),
        v2_rt(),
        v2_rt(control_url="control-5e6f.com"),
    ]
    rows = flat(v2_record(responses, test_url="a.com", anomaly=True, stateful_block=True))
    assert [r["domain"] for r in rows] == [
        "control-1a2b.com",
        "a.com",
        "a.com",
        "control-3c4d.com",
        "a.com",
        "control-5e6f.com",
    ]
    assert [r["domain_is_control"] for r in rows] == [True, False, False, True, False, True]
    assert [r["retry"] for r in rows] == [None, 0, 1, None, 2, None]
    assert [r["matches_template"] for r in rows] == [True, False, False, False, True, True]
    assert all(r["no_response_in_measurement_matches_template"] is True for r in rows)
    assert all(r["stateful_block"] is True for r in rows)


def test_v2_fields_copied() -> None:
    rt = v2_rt(matches_template=False, error="Status lines do not match")
    rows = flat(v2_record([rt], anomaly=True, controls_failed=True))
    row = rows[0]
    assert row["received_error"] == "Status lines do not match"
    assert row["matches_template"] is False
    assert row["no_response_in_measurement_matches_template"] is True
    assert row["controls_failed"] is True
    assert row["stateful_block"] is False
    assert row["date"] == "2021-05-30"
    assert row["start_time"] == "2021-05-30T01:01:03.123456-04:00"
    assert row["end_time"] == "2021-05-30T01:01:04.5-04:00"


def test_v2_missing_optional_measurement_flags_are_none() -> None:
    record = v2_record([v2_rt()])
    for key in ("anomaly", "controls_failed", "stateful_block"):
        del record[key]
    row = flat(record)[0]
    assert row["no_response_in_measurement_matches_template"] is None
    assert row["controls_failed"] is None
    assert row["stateful_block"] is None
    assert row["received_error"] is None


def test_v1_fields_copied() -> None:
    rt = v1_rt(
        sent("www.89.com"),
        Success=False,
        Error="Incorrect echo response",
        Received="HTTP/1.1 503 Service Unavailable\r\n\r\n<title>Web Page Blocked</title>",
    )
    row = flat(v1_record([rt], Blocked=True, FailSanity=True, StatefulBlock=True))[0]
    assert row["received_error"] == "Incorrect echo response"
    assert row["matches_template"] is False
    assert row["no_response_in_measurement_matches_template"] is True
    assert row["controls_failed"] is True
    assert row["stateful_block"] is True
    assert row["date"] == "2020-11-14"
    assert row["start_time"] == "2020-11-14T10:58:31.064933-05:00"
    assert row["end_time"] == "2020-11-14T10:58:31.565868-05:00"


def test_provenance_fields() -> None:
    ctx = FileContext("https", "CP_Quack-https-2021-04-26-04-21-46", "results-0001.json", "1.2.3")
    rows = flatten_record(v2_record([v2_rt(), v2_rt()]), 42, RAW, ctx)
    for row in rows:
        assert row["source"] == "CP_Quack-https-2021-04-26-04-21-46"
        assert row["source_file"] == "results-0001.json"
        assert row["source_line"] == 42
        assert row["pipeline_version"] == "1.2.3"
        assert row["measurement_id"] == measurement_id(ctx, 42)


# --- received data -----------------------------------------------------------------------


def test_v1_tls_nested_fields() -> None:
    received = {
        "status_line": "200 OK",
        "headers": {"Content-Type": ["text/html"]},
        "body": "<html></html>",
        "tls": {"version": 771, "cipher_suite": 49199, "cert": "MIIBcert"},
    }
    row = flat(v1_record([v1_rt("a.com", Received=received)], keyword="a.com"))[0]
    assert row["received_tls_version"] == 771
    assert row["received_tls_cipher_suite"] == 49199
    assert row["_cert"] == "MIIBcert"
    assert row["received_status"] == "200 OK"
    assert row["received_body"] == "<html></html>"


def test_v2_tls_flat_fields_with_certificate_string() -> None:
    response = {
        "status_line": "200 OK",
        "TlsVersion": 772,
        "CipherSuite": 4865,
        "Certificate": "MIIB",
    }
    row = flat(v2_record([v2_rt(response=response)]))[0]
    assert row["received_tls_version"] == 772
    assert row["received_tls_cipher_suite"] == 4865
    assert row["_cert"] == "MIIB"


def test_v2_certificate_list_is_carried_whole() -> None:
    chain = ["MIIBleaf", "MIIBintermediate"]
    row = flat(v2_record([v2_rt(response={"Certificate": chain})]))[0]
    assert row["_cert"] == chain
    assert "received_tls_version" not in row


def test_no_tls_fields_without_tls_data() -> None:
    row = flat(v2_record([v2_rt(response={"status_line": "200 OK"})]))[0]
    assert "_cert" not in row
    assert "received_tls_version" not in row
    assert "received_tls_cipher_suite" not in row


def test_headers_flattened_one_per_value_in_order() -> None:
    headers = {
        "Content-Type": ["text/html; charset=UTF-8"],
        "Set-Cookie": ["a=1", "b=2"],
        "P3p": ['CP="CAO PSA OUR"'],
        "X-Single": "scalar",
        "Empty": [],
    }
    row = flat(v2_record([v2_rt(response={"status_line": "200 OK", "headers": headers})]))[0]
    assert row["received_headers"] == [
        "Content-Type: text/html; charset=UTF-8",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
        'P3p: CP="CAO PSA OUR"',
        "X-Single: scalar",
    ]


def test_dict_response_without_headers_or_body() -> None:
    row = flat(v2_record([v2_rt(response={"status_line": "302 Found"})]))[0]
    assert row["received_status"] == "302 Found"
    assert row["received_body"] is None
    assert "received_headers" not in row


def test_string_received_is_status_for_echo() -> None:
    payload = "HTTP/1.1 403 Forbidden\r\nServer: x\r\n\r\n<h1>Blocked</h1>"
    v1_row = flat(v1_record([v1_rt(sent("a.com"), Received=payload)], keyword="a.com"))[0]
    v2_row = flat(v2_record([v2_rt(response=payload)]))[0]
    for row in (v1_row, v2_row):
        assert row["received_status"] == payload
        assert "received_headers" not in row
        assert "received_body" not in row


def test_empty_string_received_is_kept() -> None:
    row = flat(v2_record([v2_rt(response="")]))[0]
    assert row["received_status"] == ""


def test_no_received_key_means_no_received_fields() -> None:
    row = flat(v2_record([v2_rt()]))[0]
    assert not [k for k in row if k.startswith("received_") and k != "received_error"]


# --- bad records --------------------------------------------------------------------------


def _v1_with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    record = v1_record(
        [v1_rt(sent("a.com"), Received={"status_line": "200 OK", "tls": {"version": 771}})],
        keyword="a.com",
    )
    return _set(record, path, value)


def _v2_with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    record = v2_record([v2_rt(response={"status_line": "200 OK"})])
    return _set(record, path, value)


_DELETE = object()


def _set(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    record = copy.deepcopy(record)
    target: Any = record
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return record


@pytest.mark.parametrize(
    ("record", "error_class"),
    [
        # v1 measurement level
        (_v1_with(("Keyword",), _DELETE), "missing_field"),
        (_v1_with(("Keyword",), None), "missing_field"),
        (_v1_with(("Results",), _DELETE), "missing_field"),
        (_v1_with(("Server",), None), "missing_field"),
        (_v1_with(("Server",), 1234), "wrong_type"),
        (_v1_with(("Keyword",), ["a.com"]), "wrong_type"),
        (_v1_with(("Results",), {"0": {}}), "wrong_type"),
        (_v1_with(("Retries",), "4"), "wrong_type"),
        (_v1_with(("Retries",), True), "wrong_type"),
        (_v1_with(("Blocked",), "true"), "wrong_type"),
        (_v1_with(("FailSanity",), 0), "wrong_type"),
        (_v1_with(("StatefulBlock",), "no"), "wrong_type"),
        # v1 roundtrip level
        (_v1_with(("Results", 0), "not a roundtrip"), "wrong_type"),
        (_v1_with(("Results", 0, "StartTime"), _DELETE), "missing_field"),
        (_v1_with(("Results", 0, "EndTime"), None), "missing_field"),
        (_v1_with(("Results", 0, "StartTime"), 1605369511), "wrong_type"),
        (_v1_with(("Results", 0, "StartTime"), "yesterday"), "invalid_timestamp"),
        (_v1_with(("Results", 0, "EndTime"), "2020-11-14T10:58:31"), "invalid_timestamp"),
        (_v1_with(("Results", 0, "Sent"), 5), "wrong_type"),
        (_v1_with(("Results", 0, "Error"), ["x"]), "wrong_type"),
        (_v1_with(("Results", 0, "Success"), "true"), "wrong_type"),
        (_v1_with(("Results", 0, "Received"), 5), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "status_line"), 200), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "headers"), ["A: b"]), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "body"), {"x": 1}), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "tls"), "TLS 1.2"), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "tls", "version"), "771"), "wrong_type"),
        (_v1_with(("Results", 0, "Received", "tls", "cipher_suite"), 1.5), "wrong_type"),
        # v2 measurement level
        (_v2_with(("vp",), None), "missing_field"),
        (_v2_with(("test_url",), _DELETE), "missing_field"),
        (_v2_with(("response",), _DELETE), "missing_field"),
        (_v2_with(("vp",), ["1.2.3.4"]), "wrong_type"),
        (_v2_with(("response",), {"a": 1}), "wrong_type"),
        (_v2_with(("anomaly",), "false"), "wrong_type"),
        (_v2_with(("controls_failed",), 1), "wrong_type"),
        # v2 roundtrip level
        (_v2_with(("response", 0), None), "wrong_type"),
        (_v2_with(("response", 0, "start_time"), _DELETE), "missing_field"),
        (_v2_with(("response", 0, "end_time"), "2021-05-30"), "invalid_timestamp"),
        (_v2_with(("response", 0, "control_url"), 1), "wrong_type"),
        (_v2_with(("response", 0, "error"), 1), "wrong_type"),
        (_v2_with(("response", 0, "matches_template"), "true"), "wrong_type"),
        (_v2_with(("response", 0, "response", "TlsVersion"), "771"), "wrong_type"),
        (_v2_with(("response", 0, "response", "CipherSuite"), True), "wrong_type"),
        (_v2_with(("response", 0, "response"), 3.5), "wrong_type"),
    ],
)
def test_bad_record_classes(record: dict[str, Any], error_class: str) -> None:
    assert bad_class(record) == error_class


def test_bad_record_carries_message_naming_the_field() -> None:
    with pytest.raises(BadRecord) as info:
        flat(_v2_with(("response", 0, "start_time"), "not a time"))
    assert isinstance(info.value, ValueError)
    assert "start_time" in info.value.message
    assert str(info.value) == info.value.message


def test_untouched_templates_are_valid() -> None:
    # Guard for the table above: the unmodified records parse.
    assert len(flat(_v1_with(("Blocked",), False))) == 1
    assert len(flat(_v2_with(("anomaly",), False))) == 1


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "date", "normalized"),
    [
        (
            "2020-11-14T07:54:49.246304766-05:00",
            "2020-11-14",
            "2020-11-14T07:54:49.246304-05:00",
        ),
        ("2021-05-30T01:01:03.123456+00:00", "2021-05-30", "2021-05-30T01:01:03.123456+00:00"),
        ("2021-05-30T01:01:03.999999999Z", "2021-05-30", "2021-05-30T01:01:03.999999Z"),
        ("2021-05-30T01:01:03Z", "2021-05-30", "2021-05-30T01:01:03Z"),
        ("2021-05-30T01:01:03.5+0530", "2021-05-30", "2021-05-30T01:01:03.5+05:30"),
        ("2021-05-30T01:01:03-0400", "2021-05-30", "2021-05-30T01:01:03-04:00"),
        ("2021-05-30 01:01:03.25-04:00", "2021-05-30", "2021-05-30T01:01:03.25-04:00"),
    ],
)
def test_normalize_timestamp(value: str, date: str, normalized: str) -> None:
    assert normalize_timestamp(value, "t") == (date, normalized)


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2020-11-14T07:54:49.246304766-05:00", dt.datetime(2020, 11, 14, 12, 54, 49, 246304)),
        ("2021-05-30T01:01:03.5+0530", dt.datetime(2021, 5, 29, 19, 31, 3, 500000)),
        ("2021-05-30T01:01:03.1234567Z", dt.datetime(2021, 5, 30, 1, 1, 3, 123456)),
    ],
)
def test_normalized_timestamp_keeps_the_instant_to_the_microsecond(
    value: str, utc: dt.datetime
) -> None:
    _, normalized = normalize_timestamp(value, "t")
    parsed = dt.datetime.fromisoformat(normalized.replace("Z", "+00:00"))
    assert parsed.astimezone(dt.UTC) == utc.replace(tzinfo=dt.UTC)


def test_date_is_local_date_not_utc() -> None:
    # 23:30 at -05:00 is already the next day in UTC; 02:00 at +05:30 is the previous one.
    assert normalize_timestamp("2020-11-14T23:30:00-05:00", "t")[0] == "2020-11-14"
    assert normalize_timestamp("2020-11-15T02:00:00+05:30", "t")[0] == "2020-11-15"


def test_row_date_comes_from_start_time() -> None:
    rt = v2_rt(start_time="2021-05-30T23:59:59.9-04:00", end_time="2021-05-31T00:00:00.1-04:00")
    row = flat(v2_record([rt]))[0]
    assert row["date"] == "2021-05-30"
    assert row["end_time"] == "2021-05-31T00:00:00.1-04:00"


@pytest.mark.parametrize(
    "value",
    [
        "2021-05-30T01:01:03",  # no offset
        "2021-05-30",
        "30/05/2021 01:01:03Z",
        "2021-05-30T01:01:03.Z",
        "2021-05-30T01:01:03.1234567890Z",  # 10 fraction digits
        "2021-05-30T01:01:03Z trailing",
        "2021-05-30 01:01:03.62448452 -0400 EDT m=+0.1",  # Go's default layout
        "",
    ],
)
def test_invalid_timestamp_strings(value: str) -> None:
    with pytest.raises(BadRecord) as info:
        normalize_timestamp(value, "start_time")
    assert info.value.error_class == "invalid_timestamp"


@pytest.mark.parametrize(("value", "error_class"), [(None, "missing_field"), (5, "wrong_type")])
def test_non_string_timestamp(value: Any, error_class: str) -> None:
    with pytest.raises(BadRecord) as info:
        normalize_timestamp(value, "start_time")
    assert info.value.error_class == error_class


@pytest.mark.parametrize(
    "value",
    [
        "2021-02-30T00:00:00Z",
        "2021-02-29T00:00:00Z",  # not a leap year
        "2021-13-01T00:00:00Z",
        "2021-00-10T00:00:00Z",
        "2021-05-30T24:00:00Z",
        "2021-05-30T25:00:00-04:00",
        "2021-05-30T01:61:00-04:00",
        "2021-05-30T01:01:60-04:00",
        "2021-05-30T01:01:03.5+99:99",
        "2021-05-30T01:01:03+24:00",
    ],
)
def test_impossible_timestamp_is_invalid_timestamp(value: str) -> None:
    # The shape is right but the calendar/clock is not: a dead letter, not a row that
    # would make the Arrow/BigQuery conversion of the whole batch fail later.
    with pytest.raises(BadRecord) as info:
        normalize_timestamp(value, "start_time")
    assert info.value.error_class == "invalid_timestamp"


def test_leap_day_and_extreme_offsets_are_valid() -> None:
    assert normalize_timestamp("2020-02-29T12:00:00Z", "t") == (
        "2020-02-29",
        "2020-02-29T12:00:00Z",
    )
    assert normalize_timestamp("2021-05-30T01:01:03+1400", "t")[1] == "2021-05-30T01:01:03+14:00"
    assert normalize_timestamp("2021-05-30T01:01:03-23:59", "t")[0] == "2021-05-30"


@pytest.mark.parametrize(
    "value",
    ["2021-05-30T01:01:03+00:60", "2021-05-30T01:01:03-04:75", "2021-05-30T01:01:03+0599"],
)
def test_offset_minutes_out_of_range_is_invalid_timestamp(value: str) -> None:
    with pytest.raises(BadRecord) as info:
        normalize_timestamp(value, "start_time")
    assert info.value.error_class == "invalid_timestamp"


_two = st.integers(0, 99).map("{:02d}".format)


@st.composite
def timestamp_like(draw: st.DrawFn) -> str:
    """Strings with the RFC 3339 shape but arbitrary digits (offset minutes kept < 60)."""
    year = draw(st.integers(1, 9999).map("{:04d}".format))
    frac = draw(st.text("0123456789", min_size=0, max_size=9))
    sign = draw(st.sampled_from("+-"))
    off_h = draw(st.integers(0, 29).map("{:02d}".format))
    off_m = draw(st.integers(0, 59).map("{:02d}".format))
    sep = draw(st.sampled_from(["", ":"]))
    offset = draw(st.sampled_from(["Z", f"{sign}{off_h}{sep}{off_m}"]))
    clock = f"{draw(_two)}:{draw(_two)}:{draw(_two)}"
    return f"{year}-{draw(_two)}-{draw(_two)}T{clock}{'.' + frac if frac else ''}{offset}"


@settings(max_examples=300, deadline=None)
@given(timestamp_like())
def test_accepted_timestamps_convert_to_arrow(value: str) -> None:
    try:
        date, normalized = normalize_timestamp(value, "t")
    except BadRecord as bad:
        assert bad.error_class == "invalid_timestamp"
        return
    assert date == value[:10]
    pa.array([normalized], pa.string()).cast(pa.timestamp("us", tz="UTC"))
    pa.array([date], pa.string()).cast(pa.date32())


# --- measurement ids ----------------------------------------------------------------------


def test_measurement_id_is_deterministic_hex() -> None:
    mid = measurement_id(CTX, 3)
    assert mid == measurement_id(FileContext(*_ctx_fields(CTX)), 3)
    assert re.fullmatch(r"[0-9a-f]{32}", mid)


def _ctx_fields(ctx: FileContext) -> tuple[str, str, str, str]:
    return (ctx.scan_type, ctx.source, ctx.source_file, ctx.pipeline_version)


def test_identical_lines_at_different_positions_get_distinct_ids() -> None:
    record = v2_record([v2_rt()])
    first = flat(record, line_no=1, raw=RAW)[0]["measurement_id"]
    second = flat(record, line_no=2, raw=RAW)[0]["measurement_id"]
    assert first != second
    assert flat(record, line_no=1, raw=RAW)[0]["measurement_id"] == first


def test_measurement_id_depends_on_file_and_position() -> None:
    base = measurement_id(CTX, 1)
    other_file = FileContext(CTX.scan_type, CTX.source, "results-2.json", CTX.pipeline_version)
    other_source = FileContext(
        CTX.scan_type, "CP_Quack-echo-2020-11-15-07-54-49", CTX.source_file, CTX.pipeline_version
    )
    assert measurement_id(other_file, 1) != base
    assert measurement_id(other_source, 1) != base
    assert measurement_id(CTX, 2) != base
    # The pipeline version is not part of the id: reprocessing keeps ids stable.
    same = FileContext(CTX.scan_type, CTX.source, CTX.source_file, "other-version")
    assert measurement_id(same, 1) == base


def test_all_rows_of_a_record_share_its_measurement_id() -> None:
    rows = flat(v2_record([v2_rt(control_url="control-1.com"), v2_rt(), v2_rt()]))
    assert len({r["measurement_id"] for r in rows}) == 1


# --- records without roundtrips --------------------------------------------------------------


@pytest.mark.parametrize("record", [v1_record([]), v2_record([])])
def test_record_without_roundtrips_yields_no_rows(record: dict[str, Any]) -> None:
    assert flat(record) == []
