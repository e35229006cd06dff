"""The local graph on several worker processes: sliced files, identical results, clean stops.

A generated HTTP v2 scan (8,000 lines, ~3.4 MB gzip, crossing midnight so rows fall on
two dates, with a few bad lines) is processed with one process and with two worker
processes that take the file's three pieces on demand (a small ``slice_bytes`` makes the
pieces: no huge file needed). The tables, the ledger, the Beam counters and the Parquet rows must
be the same. Stop signals during the worker phase must end the worker processes, leave
no staging and keep every stderr line one JSON object.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from sampledata import go_json_line, iter_hyperquack_records
from services.beam_launcher import slices
from services.beam_launcher.hyperquack import pipeline as graph
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.run import RunConfig, run
from services.beam_launcher.warehouse.local import LocalWarehouse
from services.common.gzindex import MemberWriter

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCAN = "CP_Quack-http-2021-05-30-23-30-00"
KEY = f"{SCAN}__results.json"
BAD = [b"this is not json\n", b"[1, 2, 3]\n", b'{"vp": 7}\n']


def write_http_scan(folder: Path, scan: str, n: int, seed: int) -> Path:
    """``n`` generated HTTP v2 lines (gzip level 1) plus a few bad ones in the middle."""
    start = dt.datetime(2021, 5, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    lines = [go_json_line(r) + b"\n" for r in iter_hyperquack_records("http", 2, n, seed, start)]
    lines[n // 2 : n // 2] = BAD
    path = folder / scan / "results.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(lines), compresslevel=1, mtime=0))
    return path


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "scans"
    path = write_http_scan(root, SCAN, 8000, 5)
    assert path.stat().st_size > 3 << 20  # two slices of >1 MiB stored bytes each
    return root


def tables(wh: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the scan and dead-letter tables (sorted) and the ledger's counts."""
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        out = {
            name: sorted(con.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in ("http_scan", "dead_letter")
        }
        out["ledger"] = con.execute(
            "SELECT file_key, status, reason, lines, rows_written, dead_letters "
            "FROM processed_files ORDER BY file_key"
        ).fetchall()
    return out


def parquet_files(wh: Path, table: str) -> list[str]:
    root = wh / "parquet" / table
    return sorted(str(p.relative_to(root)) for p in root.glob("date=*/*.parquet"))


def parquet_rows(wh: Path, table: str) -> list[str]:
    rows: list[str] = []
    for path in sorted((wh / "parquet" / table).glob("date=*/*.parquet")):
        rows += [repr(r) for r in pq.read_table(path).to_pylist()]
    return sorted(rows)


@pytest.fixture(scope="module")
def one_and_two(scan: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The scan run with one process and with two worker processes (three pieces)."""
    base = tmp_path_factory.mktemp("runs")
    one = run(RunConfig(input=str(scan), warehouse=str(base / "one"), workers=1))
    two = run(
        RunConfig(input=str(scan), warehouse=str(base / "two"), workers=2, slice_bytes=1 << 20)
    )
    return (base / "one", one), (base / "two", two)


def test_two_workers_give_identical_results(one_and_two: tuple[Any, Any]) -> None:
    (wh1, s1), (wh2, s2) = one_and_two
    t1, t2 = tables(wh1), tables(wh2)
    assert len(t1["http_scan"]) > 20000
    assert len(t1["dead_letter"]) == len(BAD)
    assert t1 == t2
    assert s1.stats == s2.stats and s1.rows_by_table == s2.rows_by_table
    # Parquet: one file per date with one process; with two, the file is cut into three
    # pieces and each stream of pieces has a file per date, named after its first piece
    # (which streams there were depends on timing); same rows.
    dates = ["date=2021-05-30", "date=2021-05-31"]
    assert parquet_files(wh1, "http_scan") == [f"{d}/{KEY}.parquet" for d in dates]
    sliced = parquet_files(wh2, "http_scan")
    assert {name.split("/")[0] for name in sliced} == set(dates)
    names = {name.split("/")[1] for name in sliced}
    assert f"{KEY}.1-of-3.parquet" in names
    assert names <= {f"{KEY}.{k}-of-3.parquet" for k in (1, 2, 3)}
    for table in ("http_scan", "dead_letter"):
        assert parquet_rows(wh1, table) == parquet_rows(wh2, table)


def test_two_workers_entering_an_indexed_file_at_members_give_identical_results(
    scan: Path, one_and_two: tuple[Any, Any], tmp_path: Path
) -> None:
    """The same scan written as untar writes it (line-aligned members with an index,
    small ones here): the pieces start at members, read by seeking; same results."""
    (wh1, s1), _ = one_and_two
    src = tmp_path / "scans" / SCAN / "results.json.gz"
    src.parent.mkdir(parents=True)
    text = gzip.decompress((scan / SCAN / "results.json.gz").read_bytes())
    with src.open("wb") as out, MemberWriter(out, compresslevel=1, member_text=64 << 10) as w:
        w.write(text)
    planned: list[FileTask] = []

    def spy(task: FileTask) -> FileTask:
        planned.append(slices.with_index(task))
        return planned[-1]

    wh = tmp_path / "wh"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graph, "with_index", spy)
        summary = run(
            RunConfig(
                input=str(tmp_path / "scans"), warehouse=str(wh), workers=2, slice_bytes=1 << 20
            )
        )
    [task] = planned
    assert task.gz_index is not None and len(task.gz_index.members) > 100
    assert tables(wh) == tables(wh1)
    assert summary.stats == s1.stats and summary.beam_counters == s1.beam_counters
    for table in ("http_scan", "dead_letter"):
        assert parquet_rows(wh, table) == parquet_rows(wh1, table)
    names = {name.split("/")[1] for name in parquet_files(wh, "http_scan")}
    assert f"{KEY}.1-of-3.parquet" in names


def test_counters_sum_over_slices_and_processes(scan: Path, one_and_two: tuple[Any, Any]) -> None:
    (_wh1, s1), (_wh2, s2) = one_and_two
    size = len(gzip.decompress((scan / SCAN / "results.json.gz").read_bytes()))
    for summary in (s1, s2):
        assert summary.beam_counters["bytes_read"] == size
        assert summary.beam_counters["files_read"] == 1
        assert summary.beam_counters["http.lines"] == 8000 + len(BAD)
    assert s1.beam_counters == s2.beam_counters


def test_row_groups_are_bounded(one_and_two: tuple[Any, Any]) -> None:
    (wh1, _s1), _ = one_and_two
    for path in (wh1 / "parquet" / "http_scan").glob("date=*/*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows > 0
        assert all(meta.row_group(i).num_rows <= 65536 for i in range(meta.num_row_groups))
        assert meta.row_group(0).column(0).compression == "ZSTD"


def test_rerun_with_other_slicing_replaces_all_parts(scan: Path, tmp_path: Path) -> None:
    """A file first published in two slices, then in one (and back): no stale part stays."""
    src = tmp_path / "scans"
    write_http_scan(src, SCAN, 8000, 5)
    wh = tmp_path / "wh"
    run(RunConfig(input=str(src), warehouse=str(wh), workers=2, slice_bytes=1 << 20))
    sliced = parquet_files(wh, "http_scan")
    assert len(sliced) >= 2 and all("-of-3.parquet" in name for name in sliced)
    rows = tables(wh)["http_scan"]

    def touch() -> None:  # a changed file (new mtime) is processed again
        path = src / SCAN / "results.json.gz"
        os.utime(path, (time.time() + 5, time.time() + 5))

    touch()
    run(RunConfig(input=str(src), warehouse=str(wh), workers=1))
    assert parquet_files(wh, "http_scan") == [
        f"date=2021-05-30/{KEY}.parquet",
        f"date=2021-05-31/{KEY}.parquet",
    ]
    assert tables(wh)["http_scan"] == rows
    touch()
    run(RunConfig(input=str(src), warehouse=str(wh), workers=2, slice_bytes=1 << 20))
    assert all("-of-3.parquet" in name for name in parquet_files(wh, "http_scan"))
    assert tables(wh)["http_scan"] == rows
    assert len(parquet_rows(wh, "http_scan")) == len(rows)


def test_final_files_match_only_the_files_slices(tmp_path: Path) -> None:
    """Parts of ``<key>.gz`` are not parts of ``<key>``, whose name is a prefix of it."""
    wh = LocalWarehouse(tmp_path)
    folder = tmp_path / "parquet" / "t" / "date=2021-05-30"
    folder.mkdir(parents=True)
    names = [
        "S__results.json.parquet",
        "S__results.json.1-of-2.parquet",
        "S__results.json.2-of-2.parquet",
        "S__results.json.gz.parquet",
        "S__results.json.gz.1-of-2.parquet",
        "S__results.jsonX.parquet",
    ]
    for name in names:
        (folder / name).write_bytes(b"")
    got = [p.name for p in wh._final_files("t", "S__results.json")]
    assert got == sorted(names[:3])
    assert [p.name for p in wh._final_files("t", "S__results.json.gz")] == sorted(names[3:5])


def test_dofns_of_one_process_share_resources_and_enricher(tmp_path: Path) -> None:
    """Issue 16: the compiled resources and the IP enricher are built once per process
    (Beam ``Shared`` handles) and given to every DoFn configured the same way, Hyperquack
    and Satellite alike; another configuration gets its own objects."""
    import shutil

    from services.beam_launcher.hyperquack.pipeline import ProcessSlices
    from services.beam_launcher.satellite.pipeline import ParseSatelliteBatch, PostProcessDomain

    sample = str(REPO / "resources" / "sample")
    first, second = ProcessSlices(str(tmp_path), sample), ProcessSlices(str(tmp_path), sample)
    parse, post = ParseSatelliteBatch(sample, keep_bodies=False), PostProcessDomain(sample)
    for dofn in (first, second, parse, post):
        dofn.setup()
    assert first.processor is not None and second.processor is not None
    assert first.processor.resources is second.processor.resources
    assert parse.resources is first.processor.resources is post.resources
    assert first.enricher is second.enricher is post.enricher
    assert first.processor is not second.processor  # each DoFn its own processor

    copy = tmp_path / "resources"
    shutil.copytree(sample, copy)
    other = ProcessSlices(str(tmp_path), str(copy), max_staleness_days=7)
    other.setup()
    assert other.processor is not None
    assert other.processor.resources is not first.processor.resources
    assert other.processor.resources.location == str(copy)
    assert other.processor.resources.digest == first.processor.resources.digest
    assert other.enricher is not first.enricher
    # The DoFns set up earlier keep theirs; a new one of the first kind gets equal objects.
    assert first.processor.resources.location == sample
    again = ProcessSlices(str(tmp_path), sample)
    again.setup()
    assert again.processor is not None
    assert again.processor.resources.location == sample
    assert again.processor.resources.digest == first.processor.resources.digest


def test_a_piece_not_recorded_as_written_fails_the_run(tmp_path: Path) -> None:
    """The check after all streams: a file's stats with a piece nobody recorded as
    written (a lost stream) stop the run before its commit; a file with a read error
    (rejected by the commit anyway) passes."""
    import dataclasses

    from services.beam_launcher.hyperquack.pipeline import CheckPieces
    from services.beam_launcher.hyperquack.processing import FileTask
    from services.beam_launcher.slices import ClaimBoard

    task = dataclasses.replace(FileTask.for_test(SCAN), size=3 << 20)
    plan = [(task, 3)]
    board = ClaimBoard(str(tmp_path), plan)
    assert board.claim(task, 0) and board.claim(task, 1) and not board.claim(task, 1)
    board.mark_done(task, [0, 1])
    check = CheckPieces(str(tmp_path), plan)
    with pytest.raises(RuntimeError, match=r"pieces \[2\] of 3 were not written"):
        list(check.process((task.file_key, {"lines": 5})))
    item = (task.file_key, {"read_errors": 1})
    assert list(check.process(item)) == [item]
    assert board.claim(task, 2)
    board.mark_done(task, [2])
    assert list(check.process((task.file_key, {"lines": 5}))) == [(task.file_key, {"lines": 5})]


# -- stop signals with worker processes ---------------------------------------------------


def launcher_env() -> dict[str, str]:
    env = dict(os.environ, CP_PROGRESS="0")
    env.pop("CP_NEXT_STAGE", None)
    return env


def worker_pids(pid: int) -> list[int]:
    """Worker processes below the launcher ``pid``: guards and fresh SDK workers (by
    their command line), the zygote and the SDK workers it forked (by their names)."""
    from services.beam_launcher.worker import descendants
    from services.beam_launcher.zygote import WORKER_NAME, ZYGOTE_NAME

    out = []
    for child in descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if b"services.beam_launcher.worker" in cmd or name in (WORKER_NAME, ZYGOTE_NAME):
            out.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


@pytest.fixture(scope="module")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two HTTP files, one per worker: ~4 s of parsing each in Python on this machine.

    The signalled run parses in Python (``CP_NATIVE_PARSER=0``): the C parser gets
    through these files in under a second, which let a signal sent 1 s into the parse
    arrive during the commit instead (the run then commits, as it should, and the test
    could not check an abort in the parse).
    """
    root = tmp_path_factory.mktemp("two") / "scans"
    for i in range(2):
        write_http_scan(root, f"CP_Quack-http-2021-05-30-23-30-0{i}", 60000, i)
    return root


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGINT to the process group"])
def test_stop_signal_ends_workers_and_leaves_no_staging(
    two_files: Path, tmp_path: Path, how: str
) -> None:
    wh = tmp_path / "wh"
    args = [sys.executable, "-m", "services.beam_launcher", "--input", str(two_files)]
    proc = subprocess.Popen(
        [*args, "--warehouse", str(wh), "--workers", "2"],
        cwd=REPO,
        env=dict(launcher_env(), CP_NATIVE_PARSER="0"),  # a parse of seconds to stop
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = worker_pids(proc.pid)
            if len(workers) >= 4 and list((wh / "staging").glob("*/http_scan")):
                break
            time.sleep(0.1)
        assert len(workers) >= 4, "two guards and two SDK workers expected"
        time.sleep(0.5)  # well inside the parse (each worker has ~4 s of work)
        assert proc.poll() is None, "the run ended before it could be signalled"
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        elif how == "SIGINT":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == (143 if how == "SIGTERM" else 130), err.decode()[-3000:]
    lines = err.decode().splitlines()
    objs = [json.loads(line) for line in lines]  # every stderr line one JSON object
    assert all(isinstance(o, dict) and o.get("severity") for o in objs)
    assert objs[-1]["message"] == "run_aborted"
    assert not [o for o in objs if o["severity"] == "CRITICAL"], [
        o for o in objs if o["severity"] == "CRITICAL"
    ]
    assert out == b""  # no summary, and nothing a worker printed
    time.sleep(0.5)
    assert [p for p in workers if alive(p)] == []
    assert sorted(p.name for p in (wh / "staging").iterdir()) == []
    assert not (wh / "parquet").exists() or parquet_files(wh, "http_scan") == []

    # The rerun completes with the rows of both files.
    rerun = subprocess.run(
        [*args, "--warehouse", str(wh), "--workers", "2"],
        cwd=REPO,
        env=launcher_env(),
        capture_output=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    for line in rerun.stderr.decode().splitlines():
        assert isinstance(json.loads(line), dict)
    ledger = tables(wh)["ledger"]
    assert [r[1] for r in ledger] == ["ok", "ok"]
    assert sum(r[4] for r in ledger) == len(tables(wh)["http_scan"]) > 0
