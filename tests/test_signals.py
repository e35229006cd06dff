"""SIGTERM/SIGINT at random moments: every stage stops, cleans up, and a rerun is clean.

Real stage processes (``python -m services.<stage>``) on small generated inputs get a real
signal after a random delay. The delays come from a seeded generator (the seed is printed
and set with ``CP_SIGNAL_SEED``) and are drawn from each stage's measured run time, so
most signals land mid-run. After each trial: exit code 143/130 with one ``run_aborted``
line (or 0 when the run had already finished), failure metrics written, nothing left in
staging; then a rerun must produce exactly the data of an uninterrupted run.

The sweep of staging left by dead runs is tested against real live and dead processes.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from sampledata import EDT, ScanSpec, write_scan_archives
from services.common import lifecycle

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("CP_SIGNAL_SEED") or time.time_ns() % 1_000_000)
EXPECTED_RC = {signal.SIGTERM: 143, signal.SIGINT: 130}
# Columns that name the run or the moment, not the data.
RUN_COLUMNS = {"run_id", "processed_at", "computed_at", "updated_at", "last_processed_at"}


def message(rec: dict[str, Any]) -> str | None:
    return rec.get("message")


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def stage_env() -> dict[str, str]:
    """The test's environment without CP_* settings (no chaining, no stray flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env.update(PYTHONPATH=str(REPO), LOG_LEVEL="INFO")
    return env


class StageProcess:
    """A stage subprocess whose stderr is read line by line as it runs."""

    def __init__(self, args: list[str], start_message: str) -> None:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env=stage_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.running = threading.Event()  # the stage logged start_message: handlers are set
        self.start_message = start_message
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if not self.running.is_set() and line.startswith("{"):
                try:
                    if message(json.loads(line)) == self.start_message:
                        self.running.set()
                except ValueError:
                    pass

    def wait(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout}s\n{self.stderr[-3000:]}") from None
        self.reader.join(timeout=10)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@dataclass
class Stage:
    """How to run one stage on a fresh output and compare its data."""

    name: str
    start_message: str
    args: Callable[[Path], list[str]]  # output folder -> CLI arguments
    prepare: Callable[[Path], None]  # fresh output folder for a run
    snapshot: Callable[[Path], dict[str, Any]]  # the data a user reads
    leftovers: Callable[[Path], list[str]]  # staging / temporary files / leases
    window: float = 0.0  # measured seconds from start_message to exit
    reference: dict[str, Any] = field(default_factory=dict)


# -- data snapshots ---------------------------------------------------------------------


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def hidden_leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".tmp-", ".lease-")) or p.name.endswith(".lease")
    )


def mirror_snapshot(dest: Path) -> dict[str, Any]:
    files = files_of(dest)
    manifest = orjson.loads(files.pop(".mirror-manifest.json"))
    copies = {k: (v["size"], v["md5"]) for k, v in manifest["copies"].items()}
    return {"files": files, "copies": copies}


def untar_snapshot(target: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rel, data in files_of(target).items():
        if rel.endswith("_COMPLETE"):
            doc = orjson.loads(data)
            doc.pop("completed_at", None)
            out[rel] = doc
        elif rel.endswith(".gz"):
            out[rel] = gzip.decompress(data)
        else:
            out[rel] = data
    return out


def table_rows(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[Any, ...]]:
    cols = [
        r[0]
        for r in con.execute(f'DESCRIBE "{schema}"."{table}"').fetchall()
        if r[0] not in RUN_COLUMNS
    ]
    select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
    rows = con.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall()
    return sorted(rows, key=repr)  # order-insensitive


def warehouse_snapshot(wh: Path, schema: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1",
            [schema],
        ).fetchall()
        for (t,) in tables:
            out[f"{schema}.{t}"] = table_rows(con, schema, t)
        if schema == "main":
            for p in sorted((wh / "parquet").rglob("*.parquet")):
                rows = con.execute("SELECT * FROM read_parquet(?)", [str(p)]).fetchall()
                out[str(p.relative_to(wh))] = sorted(rows, key=repr)
    return out


# -- the stages ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    """Inputs for each stage plus its clean, uninterrupted reference run."""
    base = tmp_path_factory.mktemp("signals")
    start = datetime(2021, 5, 1, tzinfo=EDT)
    types = ("echo", "discard", "http", "https")
    # Many small archives: the mirror and untar runs last long enough to be interrupted.
    archives = [ScanSpec(types[i % 4], 2, start + timedelta(hours=7 * i)) for i in range(80)]
    write_scan_archives(base / "gen", scans=archives, size=60, compresslevel=1)
    # Launcher input: Hyperquack on several dates (one queries transaction each) + Satellite.
    scans = [ScanSpec(types[i % 4], 1 + i % 2, start + timedelta(days=i)) for i in range(6)]
    scans.append(ScanSpec("satellite", 2, start + timedelta(days=9)))
    write_scan_archives(base / "lau", scans=scans, size=40, compresslevel=1)
    launcher_input = base / "lau" / "scans"
    base_wh = base / "base_wh"  # launcher output, the input of every queries trial

    def fresh(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def fresh_queries(path: Path) -> None:
        fresh(path)
        shutil.copytree(base_wh, path)

    gen = str(base / "gen" / "archives")
    result: dict[str, Stage] = {
        "mirror": Stage(
            "mirror",
            "staging_swept",
            lambda out: ["services.mirror", "archives", "--source", gen, "--dest", str(out)],
            fresh,
            mirror_snapshot,
            hidden_leftovers,
        ),
        "untar": Stage(
            "untar",
            "staging_swept",
            lambda out: [
                "services.untar",
                "--raw",
                gen,
                "--target",
                str(out),
                "--compresslevel",
                "1",
            ],
            fresh,
            untar_snapshot,
            hidden_leftovers,
        ),
        "beam_launcher": Stage(
            "beam_launcher",
            "resources_loaded",
            lambda out: [
                "services.beam_launcher",
                "--input",
                str(launcher_input),
                "--warehouse",
                str(out),
            ],
            fresh,
            lambda wh: warehouse_snapshot(wh, "main"),
            lambda wh: sorted(str(p) for p in (wh / "staging").glob("*")),
        ),
        "queries": Stage(
            "queries",
            "table_replaced",
            lambda out: ["services.queries", "--warehouse", str(out), "--max-days-per-job", "1"],
            fresh_queries,
            lambda wh: warehouse_snapshot(wh, "derived"),
            hidden_leftovers,
        ),
    }
    # Clean reference runs, timed from the stage's first log line to its exit.
    for name in ("mirror", "untar", "beam_launcher", "queries"):
        stage = result[name]
        out = base / f"ref_{name}"
        stage.prepare(out)
        proc = StageProcess(command(stage, out), stage.start_message)
        assert proc.running.wait(120), proc.stderr[-3000:]
        t0 = time.monotonic()
        rc = proc.wait()
        stage.window = time.monotonic() - t0
        assert rc == 0, proc.stderr[-3000:]
        assert stage.leftovers(out) == []
        stage.reference = stage.snapshot(out)
        if name == "beam_launcher":
            shutil.copytree(out, base_wh)
    return result


def metrics_file_of(out: Path) -> Path:
    return out.parent / f"{out.name}.prom"


def command(stage: Stage, out: Path) -> list[str]:
    return [*stage.args(out), "--metrics-file", str(metrics_file_of(out))]


@dataclass
class Outcome:
    stage: str
    signame: str
    delay: float
    rc: int
    hit: bool


def interrupt_and_rerun(stage: Stage, out: Path, rng: random.Random) -> Outcome:
    """One trial: start, signal at a random moment, check, rerun, compare with the reference."""
    sig = rng.choice([signal.SIGTERM, signal.SIGINT])
    delay = rng.uniform(0.02, 0.6) * stage.window
    where = f"seed={SEED} stage={stage.name} signal={sig.name} delay={delay:.3f}s"
    stage.prepare(out)
    metrics_file = metrics_file_of(out)
    metrics_file.unlink(missing_ok=True)
    proc = StageProcess(command(stage, out), stage.start_message)
    assert proc.running.wait(120), f"{where}: never started\n{proc.stderr[-3000:]}"
    time.sleep(delay)
    if proc.proc.poll() is None:
        proc.proc.send_signal(sig)
    rc = proc.wait()
    aborted = [r for r in json_lines(proc.stderr) if message(r) == "run_aborted"]
    if rc == 0:  # finished before the signal arrived
        assert not aborted, where
    else:
        assert rc == EXPECTED_RC[sig], f"{where}: exit {rc}\n{proc.stderr[-3000:]}"
        assert len(aborted) == 1, f"{where}: {len(aborted)} run_aborted lines"
        assert aborted[0]["signal"] == sig.name and aborted[0]["reason"].startswith(sig.name)
        pushed = metrics_file.read_text()
        assert "_last_failure_timestamp_seconds " in pushed, where
        assert "_last_success_timestamp_seconds" not in pushed, where
    assert stage.leftovers(out) == [], f"{where}: staging left behind"

    rerun = StageProcess(command(stage, out), stage.start_message)
    assert rerun.wait() == 0, f"{where}: rerun failed\n{rerun.stderr[-3000:]}"
    assert stage.leftovers(out) == [], f"{where}: staging left after the rerun"
    got = stage.snapshot(out)
    assert got.keys() == stage.reference.keys(), where
    for key, value in stage.reference.items():
        assert got[key] == value, f"{where}: {key} differs from the uninterrupted run"
    return Outcome(stage.name, sig.name, delay, rc, rc != 0)


def test_random_signals_leave_clean_rerunnable_state(
    stages: dict[str, Stage], tmp_path: Path
) -> None:
    print(f"CP_SIGNAL_SEED={SEED}")
    rng = random.Random(SEED)
    plan = ["mirror"] * 5 + ["untar"] * 6 + ["beam_launcher"] * 6 + ["queries"] * 5
    rng.shuffle(plan)
    outcomes = []
    for i, name in enumerate(plan):
        outcomes.append(interrupt_and_rerun(stages[name], tmp_path / f"t{i}_{name}", rng))
    print("measured run windows (s):", {n: round(s.window, 3) for n, s in stages.items()})
    for o in outcomes:
        print(f"{o.stage:14} {o.signame:8} delay={o.delay:6.3f}s exit={o.rc}")
    hits = sum(o.hit for o in outcomes)
    windows = {n: round(s.window, 2) for n, s in stages.items()}
    assert len(outcomes) >= 20
    # The delays are drawn from the measured run times: most signals must land mid-run.
    assert hits >= 0.6 * len(outcomes), (
        f"seed={SEED}: only {hits} of {len(outcomes)} signals hit a running stage "
        f"(windows {windows})"
    )
    for name in stages:
        assert any(o.hit for o in outcomes if o.stage == name), f"seed={SEED}: {name} never hit"


# -- the start-up sweep -----------------------------------------------------------------

HOLD_SCRIPT = """
import sys, time
from services.common import lifecycle
area = lifecycle.StagingArea(sys.argv[1], "holder")
path = area.claim(sys.argv[2])
import os; os.makedirs(path); open(os.path.join(path, "part"), "wb").write(b"x" * 100)
print("ready", flush=True)
time.sleep(60)
"""


def lease(path: Path, **doc: Any) -> None:
    base = lifecycle.lease_doc("test")
    path.write_bytes(orjson.dumps({**base, **doc}))


def staged(root: Path, name: str, size: int) -> Path:
    d = root / name
    (d / "_stats").mkdir(parents=True)
    (d / "_stats" / "f.json").write_bytes(b"y" * size)
    return d


def test_sweep_removes_dead_owners_and_keeps_live_ones(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    # A live run in another process, holding its staging through a real lease.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(root), "live-run"],
        cwd=REPO,
        env=stage_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            text=True,
            capture_output=True,
            check=True,
        )
        dead_pid = int(dead.stdout)
        staged(root, "dead-run", 1000)
        lease(root / "dead-run.lease", pid=dead_pid, start_ticks=12345)
        staged(root, "reused-pid", 10)  # pid alive (the holder) but a different process
        lease(root / "reused-pid.lease", pid=holder.pid, start_ticks=1)
        staged(root, "no-lease", 20)
        staged(root, "other-host-fresh", 30)
        lease(root / "other-host-fresh.lease", host=socket.gethostname() + "-x", pid=1)
        staged(root, "other-host-old", 40)
        lease(
            root / "other-host-old.lease",
            host=socket.gethostname() + "-x",
            pid=1,
            created=time.time() - 48 * 3600,
        )
        lease(root / "gone.lease", pid=dead_pid, start_ticks=1)  # its folder is gone

        report = lifecycle.StagingArea(str(root), "beam_launcher").sweep()

        assert holder.poll() is None
        left = sorted(p.name for p in root.iterdir())
        assert left == ["live-run", "live-run.lease", "other-host-fresh", "other-host-fresh.lease"]
        assert (root / "live-run" / "part").read_bytes() == b"x" * 100
        assert (report.removed_dirs, report.removed_bytes) == (4, 1000 + 10 + 20 + 40)
        assert (report.kept_live, report.kept_unknown) == (1, 1)
    finally:
        holder.kill()
        holder.wait()
    # Once its owner is gone, the live run's staging goes too.
    report = lifecycle.StagingArea(str(root), "beam_launcher").sweep()
    assert sorted(p.name for p in root.iterdir()) == ["other-host-fresh", "other-host-fresh.lease"]
    assert (report.removed_dirs, report.removed_bytes) == (1, 100)


def test_temp_sweep_respects_a_live_writer(tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    dest.mkdir()
    old_tmp = dest / ".tmp-old"
    old_tmp.write_bytes(b"a" * 50)
    # A live writer (another process) holds the folder: its young temps must stay.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease(
            dest / f".lease-{holder.pid}.lease",
            pid=holder.pid,
            start_ticks=lifecycle.process_start_ticks(holder.pid),
        )
        first = lifecycle.TempLease(str(dest), "mirror", 3600)
        report = first.claim_and_sweep()
        first.release()
        assert report is not None and report.kept_live == 1 and report.removed_files == 0
        assert old_tmp.exists()
    finally:
        holder.kill()
        holder.wait()
    # The writer is gone: its lease and every temp older than the new run go at once.
    temps = lifecycle.TempLease(str(dest), "mirror", 3600)
    report = temps.claim_and_sweep()
    assert report is not None and (report.removed_files, report.removed_bytes) == (1, 50)
    temps.release()
    assert sorted(p.name for p in dest.iterdir()) == []
