"""Tests for services.beam_launcher.satellite.parse (Satellite files → rows and join values).

Most tests read the real Censored Planet samples in shared/fixtures/real in place (they
skip when that folder is absent); bad-record tests start from a real record and break it.
"""

from __future__ import annotations

import base64
import copy
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.beam_launcher.enrichment.resources import Resources, load_resources
from services.beam_launcher.hyperquack.parse import BadRecord, FileContext
from services.beam_launcher.satellite import parse as sat
from services.beam_launcher.warehouse.rows import SATELLITE_SCAN
from services.common.countries import country_code, known_codes
from tests.conftest import REAL_RESOURCES, require_real

SCAN_V1 = "CP_Satellite-2018-08-03-00-00-01"
SCAN_V21 = "CP_Satellite-2021-04-25-00-00-01"
SCAN_V22 = "CP_Satellite-2021-10-20-00-00-01"
SCAN_DATES = {SCAN_V1: "2018-08-03", SCAN_V21: "2021-04-25", SCAN_V22: "2021-10-20"}

ANSWER_KEYS = set(sat.ANSWER_FIELDS)
MATCH_KEYS = {"ip", "censys_http_body_hash", "censys_ip_cert", "asn", "as_name"}
NO_MATCH = dict.fromkeys(MATCH_KEYS, False)


# --- helpers ------------------------------------------------------------------------------


def real_lines(rel: str) -> list[tuple[int, bytes, Any]]:
    """(1-based line number, raw line, decoded record) of a real fixture file."""
    path = require_real() / rel
    if not path.is_file():
        pytest.skip(f"real fixture {rel} not found")
    out = []
    for index, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if raw.strip():
            out.append((index, raw, orjson.loads(raw)))
    return out


def real_record(rel: str, line_no: int) -> dict[str, Any]:
    """A deep copy of one real record, to break in a test."""
    for number, _raw, record in real_lines(rel):
        if number == line_no:
            return copy.deepcopy(record)
    raise AssertionError(f"{rel} has no line {line_no}")


def ctx_for(scan: str, rel: str) -> FileContext:
    return FileContext("satellite", scan, Path(rel).name, "test")


def flatten_file(rel: str, scan: str) -> list[dict[str, Any]]:
    ctx = ctx_for(scan, rel)
    rows: list[dict[str, Any]] = []
    for line_no, raw, record in real_lines(rel):
        rows += sat.flatten_observation(record, Path(rel).name, line_no, raw, ctx, SCAN_DATES[scan])
    return rows


def flatten_one(record: Any, basename: str = "results.json", scan: str = SCAN_V22) -> list[Any]:
    ctx = FileContext("satellite", scan, basename, "test")
    raw = orjson.dumps(record) if isinstance(record, dict) else b"x"
    return sat.flatten_observation(record, basename, 1, raw, ctx, SCAN_DATES[scan])


def bad_class(record: Any, basename: str = "results.json", scan: str = SCAN_V22) -> str:
    with pytest.raises(BadRecord) as info:
        flatten_one(record, basename, scan)
    return info.value.error_class


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def assert_schema(rows: list[dict[str, Any]]) -> None:
    """Exactly the table's keys (plus `_` keys), all 30 answer keys, Arrow-convertible."""
    for row in rows:
        assert set(public(row)) == set(SATELLITE_SCAN.column_names)
        assert row["_format"] in ("v1", "v2.1", "v2.1-control", "v2.2")
        for answer in row["answers"]:
            assert set(answer) == ANSWER_KEYS
            mc = answer["matches_control"]
            assert mc is None or (
                set(mc) == MATCH_KEYS and all(type(v) is bool for v in mc.values())
            )
    table = SATELLITE_SCAN.to_arrow([public(r) for r in rows])
    assert table.num_rows == len(rows)


@pytest.fixture(scope="module")
def real_resources() -> Resources:
    require_real()
    return load_resources(str(REAL_RESOURCES))


@pytest.fixture(scope="module")
def v1_rows() -> list[dict[str, Any]]:
    return flatten_file("satellite_v1/interference.json", SCAN_V1) + flatten_file(
        "satellite_v1/answers_control.json", SCAN_V1
    )


@pytest.fixture(scope="module")
def v21_rows() -> list[dict[str, Any]]:
    return flatten_file("satellite_v2.1/results.json", SCAN_V21)


@pytest.fixture(scope="module")
def v21_control_rows() -> list[dict[str, Any]]:
    return flatten_file("satellite_v2.1/responses_control.json", SCAN_V21)


@pytest.fixture(scope="module")
def v22_rows() -> list[dict[str, Any]]:
    return flatten_file("satellite_v2.2/results.json", SCAN_V22)


def by_domain(rows: list[dict[str, Any]], domain: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["domain"] == domain]


# --- file roles ---------------------------------------------------------------------------

REAL_FILE_ROLES = {
    "answers_control.json": "observations",
    "interference.json": "observations",
    "results.json": "observations",
    "responses_control.json": "observations",
    "resolvers.json": "resolver_tags",
    "tagged_resolvers.json": "resolver_tags",
    "resolvers_profile.json": "resolver_tags",
    "tagged_answers.json": "answer_tags",
    "tagged_responses.json": "answer_tags",
    "blockpages.json": "page_fetches",
    "control_pages.json": "page_fetches",
    "resolver_info.json": "unused",
}


def test_file_role_of_every_real_fixture_file() -> None:
    names = {p.name for p in require_real().glob("satellite_*/**/*") if p.is_file()}
    assert names == set(REAL_FILE_ROLES)  # a new fixture file must be classified here
    for name in sorted(names):
        assert sat.file_role(name) == REAL_FILE_ROLES[name], name
        assert sat.file_role(name + ".gz") == REAL_FILE_ROLES[name], name
        reason = sat.skip_reason(name)
        assert (reason is None) == (REAL_FILE_ROLES[name] != "unused"), name


def test_resolver_info_is_unused_with_a_reason() -> None:
    assert sat.file_role("resolver_info.json") == "unused"
    reason = sat.skip_reason("CP_Satellite-2021-10-20-00-00-01/resolver_info.json.gz")
    assert reason is not None and "resolvers_profile.json" in reason


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("interference_err.json", "observations"),
        ("answers_err.json", "observations"),
        *[
            (n, "unused")
            for n in (
                "resolvers_raw.json",
                "resolvers_ip.json",
                "resolvers_err.json",
                "resolvers_ptr.json",
                "answers_raw.json",
                "answers.json",
                "answers_ip.json",
                "dns.pkt",
                "log.json",
                "results_verified.json",
                "responses.json",
                "responses_ip.json",
                "responses_raw.json",
                "resolver_info.json",
            )
        ],
        ("README.txt", "unknown"),
        ("results.json.bz2", "unknown"),
        ("Results.json", "unknown"),
    ],
)
def test_file_role_of_known_and_unknown_names(name: str, role: str) -> None:
    assert sat.file_role(name) == role
    assert sat.file_role(f"gs://bucket/satellite/{SCAN_V1}/{name}.gz") == role
    if role == "unknown":
        assert sat.skip_reason(name) == sat.UNKNOWN_FILE_REASON
    elif role == "unused":
        assert sat.skip_reason(name) == sat.SKIP_REASONS[name]
    else:
        assert sat.skip_reason(name) is None


def test_every_unused_file_has_a_reason_and_no_name_has_two_roles() -> None:
    assert not set(sat.SKIP_REASONS) & set(sat.FILE_ROLES)
    assert all(len(reason) > 20 for reason in sat.SKIP_REASONS.values())


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "2021-04-25 14:49:26.030082621 -0400 EDT m=+10164.305884862",
            ("2021-04-25", "2021-04-25T14:49:26.030082-04:00"),
        ),
        (
            "2021-10-20 14:51:41.221546144 -0400 EDT",
            ("2021-10-20", "2021-10-20T14:51:41.221546-04:00"),
        ),
        ("2023-03-05 16:16:10.9 -0500 EST", ("2023-03-05", "2023-03-05T16:16:10.9-05:00")),
        ("2021-06-01 23:59:59 +0530 IST", ("2021-06-01", "2021-06-01T23:59:59+05:30")),
        ("2021-06-01 00:00:01.5 +0000 UTC", ("2021-06-01", "2021-06-01T00:00:01.5+00:00")),
        ("2021-06-01T00:00:01.123456789Z", ("2021-06-01", "2021-06-01T00:00:01.123456Z")),
    ],
)
def test_go_timestamp(value: str, expected: tuple[str, str]) -> None:
    assert sat.go_timestamp(value, "t") == expected


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        ("yesterday", "invalid_timestamp"),
        ("2021-04-25 14:49:26", "invalid_timestamp"),
        ("2021-02-30 14:49:26.1 -0400 EDT", "invalid_timestamp"),
        ("2021-04-25 14:49:26.1 EDT -0400", "invalid_timestamp"),
        (1619376566, "wrong_type"),
        (None, "missing_field"),
    ],
)
def test_go_timestamp_rejects(value: Any, error_class: str) -> None:
    with pytest.raises(BadRecord) as info:
        sat.go_timestamp(value, "t")
    assert info.value.error_class == error_class


# --- format detection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("satellite_v1/interference.json", "v1"),
        ("satellite_v1/answers_control.json", "v1"),
        ("satellite_v2.1/results.json", "v2.1"),
        ("satellite_v2.1/responses_control.json", "v2.1-control"),
        ("satellite_v2.2/results.json", "v2.2"),
        ("satellite_v2.2/initial_6a228c6/results.json", "v2.2"),
    ],
)
def test_detect_format_of_real_files(rel: str, fmt: str) -> None:
    for _n, _raw, record in real_lines(rel):
        assert sat.detect_format(record) == fmt


def test_detect_format_uses_types_when_the_passed_keys_are_absent() -> None:
    v22 = real_record("satellite_v2.2/results.json", 1)
    del v22["passed_liveness"]
    assert sat.detect_format(v22) == "v2.2"
    control = real_record("satellite_v2.1/responses_control.json", 1)
    del control["passed_control"]
    assert sat.detect_format(control) == "v2.1-control"
    control["response"] = []
    with pytest.raises(BadRecord) as info:
        sat.detect_format(control)
    assert info.value.error_class == "unknown_format"


# --- v1 -----------------------------------------------------------------------------------


def test_v1_interference_and_answers_control_give_8_rows(v1_rows: list[Any]) -> None:
    assert len(v1_rows) == 8
    assert_schema(v1_rows)
    interference, control = v1_rows[:4], v1_rows[4:]
    assert [r["resolver_is_trusted"] for r in interference] == [False] * 4
    assert [r["resolver_is_trusted"] for r in control] == [True] * 4
    assert all(r["resolver_ip"] == "1.1.1.1" for r in control)
    assert [r["domain"] for r in control] == [r["domain"] for r in interference]
    assert sum(len(r["answers"]) for r in v1_rows) == 14
    assert len({r["measurement_id"] for r in v1_rows}) == 8
    for r in v1_rows:
        assert r["_format"] == "v1"
        assert (r["date"], r["start_time"], r["end_time"]) == ("2018-08-03", None, None)
        assert (r["retry"], r["received_rcode"], r["success"]) == (0, 0, True)
        assert r["received_error"] is None
        assert r["domain_is_control"] is False
        assert r["domain_controls_failed"] is None  # v1 has no liveness/control queries
        assert (r["source"], r["source_line"]) == (SCAN_V1, r["source_line"])
    assert [r["source_line"] for r in v1_rows] == [1, 2, 3, 4, 1, 2, 3, 4]


def test_v1_interference_answers_and_anomaly(v1_rows: list[Any]) -> None:
    bible, wiki, ecequality, casino = v1_rows[:4]
    assert bible["resolver_ip"] == "185.228.168.156"
    assert [a["ip"] for a in bible["answers"]] == [
        "13.227.44.109",
        "13.227.44.114",
        "13.227.44.21",
        "13.227.44.63",
    ]
    for a in bible["answers"]:
        assert a["matches_control"] == {**NO_MATCH, "asn": True, "as_name": True}
    assert bible["anomaly"] is False
    assert wiki["resolver_ip"] == "185.228.169.37"  # the line has "resolver": "..." with a space
    assert wiki["answers"][0]["matches_control"] == {
        **NO_MATCH,
        "censys_ip_cert": True,
        "asn": True,
        "as_name": True,
    }
    # passed=false → anomaly; [] and ["no_tags"] both mean "nothing matched".
    assert (ecequality["anomaly"], ecequality["answers"][0]["ip"]) == (True, "160.153.136.3")
    assert ecequality["answers"][0]["matches_control"] == NO_MATCH
    assert (casino["anomaly"], casino["answers"][0]["ip"]) == (True, "15.126.193.233")
    assert casino["answers"][0]["matches_control"] == NO_MATCH


def test_v1_answers_control_rows(v1_rows: list[Any]) -> None:
    bible = v1_rows[4]
    assert bible["domain"] == "biblegateway.com"
    assert [a["ip"] for a in bible["answers"]] == [
        "99.84.251.117",
        "99.84.251.123",
        "99.84.251.49",
        "99.84.251.81",
    ]
    assert all(a["matches_control"] is None for a in bible["answers"])  # no comparison
    assert bible["anomaly"] is None  # no `passed`
    assert all(a["match_confidence"] is None for r in v1_rows for a in r["answers"])


def test_v1_error_records() -> None:
    record = {"ip": "9.9.9.9", "query": "x.org", "error": {"Op": "read", "Err": "timeout"}}
    (row,) = flatten_one(record, "answers_err.json", SCAN_V1)
    assert row["resolver_ip"] == "9.9.9.9"
    assert row["received_error"] == '{"Op": "read", "Err": "timeout"}'
    assert (row["received_rcode"], row["success"], row["answers"]) == (-1, False, [])
    (row,) = flatten_one(
        {"resolver": "9.9.9.9", "query": "x.org", "error": "no_answer"},
        "answers_err.json",
        SCAN_V1,
    )
    assert (row["received_error"], row["received_rcode"]) == ("no_answer", -1)
    (row,) = flatten_one(
        {"resolver": "9.9.9.9", "query": "x.org", "answers": ["1.2.3.4"]},
        "interference_err.json",
        SCAN_V1,
    )
    assert row["answers"][0]["ip"] == "1.2.3.4" and row["resolver_is_trusted"] is False
    (row,) = flatten_one({"resolver": "8.8.8.8", "query": "x.org"}, "answers_err.json", SCAN_V1)
    assert row["resolver_is_trusted"] is True  # CONTROL_IPS, whatever the file
    assert_schema([row])


# --- v2.1 ---------------------------------------------------------------------------------


def test_v21_results_split_into_8_attempt_rows(v21_rows: list[Any]) -> None:
    assert len(v21_rows) == 8
    assert_schema(v21_rows)
    assert Counter(r["received_rcode"] for r in v21_rows) == {0: 2, -1: 4, 2: 1, None: 1}
    assert len({r["measurement_id"] for r in v21_rows}) == 4
    assert [(r["domain"], r["retry"], r["received_rcode"]) for r in v21_rows] == [
        ("custhelp.com", 0, 0),
        ("www.unwatch.org", 0, None),
        ("www.mainichi.co.jp", 0, -1),
        ("www.mainichi.co.jp", 1, -1),
        ("www.mainichi.co.jp", 2, 0),
        ("www.americorps.gov", 0, -1),
        ("www.americorps.gov", 1, -1),
        ("www.americorps.gov", 2, 2),
    ]
    assert all(r["_format"] == "v2.1" and r["resolver_is_trusted"] is False for r in v21_rows)


def test_v21_results_values(v21_rows: list[Any]) -> None:
    custhelp, unwatch, *mainichi = v21_rows[:5]
    americorps = v21_rows[5:]
    assert custhelp["resolver_ip"] == "109.235.61.172"
    assert custhelp["resolver_country"] == "DE"
    assert custhelp["date"] == "2021-04-25"
    assert custhelp["start_time"] == "2021-04-25T15:37:16.850234-04:00"
    assert custhelp["end_time"] == "2021-04-25T15:37:17.012723-04:00"
    assert (custhelp["anomaly"], custhelp["success"]) == (True, True)
    assert custhelp["answers"][0]["ip"] == "109.235.61.172"
    assert custhelp["answers"][0]["matches_control"] == NO_MATCH
    # empty response: the test was never sent (controls failed)
    assert (unwatch["answers"], unwatch["success"], unwatch["received_error"]) == ([], False, None)
    assert unwatch["domain_controls_failed"] is True
    assert unwatch["resolver_country"] == "US"
    # -1 rcodes take the errors in order; the rcode-0 row carries all answers.
    assert mainichi[0]["received_error"] == (
        "read udp 141.212.123.185:52104->201.174.163.10:53: i/o timeout"
    )
    assert mainichi[1]["received_error"] == (
        "read udp 141.212.123.185:49341->201.174.163.10:53: i/o timeout"
    )
    assert mainichi[0]["answers"] == [] and mainichi[2]["received_error"] is None
    assert [a["ip"] for a in mainichi[2]["answers"]] == [
        "13.226.201.32",
        "13.226.201.48",
        "13.226.201.49",
        "13.226.201.50",
    ]
    assert mainichi[2]["answers"][2]["matches_control"] == {
        **NO_MATCH,
        "asn": True,
        "as_name": True,
    }
    assert mainichi[2]["answers"][0]["matches_control"] == NO_MATCH  # ["no_tags"]
    assert all(r["start_time"] == "2021-04-25T14:49:26.080482-04:00" for r in mainichi)
    assert [r["received_error"] is None for r in americorps] == [False, False, True]
    assert americorps[1]["received_error"].endswith("35236->121.100.49.41:53: i/o timeout")
    assert [r["success"] for r in americorps] == [False, False, False]
    assert all(r["resolver_country"] == "AF" for r in americorps)
    # v2.1 confidence is not copied: its `matches` order does not follow the answers.
    assert all(a["match_confidence"] is None for r in v21_rows for a in r["answers"])
    assert all(r["average_confidence"] is None for r in v21_rows)


def test_v21_responses_control_gives_8_trusted_rows(v21_control_rows: list[Any]) -> None:
    rows = v21_control_rows
    assert len(rows) == 8
    assert_schema(rows)
    assert Counter(r["received_rcode"] for r in rows) == {0: 8}
    assert all(r["resolver_ip"] == "1.1.1.1" and r["resolver_is_trusted"] for r in rows)
    assert all(r["_format"] == "v2.1-control" and r["anomaly"] is None for r in rows)
    controls = [r for r in rows if r["domain"] == "a.root-servers.net"]
    assert len(controls) == 4
    assert all(r["domain_is_control"] and r["retry"] is None for r in controls)
    tests = [r for r in rows if not r["domain_is_control"]]
    assert [r["domain"] for r in tests] == [
        "custhelp.com",
        "www.unwatch.org",
        "www.mainichi.co.jp",
        "www.americorps.gov",
    ]
    assert all(r["retry"] == 0 and r["has_type_a"] is True for r in tests)
    assert all(r["received_error"] is None for r in rows)  # "null"
    assert all(r["domain_controls_failed"] is False for r in rows)
    first = rows[0]
    assert [a["ip"] for a in first["answers"]] == ["198.41.0.4"]
    assert first["start_time"] == "2021-04-25T15:03:01.262719-04:00"
    assert first["end_time"] == "2021-04-25T15:03:01.270521-04:00"
    assert rows[1]["start_time"] == "2021-04-25T15:03:01.270535-04:00"  # own roundtrip times
    assert [a["ip"] for a in rows[3]["answers"]] == ["194.1.147.18", "194.1.147.100"]
    assert all(a["matches_control"] is None for r in rows for a in r["answers"])
    assert len({r["measurement_id"] for r in rows}) == 4


def test_v21_leftover_errors_become_rcode_minus_1_rows() -> None:
    record = real_record("satellite_v2.1/results.json", 3)
    record["response"]["rcode"] = ["2", "0"]
    record["response"]["error"] = ["first", "second"]
    rows = flatten_one(record, scan=SCAN_V21)
    assert [(r["retry"], r["received_rcode"], r["received_error"]) for r in rows] == [
        (0, 2, None),
        (1, -1, "first"),
        (2, -1, "second"),
        (3, 0, None),
    ]
    assert [len(r["answers"]) for r in rows] == [0, 0, 0, 4]


def test_v21_success_without_answers_and_int_rcodes() -> None:
    record = real_record("satellite_v2.1/results.json", 4)
    record["response"] = {"rcode": [-1, 0], "error": ["timeout"]}
    rows = flatten_one(record, scan=SCAN_V21)
    assert [(r["received_rcode"], r["success"], r["answers"]) for r in rows] == [
        (-1, False, []),
        (0, True, []),
    ]


def v21_record(response: dict[str, Any], connect_error: bool) -> dict[str, Any]:
    """A v2.1 results.json record built from the format description (formats.md §3.2)."""
    return {
        "vp": "192.0.2.53",
        "location": {"country_name": "Norway", "country_code": "NO"},
        "test_url": "example.org",
        "response": response,
        "passed_control": True,
        "connect_error": connect_error,
        "in_control_group": True,
        "anomaly": False,
        "confidence": {
            "average": 0,
            "matches": None,
            "untagged_controls": False,
            "untagged_response": False,
        },
        "start_time": "2021-04-26 10:00:00.000000001 -0400 EDT m=+1.000000001",
        "end_time": "2021-04-26 10:00:02.000000001 -0400 EDT m=+3.000000001",
    }


def test_v21_rcode_minus_1_without_error_text_is_a_row() -> None:
    # Real April 2021 scans hold `"rcode": ["-1"]` with no `error` at all: a failed
    # attempt whose error text the prober did not record. It is a row (as in the seed),
    # with received_error NULL, flagged so the run counts it.
    (row,) = flatten_one(v21_record({"rcode": ["-1"]}, True), scan=SCAN_V21)
    assert (row["received_rcode"], row["received_error"], row["success"]) == (-1, None, False)
    assert (row["retry"], row["answers"], row["domain"]) == (0, [], "example.org")
    assert row["_warnings"] == ["rcode_error_missing"]
    assert_schema([row])
    # Fewer errors than -1 rcodes: the errors go to the -1 attempts in order (as the
    # seed popped them), the -1 attempts left over get NULL and the flag.
    response = {"192.0.2.80": ["ip"], "rcode": ["-1", "-1", "0"], "error": ["i/o timeout"]}
    rows = flatten_one(v21_record(response, False), scan=SCAN_V21)
    assert [(r["retry"], r["received_rcode"], r["received_error"]) for r in rows] == [
        (0, -1, "i/o timeout"),
        (1, -1, None),
        (2, 0, None),
    ]
    assert [r.get("_warnings") for r in rows] == [None, ["rcode_error_missing"], None]
    assert [len(r["answers"]) for r in rows] == [0, 0, 1]


def test_rcode_error_missing_rows_are_counted_by_the_batch_parser() -> None:
    from services.beam_launcher.hyperquack.processing import FileTask
    from services.beam_launcher.satellite.batch import parse_observation_batch

    task = FileTask.for_test(SCAN_V21)
    lines = [
        orjson.dumps(v21_record({"rcode": ["-1"]}, True)),
        orjson.dumps(v21_record({"rcode": ["-1", "-1"], "error": ["e"]}, True)),
        orjson.dumps(v21_record({"192.0.2.80": [], "rcode": ["0"]}, False)),
    ]
    stats: dict[str, int] = {}
    dead: list[Any] = []
    rows = parse_observation_batch(task, 1, lines, stats, dead, native=None)
    assert dead == []
    assert [r["received_rcode"] for r in rows] == [-1, -1, -1, 0]
    assert stats["row_warnings.rcode_error_missing"] == 2
    assert (stats["lines"], stats["rows"]) == (3, 4)
    assert "dead_letters" not in stats


@pytest.mark.parametrize(
    ("response", "error_class"),
    [
        ({"1.2.3.4": [], "rcode": ["0", "0"]}, "satellite_multiple_success_rcodes"),
        ({"rcode": ["-1", "0", "0"], "error": ["e"]}, "satellite_multiple_success_rcodes"),
        (
            {"1.2.3.4": [], "rcode": ["-1", "2"], "error": ["e"]},
            "satellite_ips_without_success_rcode",
        ),
        ({"1.2.3.4": ["ip"]}, "satellite_ips_without_success_rcode"),
        ({"1.2.3.4": [], "rcode": ["0", "-1"], "error": ["e"]}, "satellite_success_rcode_not_last"),
        ({"rcode": ["zero"]}, "invalid_rcode"),
        ({"rcode": [True]}, "wrong_type"),
        ({"rcode": "0"}, "wrong_type"),
        ({"rcode": ["-1"], "error": "timeout"}, "wrong_type"),
        ({"1.2.3.4": "ip", "rcode": ["0"]}, "wrong_type"),
        ({"1.2.3.4": [1], "rcode": ["0"]}, "wrong_type"),
    ],
)
def test_v21_bad_response(response: dict[str, Any], error_class: str) -> None:
    record = real_record("satellite_v2.1/results.json", 3)
    record["response"] = response
    assert bad_class(record, scan=SCAN_V21) == error_class


# --- success and domain_controls_failed across formats ----------------------------------


def test_success_is_the_querys_rcode_0_in_every_format(
    v1_rows: list[Any], v21_rows: list[Any], v21_control_rows: list[Any], v22_rows: list[Any]
) -> None:
    # docs/tables.md, "satellite_scan notes": success is a property of the row's query.
    rows = v1_rows + v21_rows + v21_control_rows + v22_rows
    assert {r["_format"] for r in rows} == {"v1", "v2.1", "v2.1-control", "v2.2"}
    for r in rows:
        assert r["success"] is (r["received_rcode"] == 0), r
    # v1 has no rcode: an `error` makes it -1 and success False.
    (err,) = flatten_one(
        {"resolver": "192.0.2.9", "query": "a.org", "error": "no_answer"},
        "answers_err.json",
        SCAN_V1,
    )
    assert (err["received_rcode"], err["success"]) == (-1, False)
    # v2.1: the seed wrote `not connect_error` on every row of a measurement. Here the
    # failed attempts of a measurement whose last attempt answered are not successes ...
    mainichi = by_domain(v21_rows, "www.mainichi.co.jp")
    assert [r["success"] for r in mainichi] == [False, False, True]
    # ... nor is a final ServFail (the seed: True on all three rows, connect_error false).
    americorps = by_domain(v21_rows, "www.americorps.gov")
    assert [(r["received_rcode"], r["success"]) for r in americorps] == [
        (-1, False),
        (-1, False),
        (2, False),
    ]
    # The seed's measurement-level value stays derivable: not connect_error == some test
    # query of the measurement got any DNS response (rcode >= 0).
    raw = {n: rec for n, _, rec in real_lines("satellite_v2.1/results.json")}
    seen = 0
    for mid in {r["measurement_id"] for r in v21_rows}:
        group = [r for r in v21_rows if r["measurement_id"] == mid]
        answered = any(
            r["received_rcode"] is not None and r["received_rcode"] >= 0
            for r in group
            if r["retry"] is not None
        )
        assert answered is (not raw[group[0]["source_line"]]["connect_error"])
        seen += 1
    assert seen == 4


def test_domain_controls_failed_per_format(
    v1_rows: list[Any], v21_rows: list[Any], v21_control_rows: list[Any], v22_rows: list[Any]
) -> None:
    # v1 has no liveness/control queries: unknown (NULL), where the seed wrote False.
    assert {r["domain_controls_failed"] for r in v1_rows} == {None}
    raw21 = {n: rec for n, _, rec in real_lines("satellite_v2.1/results.json")}
    for r in v21_rows:
        assert r["domain_controls_failed"] is (not raw21[r["source_line"]]["passed_control"])
    assert {r["domain_controls_failed"] for r in v21_rows} == {False, True}
    raw22 = {n: rec for n, _, rec in real_lines("satellite_v2.2/results.json")}
    for r in v22_rows:
        assert r["domain_controls_failed"] is (not raw22[r["source_line"]]["passed_liveness"])
    assert {r["domain_controls_failed"] for r in v21_control_rows} == {False}


def test_tables_doc_states_the_satellite_semantics_and_differences() -> None:
    from services.beam_launcher.warehouse import schemas

    text = schemas.docs_text()
    start = text.index("## `satellite_scan`")
    section = text[start : text.index("## `dead_letter`")]
    notes = section[section.index("### Notes") :]
    for needle in (
        "`success`",
        "v1",
        "v2.1",
        "v2.2",
        "connect_error",
        "`domain_controls_failed`",
        "rcode -1",
        "row_warnings.rcode_error_missing",
        "Deliberate differences",
    ):
        assert needle in notes, needle
    readme = (Path(__file__).parents[1] / "services/beam_launcher/README.md").read_text()
    differences = readme[readme.index("## Differences from the seed system") :]
    for needle in ("`success`", "`domain_controls_failed`", "rcode -1"):
        assert needle in differences, needle


# --- v2.2 ---------------------------------------------------------------------------------


def test_v22_results_give_20_rows(v22_rows: list[Any]) -> None:
    assert len(v22_rows) == 20
    assert_schema(v22_rows)
    assert Counter(r["received_rcode"] for r in v22_rows) == {0: 6, -1: 11, 2: 1, 3: 1, 5: 1}
    assert len({r["measurement_id"] for r in v22_rows}) == 12
    assert all(r["_format"] == "v2.2" for r in v22_rows)
    assert all(r["resolver_is_trusted"] is False for r in v22_rows)
    assert all(r["excluded"] is False and r["exclude_reason"] == "" for r in v22_rows)
    assert all(
        r["untagged_controls"] is False and r["untagged_response"] is False for r in v22_rows
    )


def test_rcodes_across_v21_and_v22_match_the_reference_replay(
    v21_rows: list[Any], v21_control_rows: list[Any], v22_rows: list[Any]
) -> None:
    # anchor-inventory §9.4: rcodes 0×16, −1×15, 2×2, 3×1, 5×1, None×1 over 36 rows.
    rows = v21_rows + v21_control_rows + v22_rows
    assert len(rows) == 36
    assert Counter(r["received_rcode"] for r in rows) == {0: 16, -1: 15, 2: 2, 3: 1, 5: 1, None: 1}
    assert sum(r["domain"] == "a.root-servers.net" for r in rows) == 6


def test_v22_liveness_roundtrips_are_control_rows(v22_rows: list[Any]) -> None:
    controls = [r for r in v22_rows if r["domain"] == "a.root-servers.net"]
    assert len(controls) == 2
    assert all(r["domain_is_control"] and r["retry"] is None for r in controls)
    alipay = [r for r in v22_rows if r["measurement_id"] == controls[0]["measurement_id"]]
    assert [(r["domain"], r["retry"]) for r in alipay] == [
        ("a.root-servers.net", None),
        ("alipay.com", 0),
        ("alipay.com", 1),
        ("alipay.com", 2),
        ("alipay.com", 3),
        ("a.root-servers.net", None),
    ]
    assert all(r["domain_controls_failed"] is True for r in alipay)  # passed_liveness false
    assert all(r["anomaly"] is False and r["received_rcode"] == -1 for r in alipay)
    assert alipay[0]["received_error"] == (
        "read udp 141.212.123.185:6280->62.80.182.26:53: read: connection refused"
    )
    assert all(r["resolver_country"] == "UA" for r in alipay)


def test_v22_answers_confidence_and_tags(v22_rows: list[Any]) -> None:
    first = v22_rows[0]
    assert (first["domain"], first["resolver_ip"], first["resolver_country"]) == (
        "11st.co.kr",
        "68.94.157.11",
        "US",
    )
    assert first["start_time"] == "2021-10-20T14:51:41.221546-04:00"
    assert first["end_time"] == "2021-10-20T14:51:41.328526-04:00"
    assert (first["date"], first["retry"], first["success"]) == ("2021-10-20", 0, True)
    assert (first["has_type_a"], first["average_confidence"]) == (True, 100.0)
    (answer,) = first["answers"]
    assert answer["ip"] == "113.217.247.90"
    assert answer["censys_http_body_hash"] == (
        "db2f9ca747f3e2e0896a1b783b27738fddfb4ba8f0500c0bfc0ad75e8f082090"
    )
    assert answer["censys_ip_cert"] == (
        "6908c7e0f2cc9a700ddd05efc41836da3057842a6c070cdc41251504df3735f4"
    )
    assert (answer["asn"], answer["as_name"]) == (9644, "SKTELECOM-NET-AS SK Telecom")
    assert answer["matches_control"] == dict.fromkeys(MATCH_KEYS, True)
    assert answer["match_confidence"] == 100.0  # the reference pipeline never emitted it
    two = v22_rows[1]
    assert [(a["ip"], a["match_confidence"]) for a in two["answers"]] == [
        ("140.205.174.2", 100.0),
        ("42.156.140.12", 100.0),
    ]
    # 9gag.com: matches [0], matched null, http "" (no hash).
    gag = by_domain(v22_rows, "9gag.com")
    assert [r["resolver_country"] for r in gag] == ["CN", "CN"]
    for row, ip in zip(gag, ("31.13.92.35", "31.13.77.33"), strict=True):
        (a,) = row["answers"]
        assert (a["ip"], a["match_confidence"], a["matches_control"]) == (ip, 0.0, None)
        assert a["censys_http_body_hash"] is None
        assert a["censys_ip_cert"] == (
            "416ea6ec1544b4d992ce7f291765421f5560a6e4d9fb64c65d7d200c9a9d4939"
        )
        assert (a["asn"], a["as_name"]) == (32934, "FACEBOOK")
        assert (row["anomaly"], row["average_confidence"]) == (True, 0.0)
    # Rows without answers get no average_confidence and no has_type_a.
    empty = [r for r in v22_rows if not r["answers"]]
    assert len(empty) == 14
    assert all(r["average_confidence"] is None and r["has_type_a"] is None for r in empty)


def test_v22_error_null_and_odd_rcodes(v22_rows: list[Any]) -> None:
    (nxdomain,) = by_domain(v22_rows, "1337x.to")
    assert (nxdomain["received_rcode"], nxdomain["received_error"]) == (3, None)
    assert nxdomain["resolver_country"] == "RU"
    (refused,) = by_domain(v22_rows, "104.com.tw")
    assert (refused["received_rcode"], refused["success"]) == (5, False)
    servfail, minus_one = by_domain(v22_rows, "1922.gov.tw")
    assert (servfail["received_rcode"], servfail["resolver_ip"]) == (2, "212.185.180.3")
    # rcode -1 but error "null" (and connect_error false) in the real data.
    assert (minus_one["received_rcode"], minus_one["received_error"]) == (-1, None)
    assert minus_one["resolver_ip"] == "161.52.1.31"


def test_v22_exclude_reason_is_joined_by_spaces() -> None:
    record = real_record("satellite_v2.2/results.json", 11)
    record["excluded"] = True
    record["exclude_reason"] = ["is_CDN", "domain_below_threshold"]
    (row,) = flatten_one(record)
    assert (row["excluded"], row["exclude_reason"]) == (True, "is_CDN domain_below_threshold")
    del record["exclude_reason"]
    assert flatten_one(record)[0]["exclude_reason"] is None


def test_v22_confidence_matches_of_the_wrong_length_are_not_paired() -> None:
    record = real_record("satellite_v2.2/results.json", 2)
    record["confidence"]["matches"] = [100]  # two answers
    (row,) = flatten_one(record)
    assert [a["match_confidence"] for a in row["answers"]] == [None, None]
    assert row["_warnings"] == ["confidence_matches_length_mismatch"]
    record["confidence"]["matches"] = None
    (row,) = flatten_one(record)
    assert [a["match_confidence"] for a in row["answers"]] == [None, None]
    assert "_warnings" not in row


def test_v22_missing_end_time_keeps_the_row() -> None:
    record = real_record("satellite_v2.2/results.json", 1)
    record["end_time"] = ""
    (row,) = flatten_one(record)
    assert (row["start_time"], row["end_time"]) == ("2021-10-20T14:51:41.221546-04:00", None)


def test_v22_control_resolver_and_no_roundtrips() -> None:
    record = real_record("satellite_v2.2/results.json", 1)
    record["vp"] = "8.8.4.4"
    assert flatten_one(record)[0]["resolver_is_trusted"] is True
    record["response"] = []
    assert flatten_one(record) == []


# --- bad records --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "line", "scan"),
    [
        ("satellite_v2.2/results.json", 1, SCAN_V22),
        ("satellite_v2.1/results.json", 3, SCAN_V21),
    ],
)
@pytest.mark.parametrize("value", ["", "   ", None, "missing"])
def test_missing_or_empty_start_time(rel: str, line: int, scan: str, value: Any) -> None:
    record = real_record(rel, line)
    if value == "missing":
        del record["start_time"]
    else:
        record["start_time"] = value
    assert bad_class(record, scan=scan) == "missing_start_time"


@pytest.mark.parametrize("value", ["", "missing"])
def test_v21_control_roundtrip_without_start_time(value: str) -> None:
    record = real_record("satellite_v2.1/responses_control.json", 1)
    if value == "missing":
        del record["response"][1]["start_time"]
    else:
        record["response"][1]["start_time"] = value
    assert bad_class(record, "responses_control.json", SCAN_V21) == "missing_start_time"


def _set(path: list[Any], value: Any) -> Any:
    def edit(record: dict[str, Any]) -> dict[str, Any]:
        target: Any = record
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return record

    return edit


_DELETE = object()
V22 = ("satellite_v2.2/results.json", 1, "results.json", SCAN_V22)
V22_EMPTY = ("satellite_v2.2/results.json", 7, "results.json", SCAN_V22)
V21 = ("satellite_v2.1/results.json", 3, "results.json", SCAN_V21)
V21C = ("satellite_v2.1/responses_control.json", 1, "responses_control.json", SCAN_V21)
V1R = ("satellite_v1/interference.json", 1, "interference.json", SCAN_V1)


@pytest.mark.parametrize(
    ("source", "edit", "error_class"),
    [
        (V22, _set(["start_time"], "yesterday"), "invalid_timestamp"),
        (V22, _set(["start_time"], 1634755901), "wrong_type"),
        (V22, _set(["end_time"], "2021-10-20"), "invalid_timestamp"),
        (V22, _set(["vp"], 1234), "wrong_type"),
        (V22, _set(["vp"], _DELETE), "missing_field"),
        (V22, _set(["test_url"], None), "missing_field"),
        (V22, _set(["location"], "US"), "wrong_type"),
        (V22, _set(["passed_liveness"], "yes"), "wrong_type"),
        (V22, _set(["anomaly"], 1), "wrong_type"),
        (V22, _set(["confidence"], []), "wrong_type"),
        (V22, _set(["confidence", "matches"], "100"), "wrong_type"),
        (V22, _set(["confidence", "matches"], ["100"]), "wrong_type"),
        (V22, _set(["confidence", "average"], "100"), "wrong_type"),
        (V22, _set(["exclude_reason"], "is_CDN"), "wrong_type"),
        (V22, _set(["exclude_reason"], [1]), "wrong_type"),
        (V22, _set(["response"], "none"), "wrong_type"),
        (V22, _set(["response"], [["11st.co.kr"]]), "wrong_type"),
        (V22, _set(["response", 0, "rcode"], "NOERROR"), "invalid_rcode"),
        (V22, _set(["response", 0, "rcode"], None), "missing_field"),
        (V22, _set(["response", 0, "rcode"], 0.0), "wrong_type"),
        (V22, _set(["response", 0, "response"], ["113.217.247.90"]), "wrong_type"),
        (V22, _set(["response", 0, "response", "113.217.247.90"], []), "wrong_type"),
        (V22, _set(["response", 0, "response", "113.217.247.90", "asnum"], "AS9644"), "wrong_type"),
        (V22, _set(["response", 0, "response", "113.217.247.90", "matched"], "ip"), "wrong_type"),
        (V22, _set(["response", 0, "response", "113.217.247.90", "http"], 5), "wrong_type"),
        (V22, _set(["response", 0, "error"], False), "wrong_type"),
        (V22, _set(["response", 0, "url"], 7), "wrong_type"),
        (V22, _set(["response", 0, "has_type_a"], "true"), "wrong_type"),
        (V22_EMPTY, _set(["response", 0, "error"], {"msg": "x"}), "wrong_type"),
        (V21, _set(["response"], None), "missing_field"),
        (V21, _set(["passed_control"], "true"), "wrong_type"),
        (V21C, _set(["response", 0, "response"], {"198.41.0.4": []}), "wrong_type"),
        (V21C, _set(["response", 0, "response"], "198.41.0.4"), "wrong_type"),
        (V21C, _set(["response", 0, "rcode"], "x"), "invalid_rcode"),
        (V21C, _set(["response", 0], "roundtrip"), "wrong_type"),
        (V1R, _set(["query"], _DELETE), "unknown_format"),
        (V1R, _set(["query"], ["biblegateway.com"]), "wrong_type"),
        (V1R, _set(["resolver"], 185228168156), "wrong_type"),
        (V1R, _set(["answers"], "13.227.44.109"), "wrong_type"),
        (V1R, _set(["answers"], {"13.227.44.109": "asnum"}), "wrong_type"),
        (V1R, _set(["passed"], "true"), "wrong_type"),
    ],
)
def test_bad_records(source: tuple[str, int, str, str], edit: Any, error_class: str) -> None:
    rel, line, basename, scan = source
    assert bad_class(edit(real_record(rel, line)), basename, scan) == error_class


@pytest.mark.parametrize(
    ("record", "error_class"),
    [
        ([1, 2], "not_an_object"),
        ("results", "not_an_object"),
        (None, "not_an_object"),
        ({}, "unknown_format"),
        ({"ip": "1.2.3.4", "http": "abc"}, "unknown_format"),  # an answer tag, not a query
        ({"resolver": None, "query": "x.org"}, "missing_field"),
    ],
)
def test_records_that_are_not_observations(record: Any, error_class: str) -> None:
    assert bad_class(record) == error_class


def test_flatten_does_not_mutate_the_record() -> None:
    for rel, line in (("satellite_v2.1/results.json", 3), ("satellite_v2.2/results.json", 2)):
        record = real_record(rel, line)
        before = copy.deepcopy(record)
        flatten_one(record, scan=SCAN_V21)
        assert record == before


def test_measurement_id_is_shared_by_a_records_rows_and_stable(v21_rows: list[Any]) -> None:
    again = flatten_file("satellite_v2.1/results.json", SCAN_V21)
    assert [r["measurement_id"] for r in again] == [r["measurement_id"] for r in v21_rows]
    mainichi = by_domain(v21_rows, "www.mainichi.co.jp")
    assert len({r["measurement_id"] for r in mainichi}) == 1


# --- resolver tags ------------------------------------------------------------------------


def parse_tags(rel: str) -> list[tuple[str, dict[str, Any]]]:
    return [sat.parse_resolver_tag(rec, Path(rel).name) for _n, _r, rec in real_lines(rel)]


def test_v1_resolver_names_and_countries() -> None:
    names = dict(parse_tags("satellite_v1/resolvers.json"))
    assert names["185.228.168.156"] == {"resolver_name": "customfilter156-dns.cleanbrowsing.org."}
    assert names["1.1.1.1"] == {"resolver_name": "control"}
    assert len(names) == 5
    countries = dict(parse_tags("satellite_v1/tagged_resolvers.json"))
    assert {ip: v["resolver_country"] for ip, v in countries.items()} == {
        "185.228.168.156": "IE",
        "185.228.169.37": "IE",
        "156.154.71.37": "US",
        "145.239.6.50": "FR",
        "1.1.1.1": "AU",
    }
    assert not any("_unmapped_country" in v for v in countries.values())


def test_v21_tagged_resolvers_use_location_code() -> None:
    tags = dict(parse_tags("satellite_v2.1/tagged_resolvers.json"))
    assert tags["121.100.49.41"] == {"resolver_country": "AF"}
    assert tags["1.1.1.1"] == {"resolver_country": "AU"}
    assert len(tags) == 5


def test_v22_resolvers_and_profile_merge() -> None:
    lines = parse_tags("satellite_v2.2/resolvers.json")
    assert len(lines) == 10 and len(dict(lines)) == 8  # duplicate lines
    assert dict(lines)["68.94.157.11"] == {
        "resolver_name": "dns157r11.sbcglobal.net.",
        "resolver_country": "US",
    }
    profile = dict(parse_tags("satellite_v2.2/resolvers_profile.json"))
    assert profile["208.67.222.123"] == {
        "resolver_non_zero_rcode_rate": 0.129,
        "resolver_private_ip_rate": 0.0,
        "resolver_zero_ip_rate": 0.0,
        "resolver_connect_error_rate": 0.0,
        "resolver_invalid_cert_rate": 0.0,
    }
    assert profile["114.141.52.91"]["resolver_connect_error_rate"] == 0.0005
    per_ip: dict[str, list[dict[str, Any]]] = {}
    for ip, values in lines + list(profile.items()):
        per_ip.setdefault(ip, []).append(values)
    merged = sat.merge_resolver_tags(per_ip["208.67.222.123"])
    assert merged["resolver_name"] == "resolver1-fs.opendns.com."
    assert merged["resolver_country"] == "US"
    assert merged["resolver_non_zero_rcode_rate"] == 0.129
    assert sat.merge_resolver_tags(per_ip["62.80.182.26"]) == {
        "resolver_name": "mx4.orlantrans.com.",
        "resolver_country": "UA",
    }


def test_merge_resolver_tags_later_non_null_wins() -> None:
    merged = sat.merge_resolver_tags(
        [
            {"resolver_name": "a.", "resolver_country": "US"},
            {"resolver_name": None, "resolver_country": "CA"},
            {"resolver_name": "b.", "resolver_invalid_cert_rate": None},
        ]
    )
    assert merged == {
        "resolver_name": "b.",
        "resolver_country": "CA",
        "resolver_invalid_cert_rate": None,
    }
    assert sat.merge_resolver_tags([]) == {}


def test_unknown_country_name_passes_through_flagged() -> None:
    ip, tags = sat.parse_resolver_tag({"resolver": "1.2.3.4", "country": "Atlantis"}, "x")
    assert (ip, tags) == (
        "1.2.3.4",
        {"resolver_country": "Atlantis", "_unmapped_country": "Atlantis"},
    )
    # A later, mapped country replaces it and the flag goes away.
    _, later = sat.parse_resolver_tag(
        {"vp": "1.2.3.4", "location": {"country_code": "GR", "country_name": "Greece"}},
        "tagged_resolvers.json",
    )
    assert sat.merge_resolver_tags([tags, later]) == {"resolver_country": "GR"}
    assert sat.merge_resolver_tags([later, tags]) == tags


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Ireland", "IE"),
        ("United States", "US"),
        ("DR Congo", "CD"),
        ("Congo", "CG"),
        ("Republic of the Congo", "CG"),
        ("St Vincent and Grenadines", "VC"),
        ("Saint Vincent and the Grenadines", "VC"),
        ("St Kitts and Nevis", "KN"),
        ("Russia", "RU"),
        ("Russian Federation", "RU"),
        ("South Korea", "KR"),
        ("Korea, Republic of", "KR"),
        ("North Korea", "KP"),
        ("Iran", "IR"),
        ("Iran, Islamic Republic of", "IR"),
        ("Syria", "SY"),
        ("Vietnam", "VN"),
        ("Laos", "LA"),
        ("Czechia", "CZ"),
        ("Czech Republic", "CZ"),
        ("North Macedonia", "MK"),
        ("Macedonia", "MK"),
        ("Ivory Coast", "CI"),
        ("Côte d'Ivoire", "CI"),
        ("Cote D'Ivoire", "CI"),
        ("Curacao", "CW"),
        ("Réunion", "RE"),
        ("Åland", "AX"),
        ("Bosnia and Herzegovina", "BA"),
        ("Trinidad & Tobago", "TT"),
        ("Palestine", "PS"),
        ("Hashemite Kingdom of Jordan", "JO"),
        ("Republic of Lithuania", "LT"),
        ("Republic of Moldova", "MD"),
        ("The Netherlands", "NL"),
        ("Bahamas", "BS"),
        ("Gambia", "GM"),
        ("Eswatini", "SZ"),
        ("Swaziland", "SZ"),
        ("Myanmar", "MM"),
        ("Cabo Verde", "CV"),
        ("Micronesia", "FM"),
        ("Vatican City", "VA"),
        ("Timor-Leste", "TL"),
        ("Taiwan", "TW"),
        ("Hong Kong", "HK"),
        ("Macao", "MO"),
        ("Kosovo", "XK"),
        ("U.S. Virgin Islands", "VI"),
        ("British Virgin Islands", "VG"),
        ("Sint Maarten", "SX"),
        ("Saint Martin", "MF"),
        ("Bonaire, Sint Eustatius, and Saba", "BQ"),
        ("São Tomé and Príncipe", "ST"),
        ("Turkey", "TR"),
        ("Türkiye", "TR"),
        ("United Kingdom", "GB"),
        ("  united   states  ", "US"),
        ("FR", "FR"),
    ],
)
def test_country_names_map_to_iso2(name: str, code: str) -> None:
    assert country_code(name) == (code, True)
    _, tags = sat.parse_resolver_tag({"resolver": "1.2.3.4", "country": name}, "x")
    assert tags == {"resolver_country": code}


def test_country_table_covers_every_iso_code() -> None:
    assert len(known_codes()) == 253  # 249 ISO 3166-1 + XK, EU, AP, AN
    assert all(len(c) == 2 and c.isupper() for c in known_codes())
    assert country_code("Georgia") == ("GE", True)
    assert country_code("fr") == ("fr", False)  # only upper-case codes are taken as codes
    assert country_code("Neverland") == ("Neverland", False)
    assert country_code("ZZ") == ("ZZ", False)


@pytest.mark.parametrize(
    ("record", "error_class"),
    [
        ({"resolver": "1.2.3.4", "non_zero_rcode": "abc"}, "invalid_resolver_rate"),
        ({"resolver": "1.2.3.4", "private_ip": "1.5"}, "invalid_resolver_rate"),
        ({"resolver": "1.2.3.4", "zero_ip": "-0.1"}, "invalid_resolver_rate"),
        ({"resolver": "1.2.3.4", "connect_error": "nan"}, "invalid_resolver_rate"),
        ({"resolver": "1.2.3.4", "invalid_cert": True}, "invalid_resolver_rate"),
        ({"resolver": "1.2.3.4", "invalid_cert": [0.1]}, "invalid_resolver_rate"),
        ({"non_zero_rcode": "0.1"}, "missing_field"),
        ({"resolver": 1234}, "wrong_type"),
        ({"vp": "1.2.3.4", "name": 5}, "wrong_type"),
        ({"vp": "1.2.3.4", "location": "US"}, "wrong_type"),
        ({"resolver": "1.2.3.4", "country": 372}, "wrong_type"),
        (["1.2.3.4"], "not_an_object"),
    ],
)
def test_bad_resolver_tags(record: Any, error_class: str) -> None:
    with pytest.raises(BadRecord) as info:
        sat.parse_resolver_tag(record, "resolvers_profile.json")
    assert info.value.error_class == error_class


def test_resolver_rates_accept_numbers_and_null() -> None:
    _, tags = sat.parse_resolver_tag(
        {"resolver": "1.2.3.4", "non_zero_rcode": 1, "private_ip": 0.25, "zero_ip": None},
        "resolvers_profile.json",
    )
    assert tags == {
        "resolver_non_zero_rcode_rate": 1.0,
        "resolver_private_ip_rate": 0.25,
        "resolver_zero_ip_rate": None,
    }


# --- answer tags --------------------------------------------------------------------------


def test_v1_tagged_answers() -> None:
    tags = dict(
        sat.parse_answer_tag(rec) for _n, _r, rec in real_lines("satellite_v1/tagged_answers.json")
    )
    assert len(tags) == 13
    assert tags["198.35.26.96"] == {
        "censys_http_body_hash": "7b4b4d1bfb0a645c990f55557202f88be48e1eee0c10bdcc621c7b682bf7d2ca",
        "censys_ip_cert": "9eb21a74a3cf1ecaaf6b19253025b4ca38f182e9f1f3e7355ba3c3004d4b7a10",
        "asn": 14907,
        "as_name": "WIKIMEDIA",
    }
    assert tags["217.19.248.132"]["asn"] is None and tags["217.19.248.132"]["as_name"] is None
    assert tags["13.227.44.21"]["censys_ip_cert"] is None


def test_v21_tagged_responses() -> None:
    rel = "satellite_v2.1/tagged_responses.json"
    tags = dict(sat.parse_answer_tag(rec) for _n, _r, rec in real_lines(rel))
    assert len(tags) == 10
    assert tags["109.235.61.172"] == {
        "censys_http_body_hash": None,
        "censys_ip_cert": "ea6389b446002e14d21bd7fd39d4433a5356948a906634365299b79781b43e2b",
        "asn": 25504,
        "as_name": "CRONON-AS Obermuensterstr. 9",
    }


def test_answer_tags_join_onto_real_v1_rows(v1_rows: list[Any]) -> None:
    rows = copy.deepcopy(v1_rows)
    tags = dict(
        sat.parse_answer_tag(rec) for _n, _r, rec in real_lines("satellite_v1/tagged_answers.json")
    )
    applied = 0
    for row in rows:
        for answer in row["answers"]:
            applied += sat.apply_answer_tags(answer, tags.get(answer["ip"], {}))
    assert applied == 13  # 14 answers; 15.126.193.233 (["no_tags"]) has no tag line
    by_ip = {a["ip"]: a for r in rows for a in r["answers"]}
    assert by_ip["13.227.44.21"]["as_name"] == "AMAZON-02"
    assert by_ip["13.227.44.21"]["asn"] == 16509
    assert by_ip["217.19.248.132"]["asn"] is None
    assert by_ip["217.19.248.132"]["censys_http_body_hash"].startswith("48d018fe")
    assert by_ip["15.126.193.233"]["asn"] is None
    assert_schema(rows)


def test_apply_answer_tags_keeps_inline_values() -> None:
    answer = sat.new_answer("1.2.3.4")
    answer["asn"] = 1
    changed = sat.apply_answer_tags(answer, {"asn": 2, "as_name": "X", "censys_ip_cert": None})
    assert changed is True
    assert (answer["asn"], answer["as_name"], answer["censys_ip_cert"]) == (1, "X", None)
    assert sat.apply_answer_tags(answer, {"asn": 3}) is False


@pytest.mark.parametrize(
    ("record", "error_class"),
    [
        ({"ip": "1.2.3.4", "asnum": "AS1"}, "wrong_type"),
        ({"ip": "1.2.3.4", "asnum": True}, "wrong_type"),
        ({"ip": "1.2.3.4", "http": 5}, "wrong_type"),
        ({"ip": "1.2.3.4", "asname": ["A"]}, "wrong_type"),
        ({"asnum": 1}, "missing_field"),
        ({"ip": 16909060}, "wrong_type"),
        ("1.2.3.4", "not_an_object"),
    ],
)
def test_bad_answer_tags(record: Any, error_class: str) -> None:
    with pytest.raises(BadRecord) as info:
        sat.parse_answer_tag(record)
    assert info.value.error_class == error_class


def test_answer_tag_asnum_string_and_blank_hashes() -> None:
    assert sat.parse_answer_tag({"ip": "1.2.3.4", "asnum": "13335", "http": "", "cert": ""}) == (
        "1.2.3.4",
        {"censys_http_body_hash": None, "censys_ip_cert": None, "asn": 13335, "as_name": None},
    )


# --- page fetches -------------------------------------------------------------------------

HTTP_FIELDS = {f for f in sat.ANSWER_FIELDS if f.startswith("http_")}
HTTPS_FIELDS = {f for f in sat.ANSWER_FIELDS if f.startswith("https_")}


def fetches(rel: str, resources: Resources | None, keep_bodies: bool = False) -> list[Any]:
    matcher = resources.matcher if resources is not None else None
    out = []
    for _n, _raw, record in real_lines(rel):
        out += sat.parse_page_fetch(record, matcher, keep_bodies)
    return out


def test_blockpages_one_tuple_per_line(real_resources: Resources) -> None:
    items = fetches("satellite_v2.2/blockpages.json", real_resources)
    assert len(items) == 11
    for domain, ip, fields in items:
        assert isinstance(domain, str) and isinstance(ip, str)
        assert set(fields) == HTTP_FIELDS | HTTPS_FIELDS
        assert fields["http_response_body"] is None and fields["https_response_body"] is None
    assert [(d, ip) for d, ip, _ in items[:2]] == [
        ("plan-uk.org", "104.22.78.111"),
        ("secure.flickr.com", "31.13.80.37"),
    ]


def test_blockpage_http_page_and_https_error(real_resources: Resources) -> None:
    _d, _ip, f = fetches("satellite_v2.2/blockpages.json", real_resources)[0]
    assert f["http_error"] is None
    assert f["http_response_status"] == "409 Conflict"
    assert f["http_response_headers"][:2] == [
        "Cache-Control: private, max-age=0, no-store, no-cache, must-revalidate, "
        "post-check=0, pre-check=0",
        "Cf-Ray: 6a15c086e918c534-ORD",
    ]
    assert f["http_response_headers"][-1] == "X-Frame-Options: SAMEORIGIN"
    assert len(f["http_response_headers"]) == 9
    # without the body no signature matches; with it the page is a known false positive
    assert f["http_analysis_page_signature"] is None
    assert f["https_error"] == 'Get "https://104.22.78.111:443/": remote error: handshake failure'
    assert f["https_response_status"] is None and f["https_tls_cert"] is None
    assert f["https_tls_cert_has_trusted_ca"] is None  # 2021 file: no trusted_cert
    _d, _ip, kept = fetches("satellite_v2.2/blockpages.json", real_resources, keep_bodies=True)[0]
    assert kept["http_response_body"] == "error code: 1001"
    assert (kept["http_analysis_is_known_blockpage"], kept["http_analysis_page_signature"]) == (
        False,
        "x_error_code",
    )


def test_blockpage_errors_only(real_resources: Resources) -> None:
    items = fetches("satellite_v2.2/blockpages.json", real_resources)
    for _d, ip, f in items[1:5]:
        assert ip == "31.13.80.37"
        assert (f["http_error"], f["https_error"]) == ("EOF", "EOF")
        assert f["http_response_status"] is None and f["http_response_headers"] == []
    _d, _ip, last = items[10]
    assert last["http_error"] == (
        'Get "http://31.13.77.33:80/": dial tcp 31.13.77.33:80: connect: connection refused'
    )
    assert last["https_error"].endswith("(Client.Timeout exceeded while awaiting headers)")


def test_blockpage_https_certificate(real_resources: Resources) -> None:
    items = fetches("satellite_v2.2/blockpages.json", real_resources)
    domain, ip, f = items[5]
    assert (domain, ip) == ("tx.me", "104.244.42.129")
    assert f["https_response_status"] == "404 Not Found"
    assert (f["https_tls_version"], f["https_tls_cipher_suite"]) == (771, 49199)
    assert f["https_tls_cert_common_name"] == "twitter.com"
    assert f["https_tls_cert_issuer"] == "DigiCert TLS RSA SHA256 2020 CA1"
    assert f["https_tls_cert_start_date"] == "2021-01-12T00:00:00Z"
    assert f["https_tls_cert_end_date"] == "2022-01-11T23:59:59Z"
    assert f["https_tls_cert_alternative_names"] == ["twitter.com", "www.twitter.com"]
    assert f["https_tls_cert_matches_domain"] is False  # tx.me served twitter.com's cert
    assert (f["http_analysis_is_known_blockpage"], f["http_analysis_page_signature"]) == (
        False,
        "x_generic_404",
    )
    assert f["https_analysis_page_signature"] == "x_generic_404"
    raw = real_record("satellite_v2.2/blockpages.json", 6)["https"]["Certificate"]
    assert base64.b64decode(f["https_tls_cert"]) == base64.b64decode(raw)
    # www.pinterest.com: the cert is valid for it; headers alone hit another FP signature
    _d, _ip, pin = items[6]
    assert pin["https_tls_cert_common_name"] == "*.pinterest.com"
    assert pin["https_tls_cert_matches_domain"] is True
    assert pin["https_analysis_page_signature"] == "r_fp_28"
    assert pin["http_response_status"] == "301 Moved Permanently"
    assert pin["http_analysis_page_signature"] is None
    # weather.com through Akamai: a walgreens.com certificate
    _d, _ip, weather = items[7]
    assert (weather["https_tls_cert_common_name"], weather["https_tls_cert_matches_domain"]) == (
        "walgreens.com",
        False,
    )
    assert weather["https_tls_cipher_suite"] == 49195
    assert weather["http_analysis_page_signature"] == "x_bad_bad_request"
    assert "Server: AkamaiGHost" in weather["https_response_headers"]


def test_blockpage_signatures_with_bodies(real_resources: Resources) -> None:
    items = fetches("satellite_v2.2/blockpages.json", real_resources, keep_bodies=True)
    sigs = [
        (f["http_analysis_page_signature"], f["https_analysis_page_signature"]) for *_, f in items
    ]
    assert sigs[6] == (None, "r_fp_6")
    assert sigs[7] == ("x_generic_400", "x_on_this_server")
    assert sigs[8] == ("x_moved_here", "satellite_fp_403")
    assert len(items[6][2]["https_response_body"]) == 65536  # capped body kept
    assert not any(
        f[k] is True
        for *_, f in items
        for k in ("http_analysis_is_known_blockpage", "https_analysis_is_known_blockpage")
    )


def test_control_pages(real_resources: Resources) -> None:
    items = fetches("satellite_v2.2/control_pages.json", real_resources)
    assert len(items) == 10
    domain, ip, f = items[0]
    assert (domain, ip) == ("github.githubassets.com", "185.199.110.154")
    assert f["https_tls_cert_has_trusted_ca"] is True
    assert f["https_tls_cert_common_name"] == "*.githubassets.com"  # leaf of a chain list
    assert f["https_tls_cert_matches_domain"] is True
    assert f["https_tls_cert_end_date"] == "2023-10-05T23:59:59Z"
    assert f["https_response_status"] == "200 OK"
    assert f["http_response_status"] == "301 Moved Permanently"
    chain = real_record("satellite_v2.2/control_pages.json", 1)["https"]["Certificate"]
    assert base64.b64decode(f["https_tls_cert"]) == base64.b64decode(chain[0])
    domain, ip, f = items[2]
    assert (domain, ip) == ("mask.icloud.com", "17.248.168.104")
    assert f["https_error"] == (
        'Get "https://17.248.168.104:443/": remote error: protocol version not supported'
    )
    assert f["https_tls_cert_has_trusted_ca"] is None
    assert (f["http_response_status"], f["http_analysis_page_signature"]) == (
        "404 Not Found",
        "x_generic_404",
    )
    _d, _ip, bbc = items[4]
    assert bbc["https_tls_cert_common_name"] == "www.bbc.com"
    assert bbc["https_tls_cert_issuer"] == "GlobalSign RSA OV SSL CA 2018"
    assert bbc["https_tls_cert_matches_domain"] is True  # bbc.com is in the SANs


def test_page_fetch_without_matcher_and_with_a_bad_certificate() -> None:
    record = real_record("satellite_v2.2/blockpages.json", 6)
    ((_d, _ip, f),) = sat.parse_page_fetch(record, None, False)
    assert f["https_analysis_page_signature"] is None
    assert f["https_tls_cert_common_name"] == "twitter.com"
    assert "_cert_parse_error" not in f
    record["https"]["Certificate"] = base64.b64encode(b"not a certificate").decode()
    ((_d, _ip, f),) = sat.parse_page_fetch(record, None, False)
    assert f["_cert_parse_error"] is True
    assert base64.b64decode(f["https_tls_cert"]) == b"not a certificate"
    assert f["https_tls_cert_common_name"] is None and f["https_tls_cert_matches_domain"] is None
    assert f["https_tls_version"] == 771


@pytest.mark.parametrize(
    ("path", "value", "error_class"),
    [
        (["http"], 404, "wrong_type"),
        (["https"], ["EOF"], "wrong_type"),
        (["https", "headers"], ["Server: x"], "wrong_type"),
        (["https", "status_line"], 404, "wrong_type"),
        (["https", "TlsVersion"], "1.2", "wrong_type"),
        (["https", "body"], 5, "wrong_type"),
        (["keyword"], _DELETE, "missing_field"),
        (["ip"], 5, "wrong_type"),
        (["trusted_cert"], "yes", "wrong_type"),
    ],
)
def test_bad_page_fetches(path: list[str], value: Any, error_class: str) -> None:
    record = _set(path, value)(real_record("satellite_v2.2/blockpages.json", 6))
    with pytest.raises(BadRecord) as info:
        sat.parse_page_fetch(record, None, False)
    assert info.value.error_class == error_class
    with pytest.raises(BadRecord):
        sat.parse_page_fetch("not a record", None, False)


def test_page_fetches_join_onto_real_v22_answers(
    v22_rows: list[Any], real_resources: Resources
) -> None:
    rows = copy.deepcopy(by_domain(v22_rows, "9gag.com"))
    index = {(d, ip): f for d, ip, f in fetches("satellite_v2.2/blockpages.json", real_resources)}
    for row in rows:
        for answer in row["answers"]:
            assert sat.apply_page_fetch(answer, index[(row["domain"], answer["ip"])]) is False
    first, second = (row["answers"][0] for row in rows)
    assert first["http_response_status"] == "400 default_vip_400"
    assert first["https_tls_cert_common_name"] == "*.facebook.com"
    assert first["https_tls_cert_matches_domain"] is False
    assert first["http_response_headers"][-1] == "Server: proxygen-bolt"
    assert second["http_error"].endswith("connect: connection refused")
    assert second["https_response_status"] is None
    # a second fetch of the same (domain, ip) is a duplicate: first wins
    before = copy.deepcopy(first)
    assert sat.apply_page_fetch(first, index[("9gag.com", "31.13.77.33")]) is True
    assert first == before
    assert_schema(rows)


def test_apply_page_fetch_is_per_protocol_and_copies_lists() -> None:
    ((_d, _ip, http_only),) = sat.parse_page_fetch(
        {
            "keyword": "a.com",
            "ip": "1.2.3.4",
            "http": {"status_line": "200 OK", "headers": {"A": ["1"]}},
        },
        None,
        False,
    )
    ((_d, _ip, both),) = sat.parse_page_fetch(
        {"keyword": "a.com", "ip": "1.2.3.4", "http": "EOF", "https": "EOF", "trusted_cert": False},
        None,
        False,
    )
    answer = sat.new_answer("1.2.3.4")
    assert sat.apply_page_fetch(answer, http_only) is False
    assert sat.apply_page_fetch(answer, both) is True  # http duplicated...
    assert (answer["http_response_status"], answer["http_error"]) == ("200 OK", None)
    assert (answer["https_error"], answer["https_tls_cert_has_trusted_ca"]) == ("EOF", False)
    answer["http_response_headers"].append("B: 2")  # ...and the fetch's list is not shared
    assert http_only["http_response_headers"] == ["A: 1"]
    empty = sat.new_answer("5.6.7.8")
    ((_d, _ip, nothing),) = sat.parse_page_fetch({"keyword": "a.com", "ip": "5.6.7.8"}, None, False)
    assert sat.apply_page_fetch(empty, nothing) is False
    assert empty == sat.new_answer("5.6.7.8")


def test_new_answer_has_fresh_lists() -> None:
    a, b = sat.new_answer("1.1.1.1"), sat.new_answer("2.2.2.2")
    assert set(a) == ANSWER_KEYS and len(ANSWER_KEYS) == 30
    a["https_response_headers"].append("x")
    assert b["https_response_headers"] == []
