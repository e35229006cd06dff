"""Tests for services.beam_launcher.satellite.post (confidence and verification)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.beam_launcher.satellite.outcomes import classify
from services.beam_launcher.satellite.post import (
    answer_tags,
    control_tag_count,
    group_key,
    match_confidence,
    partition,
    post_process,
)
from services.beam_launcher.warehouse.rows import SATELLITE_SCAN

_ANSWERS_COLUMN = next(c for c in SATELLITE_SCAN.columns if c.name == "answers")
ANSWER_KEYS = [c.name for c in _ANSWERS_COLUMN.fields]
MATCH_KEYS = [
    c.name for c in next(c for c in _ANSWERS_COLUMN.fields if c.name == "matches_control").fields
]

TAGS = {
    "censys_http_body_hash": "h" * 64,
    "censys_ip_cert": "c" * 64,
    "asn": 13335,
    "as_name": "EXAMPLE-AS",
}


def answer(ip: str = "93.184.216.34", **fields: Any) -> dict[str, Any]:
    """An answer with every schema field (NULL unless given); matches_control all False."""
    out: dict[str, Any] = dict.fromkeys(ANSWER_KEYS)
    out["ip"] = ip
    out["matches_control"] = dict.fromkeys(MATCH_KEYS, False)
    out["matches_control"].update(fields.pop("matches_control", {}))
    out.update(fields)
    return out


def tagged(ip: str = "93.184.216.34", **fields: Any) -> dict[str, Any]:
    """An answer carrying all four tags."""
    return answer(ip, **{**TAGS, **fields})


def row(*answers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A v2.1 test row (non-trusted resolver, anomaly False) with every column."""
    out: dict[str, Any] = dict.fromkeys(SATELLITE_SCAN.column_names)
    out.update(
        source="CP_Satellite-2021-04-25-12-00-01",
        domain="example.org",
        domain_is_control=False,
        resolver_ip="203.0.113.9",
        resolver_is_trusted=False,
        received_rcode=0,
        answers=list(answers),
        anomaly=False,
        measurement_id="m-1",
        _format="v2.1",
    )
    out.update(fields)
    return out


def control(*answers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An IP-control row (trusted resolver, no anomaly verdict)."""
    return row(
        *answers,
        **{"resolver_ip": "1.1.1.1", "resolver_is_trusted": True, "anomaly": None, **fields},
    )


def test_partition_roles() -> None:
    rows = [
        row(domain_is_control=True, resolver_is_trusted=True, anomaly=None),  # domain control
        control(),  # trusted resolver
        row(anomaly=None, _format="v2.1-control"),  # no verdict
        row(anomaly=True),
        row(anomaly=False),
        row(resolver_is_trusted=True, anomaly=True, _format="v2.2"),  # trusted wins
    ]
    parts = partition(rows)
    assert parts.domain_controls == (0,)
    assert parts.ip_controls == (1, 2, 5)
    assert parts.tests == (3, 4)


def test_controls_pass_through_and_input_is_not_mutated() -> None:
    rows = [
        control(tagged()),
        row(domain="example.org", domain_is_control=True, anomaly=None),
        row(tagged("5.5.5.5"), anomaly=True),
    ]
    before = copy.deepcopy(rows)
    out = post_process(rows)
    assert rows == before
    assert out[0] == before[0] and out[1] == before[1]
    assert all(o is not r for o, r in zip(out, rows, strict=True))
    assert out[2] is not rows[2]
    assert out[2]["answers"][0] is not rows[2]["answers"][0]


def test_output_keeps_input_order() -> None:
    rows = [
        row(measurement_id=f"m{i}") if i % 2 else control(measurement_id=f"m{i}") for i in range(6)
    ]
    assert [r["measurement_id"] for r in post_process(rows)] == [f"m{i}" for i in range(6)]


def test_group_contract() -> None:
    assert group_key(row()) == ("CP_Satellite-2021-04-25-12-00-01", "example.org")
    with pytest.raises(ValueError, match="one \\(source, domain\\) group"):
        post_process([row(), row(domain="other.org")])
    with pytest.raises(ValueError, match="_format"):
        post_process([row(_format=None)])
    with pytest.raises(ValueError, match="_format"):
        post_process([control(_format="v3")])
    assert post_process([]) == []


# --- control tag availability: summed (the seed overwrote) ----------------------------------


def seed_control_tags(controls: list[dict[str, Any]]) -> int:
    """What the seed computed: per row only the LAST answer's count, then the max over rows."""
    per_row = []
    for r in controls:
        total = 0
        for a in r["answers"]:
            total = sum(1 for t in TAGS if a.get(t) is not None)
        per_row.append(total)
    return max(per_row, default=0)


def test_control_tags_are_summed_over_all_answers() -> None:
    controls = [
        control(tagged("1.0.0.1"), answer("1.0.0.2", asn=13335), answer("1.0.0.3")),
        control(tagged("1.0.0.4", censys_ip_cert=None), answer("1.0.0.5")),
    ]
    assert control_tag_count(controls) == 4 + 1 + 0 + 3 + 0
    assert seed_control_tags(controls) == 0  # the bug: the last answers are untagged


def test_untagged_controls_false_when_only_the_last_control_answer_is_untagged() -> None:
    # Fails on the seed's behaviour: it counted only the last control answer (0 tags)
    # and marked the domain's tests untagged_controls.
    out = post_process(
        [control(tagged("1.0.0.1"), answer("1.0.0.2")), row(tagged("5.5.5.5"), anomaly=True)]
    )
    assert out[1]["untagged_controls"] is False


def test_untagged_controls_true_without_controls_or_tags() -> None:
    assert post_process([row(tagged())])[0]["untagged_controls"] is True
    assert post_process([control(answer()), row(tagged())])[1]["untagged_controls"] is True


def test_domain_control_answers_are_not_control_tags() -> None:
    domain_ctrl = row(tagged(), domain_is_control=True, resolver_is_trusted=True, anomaly=None)
    assert post_process([domain_ctrl, row(tagged())])[1]["untagged_controls"] is True


def test_v21_control_file_rows_count_as_controls() -> None:
    ctrl = row(tagged("1.0.0.1"), anomaly=None, resolver_is_trusted=True, _format="v2.1-control")
    assert post_process([ctrl, row(tagged())])[1]["untagged_controls"] is False


# --- confidence (v1 / v2.1) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ans", "expected"),
    [
        (answer(matches_control={"ip": True}), 100.0),  # IP match: 100 even without tags
        (tagged(matches_control={"ip": True}), 100.0),
        (tagged(matches_control={"asn": True, "as_name": True}), 50.0),
        (tagged(matches_control={"censys_ip_cert": True}), 25.0),
        (answer(asn=1, as_name="X", matches_control={"asn": True, "as_name": True}), 100.0),
        (answer(asn=1, matches_control={"asn": True, "as_name": True}), 100.0),  # capped
        (answer(), 0.0),
        (answer(matches_control={"asn": True}), 0.0),  # a match flag without the tag
        (answer(censys_http_body_hash="", asn=7, matches_control={"asn": True}), 100.0),
        ({"ip": "1.2.3.4", "asn": 1, "matches_control": None}, 0.0),
    ],
)
def test_match_confidence(ans: dict[str, Any], expected: float) -> None:
    assert match_confidence(ans) == expected


def test_empty_strings_are_not_tags() -> None:
    assert answer_tags(answer(censys_http_body_hash="", censys_ip_cert="", asn=0, as_name="")) == (
        "asn",
    )


def test_confidence_fields_on_v1_and_v21_tests() -> None:
    for fmt in ("v1", "v2.1"):
        test = row(
            tagged("5.5.5.1", matches_control={"asn": True, "as_name": True}),
            tagged("5.5.5.2"),
            answer("5.5.5.3", matches_control={"ip": True}),
            anomaly=True,
            _format=fmt,
        )
        out = post_process([control(tagged("1.0.0.1"), _format=fmt), test])[1]
        assert [a["match_confidence"] for a in out["answers"]] == [50.0, 0.0, 100.0]
        assert out["average_confidence"] == pytest.approx(50.0)
        assert out["untagged_controls"] is False
        assert out["untagged_response"] is False
        assert out["anomaly"] is True


def test_untagged_response_sets_anomaly_false() -> None:
    out = post_process(
        [control(tagged()), row(answer("5.5.5.1"), answer("5.5.5.2"), anomaly=True)]
    )[1]
    assert out["untagged_response"] is True
    assert out["anomaly"] is False
    assert out["average_confidence"] == 0.0
    assert out["excluded"] is None and out["exclude_reason"] is None


def test_error_row_without_answers_keeps_its_anomaly() -> None:
    # The seed forced anomaly=False on every answer-less row (all failed attempts).
    err = row(
        received_error="read udp 1.2.3.4:5->6.7.8.9:53: i/o timeout",
        received_rcode=-1,
        anomaly=True,
        excluded=True,
        exclude_reason="stale",
    )
    out = post_process([control(tagged()), err])[1]
    assert out["anomaly"] is True
    assert out["untagged_response"] is None
    assert out["average_confidence"] is None
    assert out["answers"] == []
    assert out["excluded"] is False and out["exclude_reason"] is None
    assert classify(out) == ("dns.timedout", "DNS-TIMEOUT")


def test_answers_null_is_no_answers() -> None:
    out = post_process([row(answers=None, anomaly=False)])[0]
    assert out["answers"] == []
    assert out["untagged_response"] is None and out["average_confidence"] is None


# --- v2.2 keeps the raw values -------------------------------------------------------------------


def v22(*answers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return row(
        *answers, **{"_format": "v2.2", "source": "CP_Satellite-2021-10-20-12-00-01", **fields}
    )


def test_v22_raw_confidence_is_kept() -> None:
    raw = v22(
        answer("5.5.5.1", match_confidence=66.66666666666667),  # no tags: we would derive 0
        answer("5.5.5.2", match_confidence=0.0),
        anomaly=True,
        average_confidence=33.333333333333336,
        untagged_controls=False,
        untagged_response=False,
        excluded=False,
        exclude_reason="",
    )
    out = post_process([v22(tagged(), resolver_is_trusted=True, anomaly=None), raw])[1]
    assert [a["match_confidence"] for a in out["answers"]] == [66.66666666666667, 0.0]
    assert out["average_confidence"] == 33.333333333333336
    assert out["untagged_controls"] is False
    assert out["untagged_response"] is False
    assert out["anomaly"] is True  # not forced False although no answer carries a tag
    assert out["excluded"] is False
    assert out["exclude_reason"] == ""


def test_v22_raw_untagged_values_are_kept() -> None:
    raw = v22(
        answer(),
        anomaly=False,
        untagged_controls=True,
        untagged_response=True,
        average_confidence=0.0,
    )
    out = post_process([raw])[0]
    assert (out["untagged_controls"], out["untagged_response"], out["average_confidence"]) == (
        True,
        True,
        0.0,
    )


def test_v22_non_anomaly_keeps_raw_exclusion() -> None:
    # The seed reset excluded/exclude_reason to NULL for every non-anomalous row.
    raw = v22(
        answer(as_name="AMAZON-02"),
        anomaly=False,
        excluded=True,
        exclude_reason="domain_below_threshold",
    )
    out = post_process([raw])[0]
    assert out["excluded"] is True
    assert out["exclude_reason"] == "domain_below_threshold"


def test_v22_anomaly_merges_raw_reasons_with_cdn() -> None:
    raw = v22(
        answer(as_name="GOOGLE"),
        anomaly=True,
        excluded=True,
        exclude_reason="domain_below_threshold",
    )
    out = post_process([raw])[0]
    assert out["excluded"] is True
    assert out["exclude_reason"] == "domain_below_threshold is_CDN"


def test_v22_anomaly_raw_is_cdn_not_doubled() -> None:
    raw = v22(answer(as_name="CLOUDFLARENET"), anomaly=True, excluded=True, exclude_reason="is_CDN")
    assert post_process([raw])[0]["exclude_reason"] == "is_CDN"


def test_v22_anomaly_raw_exclusion_kept_without_cdn() -> None:
    raw = v22(
        answer(as_name="TELECOM-X"),
        anomaly=True,
        excluded=True,
        exclude_reason="domain_below_threshold",
    )
    out = post_process([raw])[0]
    assert (out["excluded"], out["exclude_reason"]) == (True, "domain_below_threshold")
    missing = post_process([v22(answer(as_name="TELECOM-X"), anomaly=True)])[0]
    assert (missing["excluded"], missing["exclude_reason"]) == (False, None)


# --- verify (v1 / v2.1) ---------------------------------------------------------------------


def test_cdn_exclusion_written_once() -> None:
    test = row(
        tagged("5.5.5.1", as_name="AMAZON-02"),
        tagged("5.5.5.2", as_name="CLOUDFLARENET"),
        tagged("5.5.5.3", as_name="TELECOM-X"),
        anomaly=True,
    )
    out = post_process([control(tagged()), test])[1]
    assert out["excluded"] is True
    assert out["exclude_reason"] == "is_CDN"


@pytest.mark.parametrize(
    ("as_name", "cdn"),
    [
        ("AMAZON-AES", True),
        ("Akamai International B.V.", True),
        ("AKAMAI-ASN1", True),  # CAIDA's spelling; the seed's case-sensitive regex missed it
        ("OPENDNS", True),
        ("GOOGLE", True),
        ("CLOUDFLARENET", True),
        ("CLOUDFLARE", False),
        ("NOTAMAZON", False),  # anchored at the start
        ("", False),
        (None, False),
    ],
)
def test_cdn_pattern(as_name: str | None, cdn: bool) -> None:
    out = post_process([control(tagged()), row(tagged(as_name=as_name), anomaly=True)])[1]
    assert out["excluded"] is cdn
    assert out["exclude_reason"] == ("is_CDN" if cdn else None)


def test_non_anomaly_v1_clears_exclusion() -> None:
    test = row(
        tagged(as_name="AMAZON-02"),
        anomaly=False,
        excluded=True,
        exclude_reason="is_CDN",
        _format="v1",
    )
    out = post_process([control(tagged(), _format="v1"), test])[1]
    assert out["excluded"] is None and out["exclude_reason"] is None
