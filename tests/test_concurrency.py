"""A nightly run and a backfill started together over overlapping dates, as real launcher
processes, on the DuckDB warehouse and on BigQuery (bqemulator): the final tables equal
one sequential run every time, and each run's summary says what it did and what it left
to the other. Also: a run with nothing to write opens the warehouse read-only and creates
nothing; the queries service refuses a missing warehouse with exit 2.

The start offsets are random (seed printed; ``CP_CONCURRENCY_SEED`` replays one).
"""

from __future__ import annotations

import abc
import datetime as dt
import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import sampledata as ss
from services.beam_launcher.warehouse.local import LocalLeases
from services.beam_launcher.warehouse.rows import ALL_TABLES, PROCESSED_FILES
from tests.bq_server import PROJECT, BigQueryServer, emulator_environment
from tests.helpers_launcher import run_launcher, start_launcher, stderr_until
from tests.test_bigquery_emulator import bq_rows, duck_rows, normalised, write_scan

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("CP_CONCURRENCY_TRIALS", "10"))
# The second run starts within this share of one run's duration (measured by the sequential
# reference run on this machine): its start lands in every phase of the first run.
MAX_OFFSET_SHARE = 0.9
RUN_TIMEOUT_S = 300.0
TZ = dt.UTC

# Four days of scans; the backfill window is the middle two.
SCANS = (
    ss.ScanSpec("echo", 2, dt.datetime(2021, 6, 1, 1, 0, 0, tzinfo=TZ)),
    ss.ScanSpec("http", 2, dt.datetime(2021, 6, 1, 2, 0, 0, tzinfo=TZ)),
    ss.ScanSpec("echo", 2, dt.datetime(2021, 6, 2, 1, 0, 0, tzinfo=TZ)),
    ss.ScanSpec("echo", 1, dt.datetime(2021, 6, 3, 1, 0, 0, tzinfo=TZ)),
    ss.ScanSpec("http", 2, dt.datetime(2021, 6, 3, 2, 0, 0, tzinfo=TZ)),
    ss.ScanSpec("echo", 2, dt.datetime(2021, 6, 4, 1, 0, 0, tzinfo=TZ)),
)
WINDOW = ["--start-date", "2021-06-02", "--end-date", "2021-06-03"]
# Backfill variants, alternated over the trials: every scan type in the window, or a
# rebuild of one scan type's window (--full) while the nightly run wants the same files.
BACKFILLS = (WINDOW, [*WINDOW, "--scan-type", "echo", "--full"])


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concurrency-input")
    for i, spec in enumerate(SCANS):
        write_scan(root, spec, 12, seed=100 + i)
    return root


def seed() -> int:
    value = int(os.environ.get("CP_CONCURRENCY_SEED") or secrets.randbits(32))
    print(f"concurrency seed: {value} (CP_CONCURRENCY_SEED={value} replays these offsets)")
    return value


@dataclass
class Launch:
    name: str
    proc: subprocess.Popen[bytes]
    started: float

    def finish(self) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}: {tail}"
        summary: dict[str, Any] = orjson.loads(out)
        return summary


class Sink(abc.ABC):
    """Where the runs write and how to read the final tables back."""

    @abc.abstractmethod
    def command(self, extra: list[str]) -> list[str]: ...

    @abc.abstractmethod
    def tables(self) -> dict[str, list[bytes]]: ...

    @abc.abstractmethod
    def leftovers(self) -> list[str]:
        """Leases or staging a finished pair of runs left behind (must be none)."""
        ...

    @abc.abstractmethod
    def fresh(self) -> None: ...

    @abc.abstractmethod
    def ledger_runs(self) -> dict[str, str]:
        """file_key -> run id of the ledger row (which run committed the file last)."""
        ...

    def start(self, name: str, extra: list[str]) -> Launch:
        env = {**os.environ, "LOG_LEVEL": "INFO"}
        env.pop("CP_NEXT_STAGE", None)
        proc = subprocess.Popen(
            self.command(extra),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return Launch(name, proc, time.monotonic())


class DuckSink(Sink):
    def __init__(self, input_dir: Path, root: Path) -> None:
        self.input, self.root = input_dir, root
        self.warehouse = root / "wh-0"
        self.n = 0

    def fresh(self) -> None:
        self.n += 1
        self.warehouse = self.root / f"wh-{self.n}"

    def command(self, extra: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "services.beam_launcher",
            "--input",
            str(self.input),
            "--warehouse",
            str(self.warehouse),
            "--bad-line-threshold",
            "0.5",
            *extra,
        ]

    def tables(self) -> dict[str, list[bytes]]:
        return {s.name: normalised(s, duck_rows(self.warehouse, s.name)) for s in ALL_TABLES}

    def ledger_runs(self) -> dict[str, str]:
        return {r["file_key"]: r["run_id"] for r in duck_rows(self.warehouse, "processed_files")}

    def leftovers(self) -> list[str]:
        leases = sorted(p.name for p in (self.warehouse / "leases").glob("*.lease"))
        staging = self.warehouse / "staging"
        return leases + (sorted(p.name for p in staging.iterdir()) if staging.is_dir() else [])


class BigQuerySink(Sink):
    def __init__(self, input_dir: Path, server: BigQueryServer) -> None:
        self.input, self.server = input_dir, server
        self.client = server.client()
        self.bucket = f"cc-{secrets.token_hex(4)}"
        server.gcs_client().create_bucket(self.bucket)
        self.dataset = ""

    def fresh(self) -> None:
        self.dataset = f"cc_{secrets.token_hex(4)}"

    def command(self, extra: list[str]) -> list[str]:
        args = [
            "--input",
            str(self.input),
            "--sink",
            "bigquery",
            "--bq-project",
            PROJECT,
            "--bq-dataset",
            self.dataset,
            "--temp-location",
            f"gs://{self.bucket}/tmp-{self.dataset}",
            "--bad-line-threshold",
            "0.5",
            *extra,
        ]
        return [
            sys.executable,
            "-m",
            "tests.test_concurrency",
            self.server.endpoint,
            self.server.gcs_endpoint,
            *args,
        ]

    def tables(self) -> dict[str, list[bytes]]:
        return {
            s.name: normalised(s, bq_rows(self.client, self.dataset, s.name), loaded_bytes=True)
            for s in ALL_TABLES
        }

    def ledger_runs(self) -> dict[str, str]:
        rows = bq_rows(self.client, self.dataset, "processed_files")
        return {r["file_key"]: r["run_id"] for r in rows}

    def leftovers(self) -> list[str]:
        names = [
            t.table_id for t in self.client.list_tables(f"{PROJECT}.{self.dataset}", timeout=30)
        ]
        leases = [
            r["unit"]
            for r in self.client.query(
                f"SELECT unit FROM `{PROJECT}.{self.dataset}._file_leases`"
            ).result(timeout=30)
        ]
        return [n for n in names if n.startswith("_staging_")] + leases


def sequential(sink: Sink) -> tuple[dict[str, list[bytes]], float]:
    """The reference: the nightly run, then the backfill, one after the other; and how
    long the nightly run took."""
    sink.fresh()
    launch = sink.start("nightly", [])
    nightly = launch.finish()
    seconds = time.monotonic() - launch.started
    assert nightly["files_processed"] == nightly["files_found"] > 0
    assert not nightly["left_to_other_run"]
    sink.start("backfill", BACKFILLS[0]).finish()
    tables = sink.tables()
    ledger = [orjson.loads(r) for r in tables[PROCESSED_FILES.name]]
    assert len(ledger) == len({r["file_key"] for r in ledger}) >= nightly["files_found"]
    return tables, seconds


def _units(summary: dict[str, Any]) -> set[str]:
    return {e["file"] for e in summary["left_to_other_run"]}


def check_trial(
    sink: Sink, reference: dict[str, list[bytes]], a: dict[str, Any], b: dict[str, Any]
) -> None:
    final = sink.tables()
    for spec in ALL_TABLES:
        got, want = final[spec.name], reference[spec.name]
        assert len(got) == len(want), f"{spec.name}: {len(got)} rows, sequential run {len(want)}"
        assert got == want, f"{spec.name}: rows differ from the sequential run"
    assert sink.leftovers() == [], "leases or staging left behind"
    ledger = sink.ledger_runs()
    for mine, other in ((a, b), (b, a)):
        # Everything a run found is accounted for: done, unchanged, left or done by the other.
        assert mine["files_found"] >= mine["files_processed"]
        left = _units(mine)
        if left:
            # ... and what it left, the other run did (its run id is on those ledger rows).
            for unit in left:
                runs = {r for k, r in ledger.items() if k == unit or k.startswith(unit + "/")}
                assert runs == {other["run_id"]}, f"{unit} left to {other['run_id']}: {runs}"
            assert other["files_processed"] > 0


def run_trials(sink: Sink, rng: random.Random) -> list[str]:
    reference, run_s = sequential(sink)
    print(f"one run takes {run_s:.1f} s here; offsets up to {MAX_OFFSET_SHARE:.0%} of that")
    report = []
    for trial in range(TRIALS):
        backfill = BACKFILLS[trial % len(BACKFILLS)]
        offset = round(rng.uniform(0, MAX_OFFSET_SHARE) * run_s, 2)
        nightly_first = rng.random() < 0.5
        sink.fresh()
        order = [("nightly", []), ("backfill", backfill)]
        if not nightly_first:
            order.reverse()
        first = sink.start(*order[0])
        time.sleep(offset)
        second = sink.start(*order[1])
        s1, s2 = first.finish(), second.finish()
        took = round(time.monotonic() - first.started, 1)
        check_trial(sink, reference, s1, s2)
        report.append(
            f"trial {trial}: {order[1][0]} +{offset:.2f}s after {order[0][0]} "
            f"({' '.join(backfill)}): {order[0][0]} did {s1['files_processed']}, left "
            f"{len(s1['left_to_other_run'])}, done-by-other {len(s1['done_by_other_run'])}; "
            f"{order[1][0]} did {s2['files_processed']}, left {len(s2['left_to_other_run'])}, "
            f"done-by-other {len(s2['done_by_other_run'])} ({took} s)"
        )
        print(report[-1])
    return report


def test_nightly_and_backfill_together_on_duckdb(scans: Path, tmp_path: Path) -> None:
    rng = random.Random(seed())
    report = run_trials(DuckSink(scans, tmp_path), rng)
    assert len(report) == TRIALS


def test_nightly_and_backfill_together_on_bigquery(scans: Path, bq_server: BigQueryServer) -> None:
    rng = random.Random(seed())
    with emulator_environment(bq_server):
        report = run_trials(BigQuerySink(scans, bq_server), rng)
    assert len(report) == TRIALS


# -- a live run's leases: left alone, a rebuild refuses at once, a dead run's taken over ----


def _launch(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("CP_NEXT_STAGE", None)
    return run_launcher(["--bad-line-threshold", "0.5", *args], env, timeout=RUN_TIMEOUT_S)


def _events(stderr: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]


HOLD = """
import sys, time
from pathlib import Path
from services.beam_launcher.warehouse.local import LocalLeases
claim = LocalLeases(Path(sys.argv[1])).claim(sys.argv[2:], "20210601t000000-0a0b0c")
print(",".join(claim.mine), flush=True)
time.sleep(120)
"""


def test_leases_of_a_live_run_are_left_to_it_and_taken_over_once_it_died(
    scans: Path, tmp_path: Path
) -> None:
    echo = [ss.source_name(s.scan_type, s.start) + "/results.json" for s in SCANS[:1]]
    wh = tmp_path / "wh"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(wh), *echo],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == ",".join(echo)
        # A rebuild needs every file of its scan types: it refuses before any work.
        started = time.monotonic()
        rebuild = _launch(["--input", str(scans), "--warehouse", str(wh), "--full"])
        assert rebuild.returncode == 1
        failed = [e for e in _events(rebuild.stderr) if e["message"] == "run_failed"]
        assert len(failed) == 1, rebuild.stderr[-500:]
        assert "being processed by run 20210601t000000-0a0b0c" in failed[0]["reason"]
        assert not [e for e in _events(rebuild.stderr) if e["message"] == "run_start"]
        print(f"rebuild refused after {time.monotonic() - started:.1f} s: {failed[0]['reason']}")
        # An incremental run does everything else and names what it left.
        nightly = _launch(["--input", str(scans), "--warehouse", str(wh)])
        assert nightly.returncode == 0, nightly.stderr[-500:]
        summary = orjson.loads(nightly.stdout)
        assert summary["left_to_other_run"] == [
            {"file": echo[0], "held_by": summary["left_to_other_run"][0]["held_by"]}
        ]
        assert "run 20210601t000000-0a0b0c" in summary["left_to_other_run"][0]["held_by"]
        assert summary["files_processed"] == summary["files_found"] - 1
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing its lease (SIGKILL): the next run takes the file.
    after = _launch(["--input", str(scans), "--warehouse", str(wh)])
    assert after.returncode == 0, after.stderr[-500:]
    summary = orjson.loads(after.stdout)
    assert summary["files_processed"] == 1 and summary["left_to_other_run"] == []
    assert not list((wh / "leases").glob("*.lease"))


def test_files_committed_by_another_run_after_the_ledger_read_are_not_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow window between reading the ledger and taking the leases, made wide: the
    other run commits every file there; this run then processes none of them again and
    lists them in ``done_by_other_run``."""
    from services.beam_launcher.run import RunConfig, run
    from services.beam_launcher.warehouse.local import LocalTarget

    inp, wh = tmp_path / "in", tmp_path / "wh"
    for i, spec in enumerate(SCANS[:2]):
        write_scan(inp, spec, 8, seed=i)
    cfg = RunConfig(input=str(inp), warehouse=str(wh), bad_line_threshold=0.5)
    real_claim = LocalTarget.claim
    other: list[Any] = []

    def claim(self: LocalTarget, units: list[str], run_id: str) -> Any:
        if not other:  # the other run, start to end, between this run's ledger read and claim
            other.append(None)
            other[0] = run(cfg)
        return real_claim(self, units, run_id)

    monkeypatch.setattr(LocalTarget, "claim", claim)
    summary = run(cfg)
    assert other[0].files_processed == 2
    assert summary.files_processed == 0
    assert summary.done_by_other_run == sorted(
        ss.source_name(s.scan_type, s.start) + "/results.json" for s in SCANS[:2]
    )
    assert summary.left_to_other_run == []


QUERIES_HOLDER = """
import sys
from services.queries.backends import DuckDBBackend
backend = DuckDBBackend(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()  # held until the test says so
backend.close()
"""


def test_launcher_waits_for_a_queries_run_instead_of_failing(tmp_path: Path) -> None:
    """The queries service holds the warehouse (DuckDB opened for writing) for its run; a
    launcher that needs the database meanwhile waits, logged, and then does its work
    (before, it failed at once on DuckDB's file lock)."""
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, SCANS[0], 8, seed=5)
    assert _launch(["--input", str(inp), "--warehouse", str(wh)]).returncode == 0
    write_scan(inp, SCANS[1], 8, seed=6)
    holder = subprocess.Popen(
        [sys.executable, "-c", QUERIES_HOLDER, str(wh)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "open"
        env = {k: v for k, v in os.environ.items() if k != "CP_NEXT_STAGE"}
        args = ["--input", str(inp), "--warehouse", str(wh), "--bad-line-threshold", "0.5"]
        launcher = start_launcher(args, env)
        # until the launcher says it waits (or ends)
        before = stderr_until(launcher, '"warehouse_lock_wait"')
        time.sleep(1.0)  # the queries run goes on a little longer
    finally:
        holder.stdin.close()  # the queries run ends: its lock goes
        holder.wait(timeout=60)
    out, rest = launcher.communicate(timeout=RUN_TIMEOUT_S)
    assert launcher.returncode == 0, rest[-500:]
    assert orjson.loads(out)["files_processed"] == 1
    events = _events("".join(before) + rest)
    waits = [e for e in events if e["message"] == "warehouse_lock_wait"]
    acquired = [e for e in events if e["message"] == "warehouse_lock_acquired"]
    assert waits and acquired, "the launcher never waited for the queries run"
    assert acquired[0]["waited_s"] >= 1.0


# -- item 4: read-only when there is nothing to write; nothing created at a wrong path ------


READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("open", flush=True)
time.sleep(120)
"""


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_run_with_nothing_to_write_opens_the_warehouse_read_only(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, SCANS[0], 8, seed=5)
    assert _launch(["--input", str(inp), "--warehouse", str(wh)]).returncode == 0
    before = _listing(wh)
    # Another process holds the database open read-only: DuckDB then refuses any process
    # that opens it for writing, and lets readers in.
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(wh / "warehouse.duckdb")], stdout=subprocess.PIPE
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == b"open"
        writer = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import duckdb; duckdb.connect({str(wh / 'warehouse.duckdb')!r})",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert writer.returncode != 0 and "lock" in writer.stderr.lower(), "probe is blind"
        again = _launch(["--input", str(inp), "--warehouse", str(wh)])
        assert again.returncode == 0, again.stderr[-500:]
        summary = orjson.loads(again.stdout)
        assert summary["files_processed"] == 0 and summary["files_skipped_unchanged"] == 1
    finally:
        reader.kill()
        reader.wait()
    assert _listing(wh) == before, "a run with nothing to write changed the warehouse folder"


def test_nothing_is_created_at_a_mistyped_warehouse_path(tmp_path: Path) -> None:
    typo = tmp_path / "warehuose"
    empty = tmp_path / "empty-input"
    empty.mkdir()
    done = _launch(["--input", str(empty), "--warehouse", str(typo)])
    assert done.returncode == 0, done.stderr[-500:]
    assert [e for e in _events(done.stderr) if e["message"] == "no_input_files"]
    assert not typo.exists(), "the launcher created a warehouse with nothing to write"
    queries = subprocess.run(
        [sys.executable, "-m", "services.queries", "--warehouse", str(typo)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert queries.returncode == 2
    lines = queries.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(typo / "warehouse.duckdb") in lines[0]
    assert not typo.exists(), "the queries service created a database at a mistyped path"


# -- a child process: the launcher pointed at the test's BigQuery and GCS emulators ---------


def _bq_child(endpoint: str, gcs_endpoint: str, argv: list[str]) -> int:
    """``python -m services.beam_launcher`` with the test servers' environment (anonymous
    credentials, loopback only, script parameters inlined: see tests/bq_server.py)."""
    from services.beam_launcher.__main__ import main
    from services.common import lifecycle

    server = BigQueryServer(endpoint, gcs_endpoint, Path(os.devnull))
    with emulator_environment(server):
        return lifecycle.run_main("beam_launcher", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(_bq_child(sys.argv[1], sys.argv[2], sys.argv[3:]))


def test_claim_sweeps_dead_leases_and_half_written_lease_files(tmp_path: Path) -> None:
    """A killed run's leases (and a lease killed between write and rename) are removed by
    the next claim; a live run's lease stays."""
    leases = LocalLeases(tmp_path)
    held = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "live/results.json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    dead = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "dead/results.json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout is not None and dead.stdout is not None
        assert held.stdout.readline().strip() == "live/results.json"
        assert dead.stdout.readline().strip() == "dead/results.json"
        dead.kill()
        dead.wait()
        half = tmp_path / "leases" / "other.lease.4242.tmp"
        half.write_bytes(b'{"run_id": "x"')
        before = sorted(p.name for p in (tmp_path / "leases").iterdir())
        assert len([n for n in before if n.endswith(".lease")]) == 2
        claim = leases.claim(["new/results.json"], "20210602t000000-0d0e0f")
        assert claim.mine == ["new/results.json"]
        after = sorted(p.name for p in (tmp_path / "leases").glob("*.lease*"))
        assert len(after) == 2  # the live run's and the new one
        assert not half.exists()
        docs = [orjson.loads(p.read_bytes()) for p in (tmp_path / "leases").glob("*.lease")]
        assert sorted(d["unit"] for d in docs) == ["live/results.json", "new/results.json"]
    finally:
        for proc in (held, dead):
            proc.kill()
            proc.wait()
