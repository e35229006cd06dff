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


def test_switch_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """How long a switch waits for other runs' leases: 900 s unless
    ``$CP_SWITCH_WAIT_SECONDS`` (which the launcher sets from its flag) or the caller says
    otherwise; a value that is not a positive number is refused, naming the variable."""
    monkeypatch.delenv("CP_SWITCH_WAIT_SECONDS", raising=False)
    assert BigQueryWarehouse("proj", "base", client=RecordingClient()).switch_wait_s == 900.0
    monkeypatch.setenv("CP_SWITCH_WAIT_SECONDS", "2.5")
    target = BigQueryTarget("proj", "base", "gs://bucket/tmp")
    assert target.warehouse.switch_wait_s == 2.5
    assert BigQueryWarehouse("proj", "base", switch_wait_s=7).switch_wait_s == 7.0
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("CP_SWITCH_WAIT_SECONDS", bad)
        with pytest.raises(ValueError, match=r"\$CP_SWITCH_WAIT_SECONDS: expected a positive"):
            BigQueryWarehouse("proj", "base")
    with pytest.raises(ValueError, match="expected a positive number of seconds"):
        BigQueryWarehouse("proj", "base", switch_wait_s=0)


@pytest.mark.parametrize(
    ("flag", "env"),
    [(["--switch-wait-seconds", "0"], "900"), (["--switch-wait-seconds=-5"], "900"), ([], "soon")],
    ids=["flag zero", "flag negative", "env not a number"],
)
def test_launcher_refuses_a_bad_switch_wait(flag: list[str], env: str, tmp_path: Path) -> None:
    """The launcher process refuses a switch wait that is not a positive number: exit 2,
    one ``usage_error`` line naming the setting, nothing created."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "CP_SWITCH_WAIT_SECONDS": env}
    warehouse = tmp_path / "wh"
    cmd = [sys.executable, "-m", "services.beam_launcher", "--input", str(tmp_path)]
    cmd += ["--warehouse", str(warehouse), *flag]
    done = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    event = json.loads(line)
    assert event["message"] == "usage_error"
    assert "--switch-wait-seconds" in event["reason"]
    assert "expected a positive number of seconds" in event["reason"]
    assert "$CP_SWITCH_WAIT_SECONDS" in event["reason"]
    assert not warehouse.exists()


def test_chart_passes_the_switch_wait_to_the_launcher() -> None:
    """The chart's ``stages.beam-launcher.switchWaitSeconds`` becomes the launcher's
    ``CP_SWITCH_WAIT_SECONDS`` (900 by default); the values schema refuses a wait that is
    not a positive number."""
    helm = pytest.importorskip("helm_python", reason="the chart renderer (dev group) is missing")
    from tests.test_helm import BASE_VALUES, CHART, RELEASE, by_kind, docs_of, env_of, load_yaml
    from tests.test_helm import render as render_chart

    def launcher_env(values: dict[str, Any]) -> dict[str, Any]:
        cronjobs = by_kind(docs_of(render_chart(values)), "CronJob")
        return env_of(cronjobs[f"{RELEASE}-beam-launcher"])

    values = load_yaml(BASE_VALUES)
    assert launcher_env(values)["CP_SWITCH_WAIT_SECONDS"] == "900"
    values.setdefault("stages", {}).setdefault("beam-launcher", {})["switchWaitSeconds"] = 30
    assert launcher_env(values)["CP_SWITCH_WAIT_SECONDS"] == "30"
    chart = helm.Chart.load(str(CHART))
    for bad in (0, -5, "soon"):
        values["stages"]["beam-launcher"]["switchWaitSeconds"] = bad
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(chart.merge_values(values))
        assert "switchWaitSeconds" in str(err.value)
