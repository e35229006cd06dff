"""Satellite post-processing of one (source, domain) group: confidence and verification.

The Beam pipeline keys Satellite rows by :func:`group_key`, groups them and calls
:func:`post_process` on each group. Everything here is a pure function over row dicts
(``SATELLITE_SCAN`` keys plus the private ``_format`` key: ``"v1"``, ``"v2.1"``,
``"v2.1-control"`` or ``"v2.2"``); input rows are never mutated.

Steps (the seed's ``post_processing_satellite``, with the fixes listed below):

1. Partition the group: **domain controls** (``domain_is_control``), **IP controls**
   (``resolver_is_trusted`` or ``anomaly`` is NULL, e.g. v1 ``answers_control.json`` and
   v2.1 ``responses_control.json``) and **tests**. Controls pass through unchanged
   (as shallow copies, so a caller may set columns on every returned row).
2. **Control tag availability**: the number of non-empty tags (``censys_http_body_hash``,
   ``censys_ip_cert``, ``asn``, ``as_name``) over every answer of every IP control.
3. **Confidence** for v1 / v2.1 test rows: per answer ``match_confidence`` = 100 when
   ``matches_control.ip``, else matched tags × 100 / the answer's tags (0 without tags);
   ``average_confidence`` = mean over the answers; ``untagged_controls`` = no control
   tag available; ``untagged_response`` = no answer carries a tag. A response whose
   answers are all untagged cannot be judged, so its ``anomaly`` is set to False (the
   seed's rule, and what Satellite v2.2 itself does: "conservatively false when there
   are no tags").
   v2.2 rows carry these values in the raw data; they are kept as they are.
4. **Verify** test rows: an anomaly whose answers include a CDN AS name
   (:data:`CDN_AS_NAME`) is ``excluded`` with reason ``is_CDN``.

Differences from the seed (bugs and weaknesses fixed on purpose):

* **Control tags are summed** over all control answers. The seed's ``_total_tags``
  overwrote its counter in the answer loop, so only the *last* answer of a control row
  counted (then the max over rows was taken): a domain whose controls had tags on every
  answer but the last was marked ``untagged_controls``.
* v2.2 confidence values (``match_confidence``, ``average_confidence``,
  ``untagged_controls``, ``untagged_response``) and ``anomaly`` are kept from the raw data
  instead of being re-derived (the seed re-derived them for every version).
* The untagged-response override never touches rows **without answers**: they have
  nothing to judge, so ``untagged_response`` and ``average_confidence`` are NULL (the
  seed wrote True / 0) and ``anomaly`` keeps the measurement's flag. The seed forced
  ``anomaly=False`` on every error row, hiding anomalous measurements' failed attempts.
* ``excluded`` / ``exclude_reason`` of non-anomalous v2.2 rows keep their raw values (the
  seed reset them to NULL). For anomalous v2.2 rows the raw reasons are kept and
  ``is_CDN`` is added when our own check finds a CDN; ``excluded`` is the raw flag OR the
  CDN check (the seed overwrote the raw flag and reasons).
* ``is_CDN`` is written once, not once per matching answer; an anomaly without a reason
  gets ``exclude_reason`` NULL (the seed wrote ``""``).
* The CDN pattern is matched case-insensitively: CAIDA names Akamai's ASes ``AKAMAI-AS``
  / ``AKAMAI-ASN1``, which the seed's ``Akamai`` never matched.
* Empty-string tags (v2.2 writes ``""`` for a missing hash) are not tags, and an answer
  only counts matches of tags it has, so ``match_confidence`` stays within 0..100.

Example:
    >>> ctrl = {"source": "s", "domain": "d.com", "_format": "v1", "anomaly": None,
    ...         "resolver_is_trusted": True, "domain_is_control": False,
    ...         "answers": [{"ip": "1.1.1.1", "asn": 13335, "as_name": "CLOUDFLARENET"}]}
    >>> test = {"source": "s", "domain": "d.com", "_format": "v1", "anomaly": True,
    ...         "resolver_is_trusted": False, "domain_is_control": False,
    ...         "answers": [{"ip": "2.2.2.2", "asn": 13335, "as_name": "CLOUDFLARENET",
    ...                      "matches_control": {"ip": False, "asn": True, "as_name": False}}]}
    >>> out = post_process([ctrl, test])
    >>> out[1]["average_confidence"], out[1]["excluded"], out[1]["exclude_reason"]
    (50.0, True, 'is_CDN')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.rowschema import Row

FORMAT_KEY = "_format"
FORMATS = frozenset({"v1", "v2.1", "v2.1-control", "v2.2"})
RAW_CONFIDENCE_FORMATS = frozenset({"v2.2"})
"""Formats whose confidence and exclusion values come from the raw data."""

TAG_FIELDS = ("censys_http_body_hash", "censys_ip_cert", "asn", "as_name")
"""Answer tags compared with the control answers (``matches_control`` has the same keys)."""

CDN_AS_NAME = re.compile(r"^(AMAZON|Akamai|OPENDNS|CLOUDFLARENET|GOOGLE)", re.IGNORECASE)
CDN_REASON = "is_CDN"


@dataclass(frozen=True)
class Partition:
    """Row indexes of one group by role."""

    domain_controls: tuple[int, ...]
    ip_controls: tuple[int, ...]
    tests: tuple[int, ...]


def group_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """The grouping key of post-processing: (source, domain)."""
    return (str(row.get("source") or ""), str(row.get("domain") or ""))


def row_format(row: Mapping[str, Any]) -> str:
    fmt = row.get(FORMAT_KEY)
    if fmt not in FORMATS:
        raise ValueError(f"Satellite row has no known {FORMAT_KEY}: {fmt!r}")
    return str(fmt)


def is_domain_control(row: Mapping[str, Any]) -> bool:
    return bool(row.get("domain_is_control"))


def is_ip_control(row: Mapping[str, Any]) -> bool:
    """A control resolver's row, or one without an anomaly verdict (a control file)."""
    return not is_domain_control(row) and (
        bool(row.get("resolver_is_trusted")) or row.get("anomaly") is None
    )


def partition(rows: Iterable[Mapping[str, Any]]) -> Partition:
    domain, ip, tests = [], [], []
    for i, row in enumerate(rows):
        if is_domain_control(row):
            domain.append(i)
        elif is_ip_control(row):
            ip.append(i)
        else:
            tests.append(i)
    return Partition(tuple(domain), tuple(ip), tuple(tests))


def _has_value(value: Any) -> bool:
    return value is not None and value != ""


def answer_tags(answer: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the tags this answer carries (non-NULL, non-empty)."""
    return tuple(t for t in TAG_FIELDS if _has_value(answer.get(t)))


def control_tag_count(controls: Iterable[Mapping[str, Any]]) -> int:
    """Tags available in the control answers: summed over every answer of every row."""
    return sum(len(answer_tags(a)) for row in controls for a in (row.get("answers") or ()) if a)


def match_confidence(answer: Mapping[str, Any]) -> float:
    """100 if the IP matched a control answer, else % of the answer's tags that matched."""
    matches = answer.get("matches_control") or {}
    if matches.get("ip") is True:
        return 100.0
    tags = answer_tags(answer)
    if not tags:
        return 0.0
    matched = sum(1 for t in tags if matches.get(t) is True)
    return matched * 100.0 / len(tags)


def with_confidence(row: Mapping[str, Any], control_tags: int) -> Row:
    """A copy of a v1 / v2.1 test row with the confidence fields derived."""
    out = dict(row)
    answers = [dict(a) for a in (row.get("answers") or ()) if a is not None]
    for answer in answers:
        answer["match_confidence"] = match_confidence(answer)
    out["answers"] = answers
    out["untagged_controls"] = control_tags == 0
    if answers:
        scores = [a["match_confidence"] for a in answers]
        out["average_confidence"] = sum(scores) / len(scores)
        untagged = not any(answer_tags(a) for a in answers)
        out["untagged_response"] = untagged
        if untagged:
            out["anomaly"] = False
    else:
        out["average_confidence"] = None
        out["untagged_response"] = None
    return out


def has_cdn_answer(row: Mapping[str, Any]) -> bool:
    return any(
        CDN_AS_NAME.match(str(a.get("as_name") or "")) for a in (row.get("answers") or ()) if a
    )


def verify(row: Mapping[str, Any]) -> Row:
    """A copy of a test row with ``excluded`` / ``exclude_reason`` set."""
    out = dict(row)
    raw = row_format(row) in RAW_CONFIDENCE_FORMATS
    if not row.get("anomaly"):
        if not raw:
            out["excluded"] = None
            out["exclude_reason"] = None
        return out
    cdn = has_cdn_answer(row)
    if raw:
        reasons = str(row.get("exclude_reason") or "").split()
        if cdn and CDN_REASON not in reasons:
            reasons.append(CDN_REASON)
            out["exclude_reason"] = " ".join(reasons)
        out["excluded"] = bool(row.get("excluded")) or cdn
    else:
        out["excluded"] = cdn
        out["exclude_reason"] = CDN_REASON if cdn else None
    return out


def post_process(rows: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Post-process the rows of ONE (source, domain) group; output keeps input order.

    Every returned row is a new dict (controls: shallow copies with the same values; test
    rows also get new answer dicts), so callers may set columns without touching the
    input elements. Raises ValueError when the rows belong to several groups or lack ``_format``.
    """
    group = list(rows)
    for row in group:
        row_format(row)
    keys = {group_key(r) for r in group}
    if len(keys) > 1:
        raise ValueError(f"post_process takes one (source, domain) group, got {sorted(keys)}")
    parts = partition(group)
    control_tags = control_tag_count(group[i] for i in parts.ip_controls)
    out: list[Row] = [dict(r) for r in group]
    for i in parts.tests:
        row = group[i]
        if row_format(row) not in RAW_CONFIDENCE_FORMATS:
            row = with_confidence(row, control_tags)
        out[i] = verify(row)
    return out
