"""Hardening from crash trials and a new user's mistakes (issue 15).

Each test reproduces one defect deterministically with real processes and real signals:
a stop signal that lands between creating a temporary file and its writer's cleanup,
wrong input that used to look like success, summaries and counters that lied.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_mirror_support import random_bytes

pytest_plugins = ["tests.gcs_server"]

REPO = Path(__file__).resolve().parents[1]
EXPECTED_RC = {signal.SIGTERM: 143, signal.SIGINT: 130}
ARCHIVES = (
    "CP_Quack-echo-2021-05-30-01-01-01.tar.gz",
    "CP_Quack-http-2021-05-31-01-01-01.tar.gz",
    "CP_Satellite-2021-06-01-01-01-01.tar.gz",
)


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env.update(PYTHONPATH=str(REPO), LOG_LEVEL="INFO", **extra)
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def hidden(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".tmp-", ".lease-")) or p.name.endswith(".lease")
    )


# -- 0. a stop signal right after a temporary file is created ------------------------------

# Runs the real mirror entry point; the n-th temporary file the storage layer creates is
# followed at once by a signal to the process itself, before the writer that created it
# has registered its cleanup: the narrowest window of the race seen in test_signals.
SIGNAL_AFTER_MKSTEMP = textwrap.dedent(
    """
    import os, sys, tempfile, time
    from services.common import storage
    from services.common.cli import run_stage
    from services.mirror.__main__ import main

    signum, nth = int(sys.argv[1]), int(sys.argv[2])
    real_mkstemp = tempfile.mkstemp
    calls = 0

    def mkstemp(*args, **kwargs):
        global calls
        made = real_mkstemp(*args, **kwargs)
        calls += 1
        if calls == nth and kwargs.get("prefix") == storage.TMP_PREFIX:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises here
        return made

    storage.tempfile.mkstemp = mkstemp
    sys.argv = ["mirror", *sys.argv[3:]]
    run_stage("mirror", main)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
# Temporary files in order: archive 1, manifest after it, archive 2, ...
@pytest.mark.parametrize(("nth", "published_before"), [(1, 0), (2, 1), (3, 1)])
def test_mirror_signal_between_temp_creation_and_cleanup_leaves_no_temp(
    tmp_path: Path, sig: signal.Signals, nth: int, published_before: int
) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    src.mkdir()
    data = {}
    for i, name in enumerate(ARCHIVES):
        data[name] = random_bytes(50_000 + i, seed=i)
        (src / name).write_bytes(data[name])
    args = ["archives", "--source", str(src), "--dest", str(dest)]
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_AFTER_MKSTEMP, str(int(sig)), str(nth), *args],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXPECTED_RC[sig], proc.stderr[-3000:]
    aborted = [r for r in json_lines(proc.stderr) if r.get("message") == "run_aborted"]
    assert len(aborted) == 1, proc.stderr[-3000:]
    assert aborted[0]["staging_removed_bytes"] == 0  # the temp was still empty
    assert hidden(dest) == [], "a temporary file or lease outlived the stopped mirror"
    # The archives copied before the signal are whole; a rerun completes the rest.
    published = sorted(p.name for p in dest.iterdir() if p.name.startswith("CP_"))
    assert published == sorted(ARCHIVES)[:published_before]
    rerun = subprocess.run(
        [sys.executable, "-m", "services.mirror", *args],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name, content in data.items():
        assert (dest / name).read_bytes() == content
    manifest = json.loads((dest / ".mirror-manifest.json").read_bytes())
    assert sorted(manifest["copies"]) == sorted(ARCHIVES)
    assert hidden(dest) == []


# -- 1. wrong input that looks like success --------------------------------------------------

MISSING_INPUT = {
    "beam_launcher": (["--input", "{missing}", "--warehouse", "{out}"], "--input"),
    "untar": (["--raw", "{missing}", "--target", "{out}"], "--raw"),
    "mirror": (["archives", "--source", "{missing}", "--dest", "{out}"], "--source"),
}


def run_stage_cli(stage: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"services.{stage}", *args],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("stage", sorted(MISSING_INPUT))
def test_missing_input_location_is_exit_2_and_creates_nothing(tmp_path: Path, stage: str) -> None:
    template, flag = MISSING_INPUT[stage]
    missing, out = tmp_path / "no-such-input", tmp_path / "out"
    args = [a.format(missing=missing, out=out) for a in template]
    proc = run_stage_cli(stage, args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = json_lines(proc.stderr)
    assert lines[-1]["message"] == "usage_error" and lines[-1]["severity"] == "ERROR"
    reason = lines[-1]["reason"]
    assert flag in reason and str(missing) in reason and "does not exist" in reason
    assert "\n" not in reason
    assert not out.exists(), "a run with a mistyped input created its output location"
    # An existing but empty input is a normal run that finds nothing new.
    missing.mkdir()
    again = run_stage_cli(stage, args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)


def test_missing_gcs_bucket_is_missing_input(gcs_bucket: Any) -> None:
    from services.common import lifecycle
    from services.untar.run import UntarConfig, untar_all

    assert lifecycle.location_exists(gcs_bucket.url("empty/prefix/"))  # empty: fine
    missing = "gs://no-such-bucket-" + os.urandom(4).hex() + "/raw/"
    assert not lifecycle.location_exists(missing)
    with pytest.raises(lifecycle.MissingLocation) as err:
        untar_all(UntarConfig(raw=missing, target=gcs_bucket.url("scans/")))
    assert err.value.code == 2 and missing in err.value.reason


def data_bytes(path: Path) -> int:
    raw = path.read_bytes()
    return len(gzip.decompress(raw)) if path.name.endswith(".gz") and raw else len(raw)


def test_launcher_bad_files_are_named_counted_and_recorded(tmp_path: Path) -> None:
    """Counters summed over both families and equal to the input's real sizes; a 0-byte
    .json.gz rejected; a file of JSON lists rejected with its dead-letter class; an empty
    Satellite scan recorded with a reason and a warning; an unknown Hyperquack file in
    processed_files; rejected files logged at WARNING."""
    from sampledata import HYPERQUACK_SCANS, SATELLITE_SCANS, write_scan_archives

    write_scan_archives(tmp_path / "gen", scans=(HYPERQUACK_SCANS[0], SATELLITE_SCANS[0]), size=30)
    scans = tmp_path / "gen" / "scans"
    bad = {
        "CP_Quack-echo-2021-06-02-01-01-01/results.json.gz": b"",
        "CP_Quack-echo-2021-06-03-01-01-01/results.json": b"[1, 2, 3]\n[4]\n",
        "CP_Quack-echo-2021-06-04-01-01-01/results.json": b"",
        "CP_Quack-echo-2021-06-04-01-01-01/notes.txt": b"hello\n",
        "CP_Satellite-2021-06-05-01-01-01/results.json": b"",
    }
    for rel, content in bad.items():
        (scans / rel).parent.mkdir(parents=True, exist_ok=True)
        (scans / rel).write_bytes(content)
    wh = tmp_path / "wh"
    proc = run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(wh)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = json_lines(proc.stderr)
    failed = lines[-1]
    assert failed["message"] == "run_failed"
    assert "2 file(s) rejected" in failed["reason"]

    import duckdb

    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        ledger = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT file_key, status, reason, path FROM processed_files"
            ).fetchall()
        }
    assert ledger["CP_Quack-echo-2021-06-02-01-01-01/results.json"][:2] == (
        "rejected",
        "not a gzip file (0 bytes)",
    )
    listy = ledger["CP_Quack-echo-2021-06-03-01-01-01/results.json"]
    assert listy[0] == "rejected" and "2 of 2 lines bad" in listy[1]
    assert "not_an_object x2" in listy[1]
    assert ledger["CP_Quack-echo-2021-06-04-01-01-01/notes.txt"][:2] == (
        "skipped",
        "unknown file 'notes.txt' in a Hyperquack scan",
    )
    assert ledger["CP_Quack-echo-2021-06-04-01-01-01/results.json"][:2] == (
        "ok",
        "empty: the file holds no lines",
    )
    assert ledger["CP_Satellite-2021-06-05-01-01-01/results.json"][:2] == (
        "ok",
        "empty: the file holds no lines",
    )
    done = {r["file_key"]: r for r in lines if r.get("message") == "file_done"}
    for key, (status, reason, _path) in ledger.items():
        if status == "skipped":
            continue
        want = "INFO" if status == "ok" and not reason else "WARNING"
        assert done[key]["severity"] == want, key

    # beam_counters: both families, summed, equal to what the files really hold.
    read = [Path(p) for s, _r, p in ledger.values() if s != "skipped"]
    assert any("Satellite" in str(p) for p in read) and any("Quack" in str(p) for p in read)
    counters = [r for r in lines if r.get("message") == "beam_counters"]
    assert {r["family"] for r in counters} == {"hyperquack", "satellite"}
    total_files = sum(r.get("files_read", 0) for r in counters)
    total_bytes = sum(r.get("bytes_read", 0) for r in counters)
    assert total_files == len(read)
    assert total_bytes == sum(data_bytes(p) for p in read)

    # A clean run: the summary and the cp_launcher_beam_counter metric say the same.
    for rel in bad:
        (scans / rel).unlink()
    metrics_file = tmp_path / "launcher.prom"
    clean = run_stage_cli(
        "beam_launcher",
        [
            "--input",
            str(scans),
            "--warehouse",
            str(tmp_path / "wh2"),
            "--metrics-file",
            str(metrics_file),
        ],
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    summary = json.loads(clean.stdout)
    skipped = {s["url"] for s in summary["skipped"]}
    files = [p for p in scans.rglob("*") if p.is_file() and str(p) not in skipped]
    files = [p for p in files if p.name not in ("servers.txt", "domains.txt")]  # side files
    assert summary["beam_counters"]["files_read"] == len(files) == summary["files_processed"]
    assert summary["beam_counters"]["bytes_read"] == sum(data_bytes(p) for p in files)
    prom = metrics_file.read_text()
    for name in ("files_read", "bytes_read"):
        want = f'cp_launcher_beam_counter{{name="{name}"}} {float(summary["beam_counters"][name])}'
        assert want in prom, prom


@pytest.mark.parametrize("case", ["file_in_the_way", "special_filesystem"])
def test_warehouse_that_cannot_be_created_says_why(tmp_path: Path, case: str) -> None:
    scan = tmp_path / "in" / "CP_Quack-echo-2021-05-30-01-01-01"
    scan.mkdir(parents=True)
    (scan / "results.json").write_bytes(b"{}\n")
    if case == "file_in_the_way":
        (tmp_path / "afile").write_bytes(b"x")
        wh, cause = tmp_path / "afile" / "wh", f"{tmp_path / 'afile'} is a file, not a folder"
    else:
        if not Path("/proc/self").exists():
            pytest.skip("no /proc on this machine")
        wh, cause = Path("/proc/cp-warehouse"), "/proc cannot hold new folders"
    proc = run_stage_cli("beam_launcher", ["--input", str(tmp_path / "in"), "--warehouse", str(wh)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    reason = json_lines(proc.stderr)[-1]["reason"]
    assert reason.startswith(f"WarehouseUnusable: cannot create the warehouse folder {wh}: ")
    assert cause in reason


def test_failed_run_prints_summary_of_committed_and_rejected(tmp_path: Path) -> None:
    """Exit 1 still prints the JSON summary on stdout: the good file committed, the bad one
    rejected; stderr ends with the run_failed line."""
    from sampledata import HYPERQUACK_SCANS, write_scan_archives

    write_scan_archives(tmp_path / "gen", scans=(HYPERQUACK_SCANS[0],), size=20)
    scans = tmp_path / "gen" / "scans"
    # file keys name the data file without its .gz
    good = sorted(str(p.relative_to(scans)).removesuffix(".gz") for p in scans.rglob("results.*"))
    assert len(good) == 1
    bad = "CP_Quack-echo-2021-06-03-01-01-01/results.json"
    (scans / bad).parent.mkdir(parents=True)
    (scans / bad).write_bytes(b"not json at all\n" * 5)
    wh = tmp_path / "wh"
    proc = run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(wh)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["committed"] == good
    assert [r["file_key"] for r in summary["rejected"]] == [bad]
    assert "5 of 5 lines bad" in summary["rejected"][0]["reason"]
    assert summary["files_processed"] == 2
    assert summary["rows_by_table"]["echo_scan"] > 0
    last = json_lines(proc.stderr)[-1]
    assert last["message"] == "run_failed" and last["exit_code"] == 1
    assert "1 file(s) rejected" in last["reason"] and bad in last["reason"]
    # The summary tells the truth: the committed rows are in the warehouse.
    import duckdb

    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM echo_scan").fetchone()
    assert n is not None and n[0] == summary["rows_by_table"]["echo_scan"]


def test_rejection_of_one_huge_json_array_line_quotes_the_dead_letter_reason(
    tmp_path: Path,
) -> None:
    """A file that is one huge JSON array line: the one-line error says what was wrong
    with it (the dead-letter message of its first bad line), not only its class."""
    scans = tmp_path / "scans"
    huge = json.dumps(list(range(300_000))).encode() + b"\n"  # ~2 MB on one line
    files = {
        "CP_Quack-echo-2021-06-03-01-01-01/results.json": huge,
        "CP_Satellite-2021-06-05-01-01-01/results.json": huge,
    }
    for rel, content in files.items():
        (scans / rel).parent.mkdir(parents=True)
        (scans / rel).write_bytes(content)
    wh = tmp_path / "wh"
    proc = run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(wh)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    rejected = {r["file_key"]: r["reason"] for r in json.loads(proc.stdout)["rejected"]}
    assert set(rejected) == set(files)
    for key, reason in rejected.items():
        assert "1 of 1 lines bad" in reason, key
        assert "not_an_object x1 (line 1: record is a JSON list)" in reason, (key, reason)
        assert len(reason) < 1000  # bounded: the samples are short, the line is not quoted
    last = json_lines(proc.stderr)[-1]
    assert last["message"] == "run_failed"
    assert "record is a JSON list" in last["reason"] and "\n" not in last["reason"]


def parquet_export(wh: Path) -> dict[str, list[str]]:
    """Every Parquet file of the export (path under parquet/ -> its rows, sorted)."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted((wh / "parquet").rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        out[str(path.relative_to(wh / "parquet"))] = sorted(map(repr, rows))
    return out


def table_counts(wh: Path) -> dict[str, int]:
    import duckdb

    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        ]
        return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}  # type: ignore[index]


def parquet_counts(wh: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for path in (wh / "parquet").rglob("*.parquet"):
        table = path.relative_to(wh / "parquet").parts[0]
        counts[table] = counts.get(table, 0) + pq.read_metadata(path).num_rows
    return counts


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_parquet_export_follows_the_duckdb_commit(tmp_path: Path, point: str) -> None:
    """A launcher killed (SIGKILL) right before or right after its DuckDB commit: the
    Parquet export never holds rows the tables do not; the rerun publishes what was
    committed, and the export then equals an uninterrupted run's."""
    from sampledata import HYPERQUACK_SCANS, SATELLITE_SCANS, write_scan_archives

    write_scan_archives(tmp_path / "gen", scans=(HYPERQUACK_SCANS[0], SATELLITE_SCANS[0]), size=20)
    scans = tmp_path / "gen" / "scans"
    ref, wh = tmp_path / "ref", tmp_path / "wh"
    assert (
        run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(ref)]).returncode
        == 0
    )
    want = parquet_export(ref)
    assert want and parquet_counts(ref) == {
        t: n
        for t, n in table_counts(ref).items()
        if n and t not in ("processed_files", "schema_versions")
    }

    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.beam_launcher",
            "--input",
            str(scans),
            "--warehouse",
            str(wh),
        ],
        cwd=REPO,
        env=stage_env(CP_TEST_KILL_AT=point),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    in_tables = table_counts(wh)
    exported = parquet_counts(wh)
    for table, n in exported.items():  # nothing in the export the tables do not hold
        assert n <= in_tables.get(table, 0), (table, n, in_tables)
    if point == "before_commit":
        assert exported == {} and in_tables.get("processed_files", 0) == 0
    else:  # committed, not yet published: the rows wait in publishing/
        assert in_tables["processed_files"] > 0 and exported == {}
        assert any((wh / "publishing").iterdir())

    again = run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(wh)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert parquet_export(wh) == want
    assert parquet_counts(wh) == parquet_counts(ref)
    assert table_counts(wh) == table_counts(ref)
    assert list((wh / "publishing").iterdir()) == []
    assert list((wh / "staging").glob("*")) == []
