"""Typed row definitions: the single source of every table schema.

A table is declared once as a :class:`TableSpec` made of :class:`Column` s. From it we
generate the BigQuery JSON schema, the Arrow (Parquet) schema, the DuckDB DDL and the
Markdown docs, so the four can never drift apart.

Rows themselves travel as plain dicts in "BigQuery JSON load" shape (fast to build in
the parsers, directly loadable by BigQuery): DATE and TIMESTAMP values are ISO strings,
BYTES are base64 strings, REPEATED values are lists, RECORD values are dicts.

Example:
    >>> spec = TableSpec("t", (Column("date", DATE, "Day"), Column("n", INTEGER, "Count")))
    >>> [f["type"] for f in spec.bigquery_schema()]
    ['DATE', 'INTEGER']
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

STRING = "STRING"
INTEGER = "INTEGER"
FLOAT = "FLOAT"
BOOLEAN = "BOOLEAN"
DATE = "DATE"
TIMESTAMP = "TIMESTAMP"
BYTES = "BYTES"
RECORD = "RECORD"

NULLABLE = "NULLABLE"
REQUIRED = "REQUIRED"
REPEATED = "REPEATED"

Row = dict[str, Any]

_ARROW_TYPES: dict[str, pa.DataType] = {
    STRING: pa.string(),
    INTEGER: pa.int64(),
    FLOAT: pa.float64(),
    BOOLEAN: pa.bool_(),
    DATE: pa.date32(),
    TIMESTAMP: pa.timestamp("us", tz="UTC"),
    BYTES: pa.binary(),
}

_DUCKDB_TYPES = {
    STRING: "VARCHAR",
    INTEGER: "BIGINT",
    FLOAT: "DOUBLE",
    BOOLEAN: "BOOLEAN",
    DATE: "DATE",
    TIMESTAMP: "TIMESTAMPTZ",
    BYTES: "BLOB",
}


@dataclass(frozen=True)
class Column:
    """One column: name, BigQuery type, description, mode and nested fields for RECORDs."""

    name: str
    type: str
    description: str
    mode: str = NULLABLE
    fields: tuple[Column, ...] = ()

    def bigquery(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "mode": self.mode,
            "description": self.description,
        }
        if self.fields:
            out["fields"] = [f.bigquery() for f in self.fields]
        return out

    def arrow_type(self) -> pa.DataType:
        if self.type == RECORD:
            base: pa.DataType = pa.struct([c.arrow_field() for c in self.fields])
        else:
            base = _ARROW_TYPES[self.type]
        return pa.list_(base) if self.mode == REPEATED else base

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type(), nullable=self.mode != REQUIRED)

    def duckdb_type(self) -> str:
        if self.type == RECORD:
            inner = ", ".join(f'"{c.name}" {c.duckdb_type()}' for c in self.fields)
            base = f"STRUCT({inner})"
        else:
            base = _DUCKDB_TYPES[self.type]
        return f"{base}[]" if self.mode == REPEATED else base


@dataclass(frozen=True)
class TableSpec:
    """A table: its columns plus partitioning/clustering used by the warehouse sinks."""

    name: str
    columns: tuple[Column, ...]
    description: str = ""
    partition_field: str | None = None
    clustering: tuple[str, ...] = ()
    _by_name: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)
    # Built once: the Arrow schema, each column's Arrow type, constant values' arrays.
    _arrow: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"table {self.name}: duplicate columns {sorted(dupes)}")
        self._by_name.update({c.name: c for c in self.columns})
        for key in (self.partition_field, *self.clustering):
            if key is not None and key not in self._by_name:
                raise ValueError(f"table {self.name}: unknown partition/cluster column {key}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def bigquery_schema(self) -> list[dict[str, Any]]:
        """BigQuery JSON schema (what `bq mk --schema` and load jobs accept)."""
        return [c.bigquery() for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema (built once; Arrow schemas are immutable)."""
        schema = self._arrow.get("schema")
        if schema is None:
            schema = self._arrow["schema"] = pa.schema([c.arrow_field() for c in self.columns])
        return schema

    def _arrow_columns(self) -> list[tuple[Column, pa.DataType]]:
        pairs = self._arrow.get("columns")
        if pairs is None:
            pairs = self._arrow["columns"] = [(c, c.arrow_type()) for c in self.columns]
        return pairs

    def duckdb_ddl(self, table_name: str | None = None) -> str:
        cols = ",\n  ".join(f'"{c.name}" {c.duckdb_type()}' for c in self.columns)
        return f'CREATE TABLE IF NOT EXISTS "{table_name or self.name}" (\n  {cols}\n)'

    def markdown(self) -> str:
        """Markdown docs: one table row per column, nested fields indented by dots."""
        lines = [f"## `{self.name}`", ""]
        if self.description:
            lines += [self.description, ""]
        if self.partition_field:
            lines.append(f"Partitioned by `{self.partition_field}`.")
        if self.clustering:
            lines.append("Clustered by " + ", ".join(f"`{c}`" for c in self.clustering) + ".")
        lines += ["", "| column | type | mode | description |", "|---|---|---|---|"]

        def emit(cols: Sequence[Column], prefix: str) -> None:
            for c in cols:
                desc = c.description.replace("|", "\\|")
                lines.append(f"| `{prefix}{c.name}` | {c.type} | {c.mode} | {desc} |")
                if c.fields:
                    emit(c.fields, f"{prefix}{c.name}.")

        emit(self.columns, "")
        return "\n".join(lines) + "\n"

    def to_arrow(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        """Convert JSON-shaped row dicts to an Arrow table with this schema.

        Conversion is column-wise: strings for DATE/TIMESTAMP are cast by Arrow in one
        vectorised step; base64 BYTES are decoded per non-null value.
        """
        arrays = [
            _column_array(c, [r.get(c.name) for r in rows], t) for c, t in self._arrow_columns()
        ]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema())

    def columns_to_arrow(
        self, columns: Mapping[str, Sequence[Any] | pa.Array], n_rows: int
    ) -> pa.Table:
        """:meth:`to_arrow` for rows held as columns (name → ``n_rows`` JSON-shaped values).

        Same table as ``to_arrow`` on the equivalent row dicts; a column missing from
        ``columns`` is all null. A column holding one value in every row (the file's
        provenance, a batch's date, empty IP-metadata lists) is converted once (and
        remembered across batches when the value is a string, integer or boolean) and repeated by
        Arrow; lists of strings or numbers go to Arrow in one call, without a Python copy.
        A column may also come as a ready ``pa.Array`` (the native parser writes them): of
        the column's Arrow type it is used as it is; a string array for a DATE or
        TIMESTAMP column is cast as JSON-shaped strings are (so equal to them, bad values
        included).
        """
        arrays = []
        constants: dict[tuple[str, type, Any], pa.Array] = self._arrow.setdefault("constants", {})
        for c, target in self._arrow_columns():
            values = columns.get(c.name)
            if values is None:
                arrays.append(pa.nulls(n_rows, target))
                continue
            if len(values) != n_rows:
                raise ValueError(f"column {c.name}: {len(values)} values for {n_rows} rows")
            if isinstance(values, pa.Array):
                arrays.append(_ready_array(c, target, values))
            elif n_rows and _constant(values, n_rows):
                arrays.append(_repeat(c, target, values[0], n_rows, constants))
            else:
                arrays.append(
                    _column_array(c, values if isinstance(values, list) else list(values), target)
                )
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema())


# Constant values remembered per table (strings, integers, booleans), bounded: the
# distinct dates, files and versions one worker process sees.
_MAX_CONSTANTS = 4096
_ZEROS: list[pa.Array] = [pa.array([], pa.int32())]


def _constant(values: Sequence[Any], n_rows: int) -> bool:
    """Do all ``n_rows`` values equal the first (as ``list.count`` compares)?

    The last and middle values are checked first, so most varying columns are rejected
    without a pass over the whole column.
    """
    first = values[0]
    for probe in (values[n_rows - 1], values[n_rows // 2]):
        if probe is not first and probe != first:
            return False
    return values.count(first) == n_rows  # identity makes this a fast C loop


def _zeros(n: int) -> pa.Array:
    """``n`` int32 zeros (indices that repeat element 0), from a cached, growing array."""
    zeros = _ZEROS[0]
    if len(zeros) < n:
        zeros = _ZEROS[0] = pa.repeat(pa.scalar(0, pa.int32()), max(n, 2 * len(zeros)))
    return zeros.slice(0, n)


def _repeat(
    col: Column,
    target: pa.DataType,
    value: Any,
    n_rows: int,
    constants: dict[tuple[str, type, Any], pa.Array],
) -> pa.Array:
    """``value`` converted once and repeated ``n_rows`` times.

    A value of a STRING or BYTES column is laid out directly (one offsets array and the
    value's bytes ``n_rows`` times: 2.8 against 11 µs for ``take`` of 1,600 rows), and so
    is an empty list (1.9 against 17 µs); other values are a ``take`` of element 0
    (``pa.repeat`` of a list scalar costs ~13x more). Values that are lists of strings,
    integers or booleans are remembered like those scalars (an empty
    ``ip_metadata_sources`` on every row, for one).

    >>> _repeat(Column("f", STRING, ""), pa.string(), "a", 3, {}).to_pylist()
    ['a', 'a', 'a']
    """
    key = _constant_key(col.name, value)
    first = constants.get(key) if key is not None else None
    if first is None:
        first = _column_array(col, [value], target)
        if key is not None:
            if len(constants) >= _MAX_CONSTANTS:
                constants.clear()
            constants[key] = first
    if first.null_count:
        return pa.nulls(n_rows, target)
    if target in _FLAT_BINARY:  # the converted value's bytes (BYTES values are decoded)
        raw = first[0].as_buffer().to_pybytes()
        if (n_rows + 1) * len(raw) < _INT32_LIMIT:
            offsets = np.arange(n_rows + 1, dtype=np.int32) * np.int32(len(raw))
            return pa.Array.from_buffers(
                target, n_rows, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n_rows)]
            )
    if type(value) is list and not value and isinstance(target, pa.ListType):
        zeros = pa.py_buffer(np.zeros(n_rows + 1, dtype=np.int32))  # all empty lists
        return pa.Array.from_buffers(target, n_rows, [None, zeros], children=[first.values])
    return first.take(_zeros(n_rows))


_INT32_LIMIT = 2**31 - 1
_FLAT_BINARY = (pa.string(), pa.binary())
_KEY_SCALARS = (str, int, bool)


def _constant_key(name: str, value: Any) -> tuple[str, type, Any] | None:
    """A key under which ``value``'s converted form is remembered, or None. Typed, since
    True == 1 (and -0.0 == 0.0): floats are never remembered, nor lists holding them.

    >>> _constant_key("c", True) != _constant_key("c", 1)
    True
    >>> _constant_key("c", ["a", 1]), _constant_key("c", [1.5])
    (('c', <class 'list'>, ((<class 'str'>, 'a'), (<class 'int'>, 1))), None)
    """
    kind = type(value)
    if kind in _KEY_SCALARS:
        return (name, kind, value)
    if kind is list and all(type(v) in _KEY_SCALARS for v in value):
        return (name, list, tuple((type(v), v) for v in value))
    return None


def _ready_array(col: Column, target: pa.DataType, array: pa.Array) -> pa.Array:
    """A column given as an Arrow array: as it is when of the column's type; strings
    for a DATE or TIMESTAMP column cast as :func:`_column_array` casts them."""
    if array.type == target:
        return array
    if col.mode != REPEATED and col.type in (DATE, TIMESTAMP) and array.type == pa.string():
        return array.cast(target)
    raise TypeError(f"column {col.name}: an Arrow array of type {array.type}, not {target}")


def _column_array_of(col: Column, values: Sequence[Any], n_rows: int) -> pa.Array:
    """One column's values as an Arrow array; constant columns are converted once."""
    target = col.arrow_type()
    if n_rows and _constant(values, n_rows):
        return _repeat(col, target, values[0], n_rows, {})
    return _column_array(col, values if isinstance(values, list) else list(values), target)


# Leaf types whose JSON-shaped values are what pyarrow takes as they are.
_PLAIN = frozenset({STRING, INTEGER, FLOAT, BOOLEAN})


def _column_array(col: Column, values: list[Any], target: pa.DataType | None = None) -> pa.Array:
    if target is None:
        target = col.arrow_type()
    if col.type == RECORD or (col.mode == REPEATED and col.type not in _PLAIN):
        return pa.array(_python_values(col, values), type=target)
    if col.mode == REPEATED:  # lists of strings or numbers: one call, no Python copy
        return pa.array(values, type=target)
    if col.type in (DATE, TIMESTAMP):
        return pa.array(values, type=pa.string()).cast(target)
    if col.type == BYTES:
        return pa.array([None if v is None else base64.b64decode(v) for v in values], target)
    return pa.array(values, type=target)


def _python_values(col: Column, values: list[Any]) -> list[Any]:
    """Convert nested values to what pyarrow accepts for complex types."""
    if col.type == RECORD:

        def conv_record(v: Any) -> Any:
            if v is None:
                return None
            return {c.name: _scalar(c, v.get(c.name)) for c in col.fields}

        if col.mode == REPEATED:
            return [None if v is None else [conv_record(x) for x in v] for v in values]
        return [conv_record(v) for v in values]
    return [None if v is None else [_scalar_leaf(col.type, x) for x in v] for v in values]


def _scalar(col: Column, v: Any) -> Any:
    if v is None:
        return None
    if col.type == RECORD or col.mode == REPEATED:
        return _python_values(col, [v])[0]
    return _scalar_leaf(col.type, v)


def _scalar_leaf(type_: str, v: Any) -> Any:
    if v is None:
        return None
    if type_ == BYTES:
        return base64.b64decode(v)
    if type_ == DATE:
        import datetime as _dt

        return _dt.date.fromisoformat(v)
    if type_ == TIMESTAMP:
        import datetime as _dt

        return _dt.datetime.fromisoformat(v)
    return v


def check_row(spec: TableSpec, row: Mapping[str, Any]) -> list[str]:
    """Problems with a row's key set against the spec (both directions); [] when exact."""
    keys = set(row)
    names = set(spec.column_names)
    problems = [f"missing column {k}" for k in sorted(names - keys)]
    problems += [f"unknown key {k}" for k in sorted(keys - names)]
    return problems


def render_docs(specs: Iterable[TableSpec], title: str) -> str:
    """The tables reference document (docs/tables.md) for a set of specs."""
    parts = [f"# {title}", "", "Generated from the row definitions; do not edit by hand.", ""]
    parts += [s.markdown() for s in specs]
    return "\n".join(parts)
