"""--reprocess-pipeline-older-than VERSION: backfills that touch only files older code wrote.

End to end with the real launcher on generated sample scans (local warehouse): a run as
pipeline 1.0, then a backfill as 1.1 on a date window (only the window's files change
version, rows otherwise identical, no duplicates), a backfill stopped by SIGTERM midway
and started again (it takes only what is still older), the summary, log line and
metrics; PEP 440 ordering and unparsable versions; the usage errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from sampledata import (
    COMPANION_SCANS,
    HYPERQUACK_SCANS,
    write_scan_archives,
)
from services.beam_launcher.__main__ import parse_args
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.run import done_meanwhile, reprocess_reasons, select_tasks
from services.beam_launcher.versions import OlderThan, newer_than_code, parse_version
from tests.helpers_launcher import run_launcher, start_launcher, stderr_until

REPO = Path(__file__).resolve().parents[1]
SCAN_TABLES = ("echo_scan", "discard_scan", "http_scan", "https_scan", "satellite_scan")

# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ledger", "threshold", "older"),
    [
        ("1.0", "1.1", True),
        ("1.1", "1.1", False),
        ("1.1.0", "1.1", False),  # PEP 440: 1.1.0 == 1.1
        ("1.9", "1.10", True),  # numeric, not text order
        ("1.10", "1.9", False),
        ("1.1rc1", "1.1", True),  # pre-releases come before the release
        ("1.1.dev3", "1.1rc1", True),
        ("1.1.post1", "1.1", False),
        ("1.0+local.7", "1.1", True),
        ("v1.0", "1.1", True),  # a leading v is allowed by PEP 440
        ("0.1.0", "0.1.0", False),
    ],
)
def test_pep440_order(ledger: str, threshold: str, older: bool) -> None:
    assert OlderThan(threshold)(ledger) is older


def test_unparsable_ledger_version_is_older_and_logged_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    older = OlderThan("0.1")
    assert older("dev-abc123") and older("dev-abc123") and older("") and older(None)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    logged = [x for x in lines if x.get("message") == "pipeline_version_unparsable"]
    assert [x["pipeline_version"] for x in logged] == ["dev-abc123", "", None]
    assert all(x["severity"] == "WARNING" for x in logged)


def test_threshold_must_parse_and_not_exceed_the_code() -> None:
    with pytest.raises(ValueError, match="not a version"):
        OlderThan("next")
    assert parse_version("1.2") is not None and parse_version("1.2 beta") is None
    assert newer_than_code("1.1", "1.1.0") is None
    assert "newer than this pipeline's version" in (newer_than_code("1.2", "1.1") or "")
    assert "not a PEP 440 version" in (newer_than_code("1.0", "dev") or "")


# -- selection --------------------------------------------------------------------------------


def task(key: str, version: str = "v1", scan_type: str = "echo") -> FileTask:
    source, name = key.split("/")
    return FileTask(
        url=f"/in/{key}",
        source=source,
        source_file=name,
        scan_type=scan_type,
        scan_date="-".join(source.split("-")[-6:-3]),
        size=10,
        version=version,
        pipeline_version="1.1",
    )


def entry(pipeline: str, status: str = "ok", version: str = "v1") -> Any:
    return SimpleNamespace(version=version, status=status, pipeline_version=pipeline)


def test_selection_adds_only_older_ok_files_to_the_normal_selection() -> None:
    sat = "CP_Satellite-2021-05-30-12-00-01"
    tasks = [
        task("CP_Quack-echo-2021-05-30-01-01-01/results.json"),  # ok, old -> version
        task("CP_Quack-echo-2021-05-31-01-01-01/results.json"),  # ok, current -> no
        task("CP_Quack-echo-2021-06-01-01-01-01/results.json"),  # new -> normal
        task("CP_Quack-echo-2021-06-02-01-01-01/results.json", "v2"),  # changed -> normal
        task("CP_Quack-echo-2021-06-03-01-01-01/results.json"),  # rejected -> normal
        task("CP_Quack-echo-2021-06-04-01-01-01/results.json"),  # unparsable -> version
        task(f"{sat}/results.json", scan_type="satellite"),  # ok, old -> version
        task(f"{sat}/resolvers.json", scan_type="satellite"),  # current, but same scan
    ]
    ledger = {
        tasks[0].file_key: entry("1.0"),
        tasks[1].file_key: entry("1.1"),
        tasks[3].file_key: entry("1.0"),
        tasks[4].file_key: entry("1.0", status="rejected"),
        tasks[5].file_key: entry("local-build"),
        tasks[6].file_key: entry("1.0.9"),
        tasks[7].file_key: entry("1.1"),
    }
    older = OlderThan("1.1")
    todo, unchanged = select_tasks(tasks, ledger, False, older)
    assert {t.file_key for t in todo} == {t.file_key for t in tasks} - {tasks[1].file_key}
    assert unchanged == 1
    # Without the flag: only the normal selection.
    plain, _ = select_tasks(tasks, ledger, False)
    assert {t.file_key for t in plain} == {tasks[2].file_key, tasks[3].file_key, tasks[4].file_key}
    # Counted because of their version: ok rows of the same content, older code.
    assert reprocess_reasons(tasks, ledger, older) == {
        tasks[0].file_key: "1.0",
        tasks[5].file_key: "local-build",
        tasks[6].file_key: "1.0.9",
    }
    # Another run rewrote one with new code meanwhile: done; the still-old one is not.
    fresh = {**ledger, tasks[0].file_key: entry("1.1")}
    units = done_meanwhile([tasks[0], tasks[5]], fresh, older)
    assert units == {tasks[0].file_key}
    # ... while without the predicate an old ok row would count as done (the bug avoided).
    assert done_meanwhile([tasks[5]], ledger) == {tasks[5].file_key}


# -- usage errors -----------------------------------------------------------------------------


def launcher_env(**env: str) -> dict[str, str]:
    """This environment without CP_* settings, INFO logs, no progress line, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    base.update(PYTHONPATH=str(REPO), LOG_LEVEL="INFO", CP_PROGRESS="0", **env)
    return base


def launcher(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return run_launcher(args, launcher_env(**env), timeout=300)


def usage_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    assert last["message"] == "usage_error"
    return str(last["reason"])


@pytest.mark.parametrize("via_env", [False, True])
def test_with_full_is_refused(tmp_path: Path, via_env: bool) -> None:
    (tmp_path / "in").mkdir()
    args = ["--input", str(tmp_path / "in"), "--warehouse", str(tmp_path / "wh"), "--full"]
    env = {"CP_PIPELINE_VERSION": "1.1"}
    if via_env:
        env["CP_REPROCESS_PIPELINE_OLDER_THAN"] = "1.1"
    else:
        args += ["--reprocess-pipeline-older-than", "1.1"]
    reason = usage_error(launcher(args, **env))
    assert "--reprocess-pipeline-older-than and --full do not combine" in reason
    assert not (tmp_path / "wh").exists()


def test_bad_or_too_new_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    base = ["--input", str(tmp_path / "in"), "--warehouse", str(tmp_path / "wh")]
    bad = launcher([*base, "--reprocess-pipeline-older-than", "latest"])
    assert "not a version" in usage_error(bad)
    newer = launcher([*base, "--reprocess-pipeline-older-than", "2.0"], CP_PIPELINE_VERSION="1.1")
    assert "newer than this pipeline's version '1.1'" in usage_error(newer)


def test_env_default_reaches_the_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_REPROCESS_PIPELINE_OLDER_THAN", "0.0.9")
    cfg, _ = parse_args(["--input", "in", "--warehouse", "wh"])
    assert cfg.reprocess_older_than == "0.0.9"
    cfg, _ = parse_args(
        ["--input", "in", "--warehouse", "wh", "--reprocess-pipeline-older-than", "0.0.5"]
    )
    assert cfg.reprocess_older_than == "0.0.5"
    monkeypatch.delenv("CP_REPROCESS_PIPELINE_OLDER_THAN")
    assert parse_args(["--input", "in", "--warehouse", "wh"])[0].reprocess_older_than is None


# -- end to end on the local warehouse -------------------------------------------------------

# Hyperquack echo v1 (2020-11-14), echo/http v2 (2021-05-30), discard v2 (2021-05-31) and
# the Satellite scans of 2020-11-14, 2021-05-30 and 2021-05-31.
SCANS = (
    HYPERQUACK_SCANS[0],
    HYPERQUACK_SCANS[4],
    HYPERQUACK_SCANS[5],
    HYPERQUACK_SCANS[6],
    COMPANION_SCANS[0],
    COMPANION_SCANS[4],
    COMPANION_SCANS[5],
)
WINDOW = ("2021-05-30", "2021-05-31")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    write_scan_archives(out, scans=SCANS, size=40)
    return out / "scans"


def query(wh: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def rows_without_version(wh: Path) -> dict[str, list[str]]:
    """Every row of every scan table as text, pipeline_version left out, sorted."""
    out = {}
    for table in SCAN_TABLES:
        got = query(wh, f"SELECT * EXCLUDE (pipeline_version) FROM {table}")
        out[table] = sorted(repr(r) for r in got)
    return out


def versions_by_source(wh: Path) -> dict[str, set[str]]:
    """Scan (source) -> pipeline versions of its rows (all tables) and ledger rows."""
    out: dict[str, set[str]] = {}
    parts = [f"SELECT source, pipeline_version FROM {t}" for t in SCAN_TABLES]
    parts.append("SELECT source, pipeline_version FROM processed_files WHERE status = 'ok'")
    for source, version in query(wh, " UNION ALL ".join(parts)):
        out.setdefault(source, set()).add(version)
    return out


def in_window(source: str) -> bool:
    day = "-".join(source.split("-")[-6:-3])  # CP_...-YYYY-MM-DD-hh-mm-ss
    return WINDOW[0] <= day <= WINDOW[1]


def metric_samples(path: Path, name: str) -> dict[tuple[str, str], float]:
    """(scan_type, pipeline_version) -> value of one metric in a Prometheus text file."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            if s.name == name:
                out[(s.labels["scan_type"], s.labels["pipeline_version"])] = s.value
    return out


def ok(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout))


def events(proc: subprocess.CompletedProcess[str], message: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("message") == message]


@pytest.mark.slow
def test_backfill_of_a_date_window(scans: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    base = ["--input", str(scans), "--warehouse", str(wh), "--workers", "1"]
    first = ok(launcher(base, CP_PIPELINE_VERSION="1.0"))
    assert first["files_processed"] == first["files_found"] > 0
    assert first["reprocess_older_than"] == {}  # not asked for
    before = rows_without_version(wh)
    assert sum(map(len, before.values())) > 0
    ledger_before = dict(query(wh, "SELECT file_key, rows_written FROM processed_files"))
    sources = versions_by_source(wh)
    assert set().union(*sources.values()) == {"1.0"}
    ok_files = [r[0] for r in query(wh, "SELECT file_key FROM processed_files WHERE status='ok'")]
    window_files = [k for k in ok_files if in_window(k.split("/")[0])]
    assert 0 < len(window_files) < len(ledger_before)

    # A nightly run of the new code alone does not touch what the old code wrote.
    nightly = ok(launcher(base, CP_PIPELINE_VERSION="1.1"))
    assert nightly["files_processed"] == 0

    metrics = tmp_path / "backfill.prom"
    backfill = [
        *base,
        "--start-date",
        WINDOW[0],
        "--end-date",
        WINDOW[1],
        "--reprocess-pipeline-older-than",
        "1.1",
        "--metrics-file",
        str(metrics),
    ]
    proc = launcher(backfill, CP_PIPELINE_VERSION="1.1")
    second = ok(proc)
    assert sorted(second["committed"]) == sorted(window_files)
    assert second["reprocess_older_than"] == {
        "version": "1.1",
        "files": len(window_files),
        "by_pipeline_version": {"1.0": len(window_files)},
    }
    logged = events(proc, "reprocess_older_than")
    assert len(logged) == 1 and logged[0]["files"] == len(window_files)
    assert logged[0]["by_pipeline_version"] == {"1.0": len(window_files)}

    # Only the window's scans now say 1.1 (rows and ledger); the rest still 1.0.
    for source, versions in versions_by_source(wh).items():
        assert versions == ({"1.1"} if in_window(source) else {"1.0"}), source
    # Same rows apart from the version: nothing duplicated, nothing lost.
    assert rows_without_version(wh) == before
    assert dict(query(wh, "SELECT file_key, rows_written FROM processed_files")) == ledger_before

    # Metrics: files selected per old version; ledger rows per version equal the ledger's.
    selected = metric_samples(metrics, "cp_launcher_reprocess_selected_files_total")
    per_type: dict[tuple[str, str], float] = {}
    for (scan_type,) in query(
        wh,
        "SELECT scan_type FROM processed_files WHERE status = 'ok' AND run_id = "
        "(SELECT max(run_id) FROM processed_files)",
    ):
        per_type[(scan_type, "1.0")] = per_type.get((scan_type, "1.0"), 0) + 1
    assert selected == per_type
    want_rows = {
        (t, v): float(n)
        for t, v, n in query(
            wh,
            "SELECT scan_type, pipeline_version, sum(rows_written) FROM processed_files "
            "WHERE status = 'ok' GROUP BY 1, 2",
        )
    }
    assert metric_samples(metrics, "cp_launcher_ledger_rows") == want_rows
    assert {v for _t, v in want_rows} == {"1.0", "1.1"}

    # Run again: nothing is older any more in the window.
    again = ok(launcher(backfill, CP_PIPELINE_VERSION="1.1"))
    assert again["files_processed"] == 0
    assert again["reprocess_older_than"]["files"] == 0


@pytest.mark.slow
def test_backfill_stopped_midway_resumes_with_what_is_still_older(
    scans: Path, tmp_path: Path
) -> None:
    wh = tmp_path / "wh"
    base = ["--input", str(scans), "--warehouse", str(wh), "--workers", "1"]
    ok(launcher(base, CP_PIPELINE_VERSION="1.0"))
    before = rows_without_version(wh)
    n_files = query(wh, "SELECT count(*) FROM processed_files")[0][0]

    # The backfill commits its Hyperquack files, then is stopped (SIGTERM) while its
    # Satellite pipeline runs.
    args = [*base, "--reprocess-pipeline-older-than", "2.0"]
    proc = start_launcher(args, launcher_env(CP_PIPELINE_VERSION="2.0"))
    seen: list[str] = []
    rest = ""
    try:
        seen = stderr_until(proc, '"warehouse_committed"')
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen)[-3000:] + (rest or "")[-3000:]

    # Cut short: Hyperquack at 2.0, Satellite still 1.0.
    partial = versions_by_source(wh)
    assert {v for s, vs in partial.items() if "Quack" in s for v in vs} == {"2.0"}
    assert {v for s, vs in partial.items() if "Satellite" in s for v in vs} == {"1.0"}
    n_sat = query(
        wh, "SELECT count(*) FROM processed_files WHERE scan_type = 'satellite' AND status = 'ok'"
    )[0][0]

    resumed = launcher(args, CP_PIPELINE_VERSION="2.0")
    summary = ok(resumed)
    assert summary["reprocess_older_than"]["by_pipeline_version"] == {"1.0": n_sat}
    assert (
        all("Satellite" in k for k in summary["committed"]) and len(summary["committed"]) == n_sat
    )
    final = versions_by_source(wh)
    assert set().union(*final.values()) == {"2.0"}
    assert rows_without_version(wh) == before
    assert query(wh, "SELECT count(*), count(DISTINCT file_key) FROM processed_files") == [
        (n_files, n_files)
    ]


# -- BigQuery (bqemulator on 127.0.0.1) -------------------------------------------------------


@pytest.mark.slow
def test_backfill_selection_on_bigquery(
    bq_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same selection, summary and ledger gauges with the BigQuery sink: only the
    window's files are rewritten by 1.1, their rows otherwise unchanged."""
    import datetime as dt

    from services.beam_launcher.metrics import LauncherMetrics
    from services.beam_launcher.run import ledger_shares, run
    from services.beam_launcher.warehouse.rows import SCAN_TABLES as SPECS
    from tests.test_bigquery_emulator import bq_rows, make_pair, normalised
    from tests.test_bigquery_emulator import write_scan as write_gz_scan

    pair = make_pair(bq_env, tmp_path)
    specs = (HYPERQUACK_SCANS[0], HYPERQUACK_SCANS[4], HYPERQUACK_SCANS[5])
    for i, spec in enumerate(specs):
        write_gz_scan(pair.input, spec, 30, seed=i)
    tables = [SPECS[s.scan_type] for s in specs]

    def rows_without_version() -> dict[str, list[bytes]]:
        out = {}
        for spec in tables:
            got = bq_rows(pair.client, pair.dataset, spec.name)
            out[spec.name] = normalised(spec, [{**r, "pipeline_version": None} for r in got])
        return out

    def versions() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for spec in [*tables, SPECS["echo"]]:
            for r in bq_rows(pair.client, pair.dataset, spec.name):
                out.setdefault(r["source"], set()).add(r["pipeline_version"])
        for r in bq_rows(pair.client, pair.dataset, "processed_files"):
            out.setdefault(r["source"], set()).add(r["pipeline_version"])
        return out

    monkeypatch.setenv("CP_PIPELINE_VERSION", "1.0")
    first = run(pair.config("bigquery"))
    assert len(first.committed) == 3
    before = rows_without_version()
    assert all(before.values())

    monkeypatch.setenv("CP_PIPELINE_VERSION", "1.1")
    cfg = pair.config("bigquery")
    cfg.reprocess_older_than = "1.1"
    cfg.start_date, cfg.end_date = dt.date(2021, 5, 30), dt.date(2021, 5, 31)
    summary = run(cfg)
    assert summary.reprocess_older_than == {
        "version": "1.1",
        "files": 2,
        "by_pipeline_version": {"1.0": 2},
    }
    assert len(summary.committed) == 2
    for source, found in versions().items():
        assert found == ({"1.1"} if in_window(source) else {"1.0"}), source
    assert rows_without_version() == before

    metrics = LauncherMetrics()
    cfg.scan_types = ("echo", "discard")
    ledger_shares(cfg, metrics)
    ledger = bq_rows(pair.client, pair.dataset, "processed_files")
    want: dict[tuple[str, str], float] = {}
    for r in ledger:
        key = (r["scan_type"], r["pipeline_version"])
        want[key] = want.get(key, 0.0) + r["rows_written"]
    got = {
        (s.labels["scan_type"], s.labels["pipeline_version"]): s.value
        for family in metrics.registry.collect()
        if family.name == "cp_launcher_ledger_rows"
        for s in family.samples
    }
    assert got == want and len(got) == 3  # echo 1.0, echo 1.1, discard 1.1

    again = run(cfg)
    assert again.files_processed == 0 and again.reprocess_older_than["files"] == 0
