"""Tests for services.beam_launcher.hyperquack.processing.

Raw lines → finished rows and dead letters.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.hyperquack.outcomes import OutcomeRule, RuleSet
from services.beam_launcher.hyperquack.processing import (
    RAW_LINE_LIMIT,
    FileTask,
    HyperquackProcessor,
    dead_letter,
    page_text,
)
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_SCAN
from services.common.rowschema import check_row

ECHO_SCAN = "CP_Quack-echo-2020-11-14-07-54-49"
HTTP_SCAN = "CP_Quack-http-2021-05-30-01-01-01"
HTTPS_SCAN = "CP_Quack-https-2021-04-26-04-21-46"

# From resources/sample: a blockpage, a header blockpage and a false positive.
BLOCKPAGE_TEXT = "<title>Web Page Restricted by Sample ISP</title>"
BLOCKPAGE_ID = "a_prod_sample_isp_1"
HEADER_BLOCKPAGE_ID = "a_prod_sampleguard_1"  # pattern "Server: SampleGuard/\d+\.\d+"
FALSE_POSITIVE_TEXT = "<h1>502 Bad Gateway</h1>"
FALSE_POSITIVE_ID = "x_sample_bad_gateway"

CERT_PROBLEM_FIELDS = (
    "received_tls_cert_common_name",
    "received_tls_cert_issuer",
    "received_tls_cert_alternative_names",
    "received_tls_cert_matches_domain",
)


@pytest.fixture(scope="module")
def processor() -> HyperquackProcessor:
    return HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))


@pytest.fixture(scope="module")
def cert_b64() -> str:
    """A leaf certificate for www.example.com / example.com issued by 'Sample Test CA'."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sample Test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(1234)
        .not_valid_before(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2022, 1, 1, tzinfo=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("www.example.com"), x509.DNSName("example.com")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def line(obj: Any) -> bytes:
    return orjson.dumps(obj)


def v1_echo(
    blocked: bool = False, received: str | None = None, keyword: str = "www.bbc.co.uk"
) -> dict:
    test: dict[str, Any] = {
        "Sent": f"GET / HTTP/1.1\r\nHost: {keyword}\r\n\r\n",
        "Success": received is None,
        "StartTime": "2020-11-14T07:54:49.246304766-05:00",
        "EndTime": "2020-11-14T07:54:49.746304766-05:00",
    }
    if received is not None:
        test["Received"] = received
        test["Error"] = "Incorrect echo response"
    control = {
        "Sent": "GET / HTTP/1.1\r\nHost: example5718349450314.com\r\n\r\n",
        "Success": True,
        "StartTime": "2020-11-14T07:54:50-05:00",
        "EndTime": "2020-11-14T07:54:51-05:00",
    }
    return {
        "Server": "122.155.84.41",
        "Keyword": keyword,
        "Retries": 0,
        "Results": [test, control],
        "Blocked": blocked,
        "FailSanity": False,
        "StatefulBlock": False,
    }


def v2_rt(**extra: Any) -> dict[str, Any]:
    return {
        "matches_template": True,
        "start_time": "2021-05-30T01:01:03.123456789-04:00",
        "end_time": "2021-05-30T01:01:04-04:00",
        **extra,
    }


def v2(responses: list[dict[str, Any]], test_url: str = "www.example.com", **extra: Any) -> dict:
    return {
        "vp": "1.2.3.4",
        "test_url": test_url,
        "response": responses,
        "anomaly": False,
        "controls_failed": False,
        "stateful_block": False,
        **extra,
    }


def run(proc: HyperquackProcessor, scan: str, lines: list[bytes], first: int = 1) -> Any:
    return proc.process_lines(FileTask.for_test(scan), first, lines)


def only_row(proc: HyperquackProcessor, scan: str, record: dict[str, Any]) -> dict[str, Any]:
    out = run(proc, scan, [line(record)])
    assert out.dead_letters == []
    assert len(out.rows) == 1
    return out.rows[0]


# --- FileTask ------------------------------------------------------------------------------


def test_file_task_for_test() -> None:
    task = FileTask.for_test(HTTPS_SCAN, "results-02.json")
    assert task.scan_type == "https"
    assert task.scan_date == "2021-04-26"
    assert task.source == HTTPS_SCAN
    assert task.source_file == "results-02.json"
    assert task.file_key == f"{HTTPS_SCAN}/results-02.json"
    assert task.pipeline_version == "test"
    ctx = task.context()
    assert (ctx.scan_type, ctx.source, ctx.source_file, ctx.pipeline_version) == (
        "https",
        HTTPS_SCAN,
        "results-02.json",
        "test",
    )


# --- mixed batches --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(processor: HyperquackProcessor) -> Any:
    lines = [
        line(v1_echo()) + b"\n",  # 101: 2 rows
        b"",  # 102 blank
        b"   \r\n",  # 103 blank
        b"not json\n",  # 104 invalid_json
        b"[1, 2]",  # 105 not_an_object
        line(v2([v2_rt(control_url="control-ab.com"), v2_rt(), v2_rt()])),  # 106: 3 rows
        line({"vp": "1.2.3.4", "response": []}),  # 107 missing_field
        line(v2([])),  # 108: no roundtrips
        b'{"Server": "1.2.3.4", "Keyword": "a.com", "Results": [{"Sent": "GET it now"}]}\r\n',
        line({"hello": "world"}),  # 110 unknown_format
        b"\n",  # 111 blank
    ]
    return run(processor, ECHO_SCAN, lines, first=101)


def test_mixed_batch_stats(mixed: Any) -> None:
    assert dict(mixed.stats) == {
        "lines": 8,
        "blank_lines": 3,
        "rows": 5,
        "records_without_roundtrips": 1,
        "dead_letters": 5,
        "dead_letters.invalid_json": 1,
        "dead_letters.not_an_object": 1,
        "dead_letters.missing_field": 1,
        "dead_letters.unparsable_sent": 1,
        "dead_letters.unknown_format": 1,
    }


def test_mixed_batch_rows_have_exactly_the_table_columns(mixed: Any) -> None:
    assert len(mixed.rows) == 5
    for row in mixed.rows:
        assert "_cert" not in row
        assert set(row) == set(HYPERQUACK_SCAN.column_names)
        assert len(row) == len(HYPERQUACK_SCAN.column_names)
        assert check_row(HYPERQUACK_SCAN, row) == []


def test_mixed_batch_row_positions_and_outcomes(mixed: Any) -> None:
    summary = [
        (r["source_line"], r["domain"], r["domain_category"], r["retry"], r["outcome"])
        for r in mixed.rows
    ]
    assert summary == [
        (101, "www.bbc.co.uk", "News Media", 0, "expected/match"),
        (101, "example5718349450314.com", "Control", None, "expected/match"),
        (106, "control-ab.com", "Control", None, "expected/match"),
        (106, "www.example.com", None, 0, "expected/match"),
        (106, "www.example.com", None, 1, "expected/match"),
    ]
    for row in mixed.rows:
        assert row["outcome_rule_id"] == "HQ-MATCH"
        assert row["outcome_rules_version"].startswith("hq-outcomes-")
        assert row["source"] == ECHO_SCAN
        assert row["source_file"] == "results.json"
        assert row["pipeline_version"] == "test"


def test_mixed_batch_dead_letters(mixed: Any) -> None:
    got = [(d["source_line"], d["error_class"]) for d in mixed.dead_letters]
    assert got == [
        (104, "invalid_json"),
        (105, "not_an_object"),
        (107, "missing_field"),
        (109, "unparsable_sent"),
        (110, "unknown_format"),
    ]
    for dl in mixed.dead_letters:
        assert set(dl) == set(DEAD_LETTER.column_names)
        assert check_row(DEAD_LETTER, dl) == []
        assert dl["date"] == "2020-11-14"
        assert dl["scan_type"] == "echo"
        assert dl["source"] == ECHO_SCAN
        assert dl["source_file"] == "results.json"
        assert dl["stage"] == "parse"
        assert dl["message"]
        assert dl["raw_line_truncated"] is False
        assert dl["pipeline_version"] == "test"
    by_line = {d["source_line"]: d for d in mixed.dead_letters}
    assert by_line[104]["raw_line"] == "not json"  # line ending stripped
    assert by_line[105]["raw_line"] == "[1, 2]"
    assert by_line[109]["raw_line"].endswith('"GET it now"}]}')  # CRLF stripped


def test_processed_rows_convert_to_arrow(mixed: Any) -> None:
    table = HYPERQUACK_SCAN.to_arrow(mixed.rows)
    assert table.num_rows == 5
    assert DEAD_LETTER.to_arrow(mixed.dead_letters).num_rows == 5


def test_identical_lines_get_distinct_measurement_ids(processor: HyperquackProcessor) -> None:
    same = line(v2([v2_rt()]))
    out = run(processor, ECHO_SCAN, [same, same])
    assert len(out.rows) == 2
    assert out.rows[0]["measurement_id"] != out.rows[1]["measurement_id"]
    again = run(processor, ECHO_SCAN, [same, same])
    assert [r["measurement_id"] for r in again.rows] == [r["measurement_id"] for r in out.rows]


def test_measurement_id_independent_of_batching(processor: HyperquackProcessor) -> None:
    lines = [line(v2([v2_rt()], test_url=f"d{i}.com")) for i in range(4)]
    whole = run(processor, ECHO_SCAN, lines, first=1)
    split = (
        run(processor, ECHO_SCAN, lines[:2], first=1).rows
        + run(processor, ECHO_SCAN, lines[2:], first=3).rows
    )
    assert [r["measurement_id"] for r in whole.rows] == [r["measurement_id"] for r in split]
    assert [r["source_line"] for r in split] == [1, 2, 3, 4]


def test_empty_batch(processor: HyperquackProcessor) -> None:
    out = run(processor, ECHO_SCAN, [])
    assert (out.rows, out.dead_letters, dict(out.stats)) == ([], [], {})


# --- dead letters -------------------------------------------------------------------------


def test_long_bad_line_is_truncated_at_64_kib(processor: HyperquackProcessor) -> None:
    bad = b'{"vp": "' + b"a" * 70_000  # unterminated JSON, 70 KB
    out = run(processor, HTTP_SCAN, [line(v2([v2_rt()])), bad], first=5)
    (dl,) = out.dead_letters
    assert dl["source_line"] == 6
    assert dl["error_class"] == "invalid_json"
    assert dl["raw_line_truncated"] is True
    assert len(dl["raw_line"]) == RAW_LINE_LIMIT == 65_536
    assert dl["raw_line"] == bad[:RAW_LINE_LIMIT].decode()
    assert dl["scan_type"] == "http"
    assert dl["date"] == "2021-05-30"
    assert len(out.rows) == 1


def test_long_valid_json_bad_record_is_truncated(processor: HyperquackProcessor) -> None:
    record = v2([v2_rt(start_time="not a time", response={"body": "x" * 70_000})])
    out = run(processor, HTTP_SCAN, [line(record)])
    (dl,) = out.dead_letters
    assert dl["error_class"] == "invalid_timestamp"
    assert dl["raw_line_truncated"] is True
    assert len(dl["raw_line"]) == RAW_LINE_LIMIT
    assert out.stats["dead_letters.invalid_timestamp"] == 1


def test_dead_letter_at_exactly_the_limit_is_not_truncated() -> None:
    task = FileTask.for_test(ECHO_SCAN)
    raw = b"b" * RAW_LINE_LIMIT
    dl = dead_letter(task, 9, "parse", "invalid_json", "m" * 5000, raw)
    assert dl["raw_line_truncated"] is False
    assert len(dl["raw_line"]) == RAW_LINE_LIMIT
    assert len(dl["message"]) == 2000
    over = dead_letter(task, 9, "parse", "invalid_json", "m", raw + b"c")
    assert over["raw_line_truncated"] is True
    assert over["raw_line"] == raw.decode()


def test_dead_letter_decodes_invalid_utf8_leniently(processor: HyperquackProcessor) -> None:
    out = run(processor, ECHO_SCAN, [b'{"vp": "\xff\xfe"}'])
    (dl,) = out.dead_letters
    assert dl["error_class"] == "invalid_json"
    assert dl["raw_line"] == '{"vp": "\ufffd\ufffd"}'


def test_dead_letter_without_line_number() -> None:
    dl = dead_letter(FileTask.for_test(ECHO_SCAN), None, "read", "gzip_error", "bad gzip", b"")
    assert dl["source_line"] is None
    assert dl["stage"] == "read"
    assert dl["raw_line"] == ""
    assert check_row(DEAD_LETTER, dl) == []


def test_internal_error_is_dead_lettered_not_raised() -> None:
    def explode(_row: Any, _err: Any) -> bool:
        raise KeyError("boom")

    rules = RuleSet(
        version="broken-1",
        rules=(OutcomeRule("X", "always", "a/b", explode, None, frozenset()),),
    )
    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)), rules)
    out = run(proc, ECHO_SCAN, [line(v2([v2_rt()])), line(v2([v2_rt()]))])
    assert out.rows == []
    assert [d["error_class"] for d in out.dead_letters] == ["internal_error"] * 2
    assert out.dead_letters[0]["message"] == "KeyError: 'boom'"
    assert out.stats["dead_letters.internal_error"] == 2
    assert out.stats["dead_letters"] == 2
    assert out.stats["rows"] == 0


# --- certificates ---------------------------------------------------------------------------


def test_v2_certificate_chain_fields(processor: HyperquackProcessor, cert_b64: str) -> None:
    response = {
        "status_line": "200 OK",
        "TlsVersion": 771,
        "CipherSuite": 49199,
        "Certificate": [cert_b64, "MIIBintermediate"],
    }
    row = only_row(processor, HTTPS_SCAN, v2([v2_rt(response=response)]))
    assert "_cert" not in row
    assert row["received_tls_version"] == 771
    assert row["received_tls_cipher_suite"] == 49199
    assert row["received_tls_cert"] == cert_b64
    assert row["received_tls_cert_common_name"] == "www.example.com"
    assert row["received_tls_cert_issuer"] == "Sample Test CA"
    assert row["received_tls_cert_alternative_names"] == ["www.example.com", "example.com"]
    assert row["received_tls_cert_matches_domain"] is True
    table = HYPERQUACK_SCAN.to_arrow([row])
    assert table.column("received_tls_cert").to_pylist() == [base64.b64decode(cert_b64)]


def test_v1_certificate_checked_against_row_domain(
    processor: HyperquackProcessor, cert_b64: str
) -> None:
    record = {
        "Server": "1.2.3.4",
        "Keyword": "www.bbc.co.uk",
        "Retries": 0,
        "Blocked": False,
        "Results": [
            {
                "Sent": "www.bbc.co.uk",
                "Success": False,
                "Error": "Incorrect web response: certificates don't match",
                "Received": {"status_line": "200 OK", "tls": {"version": 771, "cert": cert_b64}},
                "StartTime": "2020-11-06T15:58:07-05:00",
                "EndTime": "2020-11-06T15:58:08-05:00",
            }
        ],
    }
    row = only_row(processor, HTTPS_SCAN, record)
    assert row["received_tls_cert_common_name"] == "www.example.com"
    assert row["received_tls_cert_matches_domain"] is False
    assert row["outcome"] == "content/tls_mismatch"


def test_cert_parse_failure_counted_and_row_kept(processor: HyperquackProcessor) -> None:
    response = {"status_line": "200 OK", "Certificate": "AAAA"}  # base64, but not DER
    out = run(processor, HTTPS_SCAN, [line(v2([v2_rt(response=response), v2_rt()]))])
    assert out.dead_letters == []
    assert out.stats["cert_parse_errors"] == 1
    assert out.stats["rows"] == 2
    row = out.rows[0]
    for name in CERT_PROBLEM_FIELDS:
        assert row[name] is None, name
    assert "_cert" not in row
    assert set(row) == set(HYPERQUACK_SCAN.column_names)
    assert row["outcome"] == "expected/match"
    assert HYPERQUACK_SCAN.to_arrow(out.rows).num_rows == 2


@pytest.mark.parametrize("empty", ["", [], None, [""]])
def test_empty_certificate_is_not_a_parse_error(processor: HyperquackProcessor, empty: Any) -> None:
    out = run(processor, HTTPS_SCAN, [line(v2([v2_rt(response={"Certificate": empty})]))])
    assert out.stats.get("cert_parse_errors", 0) == 0
    row = out.rows[0]
    assert row["received_tls_cert"] is None
    assert row["received_tls_cert_common_name"] is None


@pytest.mark.parametrize("form", ["pem", "urlsafe"])
def test_stored_certificate_bytes_are_the_parsed_der(
    processor: HyperquackProcessor, cert_b64: str, form: str
) -> None:
    der = base64.b64decode(cert_b64)
    if form == "pem":
        value = f"-----BEGIN CERTIFICATE-----\n{cert_b64}\n-----END CERTIFICATE-----\n"
    else:
        value = base64.urlsafe_b64encode(der).decode()
        assert value != cert_b64  # the test cert must use '-' or '_'
    row = only_row(processor, HTTPS_SCAN, v2([v2_rt(response={"Certificate": value})]))
    assert row["received_tls_cert_common_name"] == "www.example.com"
    # The stored bytes are the DER that was parsed (not the armour letters decoded too).
    assert row["received_tls_cert"] == cert_b64
    assert base64.b64decode(row["received_tls_cert"]) == der


# --- blockpages -----------------------------------------------------------------------------


def test_blockpage_matched_when_anomaly(processor: HyperquackProcessor) -> None:
    payload = f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\n\r\n{BLOCKPAGE_TEXT}"
    rows = run(processor, ECHO_SCAN, [line(v1_echo(blocked=True, received=payload))]).rows
    test, control = rows
    assert test["received_status"] == payload
    assert test["is_known_blockpage"] is True
    assert test["page_signature"] == BLOCKPAGE_ID
    assert test["outcome"] == f"content/blockpage:{BLOCKPAGE_ID}"
    assert test["outcome_rule_id"] == "HQ-BLOCKPAGE"
    # The control probe has no response: nothing to match.
    assert control["page_signature"] is None
    assert control["is_known_blockpage"] is None


@pytest.mark.parametrize("blocked", [False, None])
def test_blockpage_not_matched_without_anomaly(
    processor: HyperquackProcessor, blocked: bool | None
) -> None:
    payload = f"HTTP/1.1 403 Forbidden\r\n\r\n{BLOCKPAGE_TEXT}"
    record = v1_echo(blocked=True, received=payload)
    if blocked is None:
        del record["Blocked"]
    else:
        record["Blocked"] = blocked
    test = run(processor, ECHO_SCAN, [line(record)]).rows[0]
    assert test["is_known_blockpage"] is None
    assert test["page_signature"] is None
    assert test["outcome"] == "content/mismatch"
    assert test["outcome_rule_id"] == "HQ-CONTENT-MISMATCH"


def test_http_blockpage_matched_in_reconstructed_headers(processor: HyperquackProcessor) -> None:
    response = {
        "status_line": "403 Forbidden",
        "headers": {"Content-Type": ["text/html"], "Server": ["SampleGuard/2.1"]},
        "body": "<p>Nope</p>",
    }
    rt = v2_rt(matches_template=False, error="Status lines do not match", response=response)
    row = only_row(processor, HTTP_SCAN, v2([rt], test_url="www.bbc.co.uk", anomaly=True))
    assert row["received_headers"] == ["Content-Type: text/html", "Server: SampleGuard/2.1"]
    assert row["page_signature"] == HEADER_BLOCKPAGE_ID
    assert row["is_known_blockpage"] is True
    assert row["outcome"] == f"content/blockpage:{HEADER_BLOCKPAGE_ID}"
    assert row["domain_category"] == "News Media"


def test_false_positive_is_recorded_but_not_a_blockpage(processor: HyperquackProcessor) -> None:
    response = {
        "status_line": "502 Bad Gateway",
        "headers": {"Content-Type": ["text/html"]},
        "body": f"{FALSE_POSITIVE_TEXT}{BLOCKPAGE_TEXT}",
    }
    rt = v2_rt(matches_template=False, error="Status lines do not match", response=response)
    row = only_row(processor, HTTP_SCAN, v2([rt], anomaly=True))
    assert row["is_known_blockpage"] is False
    assert row["page_signature"] == FALSE_POSITIVE_ID
    assert row["outcome"] == "content/status_mismatch:502"
    assert row["outcome_rule_id"] == "HQ-CONTENT-STATUS"


def test_mismatch_without_error_and_akamai(processor: HyperquackProcessor) -> None:
    akamai = {"status_line": "400 Bad Request", "headers": {"Server": ["AkamaiGHost"]}}
    record = v2(
        [
            v2_rt(matches_template=False, response={"status_line": "200 OK", "body": "x"}),
            v2_rt(matches_template=False, error="Status lines do not match", response=akamai),
        ],
        anomaly=True,
    )
    rows = run(processor, HTTP_SCAN, [line(record)]).rows
    assert [(r["outcome"], r["outcome_rule_id"]) for r in rows] == [
        ("content/mismatch", "HQ-MISMATCH-NOERR"),
        ("expected/trusted_host:akamai", "HQ-AKAMAI"),
    ]


def test_outcome_uses_scan_type_of_task(processor: HyperquackProcessor) -> None:
    record = v2([v2_rt(matches_template=False, error="read tcp 1.2.3.4:1->5.6.7.8:7: EOF")])
    echo = run(processor, ECHO_SCAN, [line(record)]).rows[0]
    http = run(processor, HTTP_SCAN, [line(record)]).rows[0]
    assert (echo["outcome"], echo["outcome_rule_id"]) == ("content/mismatch", "HQ-CONTENT-ECHO-EOF")
    assert (http["outcome"], http["outcome_rule_id"]) == ("read/http.empty", "HQ-READ-EMPTY")


def test_impossible_date_is_dead_lettered(processor: HyperquackProcessor) -> None:
    bad = line(v2([v2_rt(start_time="2021-02-30T01:01:03-04:00")]))
    out = run(processor, HTTP_SCAN, [line(v2([v2_rt()])), bad])
    assert [d["error_class"] for d in out.dead_letters] == ["invalid_timestamp"]
    assert HYPERQUACK_SCAN.to_arrow(out.rows).num_rows == 1


# --- page_text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "text"),
    [
        (
            {
                "received_status": "403 Forbidden",
                "received_headers": ["Server: x", "Set-Cookie: a=1", "Set-Cookie: b=2"],
                "received_body": "<p>hi</p>",
            },
            "403 Forbidden\r\nServer: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n<p>hi</p>",
        ),
        (
            {"received_status": "200 OK", "received_headers": ["A: b"], "received_body": None},
            "200 OK\r\nA: b\r\n\r\n",
        ),
        (
            {"received_status": "200 OK", "received_headers": [], "received_body": "body"},
            "200 OK\r\n\r\nbody",
        ),
        (
            {"received_status": None, "received_headers": None, "received_body": "body"},
            "\r\n\r\nbody",
        ),
        # Echo/discard: the payload itself.
        (
            {"received_status": "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        ({"received_status": ""}, ""),
        ({}, None),
    ],
)
def test_page_text(row: dict[str, Any], text: str | None) -> None:
    assert page_text(row) == text
