"""Reruns, incremental runs, bad input and failure thresholds of the local pipeline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from services.beam_launcher.__main__ import main
from services.beam_launcher.run import RunConfig, RunFailed, run

pytestmark = pytest.mark.slow


def v2_record(vp: str, url: str, n_tests: int = 2, error: str | None = None) -> dict:
    rts = [
        {
            "matches_template": True,
            "control_url": "control-abc.com",
            "start_time": "2021-06-01T10:00:00.123456789-04:00",
            "end_time": "2021-06-01T10:00:01.1-04:00",
        }
    ]
    for i in range(n_tests):
        rt = {
            "matches_template": error is None,
            "start_time": f"2021-06-01T10:00:0{i + 2}.5-04:00",
            "end_time": f"2021-06-01T10:00:0{i + 3}.5-04:00",
        }
        if error:
            rt["error"] = error
        rts.append(rt)
    return {
        "vp": vp,
        "location": {"country_name": "X", "country_code": "XX"},
        "service": "echo",
        "test_url": url,
        "response": rts,
        "anomaly": error is not None,
        "controls_failed": False,
        "stateful_block": False,
        "tag": "2021-06-01T10:00:00",
    }


def write_scan(root: Path, scan: str, lines: list[str], gz: bool = True) -> Path:
    folder = root / scan
    folder.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines)).encode()
    if gz:
        path = folder / "results.json.gz"
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path = folder / "results.json"
        path.write_bytes(data)
    return path


def good_lines(n: int, prefix: str = "1.1.1.") -> list[str]:
    return [json.dumps(v2_record(f"{prefix}{i}", f"site{i}.example")) for i in range(n)]


def table(wh: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def cfg(inp: Path, wh: Path, **kw: object) -> RunConfig:
    return RunConfig(input=str(inp), warehouse=str(wh), **kw)


def test_malformed_lines_go_to_dead_letter_and_run_succeeds(tmp_path: Path, capsys) -> None:
    lines = good_lines(20)
    bad = [
        '{"vp": "9.9.9.9", "test_url": ',  # truncated JSON
        "this is not json",
        "[1, 2, 3]",
        json.dumps({"vp": "9.9.9.9", "test_url": "x.com"}),  # missing response
        json.dumps({"vp": "9.9.9.9", "test_url": "x.com", "response": "x"}),  # wrong type
        json.dumps({"hello": "world"}),  # unknown format
    ]
    mixed = lines[:5] + bad[:3] + [""] + lines[5:] + bad[3:]
    write_scan(tmp_path / "in", "CP_Quack-echo-2021-06-01-10-00-00", mixed)
    code = main(
        [
            "--input",
            str(tmp_path / "in"),
            "--warehouse",
            str(tmp_path / "wh"),
            "--bad-line-threshold",
            "0.5",
        ]
    )
    assert code == 0
    assert '"files_processed": 1' in capsys.readouterr().out
    wh = tmp_path / "wh"
    assert table(wh, "SELECT count(*), count(DISTINCT measurement_id) FROM echo_scan") == [(60, 20)]
    dead = table(wh, "SELECT source_line, stage, error_class, raw_line FROM dead_letter ORDER BY 1")
    assert [(d[0], d[2]) for d in dead] == [
        (6, "invalid_json"),
        (7, "invalid_json"),
        (8, "not_an_object"),
        (25, "missing_field"),
        (26, "wrong_type"),
        (27, "unknown_format"),
    ]
    assert dead[1][3] == "this is not json" and {d[1] for d in dead} == {"parse"}
    assert table(wh, "SELECT status, lines, rows_written, dead_letters FROM processed_files") == [
        ("ok", 26, 60, 6)
    ]


def test_rerun_is_identical_and_incremental(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(10))
    write_scan(inp, "CP_Quack-http-2021-06-01-10-00-00", good_lines(5, "2.2.2."), gz=False)
    first = run(cfg(inp, wh))
    assert first.files_processed == 2
    snapshot = table(wh, "SELECT * FROM echo_scan ORDER BY measurement_id, start_time")
    assert len(snapshot) == 30

    again = run(cfg(inp, wh))  # nothing new: nothing processed, nothing changes
    assert again.files_processed == 0 and again.files_skipped_unchanged == 2
    assert table(wh, "SELECT * FROM echo_scan ORDER BY measurement_id, start_time") == snapshot

    full = run(cfg(inp, wh, full=True))  # rebuild gives the same rows, no duplicates
    assert full.files_processed == 2
    assert table(wh, "SELECT * FROM echo_scan ORDER BY measurement_id, start_time") == snapshot

    write_scan(inp, "CP_Quack-echo-2021-06-02-10-00-00", good_lines(3, "3.3.3."))
    inc = run(cfg(inp, wh))
    assert inc.files_processed == 1
    runs = table(wh, "SELECT file_key, run_id FROM processed_files ORDER BY file_key")
    assert runs[1][1] == inc.run_id and {r[1] for r in (runs[0], runs[2])} == {full.run_id}
    assert table(wh, "SELECT count(*) FROM echo_scan") == [(39,)]


def test_changed_file_replaces_its_rows(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    path = write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(10))
    run(cfg(inp, wh))
    path.write_bytes(gzip.compress("\n".join(good_lines(4)).encode()))  # late correction
    assert run(cfg(inp, wh)).files_processed == 1
    assert table(wh, "SELECT count(*) FROM echo_scan") == [(12,)]
    parquet = list((wh / "parquet" / "echo_scan").rglob("*.parquet"))
    assert len(parquet) == 1


def test_too_many_bad_lines_fails_the_run_but_keeps_good_files(tmp_path: Path, capsys) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(10))
    write_scan(inp, "CP_Quack-discard-2021-06-01-10-00-00", good_lines(8) + ["bad"] * 2)
    code = main(["--input", str(inp), "--warehouse", str(wh)])
    err = capsys.readouterr().err
    assert code == 1
    assert "CP_Quack-discard-2021-06-01-10-00-00/results.json" in err and "exceeds threshold" in err
    assert table(wh, "SELECT count(*) FROM echo_scan") == [(30,)]
    assert table(wh, "SELECT count(*) FROM discard_scan") == [(0,)]
    assert table(wh, "SELECT count(*) FROM dead_letter") == [(2,)]
    assert table(wh, "SELECT scan_type, status FROM processed_files ORDER BY 1") == [
        ("discard", "rejected"),
        ("echo", "ok"),
    ]
    # With a looser threshold the rejected file is retried (and only it).
    summary = run(cfg(inp, wh, bad_line_threshold=0.5))
    assert summary.files_processed == 1
    assert table(wh, "SELECT count(*) FROM discard_scan") == [(24,)]
    assert table(wh, "SELECT count(*) FROM dead_letter") == [(2,)]


def test_corrupt_gzip_is_rejected_and_others_go_on(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(10))
    bad = write_scan(inp, "CP_Quack-http-2021-06-01-10-00-00", good_lines(200))
    bad.write_bytes(bad.read_bytes()[:-60])  # truncated gzip
    with pytest.raises(RunFailed, match="could not be read"):
        run(cfg(inp, wh))
    assert table(wh, "SELECT count(*) FROM echo_scan") == [(30,)]
    assert table(wh, "SELECT count(*) FROM http_scan") == [(0,)]
    assert table(wh, "SELECT stage, error_class FROM dead_letter") == [("read", "unreadable_file")]


def test_unknown_folders_and_files_are_reported(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(2))
    (inp / "CP_Quack-echo-2021-06-01-10-00-00" / "extra.json").write_text("{}")
    (inp / "random-folder").mkdir()
    (inp / "random-folder" / "results.json").write_text("{}")
    summary = run(cfg(inp, wh, scan_types=("echo",)))
    reasons = sorted(s["reason"] for s in summary.skipped)
    assert reasons == [
        "folder 'random-folder' is not a scan name",
        "unknown file 'extra.json' in a Hyperquack scan",
    ]
    assert summary.files_processed == 1


def test_require_markers_reads_only_completed_scan_folders(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(2))
    write_scan(inp, "CP_Quack-echo-2021-06-02-10-00-00", good_lines(3))
    (inp / "CP_Quack-echo-2021-06-01-10-00-00" / "_COMPLETE").write_text("{}")
    summary = run(cfg(inp, wh, require_markers=True))
    assert summary.files_processed == 1
    assert [s["reason"] for s in summary.skipped] == ["scan folder has no completion marker yet"]
    assert table(wh, "SELECT DISTINCT source FROM echo_scan") == [
        ("CP_Quack-echo-2021-06-01-10-00-00",)
    ]


def test_cli_writes_metrics_file_with_last_success_only_on_success(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(3))
    ok_file, bad_file = tmp_path / "ok.prom", tmp_path / "bad.prom"
    assert main(["--input", str(inp), "--warehouse", str(wh), "--metrics-file", str(ok_file)]) == 0
    text = ok_file.read_text()
    assert 'cp_launcher_rows_total{scan_type="echo"} 9.0' in text
    assert "cp_launcher_last_success_timestamp_seconds " in text
    write_scan(inp, "CP_Quack-echo-2021-06-02-10-00-00", ["bad"] * 3)
    assert main(["--input", str(inp), "--warehouse", str(wh), "--metrics-file", str(bad_file)]) == 1
    assert "cp_launcher_last_success_timestamp_seconds" not in bad_file.read_text()


def test_date_window_for_backfills_and_beam_counters_metric(tmp_path: Path) -> None:
    from services.beam_launcher.metrics import LauncherMetrics

    inp, wh = tmp_path / "in", tmp_path / "wh"
    for day in ("01", "02", "03"):
        write_scan(inp, f"CP_Quack-echo-2021-06-{day}-10-00-00", good_lines(2))
    metrics = LauncherMetrics()
    code = main(
        [
            "--input",
            str(inp),
            "--warehouse",
            str(wh),
            "--start-date",
            "2021-06-02",
            "--end-date",
            "2021-06-02",
        ]
    )
    assert code == 0
    assert table(wh, "SELECT DISTINCT source FROM echo_scan") == [
        ("CP_Quack-echo-2021-06-02-10-00-00",)
    ]
    run(cfg(inp, wh), metrics)  # the other two days, as the nightly run would
    assert table(wh, "SELECT count(DISTINCT source) FROM echo_scan") == [(3,)]
    labels = {"name": "echo.lines"}
    assert metrics.registry.get_sample_value("cp_launcher_beam_counter", labels) == 4.0
