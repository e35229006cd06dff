"""Tables the queries service owns (derived dataset): schemas as :class:`TableSpec` s.

The same specs create the BigQuery tables (partitioning, clustering, descriptions) and
the DuckDB ones, and document them (``README.md``).

Example:
    >>> MERGED_REDUCED_SCANS.column_names[:3]
    ('date', 'source', 'hostname')
    >>> MERGED_REDUCED_SCANS.clustering
    ('source', 'country_name', 'network', 'domain')
"""

from __future__ import annotations

from services.common.rowschema import (
    DATE,
    INTEGER,
    REQUIRED,
    STRING,
    TIMESTAMP,
    Column,
    TableSpec,
)

__all__ = [
    "BASE_TABLE_NAMES",
    "COUNTRY_NAMES",
    "DERIVED_TABLES",
    "MERGED_REDUCED_SCANS",
    "QUERY_PARTITIONS",
    "QUERY_SOURCES",
    "QUERY_STATE",
    "SCAN_TABLE_NAMES",
    "STATE_TABLES",
]

# The launcher's tables this service reads (their schemas are in
# services/beam_launcher/warehouse/rows.py and docs/tables.md). Only the names are needed here, so
# the queries image does not ship the launcher; tests/test_queries_sql.py checks that the
# names agree with rows.py.
SCAN_TABLE_NAMES: dict[str, str] = {
    "echo": "echo_scan",
    "discard": "discard_scan",
    "http": "http_scan",
    "https": "https_scan",
    "satellite": "satellite_scan",
}
BASE_TABLE_NAMES: tuple[str, ...] = (*SCAN_TABLE_NAMES.values(), "dead_letter", "processed_files")

MERGED_REDUCED_SCANS = TableSpec(
    name="merged_reduced_scans",
    columns=(
        Column("date", DATE, "Measurement date (the base rows' date)", REQUIRED),
        Column(
            "source",
            STRING,
            "Scan type: DISCARD, ECHO, HTTP, HTTPS (Hyperquack) or DNS (Satellite)",
            REQUIRED,
        ),
        Column("hostname", STRING, "DNS: PTR name of the resolver; NULL for Hyperquack"),
        Column(
            "reg_hostname",
            STRING,
            "DNS: registrable domain of hostname (NET.REG_DOMAIN; 'control'/'special' kept)",
        ),
        Column("network", STRING, "AS organisation name of the server or resolver"),
        Column("subnetwork", STRING, "'AS<asn>', plus ' - <organisation>' when known"),
        Column("domain", STRING, "Tested domain; 'CONTROL' for control probes/queries"),
        Column("category", STRING, "Domain category; 'Uncategorized' when unknown"),
        Column("outcome", STRING, "Outcome with its class emoji: ✅ expected, ❗️ ❓ ❔"),
        Column("count", INTEGER, "Base-table rows in the group", REQUIRED),
        Column(
            "country_name",
            STRING,
            "ISO 3166 name of the country (the code when the name is unknown)",
            REQUIRED,
        ),
        Column(
            "unexpected_count",
            INTEGER,
            "Rows counted as unexpected: 0 for ✅, count for ❗️ and ❓, NULL for ❔ and "
            "for DNS timeouts (ambiguous)",
        ),
    ),
    description=(
        "Daily counts of all scan types per country, network, domain, category and outcome "
        "(built by services.queries)."
    ),
    partition_field="date",
    # The dashboard filters by scan type, country, network and domain (BigQuery: ≤ 4).
    clustering=("source", "country_name", "network", "domain"),
)

COUNTRY_NAMES = TableSpec(
    name="country_names",
    columns=(
        Column("country_code", STRING, "ISO 3166-1 alpha-2 code", REQUIRED),
        Column("country_name", STRING, "ISO 3166-1 English short name", REQUIRED),
        Column(
            "status",
            STRING,
            "official; for other codes found in IP metadata: user-assigned (XK), "
            "exceptionally-reserved (EU) or rir-region (AP, used by registries)",
        ),
    ),
    description="Country names by ISO code, loaded from resources/country_names.csv.",
)

QUERY_STATE = TableSpec(
    name="_query_state",
    columns=(
        Column("key", STRING, "What the value is about, e.g. definition:merged_reduced_scans"),
        Column("value", STRING, "Fingerprint or setting recorded by the last run"),
        Column("run_id", STRING, "Run that wrote the value"),
        Column("updated_at", TIMESTAMP, "When"),
    ),
    description="Key/value state of the queries service.",
)

QUERY_SOURCES = TableSpec(
    name="_query_sources",
    columns=(
        Column("source", STRING, "Scan (archive) name as in the ledger", REQUIRED),
        Column("scan_type", STRING, "Scan type of the scan"),
        Column("files", INTEGER, "Ledger rows of the scan when it was last taken into account"),
        Column("last_processed_at", TIMESTAMP, "Newest ledger processed_at of the scan then"),
        Column("date", DATE, "A date the scan has base rows on (NULL: no rows)"),
        Column("row_count", INTEGER, "Base rows of the scan on that date"),
    ),
    description=(
        "The ledger as the queries service last consumed it, with the dates each scan has "
        "rows on (to find the partitions a changed or removed scan affects)."
    ),
)

QUERY_PARTITIONS = TableSpec(
    name="_query_partitions",
    columns=(
        Column("target", STRING, "Derived table", REQUIRED),
        Column("date", DATE, "Partition", REQUIRED),
        Column("row_count", INTEGER, "Rows in the partition after the run"),
        Column("run_id", STRING, "Run that last rebuilt the partition"),
        Column("computed_at", TIMESTAMP, "When"),
    ),
    description="Partitions of the derived tables and the run that last rebuilt each.",
)

DERIVED_TABLES: tuple[TableSpec, ...] = (COUNTRY_NAMES, MERGED_REDUCED_SCANS)
STATE_TABLES: tuple[TableSpec, ...] = (QUERY_STATE, QUERY_SOURCES, QUERY_PARTITIONS)
