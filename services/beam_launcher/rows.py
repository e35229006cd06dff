"""Row definitions of every table the launcher writes (the schema source of truth).

Example:
    >>> HYPERQUACK_TABLES["echo"].name
    'echo_scan'
    >>> "outcome_rule_id" in HYPERQUACK_SCAN.column_names
    True
"""

from __future__ import annotations

from services.common.rowschema import (
    BOOLEAN,
    BYTES,
    DATE,
    INTEGER,
    REPEATED,
    REQUIRED,
    STRING,
    TIMESTAMP,
    Column,
    TableSpec,
)

HYPERQUACK_SCAN_TYPES = ("echo", "discard", "http", "https")

PROVENANCE_COLUMNS = (
    Column(
        "source", STRING, "Scan (archive) name, e.g. CP_Quack-echo-2021-05-30-01-01-01", REQUIRED
    ),
    Column("source_file", STRING, "Input file name inside the scan, without .gz", REQUIRED),
    Column("source_line", INTEGER, "1-based line number of the record in source_file", REQUIRED),
    Column("pipeline_version", STRING, "Version of the pipeline that wrote the row", REQUIRED),
)

_HQ_COLUMNS = (
    Column("domain", STRING, "Tested domain or URL (the control domain for control probes)"),
    Column("domain_category", STRING, "Category of the domain; 'Control' for control probes"),
    Column("domain_is_control", BOOLEAN, "True for control probes"),
    Column("date", DATE, "Date of the roundtrip start, in the prober's local time (as the seed)"),
    Column("start_time", TIMESTAMP, "Roundtrip start time"),
    Column("end_time", TIMESTAMP, "Roundtrip end time"),
    Column(
        "retry", INTEGER, "0-based index among the measurement's test probes; NULL for controls"
    ),
    Column("server_ip", STRING, "IP of the measured server (vantage point)"),
    Column("server_netblock", STRING, "Routed prefix containing server_ip"),
    Column("server_asn", INTEGER, "Autonomous system number of server_ip"),
    Column("server_as_name", STRING, "AS short name"),
    Column("server_as_full_name", STRING, "AS organisation name"),
    Column("server_as_class", STRING, "AS class: Transit/Access, Content or Enterprise"),
    Column("server_country", STRING, "ISO 3166-1 alpha-2 country of the AS organisation"),
    Column("server_organization", STRING, "Organisation owning server_ip (MMDB), when it agrees"),
    Column("received_error", STRING, "Error string reported by the probe (all errors, ';'-joined)"),
    Column("received_tls_version", INTEGER, "TLS version number (771 = TLS 1.2)"),
    Column("received_tls_cipher_suite", INTEGER, "TLS cipher suite number"),
    Column("received_tls_cert", BYTES, "DER of the leaf certificate received"),
    Column("received_tls_cert_matches_domain", BOOLEAN, "Leaf certificate is valid for domain"),
    Column("received_tls_cert_common_name", STRING, "Subject common name of the leaf cert"),
    Column("received_tls_cert_issuer", STRING, "Issuer common name of the leaf cert"),
    Column(
        "received_tls_cert_alternative_names",
        STRING,
        "Subject alternative names (DNS, then IP) of the leaf cert",
        REPEATED,
    ),
    Column("received_status", STRING, "HTTP status line, or the raw payload for echo/discard"),
    Column("received_headers", STRING, "Response headers as 'Name: value'", REPEATED),
    Column("received_body", STRING, "Response body (at most 64 KiB as captured)"),
    Column("is_known_blockpage", BOOLEAN, "True: blockpage signature; False: false positive"),
    Column(
        "page_signature",
        STRING,
        "Id of the signature that matched the received page (name~N for the Nth pattern "
        "of a repeated fingerprint)",
    ),
    Column("outcome", STRING, "Outcome class 'stage/outcome[:detail]'"),
    Column("outcome_rule_id", STRING, "Id of the outcome rule that fired"),
    Column("outcome_rules_version", STRING, "Version of the outcome rule set"),
    Column("matches_template", BOOLEAN, "The roundtrip's response matched the expected template"),
    Column(
        "no_response_in_measurement_matches_template",
        BOOLEAN,
        "Measurement-level anomaly: no test probe matched the template",
    ),
    Column("controls_failed", BOOLEAN, "All control probes failed: vantage point unusable"),
    Column("stateful_block", BOOLEAN, "A first control failed after the tests, a later one passed"),
    Column("measurement_id", STRING, "Deterministic id of the measurement (raw line)", REQUIRED),
)

HYPERQUACK_SCAN = TableSpec(
    name="hyperquack_scan",
    columns=_HQ_COLUMNS + PROVENANCE_COLUMNS,
    description="One row per Hyperquack roundtrip.",
    partition_field="date",
    clustering=("server_country", "server_asn"),
)

HYPERQUACK_TABLES: dict[str, TableSpec] = {
    t: TableSpec(
        name=f"{t}_scan",
        columns=HYPERQUACK_SCAN.columns,
        description=f"One row per Hyperquack {t} roundtrip.",
        partition_field="date",
        clustering=("server_country", "server_asn"),
    )
    for t in HYPERQUACK_SCAN_TYPES
}

DEAD_LETTER = TableSpec(
    name="dead_letter",
    columns=(
        Column("date", DATE, "Date of the scan, from its name", REQUIRED),
        Column("scan_type", STRING, "Scan type of the input file"),
        Column("source", STRING, "Scan (archive) name", REQUIRED),
        Column("source_file", STRING, "Input file name, without .gz", REQUIRED),
        Column("source_line", INTEGER, "1-based line number"),
        Column("stage", STRING, "Stage that rejected the input (read, parse, ...)", REQUIRED),
        Column("error_class", STRING, "Stable error class, e.g. invalid_json", REQUIRED),
        Column("message", STRING, "Human-readable reason", REQUIRED),
        Column("raw_line", STRING, "The raw line, truncated to 64 KiB"),
        Column("raw_line_truncated", BOOLEAN, "raw_line was truncated"),
        Column("pipeline_version", STRING, "Pipeline version", REQUIRED),
    ),
    description="Input that could not become rows, with the reason.",
    partition_field="date",
)

PROCESSED_FILES = TableSpec(
    name="processed_files",
    columns=(
        Column("file_key", STRING, "Stable file id '<source>/<source_file>'", REQUIRED),
        Column("scan_type", STRING, "Scan type", REQUIRED),
        Column("source", STRING, "Scan (archive) name", REQUIRED),
        Column("path", STRING, "Location the file was read from", REQUIRED),
        Column("size_bytes", INTEGER, "Size of the file as read", REQUIRED),
        Column("version", STRING, "Content version: GCS generation/md5 or local size+mtime"),
        Column("pipeline_version", STRING, "Pipeline version", REQUIRED),
        Column("status", STRING, "ok, or rejected (too many bad lines)", REQUIRED),
        Column("lines", INTEGER, "Non-empty lines read", REQUIRED),
        Column("rows_written", INTEGER, "Base-table rows written", REQUIRED),
        Column("dead_letters", INTEGER, "Lines sent to dead_letter", REQUIRED),
        Column("cert_parse_errors", INTEGER, "Certificates that could not be parsed", REQUIRED),
        Column("run_id", STRING, "Run that processed the file", REQUIRED),
        Column("processed_at", TIMESTAMP, "When the run committed the file", REQUIRED),
    ),
    description="Ledger: one row per input file and processing run outcome (latest wins).",
)

ALL_TABLES: tuple[TableSpec, ...] = (*HYPERQUACK_TABLES.values(), DEAD_LETTER, PROCESSED_FILES)
