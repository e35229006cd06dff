"""Schema versions of the warehouse: what the row definitions were when each table was
last written, and what kind of change the code in hand brings.

Every table of :data:`~services.beam_launcher.warehouse.rows.ALL_TABLES` has a human version
(``rows.SCHEMA_VERSION``) and a hash of its columns' (name, type, mode, nested fields),
description left out. Both warehouses keep one row per table in ``schema_versions``
(table_name, schema_version, schema_hash, columns as JSON, pipeline_version,
updated_at). A run reads it before reading any input and classifies each table:

* ``none``: same columns;
* ``new_table``: no record yet (a new warehouse, or one made before this table existed);
* ``additive``: only new NULLABLE columns (also inside a RECORD), or existing top-level
  columns in another order: migrated in place, the run goes on;
* ``breaking``: a column removed (a rename is a removal plus an addition), retyped, its
  mode changed, or a new REQUIRED or REPEATED column: the run is refused before it reads
  anything (:class:`SchemaChangeRefused`), unless ``--full`` rebuilds that table.

Example:
    >>> from services.common.rowschema import Column
    >>> old = TableSpec("t", (Column("a", "STRING", "A"),))
    >>> new = TableSpec("t", (Column("a", "STRING", "A"), Column("b", "INTEGER", "B")))
    >>> c = classify(column_shapes(old), column_shapes(new))
    >>> c.kind, c.added
    ('additive', ['b'])
    >>> classify(column_shapes(new), column_shapes(old)).problems
    ['removed column b (INTEGER NULLABLE)']
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.beam_launcher.warehouse.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    PROCESSED_FILES,
    SCAN_TABLES,
    SCHEMA_VERSION,
)
from services.common.rowschema import (
    INTEGER,
    NULLABLE,
    RECORD,
    REQUIRED,
    STRING,
    TIMESTAMP,
    Column,
    TableSpec,
)

SCHEMA_TABLE = "schema_versions"
NONE, NEW_TABLE, ADDITIVE, BREAKING = "none", "new_table", "additive", "breaking"

SCHEMA_VERSIONS = TableSpec(
    name=SCHEMA_TABLE,
    columns=(
        Column("table_name", STRING, "Warehouse table the record describes", REQUIRED),
        Column("schema_version", INTEGER, "Human schema version (rows.SCHEMA_VERSION)", REQUIRED),
        Column("schema_hash", STRING, "Hash of the columns' names, types, modes", REQUIRED),
        Column("columns", STRING, "The columns (name, type, mode, fields) as JSON", REQUIRED),
        Column("pipeline_version", STRING, "Pipeline version that recorded it", REQUIRED),
        Column("updated_at", TIMESTAMP, "When it was recorded", REQUIRED),
    ),
    description="Schema version of each table, as the last run that wrote it knew it.",
)

Shape = dict[str, Any]  # {"name", "type", "mode"[, "fields": [Shape, ...]]}


def column_shapes(spec: TableSpec | Sequence[Column]) -> list[Shape]:
    """What a table's schema version is made of: (name, type, mode, nested fields)."""
    cols = spec.columns if isinstance(spec, TableSpec) else spec

    def shape(c: Column) -> Shape:
        out: Shape = {"name": c.name, "type": c.type, "mode": c.mode}
        if c.fields:
            out["fields"] = [shape(f) for f in c.fields]
        return out

    return [shape(c) for c in cols]


def shapes_hash(shapes: Sequence[Shape]) -> str:
    """A stable hash of column shapes (16 hex digits of SHA-256 of canonical JSON)."""
    return hashlib.sha256(orjson.dumps(list(shapes), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def schema_hash(spec: TableSpec) -> str:
    """The hash of ``spec``'s columns (descriptions do not count)."""
    return shapes_hash(column_shapes(spec))


@dataclass(frozen=True)
class SchemaRecord:
    """One row of ``schema_versions``."""

    table: str
    version: int
    hash: str
    columns: list[Shape]
    pipeline_version: str = ""

    @classmethod
    def of(cls, spec: TableSpec, pipeline_version: str) -> SchemaRecord:
        """The record of the code's definition of ``spec``."""
        return cls(
            spec.name,
            SCHEMA_VERSION.get(spec.name, 1),
            schema_hash(spec),
            column_shapes(spec),
            pipeline_version,
        )

    def columns_json(self) -> str:
        return orjson.dumps(self.columns).decode()


@dataclass
class TableChange:
    """How a table's recorded columns differ from the code's."""

    table: str
    kind: str
    added: list[str] = field(default_factory=list)  # dotted names of new NULLABLE columns
    problems: list[str] = field(default_factory=list)  # why it is breaking
    recorded_version: int | None = None
    code_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.added:
            out["added"] = self.added
        if self.problems:
            out["problems"] = self.problems
        out["recorded_version"] = self.recorded_version
        out["code_version"] = self.code_version
        return out


def _describe(s: Shape) -> str:
    return f"{s['type']} {s['mode']}"


def _compare(
    old: Sequence[Shape], new: Sequence[Shape], prefix: str, added: list[str], problems: list[str]
) -> bool:
    """Collect additions and problems of ``new`` against ``old``; True when the order of
    the columns they share changed."""
    old_by = {s["name"]: s for s in old}
    new_by = {s["name"]: s for s in new}
    for s in old:
        if s["name"] not in new_by:
            problems.append(f"removed column {prefix}{s['name']} ({_describe(s)})")
    for s in new:
        name = prefix + s["name"]
        before = old_by.get(s["name"])
        if before is None:
            if s["mode"] == NULLABLE:
                added.append(name)
            else:
                problems.append(f"new {s['mode']} column {name}: existing rows have no value")
            continue
        if before["type"] != s["type"]:
            problems.append(f"retyped column {name}: {before['type']} -> {s['type']}")
            continue
        if before["mode"] != s["mode"]:
            problems.append(f"mode of column {name} changed: {before['mode']} -> {s['mode']}")
            continue
        if s["type"] == RECORD:
            inner_old, inner_new = before.get("fields", []), s.get("fields", [])
            if _compare(inner_old, inner_new, name + ".", added, problems):
                problems.append(
                    f"fields of RECORD {name} reordered: BigQuery matches STRUCT fields by position"
                )
    shared_old = [s["name"] for s in old if s["name"] in new_by]
    shared_new = [s["name"] for s in new if s["name"] in old_by]
    return shared_old != shared_new


def classify(old: Sequence[Shape] | None, new: Sequence[Shape]) -> TableChange:
    """The kind of change from recorded columns ``old`` (None: no record) to ``new``.

    Nested additions are named with dots (``answers.new_field``); a RECORD whose shared
    fields changed order is breaking (STRUCTs are positional in BigQuery). A new field
    anywhere inside a RECORD is additive.
    """
    if old is None:
        return TableChange("", NEW_TABLE)
    if shapes_hash(old) == shapes_hash(new):
        return TableChange("", NONE)
    added: list[str] = []
    problems: list[str] = []
    _compare(old, new, "", added, problems)
    if problems:
        return TableChange("", BREAKING, added, problems)
    return TableChange("", ADDITIVE, added)


@dataclass
class SchemaCheck:
    """Per-table changes the code brings to a warehouse."""

    changes: dict[str, TableChange]

    def kinds(self) -> dict[str, str]:
        return {t: c.kind for t, c in self.changes.items()}

    def of_kind(self, *kinds: str) -> list[str]:
        return [t for t, c in self.changes.items() if c.kind in kinds]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {t: c.to_dict() for t, c in self.changes.items()}


def check_schemas(
    recorded: Mapping[str, SchemaRecord], specs: Iterable[TableSpec] = ALL_TABLES
) -> SchemaCheck:
    """Compare the warehouse's records with the code's definitions of ``specs``."""
    changes: dict[str, TableChange] = {}
    for spec in specs:
        rec = recorded.get(spec.name)
        change = classify(rec.columns if rec else None, column_shapes(spec))
        change.table = spec.name
        change.recorded_version = rec.version if rec else None
        change.code_version = SCHEMA_VERSION.get(spec.name, 1)
        changes[spec.name] = change
    return SchemaCheck(changes)


class SchemaChangeRefused(RuntimeError):
    """The code's row definitions changed a table incompatibly; nothing was read."""


def rebuilt_by_full(full: bool, dated: bool, scan_types: Sequence[str]) -> set[str]:
    """Tables a run rebuilds beside the live ones (a new table version): with ``--full``
    and no date window, the scan tables of its scan types."""
    if not full or dated:
        return set()
    return {SCAN_TABLES[t].name for t in scan_types}


def refusal(check: SchemaCheck, rebuilt: set[str], building: Iterable[str] = ()) -> str | None:
    """The error of a run facing breaking changes it neither rebuilds nor leaves to a
    rebuild in progress (``building``: tables with a building version of the code's
    columns), or None."""
    waiting = set(building)
    blocked = [t for t in check.of_kind(BREAKING) if t not in rebuilt and t not in waiting]
    if not blocked:
        return None
    parts = []
    for table in blocked:
        change = check.changes[table]
        scan_types = [t for t, s in SCAN_TABLES.items() if s.name == table]
        if scan_types:
            fix = (
                f"rebuild it beside the live table with --full --scan-type {scan_types[0]} "
                "(no date window; readers keep the old version until the switch)"
            )
        elif table == DEAD_LETTER.name:
            fix = (
                "dead_letter is not rebuilt beside the live one: run --full into a new, "
                "empty warehouse (local folder or BigQuery dataset)"
            )
        elif table == PROCESSED_FILES.name:
            fix = (
                "the ledger cannot be rebuilt in place: run --full into a new, empty "
                "warehouse (local folder or BigQuery dataset)"
            )
        else:
            fix = "rebuild the warehouse"
        parts.append(
            f"table {table} (recorded schema version {change.recorded_version}, code "
            f"{change.code_version}): {'; '.join(change.problems)}; {fix}"
        )
    return (
        "incompatible schema change, nothing was read or written: "
        + " | ".join(parts)
        + " (or deploy the previous image again)"
    )


# -- table versions: breaking changes build beside, then switch ------------------------------

TABLE_VERSIONS = "table_versions"
VERSION_FILES = "version_files"
LIVE, BUILDING, OLD = "live", "building", "old"

TABLE_VERSIONS_SPEC = TableSpec(
    name=TABLE_VERSIONS,
    columns=(
        Column("table_name", STRING, "Stable table name readers use", REQUIRED),
        Column("version_id", STRING, "v<schema version>, or v<schema version>_<k>", REQUIRED),
        Column("folder", STRING, "Its Parquet folder under parquet/", REQUIRED),
        Column("schema_version", INTEGER, "Human schema version of its columns", REQUIRED),
        Column("schema_hash", STRING, "Hash of its columns", REQUIRED),
        Column("columns", STRING, "Its columns as JSON", REQUIRED),
        Column("state", STRING, "live (the stable name shows it), building or old", REQUIRED),
        Column("pipeline_version", STRING, "Pipeline version that created it", REQUIRED),
        Column("created_at", TIMESTAMP, "When it was created", REQUIRED),
        Column("switched_at", TIMESTAMP, "When the stable name last switched to it"),
    ),
    description="Versions of each scan table: the live one and those built beside it.",
)

VERSION_FILES_SPEC = TableSpec(
    name=VERSION_FILES,
    columns=(
        Column("table_version", STRING, "<table>__<version id> the row belongs to", REQUIRED),
        *PROCESSED_FILES.columns,
        Column("rows_by_date", STRING, "JSON {date: rows} this file wrote into the version"),
    ),
    description="Ledger of the table versions that are not live (processed_files is the live one).",
)


def version_name(table: str, version_id: str) -> str:
    """The name of a table version's view (and Parquet folder): ``http_scan__v2``."""
    return f"{table}__{version_id}"


def next_version_id(schema_version: int, taken: Iterable[str]) -> str:
    """``v<N>`` for schema version N, or ``v<N>_<k>`` (k = 2, 3, ...) when taken.

    >>> next_version_id(2, ["v1"]), next_version_id(1, ["v1", "v1_2"])
    ('v2', 'v1_3')
    """
    used = set(taken)
    vid, k = f"v{schema_version}", 1
    while vid in used:
        k += 1
        vid = f"v{schema_version}_{k}"
    return vid


def spec_of(name: str, shapes: Sequence[Shape]) -> TableSpec:
    """A TableSpec named ``name`` with recorded column shapes (no descriptions)."""

    def col(s: Shape) -> Column:
        return Column(
            s["name"], s["type"], "", s["mode"], tuple(col(f) for f in s.get("fields", []))
        )

    return TableSpec(name, tuple(col(s) for s in shapes))


SWITCH_WAIT_ENV = "CP_SWITCH_WAIT_SECONDS"  # --switch-wait-seconds (BigQuery switch)
DEFAULT_SWITCH_WAIT_S = 900.0


def switch_wait_seconds(value: object) -> float:
    """How long a BigQuery switch waits for other runs' leases on its table's files
    (``--switch-wait-seconds``, ``$CP_SWITCH_WAIT_SECONDS``): a positive, finite number of
    seconds; ValueError otherwise.

    >>> switch_wait_seconds("900"), switch_wait_seconds(1.5)
    (900.0, 1.5)
    """
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def table_version_arg(text: str) -> tuple[str, str]:
    """``TABLE=VERSION`` (e.g. ``http_scan=v2``) or ``TABLE__VERSION`` as (table, version).

    >>> table_version_arg("http_scan=v2"), table_version_arg("http_scan__v1_2")
    (('http_scan', 'v2'), ('http_scan', 'v1_2'))
    """
    names = {s.name for s in SCAN_TABLES.values()}
    table, sep, vid = text.partition("=")
    if not sep:
        table, sep, vid = text.rpartition("__")
    if table not in names or not vid.startswith("v"):
        raise ValueError(
            f"{text!r}: expected TABLE=VERSION with TABLE one of {', '.join(sorted(names))} "
            "and VERSION like v2 (see --table-versions)"
        )
    return table, vid
