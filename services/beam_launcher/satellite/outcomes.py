"""Satellite (DNS) outcome classification driven by ``rules/satellite_outcomes.toml``.

Rules are evaluated in file order and the first that fires names the outcome; its id and
the rule set version are stored on the row (``outcome``, ``outcome_rule_id``,
``outcome_rules_version``). Outcomes are 'stage.result[:detail]' without emoji.

Precedence (the seed's ``SatelliteOutcomeString``, kept by the order of the file): a
real error (not NULL, blank, "null" or "SERVFAIL") is classified by its text (v1 JSON
error objects by their innermost ``Err``, then v1 bare strings, then v2 suffixes, else
``unknown_error:<error>``); then rcode -1 → ``dns.timedout``; other non-zero rcodes →
``dns.error:<name>`` / ``dns.unknown_rcode:<n>``; no answers → ``ip.empty``; the first
answer's IP is invalid → ``ip.invalid:<class>``; then the answer checks (control IP
match, certificate, blockpage, control ASN match) and finally
``tls.connerror:<answers signature>``.

Example:
    >>> rules = load_satellite_rules()
    >>> rules.classify({"received_error": "read udp 1.2.3.4:53: i/o timeout",
    ...                 "received_rcode": -1, "answers": []})
    ('dns.timedout', 'DNS-TIMEOUT')
    >>> rules.classify({"received_error": "null", "received_rcode": 3, "answers": []})
    ('dns.error:NXDomain', 'DNS-RCODE-NXDOMAIN')
    >>> rules.classify({"received_rcode": 0, "answers": [{"ip": "1.2.3.4", "as_name": "X"}]})
    ('tls.connerror:X', 'TLS-CONNERROR')
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.beam_launcher.hyperquack.outcomes import RULES_DIR, RuleFileError, text_matcher
from services.beam_launcher.warehouse.rows import SATELLITE_SCAN
from services.common.rowschema import Row

SATELLITE_RULES_FILE = RULES_DIR / "satellite_outcomes.toml"

_KINDS = frozenset(
    {
        "error_errno",
        "error",
        "error_any",
        "rcode",
        "rcode_nonzero",
        "no_answers",
        "invalid_ip",
        "any_answer",
        "all_answers",
        "always",
    }
)
_TEXT_KEYS = ("equals", "startswith", "endswith", "contains")
_PLACEHOLDERS = frozenset({"error", "rcode", "detail", "answers_signature"})
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
# Keys each kind accepts besides id/kind/outcome.
_KIND_KEYS: dict[str, frozenset[str]] = {
    "error_errno": frozenset({"errno"}),
    "error": frozenset(_TEXT_KEYS),
    "error_any": frozenset(),
    "rcode": frozenset({"rcodes"}),
    "rcode_nonzero": frozenset(),
    "no_answers": frozenset(),
    "invalid_ip": frozenset({"networks"}),
    "any_answer": frozenset({"where", "detail"}),
    "all_answers": frozenset({"where", "detail"}),
    "always": frozenset(),
}


def _answer_field_names() -> frozenset[str]:
    answers = next(c for c in SATELLITE_SCAN.columns if c.name == "answers")
    names: set[str] = set()
    for col in answers.fields:
        names.add(col.name)
        names.update(f"{col.name}.{sub.name}" for sub in col.fields)
    return frozenset(names)


ANSWER_FIELDS = _answer_field_names()

# A v1 error is a JSON-dumped Go error ({"Op": "read", ..., "Err": {"Syscall": ...,
# "Err": 111}}); this finds an "Err" value in text that is not valid JSON.
_ERRNO_TEXT = re.compile(r'"Err"\s*:\s*(\{\s*\}|-?\d+)')


class _Facts:
    """What the predicates look at, computed once per row."""

    __slots__ = ("answers", "errno", "error", "rcode")

    def __init__(self, row: Mapping[str, Any], ignored_errors: frozenset[str]) -> None:
        self.error = _real_error(row.get("received_error"), ignored_errors)
        self.errno = v1_errno(self.error) if self.error is not None else None
        self.rcode = _int_or_none(row.get("received_rcode"))
        answers = row.get("answers") or ()
        self.answers: Sequence[Mapping[str, Any]] = [a for a in answers if a is not None]


Predicate = Callable[[_Facts], bool]
DetailGetter = Callable[[_Facts], Any]


@dataclass(frozen=True)
class SatelliteRule:
    """One rule: stable id, kind, outcome template, compiled predicate."""

    id: str
    kind: str
    outcome: str
    predicate: Predicate
    detail: DetailGetter | None = None

    def render(self, facts: _Facts) -> str:
        if "{" not in self.outcome:
            return self.outcome
        values = {
            "error": facts.error,
            "rcode": facts.rcode,
            "detail": self.detail(facts) if self.detail is not None else None,
            "answers_signature": (
                answers_signature(facts.answers) if "{answers_signature}" in self.outcome else ""
            ),
        }
        return _PLACEHOLDER_RE.sub(lambda m: _text(values[m.group(1)]), self.outcome)


@dataclass(frozen=True)
class SatelliteRuleSet:
    """An ordered, versioned Satellite rule set."""

    version: str
    rules: tuple[SatelliteRule, ...]
    ignored_errors: frozenset[str]

    def classify(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """Return (outcome, rule id) for a Satellite row."""
        facts = _Facts(row, self.ignored_errors)
        for rule in self.rules:
            if rule.predicate(facts):
                return rule.render(facts), rule.id
        raise RuntimeError(f"rule set {self.version} has no fallback rule")  # pragma: no cover

    def annotate(self, row: Row) -> Row:
        """Set outcome, outcome_rule_id and outcome_rules_version on ``row`` (in place)."""
        outcome, rule_id = self.classify(row)
        row["outcome"] = outcome
        row["outcome_rule_id"] = rule_id
        row["outcome_rules_version"] = self.version
        return row

    def ids(self) -> list[str]:
        return [r.id for r in self.rules]


# --- row helpers ----------------------------------------------------------------------------


def _real_error(error: Any, ignored: frozenset[str]) -> str | None:
    if error is None:
        return None
    text = str(error)
    if not text.strip() or text in ignored:
        return None
    return text


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def answer_field(answer: Mapping[str, Any], path: str) -> Any:
    """Value of an answer field; ``a.b`` reads a nested record (NULL when absent)."""
    head, _, sub = path.partition(".")
    value = answer.get(head)
    if not sub:
        return value
    return value.get(sub) if isinstance(value, Mapping) else None


def v1_errno(error: str) -> str | None:
    """The innermost ``Err`` of a v1 JSON-dumped Go error, as text.

    ``{}`` (an empty object: Go's timeout error has no exported fields) gives ``"{}"``,
    a number (a Linux errno) its decimal text, a string itself; anything else ``None``.

    >>> v1_errno('{"Op": "read", "Err": {"Syscall": "recvfrom", "Err": 111}}')
    '111'
    >>> v1_errno('{"Op":"read","Net":"udp","Err":{}}')
    '{}'
    >>> v1_errno("read udp: i/o timeout") is None
    True
    """
    text = error.strip()
    if not text.startswith("{"):
        return None
    try:
        node: Any = json.loads(text)
    except ValueError:
        found = _ERRNO_TEXT.search(text)
        if found is None:
            return None
        value = found.group(1)
        return "{}" if value.startswith("{") else value
    seen = False
    value = None
    while isinstance(node, dict) and "Err" in node:
        seen = True
        value = node["Err"]
        node = value
    if not seen:
        return None
    if isinstance(value, dict):
        return "{}" if not value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        return str(value)
    return None


def answers_signature(answers: Sequence[Mapping[str, Any]]) -> str:
    """Distinct AS names of the answers (else ``AS<asn>``, else ``missing_as_info``).

    First-seen order, comma-joined.

    >>> answers_signature([{"as_name": "GOOGLE"}, {"asn": 13335}, {}, {"as_name": "GOOGLE"}])
    'GOOGLE,AS13335,missing_as_info'
    """
    names: dict[str, None] = {}
    for answer in answers:
        as_name = answer.get("as_name")
        asn = answer.get("asn")
        if as_name:
            names[str(as_name)] = None
        elif asn is not None:
            names[f"AS{asn}"] = None
        else:
            names["missing_as_info"] = None
    return ",".join(names)


# --- compiling rules ------------------------------------------------------------------------


def _string_list(spec: Mapping[str, Any], key: str, allow_empty: bool = False) -> list[str]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, str) and (allow_empty or v) for v in value
    ):
        raise RuleFileError(f"rule {spec.get('id')}: {key} must be a list of non-empty strings")
    return value


def _text_predicate(spec: Mapping[str, Any]) -> Predicate:
    matches = text_matcher(spec)
    return lambda f: matches(f.error)


def _where(spec: Mapping[str, Any]) -> dict[str, bool]:
    where = spec.get("where")
    if not isinstance(where, dict) or not where:
        raise RuleFileError(f"rule {spec['id']}: where must be a non-empty table")
    for field, expected in where.items():
        if field not in ANSWER_FIELDS:
            raise RuleFileError(f"rule {spec['id']}: unknown answer field {field!r}")
        if not isinstance(expected, bool):
            raise RuleFileError(f"rule {spec['id']}: where.{field} must be true or false")
    return dict(where)


def _detail_field(spec: Mapping[str, Any]) -> str | None:
    detail = spec.get("detail")
    if detail is None:
        return None
    if not isinstance(detail, str) or detail not in ANSWER_FIELDS:
        raise RuleFileError(f"rule {spec['id']}: detail must name an answer field")
    return detail


def _any_answer(spec: Mapping[str, Any]) -> tuple[Predicate, DetailGetter | None]:
    where = _where(spec)
    detail = _detail_field(spec)

    def first(f: _Facts) -> Mapping[str, Any] | None:
        for answer in f.answers:
            if all(answer_field(answer, k) is v for k, v in where.items()):
                return answer
        return None

    def getter(f: _Facts) -> Any:
        answer = first(f)
        return answer_field(answer, detail) if answer is not None and detail else None

    return (lambda f: first(f) is not None), (getter if detail else None)


def _all_answers(spec: Mapping[str, Any]) -> tuple[Predicate, DetailGetter | None]:
    where = _where(spec)
    if len(where) != 1:
        raise RuleFileError(f"rule {spec['id']}: all_answers takes exactly one where field")
    ((field, expected),) = where.items()
    detail = _detail_field(spec)

    def pred(f: _Facts) -> bool:
        known = [v for a in f.answers if (v := answer_field(a, field)) is not None]
        return bool(known) and all(v is expected for v in known)

    def getter(f: _Facts) -> Any:
        for answer in f.answers:
            if answer_field(answer, field) is not None:
                return answer_field(answer, detail) if detail else None
        return None  # pragma: no cover - pred guarantees one answer

    return pred, (getter if detail else None)


def _invalid_ip(spec: Mapping[str, Any]) -> Predicate:
    try:
        networks = tuple(ipaddress.ip_network(n) for n in _string_list(spec, "networks"))
    except ValueError as e:
        raise RuleFileError(f"rule {spec['id']}: bad network: {e}") from e
    if not networks:
        raise RuleFileError(f"rule {spec['id']}: invalid_ip needs networks")

    def pred(f: _Facts) -> bool:
        if not f.answers:
            return False
        try:
            ip = ipaddress.ip_address(str(f.answers[0].get("ip") or "").strip())
        except ValueError:
            return False
        return any(ip in net for net in networks)

    return pred


def _compile(spec: Mapping[str, Any]) -> tuple[Predicate, DetailGetter | None]:
    kind = spec["kind"]
    if kind == "error_errno":
        errnos = frozenset(_string_list(spec, "errno"))
        if not errnos:
            raise RuleFileError(f"rule {spec['id']}: error_errno needs errno")
        return (lambda f: f.errno is not None and f.errno in errnos), None
    if kind == "error":
        return _text_predicate(spec), None
    if kind == "error_any":
        return (lambda f: f.error is not None), None
    if kind == "rcode":
        rcodes = spec.get("rcodes")
        if (
            not isinstance(rcodes, list)
            or not rcodes
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in rcodes)
        ):
            raise RuleFileError(f"rule {spec['id']}: rcodes must be a non-empty list of integers")
        codes = frozenset(rcodes)
        return (lambda f: f.rcode in codes), None
    if kind == "rcode_nonzero":
        return (lambda f: f.rcode is not None and f.rcode != 0), None
    if kind == "no_answers":
        return (lambda f: not f.answers), None
    if kind == "invalid_ip":
        return _invalid_ip(spec), None
    if kind == "any_answer":
        return _any_answer(spec)
    if kind == "all_answers":
        return _all_answers(spec)
    return (lambda _f: True), None


def _check_outcome(spec: Mapping[str, Any], label: str) -> str:
    rid, outcome = spec["id"], spec.get("outcome")
    if not isinstance(outcome, str) or not outcome.strip():
        raise RuleFileError(f"{label}: rule {rid} needs an outcome")
    if not outcome.isascii() or not outcome.isprintable() or " " in outcome:
        # Emoji belong to the queries service, not to base-table outcomes.
        raise RuleFileError(f"{label}: rule {rid}: outcome must be printable ASCII, no spaces")
    names = set(_PLACEHOLDER_RE.findall(outcome))
    unknown = names - _PLACEHOLDERS
    if unknown:
        raise RuleFileError(f"{label}: rule {rid}: unknown placeholders {sorted(unknown)}")
    if "detail" in names and not spec.get("detail"):
        raise RuleFileError(f"{label}: rule {rid}: {{detail}} needs a detail field")
    return outcome


def parse_satellite_rules(data: Mapping[str, Any], label: str) -> SatelliteRuleSet:
    """Build a rule set from decoded TOML, validating ids, kinds, keys and the fallback."""
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RuleFileError(f"{label}: missing version")
    unknown_top = set(data) - {"version", "ignored_errors", "rule"}
    if unknown_top:
        raise RuleFileError(f"{label}: unknown top-level keys {sorted(unknown_top)}")
    ignored = frozenset(_string_list(data, "ignored_errors", allow_empty=True))
    specs = data.get("rule", [])
    if not isinstance(specs, list):
        raise RuleFileError(f"{label}: rule must be an array of tables")
    seen: set[str] = set()
    rules: list[SatelliteRule] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise RuleFileError(f"{label}: rule #{i + 1} is not a table")
        rid, kind = spec.get("id"), spec.get("kind")
        if not isinstance(rid, str) or not rid:
            raise RuleFileError(f"{label}: rule #{i + 1} has no id")
        if rid in seen:
            raise RuleFileError(f"{label}: duplicate rule id {rid}")
        seen.add(rid)
        if kind not in _KINDS:
            raise RuleFileError(f"{label}: rule {rid} has unknown kind {kind!r}")
        extra = set(spec) - {"id", "kind", "outcome"} - _KIND_KEYS[kind]
        if extra:
            raise RuleFileError(f"{label}: rule {rid} ({kind}) has unknown keys {sorted(extra)}")
        outcome = _check_outcome(spec, label)
        if kind == "always" and i != len(specs) - 1:
            raise RuleFileError(f"{label}: rule {rid}: only the last rule may be 'always'")
        predicate, detail = _compile(spec)
        rules.append(SatelliteRule(rid, kind, outcome, predicate, detail))
    if not rules or rules[-1].kind != "always":
        raise RuleFileError(f"{label}: the last rule must be kind 'always' (the fallback)")
    return SatelliteRuleSet(version=version, rules=tuple(rules), ignored_errors=ignored)


def load_satellite_rules(path: Path = SATELLITE_RULES_FILE) -> SatelliteRuleSet:
    """Load and validate a Satellite rule file (default: the shipped one)."""
    with path.open("rb") as fh:
        return parse_satellite_rules(tomllib.load(fh), path.name)


@lru_cache(maxsize=1)
def default_rules() -> SatelliteRuleSet:
    """The shipped rule set, loaded once per process."""
    return load_satellite_rules()


def classify(row: Mapping[str, Any]) -> tuple[str, str]:
    """(outcome, rule id) for a Satellite row with the shipped rule set."""
    return default_rules().classify(row)
