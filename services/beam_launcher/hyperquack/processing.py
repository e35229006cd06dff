"""Raw lines → finished Hyperquack rows and dead letters (pure given the resources).

Annotation adds what the flattener cannot know alone: domain category, blockpage /
false-positive signature, certificate fields and the outcome with its rule id.

Example:
    >>> from services.beam_launcher.enrichment.resources import load_resources, SAMPLE_RESOURCES
    >>> proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    >>> task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> out = proc.process_lines(task, 1, [b"not json"])
    >>> out.dead_letters[0]["error_class"], out.stats["dead_letters"]
    ('invalid_json', 1)
"""

from __future__ import annotations

import base64
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pyarrow as pa

from services.beam_launcher import native
from services.beam_launcher.enrichment.resources import Resources
from services.beam_launcher.enrichment.signatures import PageMatch
from services.beam_launcher.hyperquack.certs import (
    CACHE_SIZE,
    decode_certificate_text,
    leaf_certificate,
    parse_certificate,
)
from services.beam_launcher.hyperquack.outcomes import RuleSet, load_hyperquack_rules
from services.beam_launcher.hyperquack.parse import (
    V1_CONTROL_DOMAINS,
    BadRecord,
    FileContext,
    file_digest,
    flatten_record,
)
from services.beam_launcher.warehouse.rows import HYPERQUACK_SCAN
from services.common.gzindex import GzIndex
from services.common.logsetup import get_logger
from services.common.rowschema import BOOLEAN, DATE, INTEGER, REPEATED, STRING, TIMESTAMP, Row
from services.common.scans import parse_scan_name

#: The C extension (None when not built: `python -m services.beam_launcher.native.build`).
_native: Any = native.load()

RAW_LINE_LIMIT = 64 * 1024
T = TypeVar("T")
#: Entries kept in each of the native parser's caches (categories, pages, outcomes).
NATIVE_CACHE_LIMIT = 20_000
_HQ_COLUMNS = HYPERQUACK_SCAN.column_names


def _checked_native(module: Any) -> Any:
    """``module`` if every column it writes is a Hyperquack column, else None (logged).

    The C code names its columns itself; a column renamed in rows.py but not in the C
    code would otherwise leave the renamed column empty and add an unknown one.
    """
    if module is None:
        return None
    unknown = sorted(set(getattr(module, "COLUMNS", ("<no COLUMNS>",))) - set(_HQ_COLUMNS))
    if unknown:
        get_logger("beam_launcher").warning(
            "native_parser_disabled", reason="columns not in the schema", columns=unknown
        )
        return None
    return module


_native = _checked_native(_native)
#: Columns every row of a file holds the same value in, filled by the Python side of the
#: native columnar path (the C code writes them only into row dicts).
_BATCH_CONSTANT_COLUMNS = ("source", "source_file", "pipeline_version", "outcome_rules_version")


def _columnar_entry(module: Any) -> Any:
    """``module.process_batch_columns`` when its COLUMNS can key a batch's columns, else None.

    The lists it returns are named by ``module.COLUMNS`` (checked against the schema by
    :func:`_checked_native`): a name twice, or a batch-constant column among them, would
    drop a column's values, so such a module keeps to the row path (logged).
    """
    entry = getattr(module, "process_batch_columns", None)
    if module is None or entry is None:
        return None
    names = tuple(module.COLUMNS)
    if len(set(names)) != len(names) or set(names) & set(_BATCH_CONSTANT_COLUMNS):
        get_logger("beam_launcher").warning(
            "native_columns_disabled", reason="COLUMNS repeat a name or hold a constant column"
        )
        return None
    return entry


#: The native columnar entry point (None when the module predates it, or is not used).
_native_columns: Any = _columnar_entry(_native)

#: The Arrow type of each kind of buffer ``process_batch_arrow`` writes, and the schema
#: types a column of that kind may have (DATE/TIMESTAMP come as their ISO strings).
_ARROW_KINDS: dict[str, tuple[pa.DataType, frozenset[str]]] = {
    "utf8": (pa.string(), frozenset({STRING, DATE, TIMESTAMP})),
    "int64": (pa.int64(), frozenset({INTEGER})),
    "bool": (pa.bool_(), frozenset({BOOLEAN})),
    "list_utf8": (pa.list_(pa.string()), frozenset({STRING})),  # of REPEATED columns only
}
_LIST_KINDS = frozenset({"list_utf8"})


def _arrow_entry(module: Any) -> Any:
    """``module.process_batch_arrow`` when its COLUMN_KINDS fit the schema, else None.

    Used only together with the columnar entry (:func:`_columnar_entry`). A column whose
    kind does not fit its schema type (a type changed in rows.py but not in the C code)
    or an unknown kind keeps the module to the list columns (logged).
    """
    entry = getattr(module, "process_batch_arrow", None)
    if module is None or entry is None or _columnar_entry(module) is None:
        return None
    kinds = tuple(getattr(module, "COLUMN_KINDS", ()))
    names = tuple(module.COLUMNS)
    bad = sorted(
        name
        for name, kind in zip(names, kinds, strict=False)
        if kind != "list"
        and (
            kind not in _ARROW_KINDS
            or (HYPERQUACK_SCAN.column(name).mode == REPEATED) != (kind in _LIST_KINDS)
            or HYPERQUACK_SCAN.column(name).type not in _ARROW_KINDS[kind][1]
        )
    )
    if len(kinds) != len(names) or bad:
        get_logger("beam_launcher").warning(
            "native_arrow_disabled", reason="COLUMN_KINDS do not fit the schema", columns=bad
        )
        return None
    return entry


#: The native entry point writing Arrow buffers (None when absent or not usable).
_native_arrow: Any = _arrow_entry(_native)


def _wrapped(kind: str, built: tuple[int, int, Any, bytes, Any]) -> pa.Array:
    """The Arrow array over the buffers ``process_batch_arrow`` wrote for one column (no
    copy); its layout is validated (lengths of the buffers, offsets)."""
    n, nulls, validity, values, chars = built
    buffers = [None if validity is None else pa.py_buffer(validity), pa.py_buffer(values)]
    if kind in _LIST_KINDS:  # lists of strings: the items are a string array
        offsets, text = chars
        items = pa.Array.from_buffers(
            pa.string(), len(offsets) // 4 - 1, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
        )
        array = pa.Array.from_buffers(
            _ARROW_KINDS[kind][0], n, buffers, null_count=nulls, children=[items]
        )
    else:
        if chars is not None:
            buffers.append(pa.py_buffer(chars))
        array = pa.Array.from_buffers(_ARROW_KINDS[kind][0], n, buffers, null_count=nulls)
    array.validate()
    return array


def _spliced(array: pa.Array, name: str, inserts: list[tuple[int, list[Row]]]) -> pa.Array:
    """``array`` with the column ``name`` of the rows of each ``(at, rows)`` inserted at
    row position ``at`` (positions ascending, in the array before any insertion)."""
    pieces: list[pa.Array] = []
    start = 0
    for at, rows in inserts:
        if at > start:
            pieces.append(array.slice(start, at - start))
        pieces.append(pa.array([row.get(name) for row in rows], type=array.type))
        start = at
    pieces.append(array.slice(start))
    return pa.concat_arrays(pieces)


@dataclass(frozen=True, slots=True)
class FileTask:
    """One input file to process, with everything needed to stamp provenance."""

    url: str
    source: str
    source_file: str  # basename without .gz
    scan_type: str
    scan_date: str  # YYYY-MM-DD from the scan name
    size: int
    version: str | None
    pipeline_version: str
    # Where its gzip members start and their line counts (services.common.gzindex), when
    # the file has an index and is cut into pieces (hyperquack.pipeline.plan_work).
    gz_index: GzIndex | None = None

    @property
    def file_key(self) -> str:
        return f"{self.source}/{self.source_file}"

    def context(self) -> FileContext:
        return FileContext(self.scan_type, self.source, self.source_file, self.pipeline_version)

    @classmethod
    def for_test(cls, source: str, source_file: str = "results.json") -> FileTask:
        scan = parse_scan_name(source)
        return cls(
            url=f"/{source}/{source_file}",
            source=source,
            source_file=source_file,
            scan_type=scan.scan_type,
            scan_date=scan.date.isoformat(),
            size=0,
            version=None,
            pipeline_version="test",
        )


@dataclass
class BatchOutput:
    rows: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


@dataclass
class ColumnOutput:
    """A batch's rows as columns: every Hyperquack column name → ``n_rows`` values.

    The values are exactly those the row dicts of :meth:`HyperquackProcessor.process_lines`
    hold (JSON-shaped), in the same order; dead letters and stats are the same too.
    ``arrays`` (filled only by ``process_columns(..., arrow=True)`` on the native path)
    holds columns already in Arrow form instead, their names then absent from
    ``columns``: STRING, INTEGER and BOOLEAN ones of their Arrow type, DATE and TIMESTAMP
    ones as the strings (``TableSpec.columns_to_arrow`` takes both kinds of values).
    """

    columns: dict[str, list[Any]]
    n_rows: int
    dead_letters: list[Row] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    arrays: dict[str, pa.Array] = field(default_factory=dict)


def rows_to_columns(rows: list[Row], names: Iterable[str]) -> dict[str, list[Any]]:
    """Transpose row dicts to column lists (a column missing from a row is None).

    >>> rows_to_columns([{"a": 1}, {"a": 2, "b": 3}], ["a", "b"])
    {'a': [1, 2], 'b': [None, 3]}
    """
    return {name: [row.get(name) for row in rows] for name in names}


def dead_letter(
    task: FileTask, line_no: int | None, stage: str, error_class: str, message: str, raw: bytes
) -> Row:
    """A dead_letter row; the raw line is kept (decoded leniently) up to 64 KiB."""
    truncated = len(raw) > RAW_LINE_LIMIT
    return {
        "date": task.scan_date,
        "scan_type": task.scan_type,
        "source": task.source,
        "source_file": task.source_file,
        "source_line": line_no,
        "stage": stage,
        "error_class": error_class,
        "message": message[:2000],
        "raw_line": raw[:RAW_LINE_LIMIT].decode("utf-8", errors="replace"),
        "raw_line_truncated": truncated,
        "pipeline_version": task.pipeline_version,
    }


# Per-file stats carry, next to their counts, the first few dead-letter messages of each
# class (by line number) under this key, so a rejection can quote what was wrong.
SAMPLES_KEY = "dead_letter_samples"
SAMPLES_PER_CLASS = 3
SAMPLE_CHARS = 200
Samples = dict[str, list[tuple[int, str]]]


def dead_letter_samples(dead: Iterable[Row]) -> Samples:
    """The first :data:`SAMPLES_PER_CLASS` (line, message) of each dead-letter class.

    >>> dead_letter_samples([{"error_class": "x", "source_line": 2, "message": "bad"}])
    {'x': [(2, 'bad')]}
    """
    out: Samples = {}
    for row in dead:
        line = row.get("source_line")
        out.setdefault(str(row["error_class"]), []).append(
            (int(line) if line is not None else 0, str(row["message"])[:SAMPLE_CHARS])
        )
    return merge_samples({}, out)


def merge_samples(a: Mapping[str, Iterable[Any]], b: Mapping[str, Iterable[Any]]) -> Samples:
    """Union of two sample sets, each class kept to its first lines (order-independent).

    >>> merge_samples({"x": [(5, "e"), (9, "f")]}, {"x": [[1, "a"], [7, "b"], [8, "c"]]})
    {'x': [(1, 'a'), (5, 'e'), (7, 'b')]}
    """
    out: Samples = {}
    for cls in sorted({*a, *b}):
        both = {(int(n), str(m)) for n, m in [*a.get(cls, ()), *b.get(cls, ())]}
        out[cls] = sorted(both)[:SAMPLES_PER_CLASS]
    return out


def parse_line(
    task: FileTask,
    line_no: int,
    raw: bytes,
    stats: MutableMapping[str, int],
    dead: list[Row],
    handle: Callable[[Any, bytes], T],
    record: Any = None,
) -> T | None:
    """The guarded handling of one raw line, shared by every parser of the launcher.

    Strips the line end; counts ``blank_lines`` or ``lines``; decodes the line (unless
    ``record`` is given, decoded already) and returns ``handle(record, stripped raw)``. A
    :class:`BadRecord` becomes a dead letter of its class, any other exception one of
    class ``internal_error`` (a parser bug never stops the run); both return None.

    >>> stats, dead = {}, []
    >>> task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> parse_line(task, 1, b"[1]", stats, dead, lambda rec, raw: rec)
    [1]
    >>> parse_line(task, 2, b"{", stats, dead, lambda rec, raw: rec), stats["lines"]
    (None, 2)
    >>> dead[0]["error_class"], stats["dead_letters.invalid_json"]
    ('invalid_json', 1)
    """
    raw = raw.rstrip(b"\r\n")
    if not raw.strip():
        stats["blank_lines"] = stats.get("blank_lines", 0) + 1
        return None
    stats["lines"] = stats.get("lines", 0) + 1
    try:
        if record is None:
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRecord("invalid_json", f"invalid JSON: {exc}") from None
        return handle(record, raw)
    except BadRecord as bad:
        error_class, message = bad.error_class, bad.message
    except Exception as exc:  # a parser bug must not kill the run: dead-letter it
        error_class, message = "internal_error", f"{type(exc).__name__}: {exc}"
    stats["dead_letters"] = stats.get("dead_letters", 0) + 1
    key = f"dead_letters.{error_class}"
    stats[key] = stats.get(key, 0) + 1
    dead.append(dead_letter(task, line_no, "parse", error_class, message, raw))
    return None


def page_text(row: Row) -> str | None:
    """The text signatures are matched against (the seed's reconstruction).

    HTTP(S): status line, CRLF, each header + CRLF, CRLF, body. Echo/discard: the payload.
    """
    status = row.get("received_status")
    headers = row.get("received_headers")
    body = row.get("received_body")
    if headers is None and body is None:
        return status
    parts = [status or "", "\r\n"]
    for h in headers or ():
        parts.append(h)
        parts.append("\r\n")
    parts.append("\r\n")
    parts.append(body or "")
    return "".join(parts)


@functools.lru_cache(maxsize=CACHE_SIZE)  # rows share certificates: ~5 µs saved per row
def _canonical_b64(value: str) -> str | None:
    """Standard base64 of the DER the certificate text decodes to (None if it does not)."""
    der = decode_certificate_text(value)
    return None if der is None else base64.b64encode(der).decode("ascii")


#: ``(received_tls_cert, parsed, common name, issuer, alternative names, matches domain)``;
#: when ``parsed`` is False only ``received_tls_cert`` is set and the row counts as a
#: certificate parse error.
CertColumns = tuple[str | None, bool, str | None, str | None, tuple[str, ...], bool | None]


def cert_columns(cert_raw: object, domain: str) -> CertColumns | None:
    """Certificate column values for a raw certificate field; None when it holds no leaf.

    The one implementation used by :meth:`HyperquackProcessor.annotate` and by the native
    parser. Memoised per (leaf certificate, domain): many rows share a certificate.
    """
    leaf = leaf_certificate(cert_raw)
    if not leaf:
        return None
    return _leaf_cert_columns(leaf, domain)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _leaf_cert_columns(leaf: str, domain: str) -> CertColumns:
    info = parse_certificate(leaf, domain)
    b64 = _canonical_b64(leaf)
    if info is None:
        return (b64, False, None, None, (), None)
    return (b64, True, info.common_name, info.issuer, info.alternative_names, info.matches_domain)


def _native_output(counts: tuple[int, int, int, int, int, int]) -> BatchOutput:
    """A batch output holding the native parser's counts as stats (no rows yet).

    ``counts`` = (lines, rows, blank lines, lines with rows, records without roundtrips,
    certificate parse errors), as both native entry points return them.
    """
    n_lines, n_rows, n_blank, n_ok, n_empty, n_cert_errors = counts
    out = BatchOutput()
    stats = out.stats
    if n_blank:
        stats["blank_lines"] += n_blank
    if n_lines:
        stats["lines"] += n_lines
    if n_cert_errors:
        stats["cert_parse_errors"] += n_cert_errors
    if n_empty:
        stats["records_without_roundtrips"] += n_empty
    if n_ok:
        stats["rows"] += n_rows
    return out


class HyperquackProcessor:
    """Turns batches of raw lines into rows; one instance per worker (holds resources)."""

    def __init__(
        self, resources: Resources, rules: RuleSet | None = None, *, use_native: bool = True
    ) -> None:
        self.resources = resources
        self.rules = rules or load_hyperquack_rules()
        self._template = dict.fromkeys(_HQ_COLUMNS)
        #: Whether batches go through the native parser (``services.beam_launcher.native``).
        self.native = (
            use_native and _native is not None and native.enabled() and self.rules.features_exact
        )
        self._native_ctx: tuple[Any, ...] | None = None
        #: Lines the native parser handed back to the Python path (unusual shapes, errors).
        self.native_slow_lines = 0
        self._outcome_caches: dict[str, dict[Any, tuple[str, str]]] = {}
        # The native parser's memo caches (bounded by NATIVE_CACHE_LIMIT in the C code).
        self._category_cache: dict[str, Any] = {}  # domain -> category (test domains)
        self._control_category_cache: dict[str, Any] = {}  # same, control domains
        self._page_cache: dict[Any, Any] = {}  # page text -> (blockpage?, signature) | None
        if self.native:
            matcher = self.resources.matcher

            def page_match(text: str) -> tuple[bool, str] | None:
                match = matcher.match(text)
                return None if match is None else (match.is_known_blockpage, match.signature.id)

            self._native_ctx = (
                orjson.loads,
                self._template,
                V1_CONTROL_DOMAINS,
                self.resources.categories.category,
                self._category_cache,
                self._control_category_cache,
                self._page_cache,
                page_match,
                cert_columns,
                self.rules.classify_features,
                self.rules.trusted_headers,
                self.rules.version,
                NATIVE_CACHE_LIMIT,
            )

    def clear_caches(self) -> None:
        """Empty every memo of this processor and the certificate caches (cold benchmarks)."""
        for cache in (
            self._category_cache,
            self._control_category_cache,
            self._page_cache,
            *self._outcome_caches.values(),
        ):
            cache.clear()
        _leaf_cert_columns.cache_clear()
        _canonical_b64.cache_clear()

    def annotate(
        self,
        row: Row,
        scan_type: str,
        stats: Counter[str],
        pages: dict[str, PageMatch | None] | None = None,
    ) -> Row:
        """Complete one flattened row; ``pages`` memoises signature matches (one record)."""
        full = self._template.copy()
        cert_raw = row.pop("_cert", None)
        full.update(row)
        domain = full["domain"] or ""
        full["domain_category"] = self.resources.categories.category(
            domain, bool(full["domain_is_control"])
        )
        if full["no_response_in_measurement_matches_template"]:
            text = page_text(full)
            if text:
                if pages is None:
                    match = self.resources.matcher.match(text)
                elif text in pages:
                    match = pages[text]
                else:
                    match = pages[text] = self.resources.matcher.match(text)
                if match is not None:
                    full["is_known_blockpage"] = match.is_known_blockpage
                    full["page_signature"] = match.signature.id
        if cert_raw:
            cert = cert_columns(cert_raw, domain)
            if cert is not None:
                b64, parsed, common_name, issuer, alternative_names, matches = cert
                full["received_tls_cert"] = b64
                if not parsed:
                    stats["cert_parse_errors"] += 1
                else:
                    full["received_tls_cert_common_name"] = common_name
                    full["received_tls_cert_issuer"] = issuer
                    full["received_tls_cert_alternative_names"] = list(alternative_names)
                    full["received_tls_cert_matches_domain"] = matches
        outcome, rule_id = self.rules.classify(full, scan_type)
        full["outcome"] = outcome
        full["outcome_rule_id"] = rule_id
        full["outcome_rules_version"] = self.rules.version
        return full

    def process_lines(self, task: FileTask, first_line_no: int, lines: list[bytes]) -> BatchOutput:
        """Process consecutive lines starting at 1-based ``first_line_no``."""
        if self._native_ctx is not None:
            try:
                return self._process_native(task, first_line_no, lines)
            except Exception:  # a native bug must not lose rows: redo the batch in Python
                out = self._process_python(task, first_line_no, lines)
                out.stats["native_fallback_batches"] += 1
                return out
        return self._process_python(task, first_line_no, lines)

    def process_columns(
        self, task: FileTask, first_line_no: int, lines: list[bytes], arrow: bool = False
    ) -> ColumnOutput:
        """:meth:`process_lines`, with the rows returned as columns (:class:`ColumnOutput`).

        The native parser writes the columns itself (no row dicts); without it, the rows of
        the Python path are transposed. A native error redoes the batch in Python, counted
        as ``native_fallback_batches``, as :meth:`process_lines` does. With ``arrow`` (and
        the native parser), the simple columns come as Arrow arrays in ``arrays``.
        """
        if self._native_ctx is not None and _native_columns is not None:
            try:
                return self._process_native_columns(task, first_line_no, lines, arrow)
            except Exception:  # a native bug must not lose rows: redo the batch in Python
                out = self._process_python(task, first_line_no, lines)
                out.stats["native_fallback_batches"] += 1
                return _transposed(out)
        return _transposed(self.process_lines(task, first_line_no, lines))

    def _process_python(
        self, task: FileTask, first_line_no: int, lines: list[bytes]
    ) -> BatchOutput:
        """The pure-Python path (the reference the native parser must equal)."""
        out = BatchOutput()
        ctx = task.context()
        for offset, raw in enumerate(lines):
            self._process_line(task, ctx, first_line_no + offset, raw, out, out.rows)
        return out

    def _process_line(
        self,
        task: FileTask,
        ctx: FileContext,
        line_no: int,
        raw: bytes,
        out: BatchOutput,
        rows_out: list[Row],
    ) -> None:
        """One raw line → rows appended to ``rows_out`` or a dead letter in ``out``."""
        stats = out.stats

        def rows_of(record: Any, raw: bytes) -> list[Row]:
            flat = flatten_record(record, line_no, raw, ctx)
            # Retries of one measurement often get the very same page: match it once.
            pages: dict[str, PageMatch | None] = {}
            return [self.annotate(r, task.scan_type, stats, pages) for r in flat]

        rows = parse_line(task, line_no, raw, stats, out.dead_letters, rows_of)
        if rows is None:
            return
        if not rows:
            stats["records_without_roundtrips"] += 1
        stats["rows"] += len(rows)
        rows_out.extend(rows)

    # --- native parser (services/beam_launcher/native) ------------------------------------

    def _native_context(self, task: FileTask) -> tuple[Any, ...]:
        """The per-batch argument of ``_hqfast.process_batch`` (see _hqfast.c)."""
        assert self._native_ctx is not None
        outcome_cache = self._outcome_caches.get(task.scan_type)
        if outcome_cache is None:
            outcome_cache = self._outcome_caches[task.scan_type] = {}
        return (
            *self._native_ctx,
            outcome_cache,
            task.scan_type,
            file_digest(task.source, task.source_file),
            task.source,
            task.source_file,
            task.pipeline_version,
        )

    def _process_native(
        self, task: FileTask, first_line_no: int, lines: list[bytes]
    ) -> BatchOutput:
        assert _native is not None
        rows, slow, counts = _native.process_batch(lines, first_line_no, self._native_context(task))
        out = _native_output(counts)
        if slow:  # placeholders (None) mark where the slow lines' rows belong
            ctx = task.context()
            spliced: list[Row] = []
            pending = iter(slow)
            for row in rows:
                if row is None:
                    index = next(pending)
                    self._process_line(task, ctx, first_line_no + index, lines[index], out, spliced)
                else:
                    spliced.append(row)
            rows = spliced
            self.native_slow_lines += len(slow)
        out.rows = rows
        return out

    def _process_native_columns(
        self, task: FileTask, first_line_no: int, lines: list[bytes], arrow: bool = False
    ) -> ColumnOutput:
        """The native columnar path: ``_hqfast.process_batch_columns`` (or, with ``arrow``,
        ``process_batch_arrow``) + the slow lines."""
        assert _native_columns is not None
        entry = _native_arrow if arrow and _native_arrow is not None else _native_columns
        written, slow, slow_at, counts = entry(lines, first_line_no, self._native_context(task))
        kinds = _native.COLUMN_KINDS if entry is _native_arrow else ("list",) * len(written)
        arrays = {
            name: _wrapped(kind, built)
            for name, kind, built in zip(_native.COLUMNS, kinds, written, strict=True)
            if kind != "list"
        }
        out = _native_output(counts)  # stats and dead letters (rows go to columns)
        n_rows = counts[1]
        if slow:  # the reference's rows for these lines go in at their row positions
            ctx = task.context()
            spliced: list[tuple[int, list[Row]]] = []
            for index, at in zip(slow, slow_at, strict=True):
                rows: list[Row] = []
                self._process_line(task, ctx, first_line_no + index, lines[index], out, rows)
                if rows:
                    spliced.append((at, rows))
            for at, rows in reversed(spliced):  # from the end: earlier positions stay valid
                for name, column in zip(_native.COLUMNS, written, strict=True):
                    if name not in arrays:
                        column[at:at] = [row.get(name) for row in rows]
                n_rows += len(rows)
            if spliced:
                for name, array in arrays.items():
                    arrays[name] = _spliced(array, name, spliced)
            self.native_slow_lines += len(slow)
        columns = {
            name: column
            for name, column in zip(_native.COLUMNS, written, strict=True)
            if name not in arrays
        }
        constant = dict(
            zip(
                _BATCH_CONSTANT_COLUMNS,
                (task.source, task.source_file, task.pipeline_version, self.rules.version),
                strict=True,
            )
        )
        # Column order of the schema; provenance is the same on every row of a file, and
        # the columns the parser does not write (enrichment) are None until enriched.
        return ColumnOutput(
            {
                name: columns[name]
                if name in columns
                else [constant[name]] * n_rows
                if name in constant
                else [None] * n_rows
                for name in _HQ_COLUMNS
                if name not in arrays
            },
            n_rows,
            out.dead_letters,
            out.stats,
            arrays,
        )


def _transposed(out: BatchOutput) -> ColumnOutput:
    """A row batch as a :class:`ColumnOutput` (the reference columnar form)."""
    return ColumnOutput(
        rows_to_columns(out.rows, _HQ_COLUMNS), len(out.rows), out.dead_letters, out.stats
    )
