"""Outcome classification driven by rule data (``rules/*.toml``).

Rules are evaluated in file order; the first that fires names the outcome and its id is
stored on the row (``outcome_rule_id``) with the rule set version.

Example:
    >>> rules = load_hyperquack_rules()
    >>> rules.classify({"received_error": "read tcp 1.2.3.4:80: i/o timeout"}, "http")
    ('read/timeout', 'HQ-READ-TIMEOUT')
"""

from __future__ import annotations

import tomllib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"
HYPERQUACK_RULES_FILE = RULES_DIR / "hyperquack_outcomes.toml"

KNOWN_SCAN_TYPES = frozenset({"echo", "discard", "http", "https", "satellite"})
_KINDS = {"blockpage", "trusted_host", "mismatch_no_error", "no_error", "error", "always"}
_TEXT_KEYS = ("equals", "startswith", "endswith", "contains")
#: Distinct (scan type, first error) answers kept by RuleSet (then it starts afresh).
_ERROR_CACHE_LIMIT = 20_000

Predicate = Callable[[Mapping[str, Any], str | None], bool]
#: See :meth:`RuleSet.feature_key`.
FeatureKey = tuple[str | None, bool, bool | None, str | None, tuple[str, ...], str]
#: Predicates compiled from rule data here: they read only what a FeatureKey holds.
_KEYED_PREDICATES: weakref.WeakSet[Callable[..., bool]] = weakref.WeakSet()


class TextMatch(NamedTuple):
    """An "error" rule's text tests, kept as data for the fast first-rule search."""

    equals: frozenset[str]
    starts: tuple[str, ...]
    ends: tuple[str, ...]
    contains: tuple[str, ...]


class RuleFileError(ValueError):
    """The rule file is malformed (bad kind, duplicate id, missing outcome, ...)."""


@dataclass(frozen=True)
class OutcomeRule:
    """One rule: stable id, outcome template and a compiled predicate."""

    id: str
    kind: str
    outcome: str
    predicate: Predicate
    scan_types: frozenset[str] | None
    not_scan_types: frozenset[str]
    #: The header lines a "trusted_host" rule looks for (empty for other kinds).
    headers: frozenset[str] = frozenset()
    #: The text tests of an "error" rule compiled from rule data (None otherwise).
    text: TextMatch | None = None

    def applies_to(self, scan_type: str) -> bool:
        if self.scan_types is not None and scan_type not in self.scan_types:
            return False
        return scan_type not in self.not_scan_types

    def render(self, row: Mapping[str, Any]) -> str:
        if "{" not in self.outcome:
            return self.outcome
        status = row.get("received_status") or ""
        signature = row.get("page_signature") or ""
        out = self.outcome.replace("{page_signature}", signature)
        # The fingerprint is the signature id without its "~N" duplicate suffix.
        out = out.replace("{page_fingerprint}", signature.partition("~")[0])
        if "{status3}" in out:
            # The seed writes "content/status_mismatch" (no suffix) when status is empty.
            out = out.replace(":{status3}", f":{status[:3]}" if status else "")
        return out


@dataclass(frozen=True)
class RuleSet:
    """An ordered rule set with its version."""

    version: str
    rules: tuple[OutcomeRule, ...]
    # Rules whose predicate reads the row (every kind but "error"), with their positions.
    _row_rules: tuple[tuple[int, OutcomeRule], ...] = field(init=False, repr=False, compare=False)
    # (scan type, first error) -> position of the first "error" rule that fires, or len(rules).
    _error_hits: dict[tuple[str, str], int] = field(init=False, repr=False, compare=False)
    # scan type -> ((position, TextMatch), ...) of its "error" rules, when all are data.
    _error_tables: dict[str, tuple[tuple[int, TextMatch], ...]] = field(
        init=False, repr=False, compare=False
    )
    #: Union of the header lines of every "trusted_host" rule (see :meth:`feature_key`).
    trusted_headers: frozenset[str] = field(init=False, repr=False, compare=False)
    #: True when every predicate was compiled from rule data (so it reads nothing but the
    #: feature key); False for hand-built rules with arbitrary predicates.
    features_exact: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        row_rules = tuple((i, r) for i, r in enumerate(self.rules) if r.kind != "error")
        object.__setattr__(self, "_row_rules", row_rules)
        object.__setattr__(self, "_error_hits", {})
        object.__setattr__(self, "_error_tables", {})
        trusted = frozenset().union(*(r.headers for r in self.rules if r.kind == "trusted_host"))
        object.__setattr__(self, "trusted_headers", trusted)
        keyed = all(r.predicate in _KEYED_PREDICATES for r in self.rules)
        object.__setattr__(self, "features_exact", keyed)

    def _first_error_rule(self, scan_type: str, error: str) -> int:
        """Position of the first applicable "error" rule matching ``error`` (memoised).

        "error" predicates read nothing but the error text, so the answer depends on
        (scan type, first error) alone; rows sharing an error text skip ~25 string tests.
        """
        key = (scan_type, error)
        hit = self._error_hits.get(key)
        if hit is None:
            hit = self._search_error_rules(scan_type, error)
            if len(self._error_hits) >= _ERROR_CACHE_LIMIT:
                self._error_hits.clear()
            self._error_hits[key] = hit
        return hit

    def _search_error_rules(self, scan_type: str, error: str) -> int:
        """The uncached search: a tight loop over the rules' text tests when they are data.

        Error texts often hold addresses and ports, so most are seen once: this loop runs
        for most failed roundtrips of a scan.
        """
        table = self._error_tables.get(scan_type)
        if table is None:
            errors = [(i, r) for i, r in enumerate(self.rules) if r.kind == "error"]
            if all(r.text is not None for _, r in errors):
                table = tuple(
                    (i, r.text) for i, r in errors if r.text is not None and r.applies_to(scan_type)
                )
                self._error_tables[scan_type] = table
        if table is not None:
            for i, (equals, starts, ends, contains) in table:
                if (
                    error in equals
                    or (starts and error.startswith(starts))
                    or (ends and error.endswith(ends))
                    or (contains and any(c in error for c in contains))
                ):
                    return i
            return len(self.rules)
        for i, rule in enumerate(self.rules):  # hand-built rules: their own predicates
            if rule.kind == "error" and rule.applies_to(scan_type) and rule.predicate({}, error):
                return i
        return len(self.rules)

    def classify(self, row: Mapping[str, Any], scan_type: str) -> tuple[str, str]:
        """Return (outcome, rule id) for a flattened row."""
        return self._classify(row, _first_error(row.get("received_error")), scan_type)

    def feature_key(self, row: Mapping[str, Any]) -> FeatureKey:
        """Everything :meth:`classify` reads from ``row``, as a hashable tuple.

        ``(first error, matches_template is False, is_known_blockpage, page_signature,
        received headers that some trusted_host rule lists (in row order), first 3
        characters of received_status or "")``. Rows with equal keys get equal outcomes
        (:meth:`classify_features`); the native parser builds the same key in C.
        """
        trusted = self.trusted_headers
        headers = row.get("received_headers") or ()
        return (
            _first_error(row.get("received_error")),
            row.get("matches_template") is False,
            row.get("is_known_blockpage"),
            row.get("page_signature"),
            tuple(h for h in headers if h in trusted),
            (row.get("received_status") or "")[:3],
        )

    def classify_features(self, key: FeatureKey, scan_type: str) -> tuple[str, str]:
        """What :meth:`classify` returns for any row whose :meth:`feature_key` is ``key``."""
        first_error, mismatch, known_blockpage, signature, headers, status3 = key
        view = {
            "matches_template": False if mismatch else None,
            "is_known_blockpage": known_blockpage,
            "page_signature": signature,
            "received_headers": headers,
            "received_status": status3,
        }
        return self._classify(view, first_error, scan_type)

    def _classify(
        self, row: Mapping[str, Any], first_error: str | None, scan_type: str
    ) -> tuple[str, str]:
        hit = len(self.rules)
        if first_error is not None:
            hit = self._first_error_rule(scan_type, first_error)
        for i, rule in self._row_rules:
            if i > hit:  # the matching "error" rule comes first in file order
                rule = self.rules[hit]
                return rule.render(row), rule.id
            if rule.applies_to(scan_type) and rule.predicate(row, first_error):
                return rule.render(row), rule.id
        raise RuntimeError(f"rule set {self.version} has no fallback rule")  # pragma: no cover

    def ids(self) -> list[str]:
        return [r.id for r in self.rules]


def _first_error(error: Any) -> str | None:
    if not error:
        return None
    text = str(error)
    cut = text.find(";")
    return text if cut < 0 else text[:cut]


def _string_list(spec: Mapping[str, Any], key: str) -> list[str]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RuleFileError(f"rule {spec.get('id')}: {key} must be a list of non-empty strings")
    return value


def text_matcher(spec: Mapping[str, Any]) -> Callable[[str | None], bool]:
    """Compile a rule's ``equals``/``startswith``/``endswith``/``contains`` lists.

    Shared by the Hyperquack and Satellite rule engines.
    """
    equals, starts, ends, contains = text_match(spec)

    def matches(err: str | None) -> bool:
        if err is None:
            return False
        return (
            err in equals
            or (bool(starts) and err.startswith(starts))
            or (bool(ends) and err.endswith(ends))
            or any(c in err for c in contains)
        )

    return matches


def text_match(spec: Mapping[str, Any]) -> TextMatch:
    """A rule's ``equals``/``startswith``/``endswith``/``contains`` lists, validated."""
    text = TextMatch(
        frozenset(_string_list(spec, "equals")),
        tuple(_string_list(spec, "startswith")),
        tuple(_string_list(spec, "endswith")),
        tuple(_string_list(spec, "contains")),
    )
    if not any(text):
        raise RuleFileError(f"rule {spec.get('id')}: error rule needs one of {_TEXT_KEYS}")
    return text


def _text_predicate(spec: Mapping[str, Any]) -> Predicate:
    matches = text_matcher(spec)
    return lambda _row, err: matches(err)


def _compile(spec: Mapping[str, Any]) -> Predicate:
    predicate = _compile_kind(spec)
    _KEYED_PREDICATES.add(predicate)
    return predicate


def _compile_kind(spec: Mapping[str, Any]) -> Predicate:
    kind = spec["kind"]
    if kind == "blockpage":
        return lambda row, _e: (
            bool(row.get("is_known_blockpage")) and bool(row.get("page_signature"))
        )
    if kind == "trusted_host":
        headers = frozenset(_string_list(spec, "headers"))
        if not headers:
            raise RuleFileError(f"rule {spec['id']}: trusted_host needs headers")
        return lambda row, _e: any(h in headers for h in row.get("received_headers") or ())
    if kind == "mismatch_no_error":
        return lambda row, err: row.get("matches_template") is False and err is None
    if kind == "no_error":
        return lambda _row, err: err is None
    if kind == "error":
        return _text_predicate(spec)
    return lambda _row, _err: True


def parse_rules(data: Mapping[str, Any], label: str) -> RuleSet:
    """Build a RuleSet from decoded TOML data, validating ids, kinds and fallback."""
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RuleFileError(f"{label}: missing version")
    seen: set[str] = set()
    rules: list[OutcomeRule] = []
    for i, spec in enumerate(data.get("rule", [])):
        rid, kind, outcome = spec.get("id"), spec.get("kind"), spec.get("outcome")
        if not isinstance(rid, str) or not rid:
            raise RuleFileError(f"{label}: rule #{i + 1} has no id")
        if rid in seen:
            raise RuleFileError(f"{label}: duplicate rule id {rid}")
        if kind not in _KINDS:
            raise RuleFileError(f"{label}: rule {rid} has unknown kind {kind!r}")
        if not isinstance(outcome, str) or "/" not in outcome:
            raise RuleFileError(f"{label}: rule {rid} needs an outcome 'stage/result'")
        seen.add(rid)
        st = _string_list(spec, "scan_types") if "scan_types" in spec else None
        not_st = _string_list(spec, "not_scan_types")
        unknown = sorted((set(st or ()) | set(not_st)) - KNOWN_SCAN_TYPES)
        if unknown or st == []:
            raise RuleFileError(f"{label}: rule {rid} has bad scan types {unknown or st}")
        rules.append(
            OutcomeRule(
                id=rid,
                kind=kind,
                outcome=outcome,
                predicate=_compile(spec),
                scan_types=frozenset(st) if st is not None else None,
                not_scan_types=frozenset(not_st),
                headers=frozenset(_string_list(spec, "headers"))
                if kind == "trusted_host"
                else frozenset(),
                text=text_match(spec) if kind == "error" else None,
            )
        )
    if not rules or rules[-1].kind != "always":
        raise RuleFileError(f"{label}: the last rule must be kind 'always' (the fallback)")
    return RuleSet(version=version, rules=tuple(rules))


def load_rules(path: Path) -> RuleSet:
    with path.open("rb") as fh:
        return parse_rules(tomllib.load(fh), str(path.name))


def load_hyperquack_rules() -> RuleSet:
    """The Hyperquack rule set shipped with the pipeline."""
    return load_rules(HYPERQUACK_RULES_FILE)
