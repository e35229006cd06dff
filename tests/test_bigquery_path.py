"""The production (BigQuery / Dataflow) path, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.cloud.bigquery import SchemaField

from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.run import RunConfig, build_pipeline
from services.beam_launcher.warehouse import schemas
from services.beam_launcher.warehouse.bigquery import (
    BigQueryTarget,
    BigQueryWarehouse,
    schema_fields,
    staging_table,
)
from services.beam_launcher.warehouse.local import FileVerdict
from services.beam_launcher.warehouse.rows import ALL_TABLES, DEAD_LETTER, HYPERQUACK_TABLES

REPO = Path(__file__).resolve().parents[1]


def test_generated_docs_and_schemas_are_current() -> None:
    assert (REPO / "docs" / "tables.md").read_text() == schemas.docs_text(), "run `make docs`"
    for name, text in schemas.bigquery_files().items():
        assert (REPO / "docs" / "bigquery" / name).read_text() == text, "run `make docs`"


@pytest.mark.parametrize("spec", ALL_TABLES, ids=lambda s: s.name)
def test_bigquery_schemas_are_valid(spec) -> None:
    fields = schema_fields(spec)
    assert [f.name for f in fields] == list(spec.column_names)
    for f, raw in zip(fields, spec.bigquery_schema(), strict=True):
        assert isinstance(f, SchemaField)
        assert f.field_type == raw["type"] and f.mode == raw["mode"]
        assert f.to_api_repr()["name"] == raw["name"]


def test_hyperquack_tables_partitioned_and_clustered() -> None:
    wh = BigQueryWarehouse("proj", "base", client=object())
    table = wh._table(HYPERQUACK_TABLES["http"])
    assert table.time_partitioning.field == "date"
    assert table.clustering_fields == ["server_country", "server_asn"]
    assert len(table.schema) == len(HYPERQUACK_TABLES["http"].columns)


def test_dataflow_dry_run_of_the_full_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    cfg = RunConfig(
        input="gs://example-in/scans",
        warehouse="",
        sink="bigquery",
        bq_project="example-project",
        bq_dataset="base",
        temp_location="gs://example-tmp/runs",
        resources="gs://example-res/resources",
        runner="DataflowRunner",
        pipeline_args=[
            "--dry_run=True",
            "--region=us-central1",
            "--staging_location=gs://example-tmp/staging",
        ],
    )
    todo = [
        FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01"),
        FileTask.for_test("CP_Quack-https-2021-05-30-01-01-01"),
    ]
    target = BigQueryTarget("example-project", "base", "gs://example-tmp/runs")
    p = build_pipeline(cfg, todo, target, "r1")
    labels = {t.unique_name for t in p.to_runner_api().components.transforms.values()}
    for expected in (
        "ReadLineBatches",
        "Process",
        "Load_echo_scan",
        "Load_https_scan",
        "Load_dead_letter",
        "WriteStats",
    ):
        assert expected in labels
    assert "Load_http_scan" not in labels
    result = p.run()
    assert str(result.state).endswith("DONE")


class RecordingClient:
    def __init__(self) -> None:
        self.queries: list[tuple[str, Any]] = []
        self.deleted: list[str] = []
        self.created: list[str] = []  # before the first query: the staging tables ensured

    def create_table(self, table: Any, exists_ok: bool = False) -> None:
        assert exists_ok and not self.queries
        self.created.append(f"{table.project}.{table.dataset_id}.{table.table_id}")

    def query(self, sql: str, job_config: Any = None) -> Any:
        self.queries.append((sql, job_config))

        class Job:
            def result(self) -> list[Any]:
                return []

        return Job()

    def delete_table(self, name: str, not_found_ok: bool = False) -> None:
        self.deleted.append(name)


def test_commit_is_one_transaction_with_parameters() -> None:
    client = RecordingClient()
    wh = BigQueryWarehouse("proj", "base", client=client)
    ok = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    bad = FileTask.for_test("CP_Quack-echo-2021-05-31-01-01-01")
    verdicts = [
        FileVerdict(ok, "ok", "", {"lines": 10, "rows": 30}),
        FileVerdict(bad, "rejected", "too many bad lines", {"lines": 10, "dead_letters": 5}),
    ]
    tables = [HYPERQUACK_TABLES["echo"], next(s for s in ALL_TABLES if s.name == "dead_letter")]
    wh.commit("r-1", verdicts, tables)
    ((sql, config),) = client.queries
    assert sql.startswith("BEGIN TRANSACTION;") and sql.rstrip().endswith("COMMIT TRANSACTION;")
    assert (
        "DELETE FROM `proj.base.echo_scan` WHERE CONCAT(source, '/', source_file) "
        "IN UNNEST(@ok_keys);" in sql
    )
    cols = ", ".join(f"`{c}`" for c in DEAD_LETTER.column_names)  # by name (schema_versions)
    assert (
        f"INSERT INTO `proj.base.dead_letter` ({cols}) SELECT {cols} "
        "FROM `proj.base._staging_r_1_dead_letter`" in sql
    )
    params = {p.name: p for p in config.query_parameters}
    assert params["ok_keys"].values == [ok.file_key]
    assert params["all_keys"].values == [ok.file_key, bad.file_key]
    ledger = json.dumps(params["ledger_rows"].to_api_repr())
    assert "rejected" in ledger and ok.file_key in ledger
    staged = sorted(f"proj.base.{staging_table(t, 'r-1')}" for t in tables)
    assert sorted(client.created) == staged  # a table Beam loaded no rows into exists too
    assert sorted(client.deleted) == staged


def test_dataflow_dry_run_of_the_satellite_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    cfg = RunConfig(
        input="gs://example-in/scans",
        warehouse="",
        sink="bigquery",
        bq_project="example-project",
        bq_dataset="base",
        temp_location="gs://example-tmp/runs",
        resources="gs://example-res/resources",
        runner="DataflowRunner",
        pipeline_args=["--dry_run=True", "--region=us-central1"],
    )
    todo = [
        FileTask.for_test("CP_Satellite-2021-10-20-14-00-01", name)
        for name in ("results.json", "resolvers.json", "blockpages.json")
    ]
    target = BigQueryTarget("example-project", "base", "gs://example-tmp/runs")
    p = build_pipeline(cfg, todo, target, "r2", "satellite")
    labels = {t.unique_name for t in p.to_runner_api().components.transforms.values()}
    for expected in (
        "SatParse",
        "JoinResolvers",
        "JoinFetches",
        "PostProcess",
        "Load_satellite_scan",
        "Load_dead_letter",
    ):
        assert expected in labels
    assert str(p.run().state).endswith("DONE")
