"""Tests for services.beam_launcher.hyperquack.outcomes and rules/hyperquack_outcomes.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.beam_launcher.hyperquack.outcomes import (
    HYPERQUACK_RULES_FILE,
    OutcomeRule,
    RuleFileError,
    RuleSet,
    load_hyperquack_rules,
    load_rules,
    parse_rules,
)

RULES = load_hyperquack_rules()


def err(text: str, **extra: Any) -> dict[str, Any]:
    return {"received_error": text, "matches_template": False, **extra}


# (case label, row, scan type, expected outcome, expected rule id)
CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    (
        "blockpage",
        err("Incorrect echo response", is_known_blockpage=True, page_signature="b_nat_x"),
        "echo",
        "content/blockpage:b_nat_x",
        "HQ-BLOCKPAGE",
    ),
    (
        "akamai",
        err(
            "Status lines do not match",
            received_headers=["Content-Type: text/html", "Server: AkamaiGHost"],
            received_status="400 Bad Request",
        ),
        "http",
        "expected/trusted_host:akamai",
        "HQ-AKAMAI",
    ),
    (
        "ghost",
        {"matches_template": True, "received_headers": ["Server: GHost"]},
        "https",
        "expected/trusted_host:akamai",
        "HQ-AKAMAI",
    ),
    (
        "mismatch-no-error",
        {"matches_template": False},
        "http",
        "content/mismatch",
        "HQ-MISMATCH-NOERR",
    ),
    (
        "mismatch-empty-error",
        {"matches_template": False, "received_error": ""},
        "echo",
        "content/mismatch",
        "HQ-MISMATCH-NOERR",
    ),
    ("match", {"matches_template": True}, "echo", "expected/match", "HQ-MATCH"),
    ("match-missing-flag", {}, "discard", "expected/match", "HQ-MATCH"),
    (
        "setup-bind",
        err("dial tcp 0.0.0.0:0->1.2.3.4:7: bind: address already in use"),
        "echo",
        "setup/system_failure",
        "HQ-SETUP",
    ),
    ("setup-files", err("socket: too many open files"), "http", "setup/system_failure", "HQ-SETUP"),
    (
        "dial-unreachable",
        err("dial tcp 0.0.0.0:0->1.2.3.4:7: connect: network is unreachable"),
        "echo",
        "dial/ip.network_unreachable",
        "HQ-DIAL-UNREACHABLE",
    ),
    (
        "dial-noroute",
        err("dial tcp 0.0.0.0:0->1.2.3.4:7: connect: no route to host"),
        "discard",
        "dial/ip.host_no_route",
        "HQ-DIAL-NOROUTE",
    ),
    (
        "dial-refused",
        err("Get http://1.2.3.4: dial tcp 1.2.3.4:80: connect: connection refused"),
        "http",
        "dial/tcp.refused",
        "HQ-DIAL-REFUSED",
    ),
    (
        "dial-timeout",
        err("dial tcp 0.0.0.0:0->122.155.84.41:7: connect: connection timed out"),
        "echo",
        "dial/timeout",
        "HQ-DIAL-TIMEOUT",
    ),
    (
        "dial-deadline",
        err("Get https://1.2.3.4: context deadline exceeded"),
        "https",
        "dial/timeout",
        "HQ-DIAL-TIMEOUT",
    ),
    ("dial-reset-bare", err("connection reset by peer"), "echo", "dial/tcp.reset", "HQ-DIAL-RESET"),
    (
        "dial-reset-connect",
        err("dial tcp 0.0.0.0:0->1.2.3.4:7: connect: connection reset by peer"),
        "echo",
        "dial/tcp.reset",
        "HQ-DIAL-RESET",
    ),
    (
        "tls-oversized",
        err("tls: oversized record received with length 20527"),
        "https",
        "tls/tls.failed",
        "HQ-TLS-FAILED",
    ),
    (
        "tls-remote",
        err("Get https://1.2.3.4: remote error: handshake failure"),
        "https",
        "tls/tls.failed",
        "HQ-TLS-FAILED",
    ),
    (
        "tls-cipher",
        err("Get https://1.2.3.4: no mutual cipher suite"),
        "https",
        "tls/tls.failed",
        "HQ-TLS-FAILED",
    ),
    (
        "tls-timeout",
        err("Get https://1.2.3.4: net/http: TLS handshake timeout"),
        "https",
        "tls/timeout",
        "HQ-TLS-TIMEOUT",
    ),
    (
        "write-reset",
        err("write tcp 1.2.3.4:1234->5.6.7.8:7: write: connection reset by peer"),
        "echo",
        "write/tcp.reset",
        "HQ-WRITE-RESET",
    ),
    (
        "write-pipe",
        err("write tcp 1.2.3.4:1234->5.6.7.8:7: write: broken pipe"),
        "discard",
        "write/system",
        "HQ-WRITE-SYSTEM",
    ),
    (
        "read-timeout",
        err("read tcp 1.2.3.4:1234->5.6.7.8:7: i/o timeout"),
        "echo",
        "read/timeout",
        "HQ-READ-TIMEOUT",
    ),
    (
        "read-canceled",
        err(
            "Get http://1.2.3.4: net/http: request canceled "
            "(Client.Timeout exceeded while awaiting headers)"
        ),
        "http",
        "read/timeout",
        "HQ-READ-TIMEOUT",
    ),
    (
        "read-system",
        err("shutdown tcp 1.2.3.4:1->5.6.7.8:9: shutdown: transport endpoint is not connected"),
        "discard",
        "read/system",
        "HQ-READ-SYSTEM",
    ),
    (
        "read-reset",
        err("read tcp 141.212.123.235:11397->117.78.42.54:9: read: connection reset by peer"),
        "discard",
        "read/tcp.reset",
        "HQ-READ-RESET",
    ),
    (
        "read-truncated",
        err("Get http://1.2.3.4: unexpected EOF"),
        "http",
        "read/http.truncated_response",
        "HQ-READ-TRUNCATED",
    ),
    ("read-empty", err("Get http://1.2.3.4: EOF"), "https", "read/http.empty", "HQ-READ-EMPTY"),
    (
        "read-idle-closed",
        err("Get http://1.2.3.4: http: server closed idle connection"),
        "http",
        "read/http.truncated_response",
        "HQ-READ-IDLE-CLOSED",
    ),
    (
        "http-malformed",
        err(
            "Get http://1.2.3.4: net/http: HTTP/1.x transport connection broken: "
            'malformed HTTP status code "x"'
        ),
        "http",
        "http/http.invalid",
        "HQ-HTTP-INVALID",
    ),
    (
        "http-location",
        err("Get http://1.2.3.4: 302 response missing Location header"),
        "http",
        "http/http.invalid",
        "HQ-HTTP-INVALID",
    ),
    (
        "echo-eof",
        err("read tcp 1.2.3.4:1->5.6.7.8:7: EOF"),
        "echo",
        "content/mismatch",
        "HQ-CONTENT-ECHO-EOF",
    ),
    ("echo-v1", err("Incorrect echo response"), "echo", "content/mismatch", "HQ-CONTENT-MISMATCH"),
    ("discard-v1", err("Received response"), "discard", "content/mismatch", "HQ-CONTENT-MISMATCH"),
    (
        "echo-v2",
        err("echo response does not match echo request"),
        "echo",
        "content/mismatch",
        "HQ-CONTENT-MISMATCH",
    ),
    (
        "discard-v2",
        err("discard response is not empty"),
        "discard",
        "content/mismatch",
        "HQ-CONTENT-MISMATCH",
    ),
    (
        "status-v1",
        err(
            "Incorrect web response: status lines don't match",
            received_status="503 Service Unavailable",
        ),
        "http",
        "content/status_mismatch:503",
        "HQ-CONTENT-STATUS",
    ),
    (
        "status-v2",
        err("Status lines does not match", received_status="302 Found"),
        "https",
        "content/status_mismatch:302",
        "HQ-CONTENT-STATUS",
    ),
    (
        "body",
        err("Incorrect web response: bodies don't match"),
        "http",
        "content/body_mismatch",
        "HQ-CONTENT-BODY",
    ),
    (
        "tls-mismatch",
        err("Certificates do not match;Bodies do not match"),
        "https",
        "content/tls_mismatch",
        "HQ-CONTENT-TLS",
    ),
    (
        "header",
        err("Content-Type header field mismatch"),
        "http",
        "content/header_mismatch",
        "HQ-CONTENT-HEADER",
    ),
    ("unknown", err("something nobody has seen"), "http", "unknown/unknown", "HQ-UNKNOWN"),
]


@pytest.mark.parametrize(
    ("row", "scan_type", "outcome", "rule_id"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_classify_cases(row: dict[str, Any], scan_type: str, outcome: str, rule_id: str) -> None:
    assert RULES.classify(row, scan_type) == (outcome, rule_id)


def test_every_rule_is_hit_by_some_case() -> None:
    hit = {RULES.classify(row, scan_type)[1] for _, row, scan_type, _, _ in CASES}
    assert set(RULES.ids()) - hit == set()
    assert {c[4] for c in CASES} == set(RULES.ids())


def test_shipped_rule_file() -> None:
    ids = RULES.ids()
    assert len(ids) == len(set(ids)) == 28
    assert ids[0] == "HQ-BLOCKPAGE"
    assert ids[-1] == "HQ-UNKNOWN"
    assert RULES.version.startswith("hq-outcomes-")
    assert all(rule_id.startswith("HQ-") for rule_id in ids)
    with HYPERQUACK_RULES_FILE.open("rb") as fh:
        data = tomllib.load(fh)
    assert RULES.version == data["version"]
    assert ids == [r["id"] for r in data["rule"]]


# --- precedence -----------------------------------------------------------------------------


def test_blockpage_beats_akamai_and_errors() -> None:
    row = err(
        "read tcp 1.2.3.4:1->5.6.7.8:80: i/o timeout",
        is_known_blockpage=True,
        page_signature="b_x",
        received_headers=["Server: AkamaiGHost"],
    )
    assert RULES.classify(row, "http") == ("content/blockpage:b_x", "HQ-BLOCKPAGE")


def test_akamai_beats_mismatch_without_error() -> None:
    row = {"matches_template": False, "received_headers": ["Server: AkamaiGHost"]}
    assert RULES.classify(row, "http") == ("expected/trusted_host:akamai", "HQ-AKAMAI")


def test_akamai_header_must_match_exactly() -> None:
    for header in ("server: AkamaiGHost", "Server: AkamaiGHost/1.0", "X-Server: GHost"):
        row = {"matches_template": True, "received_headers": [header]}
        assert RULES.classify(row, "http") == ("expected/match", "HQ-MATCH")


def test_mismatch_without_error_beats_match() -> None:
    assert RULES.classify({"matches_template": False}, "echo")[1] == "HQ-MISMATCH-NOERR"
    assert RULES.classify({"matches_template": None}, "echo")[1] == "HQ-MATCH"


def test_match_only_without_error() -> None:
    row = {"matches_template": True, "received_error": "Bodies do not match"}
    assert RULES.classify(row, "http") == ("content/body_mismatch", "HQ-CONTENT-BODY")
    assert RULES.classify({"matches_template": True, "received_error": None}, "http") == (
        "expected/match",
        "HQ-MATCH",
    )


def test_error_rules_in_file_order() -> None:
    # Both HQ-TLS-FAILED ("tls:") and HQ-READ-TIMEOUT ("i/o timeout") fire; the first wins.
    row = err("tls: first record does not look like a TLS handshake; read: i/o timeout")
    assert RULES.classify(row, "https")[1] == "HQ-TLS-FAILED"
    # Setup wins over dial for a bind error on a dial.
    row = err("dial tcp 0.0.0.0:0->1.2.3.4:7: bind: too many open files")
    assert RULES.classify(row, "echo")[1] == "HQ-SETUP"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        ("Bodies do not match;Status lines do not match", "content/body_mismatch"),
        ("Status lines do not match;Bodies do not match", "content/status_mismatch:404"),
        ("Cipher suites do not match;TLS versions do not match", "content/tls_mismatch"),
        ("read tcp 1.2.3.4:1->5.6.7.8:80: i/o timeout;Bodies do not match", "read/timeout"),
        # The first error decides even when only a later one is known.
        ("some new error;Bodies do not match", "unknown/unknown"),
        ("Bodies do not match with more text;Status lines do not match", "unknown/unknown"),
    ],
)
def test_first_error_before_semicolon_decides(error: str, outcome: str) -> None:
    row = err(error, received_status="404 Not Found")
    assert RULES.classify(row, "https")[0] == outcome


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "Get http://1.2.3.4: EOF",
            {
                "echo": ("content/mismatch", "HQ-CONTENT-ECHO-EOF"),
                "discard": ("read/http.empty", "HQ-READ-EMPTY"),
                "http": ("read/http.empty", "HQ-READ-EMPTY"),
                "https": ("read/http.empty", "HQ-READ-EMPTY"),
            },
        ),
        (
            "read tcp 1.2.3.4:1->5.6.7.8:7: unexpected EOF",
            {
                "echo": ("content/mismatch", "HQ-CONTENT-ECHO-EOF"),
                "discard": ("read/http.truncated_response", "HQ-READ-TRUNCATED"),
                "http": ("read/http.truncated_response", "HQ-READ-TRUNCATED"),
                "https": ("read/http.truncated_response", "HQ-READ-TRUNCATED"),
            },
        ),
        (
            # Echo: "EOF" in the middle is not an end-of-file error.
            "EOF while reading; later",
            {
                "echo": ("unknown/unknown", "HQ-UNKNOWN"),
                "http": ("read/http.empty", "HQ-READ-EMPTY"),
            },
        ),
    ],
)
def test_echo_versus_non_echo_eof(error: str, expected: dict[str, tuple[str, str]]) -> None:
    for scan_type, result in expected.items():
        assert RULES.classify(err(error), scan_type) == result, scan_type


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("503 Service Unavailable", "content/status_mismatch:503"),
        ("400 default_vip_400", "content/status_mismatch:400"),
        ("HTTP/1.1 200 OK", "content/status_mismatch:HTT"),
        ("20", "content/status_mismatch:20"),
        ("", "content/status_mismatch"),
        (None, "content/status_mismatch"),
    ],
)
def test_status_mismatch_suffix(status: str | None, outcome: str) -> None:
    row = err("Status lines do not match", received_status=status)
    assert RULES.classify(row, "http") == (outcome, "HQ-CONTENT-STATUS")


def test_false_positive_match_is_not_a_blockpage() -> None:
    row = err("Incorrect echo response", is_known_blockpage=False, page_signature="x_fp")
    assert RULES.classify(row, "echo") == ("content/mismatch", "HQ-CONTENT-MISMATCH")
    row = {"matches_template": True, "is_known_blockpage": False, "page_signature": "x_fp"}
    assert RULES.classify(row, "http") == ("expected/match", "HQ-MATCH")


def test_blockpage_needs_a_signature() -> None:
    row = err("Incorrect echo response", is_known_blockpage=True, page_signature=None)
    assert RULES.classify(row, "echo") == ("content/mismatch", "HQ-CONTENT-MISMATCH")


# --- rule file validation ------------------------------------------------------------------

FALLBACK = {"id": "Z-UNKNOWN", "kind": "always", "outcome": "unknown/unknown"}


def rules_data(*rules: dict[str, Any], version: Any = "test-1") -> dict[str, Any]:
    data: dict[str, Any] = {"rule": list(rules)}
    if version is not None:
        data["version"] = version
    return data


def test_parse_minimal_rules() -> None:
    rs = parse_rules(
        rules_data(
            {"id": "A", "kind": "error", "contains": ["boom"], "outcome": "x/boom"},
            {
                "id": "B",
                "kind": "error",
                "equals": ["boom!"],
                "scan_types": ["echo"],
                "outcome": "y/echo",
            },
            {"id": "C", "kind": "no_error", "not_scan_types": ["echo"], "outcome": "z/ok"},
            FALLBACK,
        ),
        "inline",
    )
    assert isinstance(rs, RuleSet)
    assert rs.version == "test-1"
    assert rs.ids() == ["A", "B", "C", "Z-UNKNOWN"]
    assert rs.classify({"received_error": "big boom"}, "http") == ("x/boom", "A")
    assert rs.classify({"received_error": "bang"}, "http") == ("unknown/unknown", "Z-UNKNOWN")
    assert rs.classify({}, "http") == ("z/ok", "C")
    assert rs.classify({}, "echo") == ("unknown/unknown", "Z-UNKNOWN")


def test_scan_types_restrict_a_rule() -> None:
    rs = parse_rules(
        rules_data(
            {"id": "E", "kind": "error", "equals": ["x"], "scan_types": ["echo"], "outcome": "a/e"},
            FALLBACK,
        ),
        "inline",
    )
    assert rs.classify({"received_error": "x"}, "echo") == ("a/e", "E")
    assert rs.classify({"received_error": "x"}, "discard") == ("unknown/unknown", "Z-UNKNOWN")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            rules_data(
                {"id": "A", "kind": "no_error", "outcome": "a/b"},
                {"id": "A", "kind": "error", "equals": ["x"], "outcome": "a/c"},
                FALLBACK,
            ),
            "duplicate rule id A",
        ),
        (
            rules_data({"id": "A", "kind": "regex", "outcome": "a/b"}, FALLBACK),
            "unknown kind 'regex'",
        ),
        (rules_data({"id": "A", "outcome": "a/b"}, FALLBACK), "unknown kind None"),
        (rules_data({"id": "A", "kind": "no_error", "outcome": "a/b"}), "last rule must be kind"),
        (rules_data(), "last rule must be kind"),
        (
            rules_data(FALLBACK, {"id": "A", "kind": "no_error", "outcome": "a/b"}),
            "last rule must be kind",
        ),
        (rules_data(FALLBACK, version=None), "missing version"),
        (rules_data(FALLBACK, version=""), "missing version"),
        (rules_data(FALLBACK, version=3), "missing version"),
        (
            rules_data({"id": "A", "kind": "error", "outcome": "a/b"}, FALLBACK),
            "error rule needs one of",
        ),
        (
            rules_data(
                {"id": "A", "kind": "error", "endswith": [], "contains": [], "outcome": "a/b"},
                FALLBACK,
            ),
            "error rule needs one of",
        ),
        (
            rules_data({"id": "A", "kind": "trusted_host", "outcome": "a/b"}, FALLBACK),
            "trusted_host needs headers",
        ),
        (rules_data({"kind": "no_error", "outcome": "a/b"}, FALLBACK), "rule #1 has no id"),
        (rules_data({"id": "", "kind": "no_error", "outcome": "a/b"}, FALLBACK), "has no id"),
        (
            rules_data({"id": "A", "kind": "no_error", "outcome": "match"}, FALLBACK),
            "needs an outcome 'stage/result'",
        ),
        (rules_data({"id": "A", "kind": "no_error"}, FALLBACK), "needs an outcome"),
    ],
)
def test_rule_file_validation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleFileError, match=message):
        parse_rules(data, "bad.toml")


def test_validation_error_names_the_file() -> None:
    with pytest.raises(RuleFileError, match=r"^bad\.toml: missing version"):
        parse_rules(rules_data(FALLBACK, version=None), "bad.toml")


@pytest.mark.parametrize(
    "key", ["equals", "startswith", "endswith", "contains", "scan_types", "not_scan_types"]
)
@pytest.mark.parametrize("value", ["EOF", ["EOF", ""], ["EOF", 3], {"a": "EOF"}])
def test_matchers_and_scan_types_must_be_lists_of_strings(key: str, value: Any) -> None:
    # A bare string would otherwise become ('E', 'O', 'F') and match almost anything.
    rule: dict[str, Any] = {"id": "A", "kind": "error", "contains": ["x"], "outcome": "a/b"}
    rule[key] = value
    with pytest.raises(RuleFileError, match=f"rule A: {key} must be a list of non-empty strings"):
        parse_rules(rules_data(rule, FALLBACK), "bad.toml")


def test_trusted_host_headers_must_be_a_list_of_strings() -> None:
    rule = {"id": "H", "kind": "trusted_host", "headers": "Server: GHost", "outcome": "a/b"}
    with pytest.raises(RuleFileError, match="headers must be a list"):
        parse_rules(rules_data(rule, FALLBACK), "bad.toml")


def test_load_rules_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(
        'version = "mini-1"\n\n'
        '[[rule]]\nid = "M-HOST"\nkind = "trusted_host"\nheaders = ["Server: Test"]\n'
        'outcome = "expected/trusted_host:test"\n\n'
        '[[rule]]\nid = "M-BP"\nkind = "blockpage"\n'
        'outcome = "content/blockpage:{page_signature}"\n\n'
        '[[rule]]\nid = "M-ELSE"\nkind = "always"\noutcome = "unknown/unknown"\n',
        encoding="utf-8",
    )
    rs = load_rules(path)
    assert rs.version == "mini-1"
    assert rs.classify({"received_headers": ["Server: Test"]}, "http") == (
        "expected/trusted_host:test",
        "M-HOST",
    )
    bp = {"is_known_blockpage": True, "page_signature": "b_1"}
    assert rs.classify(bp, "http") == ("content/blockpage:b_1", "M-BP")
    assert rs.classify({}, "http") == ("unknown/unknown", "M-ELSE")


def test_load_rules_reports_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[rule]]\nid = "X"\nkind = "always"\noutcome = "a/b"\n', encoding="utf-8")
    with pytest.raises(RuleFileError, match=r"broken\.toml: missing version"):
        load_rules(path)


def test_blockpage_outcome_names_the_fingerprint_not_the_duplicate_id() -> None:
    rules = load_hyperquack_rules()
    row = {"is_known_blockpage": True, "page_signature": "e_unk_ru_blocked~3"}
    assert rules.classify(row, "http") == ("content/blockpage:e_unk_ru_blocked", "HQ-BLOCKPAGE")


# --- the fast first-error-rule search -----------------------------------------------------

_FRAGMENTS = sorted(
    {
        piece
        for rule in RULES.rules
        if rule.text is not None
        for group in rule.text
        for piece in group
    }
)


def _predicate_search(rules: RuleSet, scan_type: str, error: str) -> int:
    for i, rule in enumerate(rules.rules):
        if rule.kind == "error" and rule.applies_to(scan_type) and rule.predicate({}, error):
            return i
    return len(rules.rules)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["echo", "discard", "http", "https"]),
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=12), max_size=4),
)
def test_fast_error_search_equals_the_rule_predicates(scan_type: str, parts: list[str]) -> None:
    """Error texts made of rule fragments and noise (addresses, ports): same first rule."""
    error = " ".join(parts)
    fresh = load_hyperquack_rules()  # empty caches
    assert fresh._search_error_rules(scan_type, error) == _predicate_search(fresh, scan_type, error)


def test_hand_built_error_rules_use_their_predicates() -> None:
    rules = RuleSet(
        "v",
        (
            OutcomeRule("E", "error", "x/err", lambda _r, e: e == "boom", None, frozenset()),
            OutcomeRule("A", "always", "x/other", lambda _r, _e: True, None, frozenset()),
        ),
    )
    assert rules.classify({"received_error": "boom"}, "echo") == ("x/err", "E")
    assert rules.classify({"received_error": "bang"}, "echo") == ("x/other", "A")
