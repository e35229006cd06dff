"""Incremental partitions, state, quality metrics, export and CLI on a hand-made warehouse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from services.beam_launcher.warehouse.rows import DEAD_LETTER
from services.queries import __main__ as cli
from services.queries.backends import DuckDBBackend
from services.queries.incremental import chunk_ranges, diff, ledger_scans, scan_window
from tests.test_queries_support import (
    counter,
    delete_source,
    derived,
    hq_row,
    insert,
    ledger,
    publish,
    run_queries,
    sql,
    warehouse,
)

D1, D2, D3 = dt.date(2022, 1, 10), dt.date(2022, 1, 11), dt.date(2022, 1, 12)
ECHO1 = "CP_Quack-echo-2022-01-10-01-00-00"
ECHO2 = "CP_Quack-echo-2022-01-11-01-00-00"
HTTP1 = "CP_Quack-http-2022-01-10-01-00-00"
TARGET = "merged_reduced_scans"


def _recomputed(summary: Any) -> list[str]:
    return summary.partitions_recomputed[TARGET]


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    root = warehouse(tmp_path / "wh")
    insert(root, "echo", [hq_row(D1, ECHO1), hq_row(D1, ECHO1, outcome="read/timeout")])
    ledger(root, "echo", ECHO1, rows_written=2)
    insert(root, "http", [hq_row(D1, HTTP1, server_country="TH")])
    ledger(root, "http", HTTP1, rows_written=1)
    return root


def test_second_run_does_nothing_and_a_new_day_one_partition(wh: Path) -> None:
    first, m1 = run_queries(wh)
    assert _recomputed(first) == [D1.isoformat()]
    assert first.tables_replaced == ["country_names"]
    assert counter(m1, "cp_queries_rows_written_total", target=TARGET) == 3

    second, m2 = run_queries(wh)
    assert second.sources_changed == 0
    assert _recomputed(second) == []
    assert second.tables_replaced == []
    assert counter(m2, "cp_queries_partitions_recomputed_total", target=TARGET) == 0
    assert counter(m2, "cp_queries_rows_written_total", target=TARGET) == 0

    insert(wh, "echo", [hq_row(D2, ECHO2, domain="new.example")])
    ledger(wh, "echo", ECHO2, rows_written=1)
    third, m3 = run_queries(wh)
    assert third.sources_changed == 1
    assert _recomputed(third) == [D2.isoformat()]
    assert counter(m3, "cp_queries_partitions_recomputed_total", target=TARGET) == 1
    assert counter(m3, "cp_queries_rows_written_total", target=TARGET) == 1
    assert [(r["date"], r["domain"]) for r in derived(wh, f"date = DATE '{D2}'")] == [
        (D2, "new.example")
    ]
    assert len(derived(wh)) == 4


def test_reprocessed_scan_rebuilds_old_and_new_dates(wh: Path) -> None:
    run_queries(wh)
    # The launcher reprocesses ECHO1 and its rows now fall on D2 (e.g. a parser fix).
    delete_source(wh, "echo", ECHO1)
    insert(wh, "echo", [hq_row(D2, ECHO1)])
    ledger(wh, "echo", ECHO1, rows_written=1)
    summary, _ = run_queries(wh)
    assert _recomputed(summary) == [D1.isoformat(), D2.isoformat()]
    assert {(r["date"], r["source"]) for r in derived(wh)} == {(D1, "HTTP"), (D2, "ECHO")}


def test_removed_scan_empties_its_partition(wh: Path) -> None:
    run_queries(wh)
    delete_source(wh, "http", HTTP1)
    with duckdb.connect(str(wh / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM processed_files WHERE source = ?", [HTTP1])
    summary, _ = run_queries(wh)
    assert summary.sources_changed == 1
    assert _recomputed(summary) == [D1.isoformat()]
    assert {r["source"] for r in derived(wh)} == {"ECHO"}
    assert sql(wh, "SELECT count(*) FROM derived._query_sources WHERE source = 'x'") == [(0,)]


def test_country_names_change_rebuilds_everything(wh: Path, tmp_path: Path) -> None:
    run_queries(wh)
    insert(wh, "echo", [hq_row(D3, "CP_Quack-echo-2022-01-12-01-00-00")])
    ledger(wh, "echo", "CP_Quack-echo-2022-01-12-01-00-00")
    names = tmp_path / "names.csv"
    names.write_text(
        "country_code,country_name,status\nDE,Deutschland,official\nTH,Thailand,official\n",
        encoding="utf-8",
    )
    summary, m = run_queries(wh, country_names=str(names))
    assert summary.tables_replaced == ["country_names"]
    assert _recomputed(summary) == [D1.isoformat(), D3.isoformat()]
    assert {r["country_name"] for r in derived(wh)} == {"Deutschland", "Thailand"}
    assert counter(m, "cp_queries_tables_replaced_total", target="country_names") == 1
    again, _ = run_queries(wh, country_names=str(names))
    assert (again.tables_replaced, _recomputed(again)) == ([], [])


def test_full_and_range(wh: Path) -> None:
    run_queries(wh)
    full, _ = run_queries(wh, full=True)
    assert _recomputed(full) == [D1.isoformat()]
    # A range run rebuilds the range and leaves pending changes for the next run.
    insert(wh, "echo", [hq_row(D2, ECHO2)])
    ledger(wh, "echo", ECHO2)
    ranged, _ = run_queries(wh, start=D1, end=D1)
    assert _recomputed(ranged) == [D1.isoformat()]
    assert derived(wh, f"date = DATE '{D2}'") == []
    nxt, _ = run_queries(wh)
    assert _recomputed(nxt) == [D2.isoformat()]


def test_a_failed_rebuild_changes_nothing(wh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_queries(wh)
    before = derived(wh)
    insert(wh, "echo", [hq_row(D1, ECHO2, domain="late.example")])
    ledger(wh, "echo", ECHO2)
    original = DuckDBBackend._execute
    calls = {"n": 0}

    def flaky(self: DuckDBBackend, stmt: Any, params: Any) -> Any:
        if stmt.key == "insert" and "merged_reduced_scans" in stmt.sql():
            calls["n"] += 1
            raise RuntimeError("boom in the middle of the transaction")
        return original(self, stmt, params)

    monkeypatch.setattr(DuckDBBackend, "_execute", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        run_queries(wh)
    assert calls["n"] == 1
    assert derived(wh) == before  # the DELETE of the partition was rolled back
    monkeypatch.setattr(DuckDBBackend, "_execute", original)
    summary, _ = run_queries(wh)  # the change was not consumed: it is picked up now
    assert _recomputed(summary) == [D1.isoformat()]
    assert "late.example" in {r["domain"] for r in derived(wh)}


def test_quality_metrics(wh: Path) -> None:
    insert(wh, "echo", [hq_row(D2, ECHO2, server_asn=None, server_country=None)])
    # The ledger says 3 lines, 1 dead letter, 2 rows written; the table holds 1 row.
    ledger(wh, "echo", ECHO2, rows_written=2, lines=3, dead_letters=1)
    bad = {"date": D2, "scan_type": "echo", "source": ECHO2, "source_file": "results.json"}
    bad |= {"source_line": 3, "stage": "parse", "error_class": "invalid_json"}
    bad |= {"message": "bad", "pipeline_version": "test"}
    publish(wh, DEAD_LETTER, [{c: bad.get(c) for c in DEAD_LETTER.column_names}])
    summary, m = run_queries(wh, quality=True, start=D1, end=D2)
    assert summary.quality_window == [D1.isoformat(), D2.isoformat()]

    def g(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    ok = {"scan_type": "echo", "date": D1.isoformat()}
    short = {"scan_type": "echo", "date": D2.isoformat()}
    assert g("cp_quality_completeness_ratio", **ok) == 1.0
    assert g("cp_quality_completeness_ratio", **short) == 0.5
    assert g("cp_quality_ledger_lines", **short) == 3
    # 1 line became rows + 1 dead letter, of 3 lines: a line went missing
    assert g("cp_quality_line_coverage_ratio", **short) == pytest.approx(2 / 3)
    assert (
        g("cp_quality_enrichment_ratio", table="echo_scan", date=D2.isoformat(), field="asn") == 0
    )
    assert (
        g("cp_quality_enrichment_ratio", table="echo_scan", date=D1.isoformat(), field="country")
        == 1
    )
    assert (
        g("cp_quality_dead_letters", scan_type="echo", stage="parse", error_class="invalid_json")
        == 1
    )
    epoch = dt.datetime(2022, 1, 11, tzinfo=dt.UTC).timestamp()
    assert g("cp_quality_newest_date_seconds", table="echo_scan") == epoch
    # D1 is complete (the D2 scan is in); D2 is not yet (no later scan).
    assert g("cp_quality_newest_complete_date_seconds", table="echo_scan") == epoch - 86400
    assert g("cp_quality_newest_date_seconds", table="merged_reduced_scans") == epoch - 86400


def test_export_is_incremental(wh: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    first, m = run_queries(wh, export=str(out))
    assert first.exported_files == {"echo_scan": 1, "http_scan": 1, "merged_reduced_scans": 1}
    part = out / "merged_reduced_scans" / f"date={D1}" / "part-000000000000.parquet"
    table = pq.read_table(part)
    assert table.num_rows == 3 and table.column_names == list(pq.read_table(part).schema.names)
    assert pq.read_table(out / "echo_scan" / f"date={D1}").num_rows == 2
    assert counter(m, "cp_queries_exported_files_total", table="echo_scan") == 1

    again, _ = run_queries(wh, export=str(out))
    assert again.exported_files == {}

    delete_source(wh, "http", HTTP1)
    with duckdb.connect(str(wh / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM processed_files WHERE source = ?", [HTTP1])
    insert(wh, "echo", [hq_row(D2, ECHO2)])
    ledger(wh, "echo", ECHO2)
    third, _ = run_queries(wh, export=str(out))
    assert third.exported_files == {"echo_scan": 1, "merged_reduced_scans": 2}
    assert not (out / "http_scan" / f"date={D1}").exists()
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    assert sorted(manifest["tables"]["merged_reduced_scans"]) == [D1.isoformat(), D2.isoformat()]
    assert manifest["tables"]["http_scan"] == {}


def test_cli(wh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics_file = tmp_path / "queries.prom"
    code = cli.main(["--warehouse", str(wh), "--metrics-file", str(metrics_file)])
    assert code == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["partitions_recomputed"] == {TARGET: [D1.isoformat()]}
    text = metrics_file.read_text()
    assert 'cp_queries_partitions_recomputed_total{target="merged_reduced_scans"} 1.0' in text
    assert "cp_quality_completeness_ratio" in text
    with pytest.raises(SystemExit):
        cli.main(["--warehouse", str(wh), "--full", "--start", "2022-01-01", "--end", "2022-01-02"])
    assert (
        cli.main(["--backend", "duckdb", "--warehouse", str(wh), "--country-names", "/nope"]) == 1
    )
    last = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (last["severity"], last["message"], last["stage"]) == ("ERROR", "run_failed", "queries")
    assert last["reason"].startswith("FileNotFoundError") and "/nope" in last["reason"]


def test_diff_and_windows() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ledger_rows = [
        {"source": ECHO1, "scan_type": "echo", "files": 1, "last_processed_at": t},
        {"source": ECHO2, "scan_type": "echo", "files": 2, "last_processed_at": t},
    ]
    consumed = [
        {"source": ECHO1, "files": 1, "last_processed_at": t, "date": D1},
        {"source": ECHO2, "files": 1, "last_processed_at": t, "date": D2},
        {"source": HTTP1, "files": 1, "last_processed_at": t, "date": D3},
    ]
    cs = diff(ledger_scans(ledger_rows), consumed, everything=False)
    assert cs.changed == {ECHO2, HTTP1}  # one more file; gone from the ledger
    assert cs.affected_dates == {D2, D3}
    assert cs.unchanged_dates == {D1}
    assert diff(ledger_scans(ledger_rows), [], everything=False).all_sources
    assert scan_window([ECHO1, ECHO2]) == (dt.date(2022, 1, 8), dt.date(2022, 1, 18))
    assert scan_window(["not-a-scan"])[0] == dt.date(1, 1, 1)
    days = [D1, D2, D3, dt.date(2022, 2, 1)]
    assert chunk_ranges(days, max_days=2) == [(D1, D2), (D3, D3), (days[3], days[3])]
