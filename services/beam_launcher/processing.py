"""Raw lines → finished Hyperquack rows and dead letters (pure given the resources).

Annotation adds what the flattener cannot know alone: domain category, blockpage /
false-positive signature, certificate fields and the outcome with its rule id.

Example:
    >>> from services.beam_launcher.resources import load_resources, SAMPLE_RESOURCES
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
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.beam_launcher.certs import (
    CACHE_SIZE,
    decode_certificate_text,
    leaf_certificate,
    parse_certificate,
)
from services.beam_launcher.hyperquack import BadRecord, FileContext, flatten_record
from services.beam_launcher.outcomes import RuleSet, load_hyperquack_rules
from services.beam_launcher.resources import Resources
from services.beam_launcher.rows import HYPERQUACK_SCAN
from services.beam_launcher.signatures import PageMatch
from services.common.rowschema import Row
from services.common.scans import parse_scan_name

RAW_LINE_LIMIT = 64 * 1024
_HQ_COLUMNS = HYPERQUACK_SCAN.column_names


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


class HyperquackProcessor:
    """Turns batches of raw lines into rows; one instance per worker (holds resources)."""

    def __init__(self, resources: Resources, rules: RuleSet | None = None) -> None:
        self.resources = resources
        self.rules = rules or load_hyperquack_rules()
        self._template = dict.fromkeys(_HQ_COLUMNS)

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
            leaf = leaf_certificate(cert_raw)
            if leaf:
                info = parse_certificate(leaf, domain)
                full["received_tls_cert"] = _canonical_b64(leaf)
                if info is None:
                    stats["cert_parse_errors"] += 1
                else:
                    full["received_tls_cert_common_name"] = info.common_name
                    full["received_tls_cert_issuer"] = info.issuer
                    full["received_tls_cert_alternative_names"] = list(info.alternative_names)
                    full["received_tls_cert_matches_domain"] = info.matches_domain
        outcome, rule_id = self.rules.classify(full, scan_type)
        full["outcome"] = outcome
        full["outcome_rule_id"] = rule_id
        full["outcome_rules_version"] = self.rules.version
        return full

    def process_lines(self, task: FileTask, first_line_no: int, lines: list[bytes]) -> BatchOutput:
        """Process consecutive lines starting at 1-based ``first_line_no``."""
        out = BatchOutput()
        stats = out.stats
        ctx = task.context()
        scan_type = task.scan_type
        for offset, raw in enumerate(lines):
            line_no = first_line_no + offset
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                stats["blank_lines"] += 1
                continue
            stats["lines"] += 1
            try:
                try:
                    record: Any = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise BadRecord("invalid_json", f"invalid JSON: {exc}") from None
                flat = flatten_record(record, line_no, raw, ctx)
                # Retries of one measurement often get the very same page: match it once.
                pages: dict[str, PageMatch | None] = {}
                rows = [self.annotate(r, scan_type, stats, pages) for r in flat]
            except BadRecord as bad:
                stats["dead_letters"] += 1
                stats[f"dead_letters.{bad.error_class}"] += 1
                out.dead_letters.append(
                    dead_letter(task, line_no, "parse", bad.error_class, bad.message, raw)
                )
                continue
            except Exception as exc:  # a parser bug must not kill the run: dead-letter it
                stats["dead_letters"] += 1
                stats["dead_letters.internal_error"] += 1
                out.dead_letters.append(
                    dead_letter(
                        task,
                        line_no,
                        "parse",
                        "internal_error",
                        f"{type(exc).__name__}: {exc}",
                        raw,
                    )
                )
                continue
            if not rows:
                stats["records_without_roundtrips"] += 1
            stats["rows"] += len(rows)
            out.rows.extend(rows)
        return out
