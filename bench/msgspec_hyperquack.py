"""Hyperquack lines → the columns of ``HyperquackProcessor.process_columns``, via msgspec.

The alternative to the C parser (``services/beam_launcher/native/_hqfast.c``) measured for
issue 16: each line is decoded by a ``msgspec.json.Decoder`` into typed ``Struct``s (one
record type holding the Hyperquack v1 and v2 keys, one roundtrip type, one response
type), then flattened and annotated by lean Python that writes row tuples and transposes
them once per batch. It does the per-line work the C path does, and shares with it the
same Python callbacks:

* done here (in C on the C path): decoding + type checks, flattening, header flattening,
  measurement ids, the page text, the category / page / outcome memos, the outcome
  feature key, the columns;
* shared with the C path: ``DomainCategories.category`` and ``SignatureMatcher.match``
  on a memo miss, ``processing.cert_columns`` (certificate parsing, LRU-cached),
  ``RuleSet.classify_features`` on a memo miss, and the reference Python path
  (``HyperquackProcessor._process_line``) for every line the fast path does not take;
* shared with the pure-Python path only: ``hyperquack.normalize_timestamp`` (the C path
  has its own timestamp check in C).

A line goes to the reference path (as the C path's "slow" lines do) when msgspec rejects
it (invalid JSON, a type the Structs do not allow), when its shape is unusual (no
``Server``/``vp``, a missing required key, a ``Server`` that is null) or when anything in
the fast path raises; so dead letters are always the reference's. Non-ASCII lines are
checked to be valid UTF-8 first (msgspec does not check the keys it skips; orjson, which
the reference uses, rejects the whole line).

One known difference remains, by design of msgspec: a number that overflows a double
(``1e999``) in a key the Structs skip, or in a certificate field, is accepted by msgspec
but makes orjson reject the line (``invalid_json``); the reference would dead-letter such
a line, this path would keep its rows. No real or generated scan holds one.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from msgspec import UNSET
from msgspec_structs import Record, Response

from services.beam_launcher.enrichment.categories import CONTROL
from services.beam_launcher.hyperquack.parse import (
    V1_CONTROL_DOMAINS,
    domain_from_sent,
    file_digest,
    normalize_timestamp,
)
from services.beam_launcher.hyperquack.processing import (
    HYPERQUACK_SCAN,
    NATIVE_CACHE_LIMIT,
    BatchOutput,
    ColumnOutput,
    FileTask,
    HyperquackProcessor,
    cert_columns,
)
from services.common.rowschema import Row

#: The columns a row tuple holds, in order (every other column is constant per batch).
COLUMNS = (
    "server_ip",
    "measurement_id",
    "source_line",
    "no_response_in_measurement_matches_template",
    "controls_failed",
    "stateful_block",
    "domain",
    "domain_is_control",
    "domain_category",
    "date",
    "start_time",
    "end_time",
    "retry",
    "received_error",
    "matches_template",
    "received_status",
    "received_headers",
    "received_body",
    "received_tls_version",
    "received_tls_cipher_suite",
    "received_tls_cert",
    "received_tls_cert_common_name",
    "received_tls_cert_issuer",
    "received_tls_cert_alternative_names",
    "received_tls_cert_matches_domain",
    "is_known_blockpage",
    "page_signature",
    "outcome",
    "outcome_rule_id",
)
_CONSTANT = ("source", "source_file", "pipeline_version", "outcome_rules_version")
PAGE_CACHE_ENTRIES = 1024
PAGE_CACHE_MAX_CHARS = 256 * 1024
RowTuple = tuple[Any, ...]
#: (status, headers, body, tls version, tls cipher suite, raw certificate)
Received = tuple[str | None, list[str] | None, str | None, int | None, int | None, Any]
_NO_RESPONSE: Received = (None, None, None, None, None, None)


def _received(value: Response | str | None) -> Received:
    """The received_* values of a v1 ``Received`` / v2 ``response`` value."""
    if value is None:
        return _NO_RESPONSE
    if type(value) is str:
        return (value, None, None, None, None, None)
    assert isinstance(value, Response)
    headers: list[str] | None = None
    if value.headers is not None:
        headers = [f"{name}: {v}" for name, values in value.headers.items() for v in values]
    tls = value.tls
    if tls is not None:
        return (value.status_line, headers, value.body, tls.version, tls.cipher_suite, tls.cert)
    return (
        value.status_line,
        headers,
        value.body,
        value.TlsVersion,
        value.CipherSuite,
        value.Certificate,
    )


class MsgspecHyperquack:
    """``process_columns`` for one processor's resources and rules, with msgspec decoding."""

    def __init__(self, proc: HyperquackProcessor, *, pause_gc: bool = True) -> None:
        if not proc.rules.features_exact:
            raise ValueError("the rule set has hand-built predicates: no feature-key memo")
        self.proc = proc
        self.decoder = msgspec.json.Decoder(Record)
        self.category_fn = proc.resources.categories.category
        self.match_fn = proc.resources.matcher.match
        self.rules = proc.rules
        self.trusted = proc.rules.trusted_headers
        self.categories: dict[str, str | None] = {}
        self.pages: dict[str, tuple[bool, str] | None] = {}
        self.outcomes: dict[str, dict[tuple[Any, ...], tuple[str, str]]] = {}
        #: Lines handed to the reference path (the C path's "slow" lines).
        self.slow_lines = 0
        self.pause_gc = pause_gc

    def clear_caches(self) -> None:
        """Empty this path's memos (the shared caches are the processor's and certs')."""
        self.categories.clear()
        self.pages.clear()
        self.outcomes.clear()

    # --- annotation ------------------------------------------------------------------------

    def _category(self, domain: str) -> str | None:
        try:
            return self.categories[domain]
        except KeyError:
            if len(self.categories) >= NATIVE_CACHE_LIMIT:
                self.categories.clear()
            found = self.categories[domain] = self.category_fn(domain, False)
            return found

    def _page(self, text: str) -> tuple[bool, str] | None:
        pages = self.pages
        try:
            return pages[text]
        except KeyError:
            pass
        match = self.match_fn(text)
        found = None if match is None else (match.is_known_blockpage, match.signature.id)
        if len(text) <= PAGE_CACHE_MAX_CHARS:
            if len(pages) >= PAGE_CACHE_ENTRIES:
                pages.clear()
            pages[text] = found
        return found

    # --- rows ------------------------------------------------------------------------------

    def _row(
        self,
        head: tuple[Any, ...],
        anomaly: bool | None,
        domain: str,
        is_control: bool,
        retry: int | None,
        start: str | None,
        end: str | None,
        error: str | None,
        matches: bool | None,
        received: Received,
        outcomes: dict[tuple[Any, ...], tuple[str, str]],
        scan_type: str,
        cert_errors: list[int],
    ) -> RowTuple:
        """One finished row tuple (``head``: server, id, line, the record's three flags)."""
        date, start_time = normalize_timestamp(start, "start_time")
        _, end_time = normalize_timestamp(end, "end_time")
        status, headers, body, tls_version, tls_cipher, cert_raw = received
        category = CONTROL if is_control else self._category(domain)
        known = signature = None
        if anomaly:
            if headers is None and body is None:
                text = status
            else:
                text = "\r\n".join([status or "", *(headers or ()), "", body or ""])
            if text:
                match = self._page(text)
                if match is not None:
                    known, signature = match
        cert = cn = issuer = alt = cert_match = None
        if cert_raw:
            cols = cert_columns(cert_raw, domain)
            if cols is not None:
                cert = cols[0]
                if cols[1]:
                    cn, issuer, alt, cert_match = cols[2], cols[3], list(cols[4]), cols[5]
                else:
                    cert_errors[0] += 1
        if error:
            cut = error.find(";")
            first_error: str | None = error if cut < 0 else error[:cut]
        else:
            first_error = None
        trusted = self.trusted
        found = tuple([h for h in headers if h in trusted]) if headers and trusted else ()
        key = (first_error, matches is False, known, signature, found, (status or "")[:3])
        result = outcomes.get(key)
        if result is None:
            result = self.rules.classify_features(key, scan_type)
            if len(outcomes) >= NATIVE_CACHE_LIMIT:
                outcomes.clear()
            outcomes[key] = result
        return (
            *head,
            domain,
            is_control,
            category,
            date,
            start_time,
            end_time,
            retry,
            error,
            matches,
            status,
            headers,
            body,
            tls_version,
            tls_cipher,
            cert,
            cn,
            issuer,
            alt,
            cert_match,
            known,
            signature,
            *result,
        )

    def _v1(self, rec: Record, head: tuple[Any, ...], *args: Any) -> list[RowTuple] | None:
        keyword, results, retries = rec.Keyword, rec.Results, rec.Retries
        if keyword is None or results is None:
            return None
        anomaly = rec.Blocked
        rows = []
        row = self._row
        for index, rt in enumerate(results):
            sent = rt.Sent
            if sent:
                domain = domain_from_sent(sent)
                if domain is None:
                    return None
                is_control = domain in V1_CONTROL_DOMAINS
            else:
                is_control = retries is not None and index > retries
                domain = "" if is_control else keyword
            rows.append(
                row(
                    head,
                    anomaly,
                    domain,
                    is_control,
                    None if is_control else index,
                    rt.StartTime,
                    rt.EndTime,
                    rt.Error,
                    rt.Success,
                    _received(rt.Received),
                    *args,
                )
            )
        return rows

    def _v2(self, rec: Record, head: tuple[Any, ...], *args: Any) -> list[RowTuple] | None:
        test_url, responses = rec.test_url, rec.response
        if test_url is None or responses is None:
            return None
        anomaly = rec.anomaly
        rows = []
        row = self._row
        retry = 0
        for rt in responses:
            control = rt.control_url
            if control is None:
                rows.append(
                    row(
                        head,
                        anomaly,
                        test_url,
                        False,
                        retry,
                        rt.start_time,
                        rt.end_time,
                        rt.error,
                        rt.matches_template,
                        _received(rt.response),
                        *args,
                    )
                )
                retry += 1
            else:
                rows.append(
                    row(
                        head,
                        anomaly,
                        control,
                        True,
                        None,
                        rt.start_time,
                        rt.end_time,
                        rt.error,
                        rt.matches_template,
                        _received(rt.response),
                        *args,
                    )
                )
        return rows

    def _fast(
        self,
        raw: bytes,
        line_no: int,
        digest: str,
        outcomes: dict[tuple[Any, ...], tuple[str, str]],
        scan_type: str,
        cert_errors: list[int],
    ) -> list[RowTuple] | None:
        """The rows of one line, or None when the reference must handle it."""
        if not raw.isascii():
            raw.decode("utf-8")  # UnicodeDecodeError: the reference's invalid_json
        rec = self.decoder.decode(raw)
        server = rec.Server
        flatten: Callable[..., list[RowTuple] | None]
        if server is UNSET:
            server = rec.vp
            if server is None:
                return None
            mid = f"{digest}{line_no:08x}"
            head = (server, mid, line_no, rec.anomaly, rec.controls_failed, rec.stateful_block)
            flatten = self._v2
        elif server is None:
            return None
        else:
            assert isinstance(server, str)
            mid = f"{digest}{line_no:08x}"
            head = (server, mid, line_no, rec.Blocked, rec.FailSanity, rec.StatefulBlock)
            flatten = self._v1
        return flatten(rec, head, outcomes, scan_type, cert_errors)

    def process_columns(
        self, task: FileTask, first_line_no: int, lines: list[bytes]
    ) -> ColumnOutput:
        """What ``HyperquackProcessor.process_columns`` returns for these lines.

        The cyclic GC is paused during the batch when ``pause_gc`` is set (as
        ``_satfast.c`` does; ``_hqfast.c`` does not).
        """
        if not self.pause_gc or not gc.isenabled():
            return self._process_columns(task, first_line_no, lines)
        gc.disable()
        try:
            return self._process_columns(task, first_line_no, lines)
        finally:
            gc.enable()

    def _process_columns(
        self, task: FileTask, first_line_no: int, lines: list[bytes]
    ) -> ColumnOutput:
        out = BatchOutput()
        stats = out.stats
        digest = file_digest(task.source, task.source_file)
        scan_type = task.scan_type
        outcomes = self.outcomes.get(scan_type)
        if outcomes is None:
            outcomes = self.outcomes[scan_type] = {}
        tuples: list[RowTuple] = []
        n_lines = n_blank = n_empty = n_cert_errors = 0
        cert_errors = [0]
        fast = self._fast
        for offset, raw in enumerate(lines):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                n_blank += 1
                continue
            line_no = first_line_no + offset
            cert_errors[0] = 0
            try:
                rows = fast(raw, line_no, digest, outcomes, scan_type, cert_errors)
            except Exception:  # bad JSON or shape, a surprise: the reference decides
                rows = None
            if rows is None:
                self._slow(task, line_no, raw, out, tuples)
                continue
            n_lines += 1
            n_cert_errors += cert_errors[0]
            if rows:
                tuples.extend(rows)
            else:
                n_empty += 1
        for name, count in (
            ("blank_lines", n_blank),
            ("lines", n_lines),
            ("cert_parse_errors", n_cert_errors),
            ("records_without_roundtrips", n_empty),
        ):
            if count:
                stats[name] += count
        if tuples:  # the reference counted its rows (in tuples too) in stats already
            stats["rows"] = len(tuples)
        return _columns(task, self.rules.version, tuples, out.dead_letters, stats)

    def _slow(
        self, task: FileTask, line_no: int, raw: bytes, out: BatchOutput, tuples: list[RowTuple]
    ) -> None:
        """The reference path for one line; its rows join ``tuples`` in order."""
        self.slow_lines += 1
        rows: list[Row] = []
        self.proc._process_line(task, task.context(), line_no, raw, out, rows)
        tuples.extend(tuple(row.get(name) for name in COLUMNS) for row in rows)


def _columns(
    task: FileTask,
    rules_version: str,
    tuples: list[RowTuple],
    dead_letters: list[Row],
    stats: Counter[str],
) -> ColumnOutput:
    n = len(tuples)
    written = dict(zip(COLUMNS, map(list, zip(*tuples, strict=True)), strict=False))
    values = (task.source, task.source_file, task.pipeline_version, rules_version)
    constant = dict(zip(_CONSTANT, values, strict=True))
    columns: dict[str, list[Any]] = {}
    for name in HYPERQUACK_SCAN.column_names:
        if name in constant:
            columns[name] = [constant[name]] * n
        else:
            columns[name] = written.get(name) or [None] * n
    return ColumnOutput(columns, n, dead_letters, stats)


def output_difference(expected: ColumnOutput, actual: ColumnOutput) -> str | None:
    """The first difference between two batch outputs, or None when they are equal.

    Values are compared as their JSON bytes (``True`` differs from ``1``, ``0`` from
    ``False``); stats are compared without zero counts.
    """
    if expected.n_rows != actual.n_rows:
        return f"n_rows {expected.n_rows} != {actual.n_rows}"
    if list(expected.columns) != list(actual.columns):
        return f"column names {list(expected.columns)} != {list(actual.columns)}"
    for name, column in expected.columns.items():
        other = actual.columns[name]
        if orjson.dumps(column) != orjson.dumps(other):
            at = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(column, other, strict=False))
                    if a != b or type(a) is not type(b)
                ),
                min(len(column), len(other)),
            )
            got = other[at] if at < len(other) else "<missing>"
            want = column[at] if at < len(column) else "<missing>"
            return f"column {name} row {at}: {want!r} != {got!r}"
    if orjson.dumps(expected.dead_letters) != orjson.dumps(actual.dead_letters):
        return f"dead letters differ: {len(expected.dead_letters)} vs {len(actual.dead_letters)}"
    want_stats = {k: v for k, v in expected.stats.items() if v}
    got_stats = {k: v for k, v in actual.stats.items() if v}
    if want_stats != got_stats:
        return f"stats {want_stats} != {got_stats}"
    return None
