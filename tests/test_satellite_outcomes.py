"""Tests for services.beam_launcher.satellite.outcomes and rules/satellite_outcomes.toml."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from services.beam_launcher.hyperquack.outcomes import RuleFileError
from services.beam_launcher.satellite.outcomes import (
    SATELLITE_RULES_FILE,
    answers_signature,
    classify,
    default_rules,
    load_satellite_rules,
    parse_satellite_rules,
    v1_errno,
)
from services.beam_launcher.warehouse.rows import SATELLITE_SCAN

RULES = load_satellite_rules()

_ANSWERS_COLUMN = next(c for c in SATELLITE_SCAN.columns if c.name == "answers")
ANSWER_KEYS = [c.name for c in _ANSWERS_COLUMN.fields]
MATCH_KEYS = [
    c.name for c in next(c for c in _ANSWERS_COLUMN.fields if c.name == "matches_control").fields
]


def answer(ip: str = "93.184.216.34", **fields: Any) -> dict[str, Any]:
    """An answer with every schema field (NULL unless given); matches_control all False."""
    out: dict[str, Any] = dict.fromkeys(ANSWER_KEYS)
    out["ip"] = ip
    out["matches_control"] = dict.fromkeys(MATCH_KEYS, False)
    out["matches_control"].update(fields.pop("matches_control", {}))
    out.update(fields)
    return out


def row(*answers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A satellite_scan row with every column (NULL unless given), rcode 0, no error."""
    out: dict[str, Any] = dict.fromkeys(SATELLITE_SCAN.column_names)
    out.update(
        source="CP_Satellite-2021-04-25-12-00-01",
        domain="example.org",
        resolver_ip="203.0.113.9",
        received_rcode=0,
        answers=list(answers),
        measurement_id="m-1",
        _format="v2.1",
    )
    out.update(fields)
    return out


def v1_error(err: Any) -> str:
    """A v1 error as the flattener dumps it: a Go net.OpError object as JSON."""
    return json.dumps(
        {
            "Op": "read",
            "Net": "udp",
            "Source": {"IP": "141.212.123.185", "Port": 61234, "Zone": ""},
            "Addr": {"IP": "203.0.113.9", "Port": 53, "Zone": ""},
            "Err": err,
        }
    )


TIMEOUT_V2 = "read udp 141.212.123.185:52104->201.174.163.10:53: i/o timeout"
CERT_OK: dict[str, Any] = {
    "https_tls_cert_matches_domain": True,
    "https_tls_cert_has_trusted_ca": True,
}

# (label, row, expected outcome, expected rule id)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # --- v1 error objects
    (
        "v1-timeout",
        row(received_error=v1_error({}), received_rcode=-1),
        "dns.timedout",
        "DNS-V1-TIMEOUT",
    ),
    (
        "v1-timeout-compact-json",
        row(received_error='{"Op":"read","Net":"udp","Err":{}}', received_rcode=-1),
        "dns.timedout",
        "DNS-V1-TIMEOUT",
    ),
    (
        "v1-msgsize",
        row(received_error=v1_error({"Syscall": "recvfrom", "Err": 90}), received_rcode=-1),
        "dns.msgsize",
        "DNS-V1-MSGSIZE",
    ),
    (
        "v1-connrefused",
        row(received_error=v1_error({"Syscall": "recvfrom", "Err": 111}), received_rcode=-1),
        "dns.connrefused",
        "DNS-V1-CONNREFUSED",
    ),
    (
        "v1-connrefused-truncated-json",
        row(
            received_error='{"Op": "read", "Err": {"Syscall": "recvfrom", "Err": 111',
            received_rcode=-1,
        ),
        "dns.connrefused",
        "DNS-V1-CONNREFUSED",
    ),
    (
        "v1-hostunreach",
        row(received_error=v1_error({"Syscall": "recvfrom", "Err": 113}), received_rcode=-1),
        "dns.hostunreach",
        "DNS-V1-HOSTUNREACH",
    ),
    (
        "v1-too-many-files",
        row(received_error=v1_error({"Syscall": "socket", "Err": 24}), received_rcode=-1),
        "setup.system_failure",
        "SETUP-V1-SYSTEM",
    ),
    (
        "v1-empty-object",
        row(received_error="{}", received_rcode=-1),
        "dns.unknown",
        "DNS-V1-EMPTY-ERROR",
    ),
    (
        "v1-no-answer",
        row(received_error="no_answer", received_rcode=-1),
        "dns.no_answer",
        "DNS-V1-NO-ANSWER",
    ),
    (
        "v1-unknown-errno",
        row(received_error=v1_error({"Syscall": "recvfrom", "Err": 101}), received_rcode=-1),
        "unknown_error:" + v1_error({"Syscall": "recvfrom", "Err": 101}),
        "DNS-UNKNOWN-ERROR",
    ),
    # --- v2 error strings
    (
        "v2-timeout",
        row(received_error=TIMEOUT_V2, received_rcode=-1),
        "dns.timedout",
        "DNS-TIMEOUT",
    ),
    (
        "v2-msgsize",
        row(
            received_error="read udp 1.2.3.4:5->6.7.8.9:53: read: message too long",
            received_rcode=-1,
        ),
        "dns.msgsize",
        "DNS-MSGSIZE",
    ),
    (
        "v2-short-read",
        row(received_error="dns: short read", received_rcode=-1),
        "dns.msgsize",
        "DNS-MSGSIZE",
    ),
    (
        "v2-connrefused",
        row(
            received_error="read udp 1.2.3.4:5->6.7.8.9:53: read: connection refused",
            received_rcode=-1,
        ),
        "dns.connrefused",
        "DNS-CONNREFUSED",
    ),
    (
        "v2-hostunreach",
        row(
            received_error="read udp 1.2.3.4:5->6.7.8.9:53: read: no route to host",
            received_rcode=-1,
        ),
        "dns.hostunreach",
        "DNS-HOSTUNREACH",
    ),
    (
        "v2-protocol-error",
        row(
            received_error="read udp 1.2.3.4:5->6.7.8.9:53: read: protocol error", received_rcode=-1
        ),
        "dns.protocol_error",
        "DNS-PROTOCOL-ERROR",
    ),
    (
        "v2-too-many-files",
        row(received_error="dial udp 6.7.8.9:53: socket: too many open files", received_rcode=-1),
        "setup.system_failure",
        "SETUP-SYSTEM",
    ),
    (
        "v2-too-many-files-bare",
        row(received_error="too many open files", received_rcode=-1),
        "setup.system_failure",
        "SETUP-SYSTEM",
    ),
    (
        "v2-unknown",
        row(received_error="something new happened", received_rcode=-1),
        "unknown_error:something new happened",
        "DNS-UNKNOWN-ERROR",
    ),
    # --- precedence: a real error wins over rcode and answers
    (
        "error-beats-rcode",
        row(received_error=TIMEOUT_V2, received_rcode=3),
        "dns.timedout",
        "DNS-TIMEOUT",
    ),
    (
        "error-beats-answers",
        row(answer(matches_control={"ip": True}), received_error=TIMEOUT_V2),
        "dns.timedout",
        "DNS-TIMEOUT",
    ),
    # --- not real errors: fall through to the rcode / answers
    (
        "null-string",
        row(received_error="null", received_rcode=3),
        "dns.error:NXDomain",
        "DNS-RCODE-NXDOMAIN",
    ),
    (
        "servfail-string",
        row(received_error="SERVFAIL", received_rcode=2),
        "dns.error:ServFail",
        "DNS-RCODE-SERVFAIL",
    ),
    ("blank-error", row(received_error="  ", received_rcode=0), "ip.empty", "IP-EMPTY"),
    ("rcode-minus-one", row(received_rcode=-1), "dns.timedout", "DNS-RCODE-CONNERR"),
    (
        "rcode-beats-answers",
        row(answer(matches_control={"ip": True}), received_rcode=5),
        "dns.error:Refused",
        "DNS-RCODE-REFUSED",
    ),
    ("rcode-unknown-high", row(received_rcode=4095), "dns.unknown_rcode:4095", "DNS-RCODE-UNKNOWN"),
    ("rcode-unknown-negative", row(received_rcode=-2), "dns.unknown_rcode:-2", "DNS-RCODE-UNKNOWN"),
    ("rcode-as-text", row(received_rcode="3"), "dns.error:NXDomain", "DNS-RCODE-NXDOMAIN"),
    # --- answers
    ("no-answers", row(), "ip.empty", "IP-EMPTY"),
    ("answers-null", row(answers=None), "ip.empty", "IP-EMPTY"),
    ("rcode-null-no-answers", row(received_rcode=None), "ip.empty", "IP-EMPTY"),
    ("invalid-zero", row(answer("0.0.0.0")), "ip.invalid:zero", "IP-INVALID-ZERO"),
    ("invalid-zero-net", row(answer("0.1.2.3")), "ip.invalid:zero", "IP-INVALID-ZERO"),
    (
        "invalid-localhost",
        row(answer("127.0.0.1")),
        "ip.invalid:local_host",
        "IP-INVALID-LOCALHOST",
    ),
    ("invalid-10", row(answer("10.10.34.35")), "ip.invalid:local_net", "IP-INVALID-LOCALNET"),
    ("invalid-172-16", row(answer("172.16.0.1")), "ip.invalid:local_net", "IP-INVALID-LOCALNET"),
    (
        "invalid-172-31",
        row(answer("172.31.255.254")),
        "ip.invalid:local_net",
        "IP-INVALID-LOCALNET",
    ),
    ("invalid-192-168", row(answer("192.168.1.1")), "ip.invalid:local_net", "IP-INVALID-LOCALNET"),
    (
        "invalid-beats-matchip",
        row(answer("10.0.0.1", matches_control={"ip": True})),
        "ip.invalid:local_net",
        "IP-INVALID-LOCALNET",
    ),
    (
        "only-first-answer-is-checked",
        row(answer("8.8.8.8", matches_control={"ip": True}), answer("10.0.0.1")),
        "ip.matchip",
        "IP-MATCHIP",
    ),
    (
        "172-32-is-public",
        row(answer("172.32.0.1", as_name="X")),
        "tls.connerror:X",
        "TLS-CONNERROR",
    ),
    ("malformed-ip", row(answer("not-an-ip", asn=64500)), "tls.connerror:AS64500", "TLS-CONNERROR"),
    ("matchip", row(answer(), answer(matches_control={"ip": True})), "ip.matchip", "IP-MATCHIP"),
    (
        "matchip-beats-cert",
        row(answer(matches_control={"ip": True}, **CERT_OK)),
        "ip.matchip",
        "IP-MATCHIP",
    ),
    ("validcert", row(answer(), answer(**CERT_OK)), "tls.validcert", "TLS-VALIDCERT"),
    (
        "validcert-beats-badca",
        row(
            answer(https_tls_cert_matches_domain=True, https_tls_cert_has_trusted_ca=False),
            answer(**CERT_OK),
        ),
        "tls.validcert",
        "TLS-VALIDCERT",
    ),
    (
        "badca",
        row(
            answer(
                https_tls_cert_matches_domain=True,
                https_tls_cert_has_trusted_ca=False,
                https_tls_cert_issuer="Kazakhstan Root CA",
            )
        ),
        "tls.badca:Kazakhstan Root CA",
        "TLS-BADCA",
    ),
    (
        "badca-detail-from-firing-answer",
        row(
            answer(https_tls_cert_issuer="Unrelated CA"),
            answer(
                https_tls_cert_matches_domain=True,
                https_tls_cert_has_trusted_ca=False,
                https_tls_cert_issuer="Intercept CA",
            ),
        ),
        "tls.badca:Intercept CA",
        "TLS-BADCA",
    ),
    (
        "trusted-ca-unknown-is-not-badca",
        row(answer(https_tls_cert_matches_domain=True, as_name="CLOUDFLARENET")),
        "tls.connerror:CLOUDFLARENET",
        "TLS-CONNERROR",
    ),
    (
        "baddomain",
        row(
            answer(
                https_tls_cert_matches_domain=False, https_tls_cert_common_name="blocked.example"
            ),
            answer(https_tls_cert_matches_domain=False, https_tls_cert_common_name="other.example"),
        ),
        "tls.baddomain:blocked.example",
        "TLS-BADDOMAIN",
    ),
    (
        "baddomain-ignores-answers-without-cert",
        row(
            answer(https_error="EOF", https_tls_cert_common_name=None),
            answer(https_tls_cert_matches_domain=False, https_tls_cert_common_name="x.example"),
        ),
        "tls.baddomain:x.example",
        "TLS-BADDOMAIN",
    ),
    (
        "baddomain-missing-cn",
        row(answer(https_tls_cert_matches_domain=False)),
        "tls.baddomain:",
        "TLS-BADDOMAIN",
    ),
    (
        "baddomain-beats-blockpage",
        row(
            answer(
                https_tls_cert_matches_domain=False,
                https_tls_cert_common_name="cn.example",
                http_analysis_is_known_blockpage=True,
                http_analysis_page_signature="b_nat_ir_national_1",
            )
        ),
        "tls.baddomain:cn.example",
        "TLS-BADDOMAIN",
    ),
    (
        "blockpage",
        row(
            answer(
                http_analysis_is_known_blockpage=True,
                http_analysis_page_signature="b_nat_ir_national_1",
                matches_control={"asn": True},
            )
        ),
        "http.blockpage:b_nat_ir_national_1",
        "HTTP-BLOCKPAGE",
    ),
    (
        "blockpage-false-positive-is-not-blockpage",
        row(
            answer(
                http_analysis_is_known_blockpage=False,
                http_analysis_page_signature="x_fp_nginx",
                as_name="AMAZON-02",
            )
        ),
        "tls.connerror:AMAZON-02",
        "TLS-CONNERROR",
    ),
    (
        "matchasn",
        row(answer(), answer(matches_control={"asn": True})),
        "ip.matchasn",
        "IP-MATCHASN",
    ),
    (
        "connerror-signature",
        row(
            answer("1.1.1.1", as_name="AMAZON-02", asn=16509),
            answer("1.1.1.2", asn=13335, as_name=""),
            answer("1.1.1.3"),
            answer("1.1.1.4", as_name="AMAZON-02"),
        ),
        "tls.connerror:AMAZON-02,AS13335,missing_as_info",
        "TLS-CONNERROR",
    ),
]

RCODE_NAMES = {
    1: "FormErr",
    2: "ServFail",
    3: "NXDomain",
    4: "NotImp",
    5: "Refused",
    6: "YXDomain",
    7: "YXRRSet",
    8: "NXRRSet",
    9: "NotAuth",
    10: "NotZone",
    11: "DSOTYPENI",
    12: "Unassigned",
    13: "Unassigned",
    14: "Unassigned",
    15: "Unassigned",
    16: "BadSig/BadVers",
    17: "BadKey",
    18: "BadTime",
    19: "BadMode",
    20: "BadName",
    21: "BadAlg",
    22: "BadTrunc",
    23: "BadCookie",
}


@pytest.mark.parametrize(("label", "data", "outcome", "rule_id"), CASES, ids=[c[0] for c in CASES])
def test_case(label: str, data: dict[str, Any], outcome: str, rule_id: str) -> None:
    assert RULES.classify(data) == (outcome, rule_id)


@pytest.mark.parametrize("rcode", sorted(RCODE_NAMES))
def test_rcode_names(rcode: int) -> None:
    outcome, rule_id = RULES.classify(row(received_rcode=rcode, received_error="null"))
    assert outcome == f"dns.error:{RCODE_NAMES[rcode]}"
    assert rule_id.startswith("DNS-RCODE-")


def test_every_rule_fires() -> None:
    fired = {RULES.classify(data)[1] for _, data, _, _ in CASES}
    fired |= {RULES.classify(row(received_rcode=r))[1] for r in RCODE_NAMES}
    assert fired == set(RULES.ids())


def test_outcomes_carry_no_emoji() -> None:
    outcomes = [RULES.classify(data)[0] for _, data, _, _ in CASES]
    outcomes += [RULES.classify(row(received_rcode=r))[0] for r in RCODE_NAMES]
    for outcome in outcomes:
        assert "\ufe0f" not in outcome
        assert all(ord(ch) < 0x2000 for ch in outcome), outcome
    for rule in RULES.rules:
        assert rule.outcome.isascii()


def test_annotate_sets_the_three_columns() -> None:
    data = row(received_error=TIMEOUT_V2, received_rcode=-1)
    out = RULES.annotate(data)
    assert out is data
    assert (out["outcome"], out["outcome_rule_id"], out["outcome_rules_version"]) == (
        "dns.timedout",
        "DNS-TIMEOUT",
        RULES.version,
    )
    assert {"outcome", "outcome_rule_id", "outcome_rules_version"} <= set(
        SATELLITE_SCAN.column_names
    )


def test_module_classify_uses_the_shipped_rules() -> None:
    assert default_rules() is default_rules()
    assert classify(row(answer(matches_control={"ip": True}))) == ("ip.matchip", "IP-MATCHIP")


def test_minimal_row_without_schema_keys() -> None:
    assert classify({}) == ("ip.empty", "IP-EMPTY")
    assert classify({"answers": [{"ip": "8.8.8.8"}]}) == (
        "tls.connerror:missing_as_info",
        "TLS-CONNERROR",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (v1_error({}), "{}"),
        (v1_error({"Syscall": "recvfrom", "Err": 111}), "111"),
        ('{"Err":{"Err":{"Err":24}}}', "24"),
        (v1_error("some text"), "some text"),
        (v1_error({"Syscall": "recvfrom"}), None),
        (v1_error(None), None),
        (v1_error(True), None),
        ("{}", None),
        ('{"Op": "read"}', None),
        ("{not json at all", None),
        ('{broken "Err": {} ', "{}"),
        (TIMEOUT_V2, None),
    ],
)
def test_v1_errno(error: str, expected: str | None) -> None:
    assert v1_errno(error) == expected


def test_answers_signature() -> None:
    assert answers_signature([]) == ""
    assert answers_signature([{"as_name": "B"}, {"as_name": "A"}, {"as_name": "B"}]) == "B,A"
    assert answers_signature([{"as_name": None, "asn": 0}]) == "AS0"


# --- the rule file -----------------------------------------------------------------------


def test_shipped_file_shape() -> None:
    data = tomllib.loads(SATELLITE_RULES_FILE.read_text())
    ids = [r["id"] for r in data["rule"]]
    assert len(ids) == len(set(ids))
    assert RULES.version == data["version"]
    assert RULES.rules[-1].kind == "always"
    assert RULES.ignored_errors == frozenset({"null", "SERVFAIL"})


def _base() -> dict[str, Any]:
    return {
        "version": "t-1",
        "rule": [
            {"id": "E", "kind": "error", "endswith": ["i/o timeout"], "outcome": "dns.timedout"},
            {"id": "F", "kind": "always", "outcome": "tls.connerror:{answers_signature}"},
        ],
    }


def _with_rule(rule: dict[str, Any]) -> dict[str, Any]:
    data = _base()
    data["rule"].insert(0, rule)
    return data


def test_minimal_rule_set_parses() -> None:
    rules = parse_satellite_rules(_base(), "t")
    assert rules.ids() == ["E", "F"]
    assert rules.ignored_errors == frozenset()
    assert rules.classify({"received_error": "x: i/o timeout"}) == ("dns.timedout", "E")
    assert rules.classify({}) == ("tls.connerror:", "F")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rule": _base()["rule"]}, "missing version"),
        ({**_base(), "extra": 1}, "unknown top-level"),
        ({**_base(), "ignored_errors": "null"}, "ignored_errors"),
        ({**_base(), "rule": {"id": "x"}}, "array of tables"),
        ({**_base(), "rule": ["x"]}, "not a table"),
        ({**_base(), "rule": []}, "last rule must be kind 'always'"),
        ({**_base(), "rule": _base()["rule"][:1]}, "last rule must be kind 'always'"),
        (_with_rule({"kind": "error_any", "outcome": "a.b"}), "has no id"),
        (_with_rule({"id": "E", "kind": "error_any", "outcome": "a.b"}), "duplicate rule id E"),
        (_with_rule({"id": "X", "kind": "regex", "outcome": "a.b"}), "unknown kind"),
        (_with_rule({"id": "X", "kind": "always", "outcome": "a.b"}), "only the last rule"),
        (
            _with_rule({"id": "X", "kind": "no_answers", "outcome": "a.b", "equals": ["x"]}),
            "unknown keys",
        ),
        (_with_rule({"id": "X", "kind": "no_answers"}), "needs an outcome"),
        (
            _with_rule({"id": "X", "kind": "no_answers", "outcome": "\u2757\ufe0fip.empty"}),
            "printable ASCII",
        ),
        (_with_rule({"id": "X", "kind": "no_answers", "outcome": "ip empty"}), "printable ASCII"),
        (
            _with_rule({"id": "X", "kind": "no_answers", "outcome": "ip.{nope}"}),
            "unknown placeholders",
        ),
        (
            _with_rule({"id": "X", "kind": "no_answers", "outcome": "ip.{detail}"}),
            "needs a detail field",
        ),
        (_with_rule({"id": "X", "kind": "error", "outcome": "a.b"}), "needs one of"),
        (
            _with_rule({"id": "X", "kind": "error", "equals": "x", "outcome": "a.b"}),
            "list of non-empty strings",
        ),
        (
            _with_rule({"id": "X", "kind": "error", "equals": [""], "outcome": "a.b"}),
            "list of non-empty strings",
        ),
        (
            _with_rule({"id": "X", "kind": "error_errno", "errno": [111], "outcome": "a.b"}),
            "list of non-empty strings",
        ),
        (_with_rule({"id": "X", "kind": "error_errno", "outcome": "a.b"}), "needs errno"),
        (
            _with_rule({"id": "X", "kind": "rcode", "rcodes": ["3"], "outcome": "a.b"}),
            "list of integers",
        ),
        (
            _with_rule({"id": "X", "kind": "rcode", "rcodes": [True], "outcome": "a.b"}),
            "list of integers",
        ),
        (
            _with_rule({"id": "X", "kind": "rcode", "rcodes": [], "outcome": "a.b"}),
            "list of integers",
        ),
        (
            _with_rule(
                {"id": "X", "kind": "invalid_ip", "networks": ["10.0.0.1/8"], "outcome": "a.b"}
            ),
            "bad network",
        ),
        (_with_rule({"id": "X", "kind": "invalid_ip", "outcome": "a.b"}), "needs networks"),
        (_with_rule({"id": "X", "kind": "any_answer", "outcome": "a.b"}), "non-empty table"),
        (
            _with_rule(
                {"id": "X", "kind": "any_answer", "where": {"nope": True}, "outcome": "a.b"}
            ),
            "unknown answer field",
        ),
        (
            _with_rule(
                {
                    "id": "X",
                    "kind": "any_answer",
                    "where": {"matches_control.nope": True},
                    "outcome": "a.b",
                }
            ),
            "unknown answer field",
        ),
        (
            _with_rule(
                {"id": "X", "kind": "any_answer", "where": {"ip": "1.2.3.4"}, "outcome": "a.b"}
            ),
            "true or false",
        ),
        (
            _with_rule(
                {
                    "id": "X",
                    "kind": "any_answer",
                    "where": {"ip": True},
                    "detail": "nope",
                    "outcome": "a.{detail}",
                }
            ),
            "detail must name",
        ),
        (
            _with_rule(
                {
                    "id": "X",
                    "kind": "all_answers",
                    "where": {
                        "https_tls_cert_matches_domain": False,
                        "https_tls_cert_has_trusted_ca": False,
                    },
                    "outcome": "a.b",
                }
            ),
            "exactly one where field",
        ),
    ],
)
def test_rule_file_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleFileError, match=message):
        parse_satellite_rules(data, "t")


def test_load_from_path(tmp_path: Any) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        'version = "x-1"\nignored_errors = ["null", ""]\n'
        '[[rule]]\nid = "Z"\nkind = "invalid_ip"\nnetworks = ["::/128", "0.0.0.0/8"]\n'
        'outcome = "ip.invalid:zero"\n'
        '[[rule]]\nid = "F"\nkind = "always"\noutcome = "fallback.x"\n'
    )
    rules = load_satellite_rules(path)
    assert rules.version == "x-1"
    assert rules.classify({"answers": [{"ip": "::"}]}) == ("ip.invalid:zero", "Z")
    assert rules.classify({"answers": [{"ip": "::1"}]}) == ("fallback.x", "F")
