"""Tests for services.common.rowschema (TableSpec → BigQuery / Arrow / DuckDB / Markdown)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from google.cloud.bigquery import SchemaField
from google.cloud.bigquery.enums import SqlTypeNames

from services.beam_launcher.warehouse import schemas
from services.beam_launcher.warehouse.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    HYPERQUACK_SCAN,
    HYPERQUACK_TABLES,
    PROCESSED_FILES,
)
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
    check_row,
    render_docs,
)
from tests.helpers_rowschema import answer_columns

REPO = Path(__file__).resolve().parents[1]
UTC = dt.UTC
TABLE_IDS = [t.name for t in ALL_TABLES]

NESTED = TableSpec(
    "nested",
    (
        Column("id", STRING, "Id", REQUIRED),
        *answer_columns(Column("tags", STRING, "Tags", REPEATED)),
        Column("score", FLOAT, "Score"),
    ),
    description="A table with | in it",
)


def sample_value(col: Column) -> Any:
    """A JSON-shaped value for a column, as the parsers produce them."""
    scalar: Any
    if col.type == RECORD:
        scalar = {c.name: sample_value(c) for c in col.fields}
    else:
        scalar = {
            STRING: f"{col.name}-value",
            INTEGER: 7,
            FLOAT: 1.5,
            BOOLEAN: True,
            DATE: "2021-05-30",
            TIMESTAMP: "2021-05-30T01:02:03.456789-04:00",
            BYTES: base64.b64encode(b"\x00\x01raw").decode(),
        }[col.type]
    return [scalar, scalar] if col.mode == REPEATED else scalar


def sample_row(spec: TableSpec) -> dict[str, Any]:
    return {c.name: sample_value(c) for c in spec.columns}


# --- BigQuery ------------------------------------------------------------------------------


def _check_bq_fields(fields: tuple[SchemaField, ...], columns: tuple[Column, ...]) -> None:
    assert [f.name for f in fields] == [c.name for c in columns]
    for f, c in zip(fields, columns, strict=True):
        assert f.field_type == c.type
        assert f.field_type in SqlTypeNames.__members__
        assert f.mode == c.mode
        assert f.mode in ("NULLABLE", "REQUIRED", "REPEATED")
        assert f.description == c.description
        _check_bq_fields(f.fields, c.fields)


@pytest.mark.parametrize("spec", ALL_TABLES, ids=TABLE_IDS)
def test_bigquery_schema_round_trips_through_schema_field(spec: TableSpec) -> None:
    api = spec.bigquery_schema()
    fields = tuple(SchemaField.from_api_repr(d) for d in api)
    _check_bq_fields(fields, spec.columns)
    assert [f.to_api_repr() for f in fields] == api
    json.dumps(api)  # plain JSON, as `bq mk --schema` expects


def test_bigquery_nested_record_round_trip() -> None:
    api = NESTED.bigquery_schema()
    assert api[1]["fields"][2] == {
        "name": "tags",
        "type": "STRING",
        "mode": "REPEATED",
        "description": "Tags",
    }
    assert "fields" not in api[0]
    fields = tuple(SchemaField.from_api_repr(d) for d in api)
    _check_bq_fields(fields, NESTED.columns)
    assert [f.to_api_repr() for f in fields] == api


@pytest.mark.parametrize("spec", ALL_TABLES, ids=TABLE_IDS)
def test_table_partitioning_and_clustering_refer_to_columns(spec: TableSpec) -> None:
    names = spec.column_names
    assert len(names) == len(set(names))
    if spec.partition_field is not None:
        assert spec.column(spec.partition_field).type in (DATE, TIMESTAMP)
    assert set(spec.clustering) <= set(names)


def test_table_set() -> None:
    assert TABLE_IDS == [
        "echo_scan",
        "discard_scan",
        "http_scan",
        "https_scan",
        "satellite_scan",
        "dead_letter",
        "processed_files",
    ]
    for scan_type, spec in HYPERQUACK_TABLES.items():
        assert spec.name == f"{scan_type}_scan"
        assert spec.columns == HYPERQUACK_SCAN.columns
        assert spec.partition_field == "date"
        assert spec.clustering == ("server_country", "server_asn")
    required = {c.name for c in HYPERQUACK_SCAN.columns if c.mode == REQUIRED}
    assert required == {
        "measurement_id",
        "source",
        "source_file",
        "source_line",
        "pipeline_version",
    }


def test_checked_in_schema_files_are_generated() -> None:
    assert (REPO / "docs" / "tables.md").read_text(encoding="utf-8") == schemas.docs_text()
    for name, text in schemas.bigquery_files().items():
        assert (REPO / "docs" / "bigquery" / name).read_text(encoding="utf-8") == text, name


# --- Arrow ---------------------------------------------------------------------------------


def test_arrow_schema_types() -> None:
    schema = HYPERQUACK_SCAN.arrow_schema()
    assert schema.names == list(HYPERQUACK_SCAN.column_names)
    assert schema.field("date").type == pa.date32()
    assert schema.field("start_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("end_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("received_headers").type == pa.list_(pa.string())
    assert schema.field("received_tls_cert_alternative_names").type == pa.list_(pa.string())
    assert schema.field("received_tls_cert").type == pa.binary()
    assert schema.field("retry").type == pa.int64()
    assert schema.field("domain_is_control").type == pa.bool_()
    assert schema.field("domain").type == pa.string()
    assert schema.field("domain").nullable is True
    assert schema.field("measurement_id").nullable is False
    assert PROCESSED_FILES.arrow_schema().field("processed_at").type == pa.timestamp("us", tz="UTC")


def test_arrow_schema_nested() -> None:
    schema = NESTED.arrow_schema()
    assert schema.field("answer").type == pa.struct(
        [
            pa.field("ip", pa.string()),
            pa.field("seen", pa.timestamp("us", tz="UTC")),
            pa.field("tags", pa.list_(pa.string())),
        ]
    )
    assert schema.field("answers").type == pa.list_(
        pa.struct([pa.field("raw", pa.binary()), pa.field("day", pa.date32())])
    )
    assert schema.field("score").type == pa.float64()


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2020-11-14T07:54:49.246304-05:00", dt.datetime(2020, 11, 14, 12, 54, 49, 246304, UTC)),
        ("2020-11-14T23:30:00-05:00", dt.datetime(2020, 11, 15, 4, 30, tzinfo=UTC)),
        ("2021-05-30T01:01:03.5+05:30", dt.datetime(2021, 5, 29, 19, 31, 3, 500000, UTC)),
        ("2021-05-30T01:01:03Z", dt.datetime(2021, 5, 30, 1, 1, 3, tzinfo=UTC)),
        ("2021-05-30T01:01:03.1+00:00", dt.datetime(2021, 5, 30, 1, 1, 3, 100000, UTC)),
    ],
)
def test_to_arrow_timestamps_are_utc_instants(text: str, instant: dt.datetime) -> None:
    table = HYPERQUACK_SCAN.to_arrow([{"start_time": text, "measurement_id": "m"}])
    value = table.column("start_time")[0].as_py()
    assert value == instant
    assert value.utcoffset() == dt.timedelta(0)


def test_to_arrow_converts_json_shaped_rows() -> None:
    raw = b"\x30\x82\x01\x0a\xff\x00"
    rows = [
        {
            "date": "2020-11-14",
            "start_time": "2020-11-14T07:54:49.246304-05:00",
            "end_time": None,
            "retry": 3,
            "domain_is_control": False,
            "received_tls_cert": base64.b64encode(raw).decode(),
            "received_headers": ["Server: x", "Set-Cookie: a=1"],
            "received_tls_cert_alternative_names": [],
            "measurement_id": "m1",
        },
        {"measurement_id": "m2", "received_headers": None},  # everything else missing
    ]
    table = HYPERQUACK_SCAN.to_arrow(rows)
    assert table.schema == HYPERQUACK_SCAN.arrow_schema()
    assert table.num_rows == 2
    col = table.to_pydict()
    assert col["date"] == [dt.date(2020, 11, 14), None]
    assert col["end_time"] == [None, None]
    assert col["retry"] == [3, None]
    assert col["domain_is_control"] == [False, None]
    assert col["received_tls_cert"] == [raw, None]
    assert col["received_headers"] == [["Server: x", "Set-Cookie: a=1"], None]
    assert col["received_tls_cert_alternative_names"] == [[], None]
    assert col["measurement_id"] == ["m1", "m2"]
    assert col["domain"] == [None, None]


def test_to_arrow_empty() -> None:
    table = DEAD_LETTER.to_arrow([])
    assert table.num_rows == 0
    assert table.schema == DEAD_LETTER.arrow_schema()


def test_to_arrow_nested_records() -> None:
    row = {
        "id": "x",
        "answer": {"ip": "1.2.3.4", "seen": "2021-05-30T01:02:03-04:00", "tags": ["a", "b"]},
        "answers": [
            {"raw": base64.b64encode(b"\x01\x02").decode(), "day": "2021-05-30"},
            {"raw": None, "day": None},
        ],
        "score": 0.25,
    }
    table = NESTED.to_arrow([row, {"id": "y", "answer": None, "answers": None}])
    got = table.to_pylist()
    assert got[0]["answer"]["ip"] == "1.2.3.4"
    assert got[0]["answer"]["seen"] == dt.datetime(2021, 5, 30, 5, 2, 3, tzinfo=UTC)
    assert got[0]["answer"]["tags"] == ["a", "b"]
    assert got[0]["answers"] == [
        {"raw": b"\x01\x02", "day": dt.date(2021, 5, 30)},
        {"raw": None, "day": None},
    ]
    assert got[1] == {"id": "y", "answer": None, "answers": None, "score": None}


def test_to_arrow_rejects_unparsable_timestamp() -> None:
    with pytest.raises(pa.ArrowInvalid):
        HYPERQUACK_SCAN.to_arrow([{"start_time": "2021-05-30T01:01:03", "measurement_id": "m"}])


# --- DuckDB --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*ALL_TABLES, NESTED], ids=[*TABLE_IDS, "nested"])
def test_duckdb_ddl_accepts_arrow_from_to_arrow(spec: TableSpec) -> None:
    con = duckdb.connect()
    try:
        con.execute(spec.duckdb_ddl())
        con.execute(spec.duckdb_ddl())  # IF NOT EXISTS: idempotent
        described = con.execute(f'DESCRIBE "{spec.name}"').fetchall()
        assert [r[0] for r in described] == list(spec.column_names)
        src = spec.to_arrow([sample_row(spec), {}])
        con.register("src", src)
        con.execute(f'INSERT INTO "{spec.name}" BY NAME SELECT * FROM src')
        assert con.execute(f'SELECT count(*) FROM "{spec.name}"').fetchone() == (2,)
    finally:
        con.close()


def test_duckdb_values_after_insert() -> None:
    con = duckdb.connect()
    try:
        con.execute(HYPERQUACK_SCAN.duckdb_ddl("hq"))
        row = {
            "date": "2020-11-14",
            "start_time": "2020-11-14T23:30:00.25-05:00",
            "received_tls_cert": base64.b64encode(b"\xde\xad\xbe\xef").decode(),
            "received_headers": ["A: 1", "B: 2"],
            "retry": 2,
            "measurement_id": "m",
        }
        src = HYPERQUACK_SCAN.to_arrow([row])
        # BY NAME: the column order of the source does not matter.
        con.register("src", src.select(list(reversed(src.column_names))))
        con.execute('INSERT INTO "hq" BY NAME SELECT * FROM src')
        got = con.execute(
            "SELECT CAST(date AS VARCHAR), epoch_us(start_time), received_tls_cert, "
            "received_headers, retry, measurement_id, domain FROM hq"
        ).fetchone()
    finally:
        con.close()
    expected_us = int(dt.datetime(2020, 11, 15, 4, 30, 0, 250000, tzinfo=UTC).timestamp() * 10**6)
    assert got == ("2020-11-14", expected_us, b"\xde\xad\xbe\xef", ["A: 1", "B: 2"], 2, "m", None)


def test_duckdb_ddl_text() -> None:
    ddl = NESTED.duckdb_ddl("other")
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "other" (')
    assert '"answer" STRUCT("ip" VARCHAR, "seen" TIMESTAMPTZ, "tags" VARCHAR[])' in ddl
    assert '"answers" STRUCT("raw" BLOB, "day" DATE)[]' in ddl
    assert '"score" DOUBLE' in ddl
    hq = HYPERQUACK_SCAN.duckdb_ddl()
    assert '"received_headers" VARCHAR[]' in hq
    assert '"start_time" TIMESTAMPTZ' in hq
    assert '"retry" BIGINT' in hq


# --- check_row and validation ----------------------------------------------------------------


def test_check_row_exact() -> None:
    assert check_row(HYPERQUACK_SCAN, dict.fromkeys(HYPERQUACK_SCAN.column_names)) == []


def test_check_row_reports_both_directions() -> None:
    spec = TableSpec(
        "t", (Column("a", STRING, "A"), Column("b", STRING, "B"), Column("c", INTEGER, "C"))
    )
    assert check_row(spec, {"a": 1, "b": 2}) == ["missing column c"]
    assert check_row(spec, {"a": 1, "b": 2, "c": 3, "_cert": "x"}) == ["unknown key _cert"]
    assert check_row(spec, {"c": None, "z": 1, "y": 2}) == [
        "missing column a",
        "missing column b",
        "unknown key y",
        "unknown key z",
    ]


def test_duplicate_column_is_an_error() -> None:
    cols = (Column("a", STRING, "A"), Column("b", STRING, "B"), Column("a", INTEGER, "A again"))
    with pytest.raises(ValueError, match=r"table t: duplicate columns \['a'\]"):
        TableSpec("t", cols)


def test_unknown_clustering_column_is_an_error() -> None:
    cols = (Column("day", DATE, "Day"), Column("a", STRING, "A"))
    with pytest.raises(ValueError, match="unknown partition/cluster column nope"):
        TableSpec("t", cols, partition_field="day", clustering=("a", "nope"))


def test_unknown_partition_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown partition/cluster column when"):
        TableSpec("t", (Column("a", STRING, "A"),), partition_field="when")


def test_column_lookup() -> None:
    assert HYPERQUACK_SCAN.column("retry").type == INTEGER
    with pytest.raises(KeyError):
        HYPERQUACK_SCAN.column("nope")


# --- Markdown -------------------------------------------------------------------------------


def test_markdown() -> None:
    md = NESTED.markdown()
    lines = md.splitlines()
    assert lines[0] == "## `nested`"
    assert "A table with | in it" in lines
    assert "| column | type | mode | description |" in lines
    assert "| `id` | STRING | REQUIRED | Id |" in lines
    assert "| `answer.seen` | TIMESTAMP | NULLABLE | When |" in lines
    assert "| `answer.tags` | STRING | REPEATED | Tags |" in lines
    assert "| `answers.raw` | BYTES | NULLABLE | Raw |" in lines
    assert md.endswith("\n")


def test_markdown_partitioning_and_escaping() -> None:
    spec = TableSpec(
        "t",
        (Column("day", DATE, "Day"), Column("x", STRING, "a | b")),
        partition_field="day",
        clustering=("x",),
    )
    lines = spec.markdown().splitlines()
    assert "Partitioned by `day`." in lines
    assert "Clustered by `x`." in lines
    assert "| `x` | STRING | NULLABLE | a \\| b |" in lines


def test_render_docs() -> None:
    doc = render_docs([DEAD_LETTER, PROCESSED_FILES], "My tables")
    assert doc.startswith("# My tables\n")
    assert doc.index("## `dead_letter`") < doc.index("## `processed_files`")
