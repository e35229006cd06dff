"""Row definitions of every table the launcher writes (the schema source of truth).

Example:
    >>> HYPERQUACK_TABLES["echo"].name
    'echo_scan'
    >>> "outcome_rule_id" in HYPERQUACK_SCAN.column_names
    True
"""

from __future__ import annotations

import os

from services.common.rowschema import (
    BOOLEAN,
    BYTES,
    DATE,
    FLOAT,
    INTEGER,
    RECORD,
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
    Column(
        "ip_metadata_sources",
        STRING,
        "Reference files the IP metadata came from (routeviews, as2org, as2types)",
        REPEATED,
    ),
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
    Column(
        "measurement_id",
        STRING,
        "Deterministic id of the measurement (file digest + line number)",
        REQUIRED,
    ),
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

_MATCHES_CONTROL = (
    Column("ip", BOOLEAN, "The answer IP was also returned by a control resolver"),
    Column("censys_http_body_hash", BOOLEAN, "HTTP body hash tag matched a control answer"),
    Column("censys_ip_cert", BOOLEAN, "Certificate hash tag matched a control answer"),
    Column("asn", BOOLEAN, "ASN tag matched a control answer"),
    Column("as_name", BOOLEAN, "AS name tag matched a control answer"),
)

_ANSWER_FIELDS = (
    Column("ip", STRING, "Answer IP address"),
    Column("asn", INTEGER, "ASN of the answer IP"),
    Column("as_name", STRING, "AS name of the answer IP"),
    Column("ip_organization", STRING, "Organisation of the answer IP"),
    Column("censys_http_body_hash", STRING, "Tag: hash of the HTTP body served by the IP"),
    Column("censys_ip_cert", STRING, "Tag: hash of the certificate served by the IP"),
    Column(
        "matches_control", RECORD, "Which tags matched control answers", fields=_MATCHES_CONTROL
    ),
    Column("match_confidence", FLOAT, "Percent of this answer's available tags that matched"),
    Column("http_error", STRING, "Error of the HTTP fetch of the answer IP"),
    Column("http_response_status", STRING, "HTTP status line"),
    Column("http_response_headers", STRING, "HTTP headers 'Name: value'", REPEATED),
    Column("http_response_body", STRING, "HTTP body (NULL when bodies are not kept)"),
    Column(
        "http_analysis_is_known_blockpage", BOOLEAN, "HTTP page matched a blockpage (true) or FP"
    ),
    Column("http_analysis_page_signature", STRING, "Signature id matched by the HTTP page"),
    Column("https_error", STRING, "Error of the HTTPS fetch of the answer IP"),
    Column("https_tls_version", INTEGER, "TLS version number"),
    Column("https_tls_cipher_suite", INTEGER, "TLS cipher suite number"),
    Column("https_tls_cert", BYTES, "DER of the leaf certificate"),
    Column("https_tls_cert_common_name", STRING, "Subject common name"),
    Column("https_tls_cert_issuer", STRING, "Issuer common name"),
    Column("https_tls_cert_start_date", TIMESTAMP, "Certificate not-before"),
    Column("https_tls_cert_end_date", TIMESTAMP, "Certificate not-after"),
    Column("https_tls_cert_alternative_names", STRING, "Subject alternative names", REPEATED),
    Column("https_tls_cert_has_trusted_ca", BOOLEAN, "Certificate chains to a trusted root (raw)"),
    Column("https_tls_cert_matches_domain", BOOLEAN, "Certificate is valid for the domain"),
    Column("https_response_status", STRING, "HTTPS status line"),
    Column("https_response_headers", STRING, "HTTPS headers 'Name: value'", REPEATED),
    Column("https_response_body", STRING, "HTTPS body (NULL when bodies are not kept)"),
    Column("https_analysis_is_known_blockpage", BOOLEAN, "HTTPS page matched a blockpage or FP"),
    Column("https_analysis_page_signature", STRING, "Signature id matched by the HTTPS page"),
)

SATELLITE_SCAN = TableSpec(
    name="satellite_scan",
    columns=(
        Column("domain", STRING, "Queried domain"),
        Column("domain_category", STRING, "Category of the domain; 'Control' for control domains"),
        Column("domain_is_control", BOOLEAN, "The query is a control (liveness) domain"),
        Column("date", DATE, "Date of the query (local date of start_time; v1: scan date)"),
        Column("start_time", TIMESTAMP, "Query start time (NULL for v1)"),
        Column("end_time", TIMESTAMP, "Query end time (NULL for v1)"),
        Column("retry", INTEGER, "0-based attempt among test queries; NULL for control queries"),
        Column("resolver_ip", STRING, "IP of the open resolver queried"),
        Column(
            "resolver_name", STRING, "PTR name of the resolver ('control'/'special' predefined)"
        ),
        Column("resolver_is_trusted", BOOLEAN, "The resolver is a trusted control resolver"),
        Column("resolver_netblock", STRING, "Routed prefix of the resolver"),
        Column("resolver_asn", INTEGER, "ASN of the resolver"),
        Column("resolver_as_name", STRING, "AS short name"),
        Column("resolver_as_full_name", STRING, "AS organisation name"),
        Column("resolver_as_class", STRING, "AS class"),
        Column("resolver_country", STRING, "ISO 3166-1 alpha-2 country of the resolver"),
        Column("resolver_organization", STRING, "Organisation of the resolver IP"),
        Column(
            "ip_metadata_sources",
            STRING,
            "Reference files the resolver/answer IP metadata came from",
            REPEATED,
        ),
        Column(
            "resolver_non_zero_rcode_rate", FLOAT, "Share of the resolver's queries with rcode != 0"
        ),
        Column("resolver_private_ip_rate", FLOAT, "Share of answers that were private IPs"),
        Column("resolver_zero_ip_rate", FLOAT, "Share of answers that were 0.0.0.0"),
        Column("resolver_connect_error_rate", FLOAT, "Share of queries with connection errors"),
        Column("resolver_invalid_cert_rate", FLOAT, "Share of answers with invalid certificates"),
        Column(
            "received_error",
            STRING,
            "Error of the query; NULL when none, or when a v2.1 rcode -1 attempt has no "
            "recorded error text (see notes)",
        ),
        Column(
            "received_rcode",
            INTEGER,
            "DNS rcode; -1 = no DNS response (connection error); v1 has no rcode: 0, or -1 "
            "when the record has an error",
        ),
        Column(
            "answers", RECORD, "Answer IPs with tags and page fetches", REPEATED, _ANSWER_FIELDS
        ),
        Column(
            "success",
            BOOLEAN,
            "This query got a DNS response with rcode 0, in every format (v1: no error); "
            "not the measurement's result (see notes)",
        ),
        Column("anomaly", BOOLEAN, "Answers did not match the control answers"),
        Column(
            "domain_controls_failed",
            BOOLEAN,
            "The measurement's liveness/control queries failed (v2.1: not passed_control, "
            "v2.2: not passed_liveness); NULL for v1, which has none",
        ),
        Column("average_confidence", FLOAT, "Mean match_confidence of the answers"),
        Column("untagged_controls", BOOLEAN, "No control answer had tags"),
        Column("untagged_response", BOOLEAN, "No answer had tags"),
        Column("excluded", BOOLEAN, "Not to be counted as an anomaly"),
        Column("exclude_reason", STRING, "Why excluded (space-separated reasons)"),
        Column("has_type_a", BOOLEAN, "The answer had an A record"),
        Column("outcome", STRING, "DNS outcome class 'stage.outcome[:detail]'"),
        Column("outcome_rule_id", STRING, "Id of the outcome rule that fired"),
        Column("outcome_rules_version", STRING, "Version of the outcome rule set"),
        Column("measurement_id", STRING, "Deterministic id of the measurement", REQUIRED),
        *PROVENANCE_COLUMNS,
    ),
    description="One row per Satellite DNS query (roundtrip), answers nested.",
    partition_field="date",
    clustering=("resolver_country", "resolver_asn"),
)

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
        Column(
            "status", STRING, "ok, rejected (unreadable / too many bad lines) or skipped", REQUIRED
        ),
        Column(
            "reason",
            STRING,
            "Why the file was rejected or skipped; on an ok row NULL, or 'empty: the file "
            "holds no lines' for a readable file without a line (logged as a warning)",
        ),
        Column("lines", INTEGER, "Non-empty lines read", REQUIRED),
        Column("rows_written", INTEGER, "Base-table rows written", REQUIRED),
        Column("dead_letters", INTEGER, "Lines sent to dead_letter", REQUIRED),
        Column("cert_parse_errors", INTEGER, "Certificates that could not be parsed", REQUIRED),
        Column("run_id", STRING, "Run that processed the file", REQUIRED),
        Column("processed_at", TIMESTAMP, "When the run committed the file", REQUIRED),
    ),
    description="Ledger: one row per input file and processing run outcome (latest wins).",
)


def _older_hyperquack_tables(spec: str) -> None:
    """Tests only (``$CP_TEST_OLDER_SCHEMA``, e.g. ``echo_scan.outcome_rule_id``): write
    these Hyperquack tables without the named columns, as an older version of the code
    would (the rows are computed as usual; the writers leave the columns out)."""
    for item in filter(None, (x.strip() for x in spec.split(","))):
        table, _, column = item.partition(".")
        for t, s in HYPERQUACK_TABLES.items():
            if s.name == table:
                if column not in s.column_names:
                    raise ValueError(f"CP_TEST_OLDER_SCHEMA: {item}: no such column")
                cols = tuple(c for c in s.columns if c.name != column)
                HYPERQUACK_TABLES[t] = TableSpec(
                    s.name, cols, s.description, s.partition_field, s.clustering
                )


if os.environ.get("CP_TEST_OLDER_SCHEMA"):
    _older_hyperquack_tables(os.environ["CP_TEST_OLDER_SCHEMA"])

SCAN_TABLES: dict[str, TableSpec] = {**HYPERQUACK_TABLES, "satellite": SATELLITE_SCAN}
ALL_TABLES: tuple[TableSpec, ...] = (*SCAN_TABLES.values(), DEAD_LETTER, PROCESSED_FILES)

# Human schema version per table, recorded with the columns' hash in the warehouse's
# schema_versions table (services/beam_launcher/warehouse/schema_versions.py). Raise a table's
# number with every change of its columns' names, types, modes or nested fields.
SCHEMA_VERSION: dict[str, int] = {spec.name: 1 for spec in ALL_TABLES}
