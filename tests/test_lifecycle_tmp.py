"""Per-process temp folders: nothing a killed stage put in TMPDIR outlives the next start.

Each stage process (``lifecycle.run_main``) keeps its temp files in its own leased folder
``<TMPDIR>/cp-run-tmp/<stage>-<pid>-<ticks>/``; Beam's ``beam-pipeline-temp*`` folders and
the temp files of child processes (Beam's multi-process workers inherit ``TMPDIR``) land
there. A killed process's folder is removed by the next stage that starts, unless a live
process still uses it; nothing else in TMPDIR is touched. Real processes and SIGKILL.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from sampledata import generate_hyperquack_records, go_json_line
from services.common import lifecycle

REPO = Path(__file__).resolve().parents[1]
BEAM_PREFIX = "beam-pipeline-temp"


def env_with_tmp(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env.update(PYTHONPATH=str(REPO), TMPDIR=str(tmp), CP_PROGRESS="0")
    return env


def run_root(tmp: Path) -> Path:
    return tmp / lifecycle.RUN_TMP_ROOT


def write_input(root: Path, n: int = 3000) -> Path:
    """One Hyperquack echo scan file, big enough for the pipeline to live a few seconds."""
    start = datetime(2021, 5, 30, 1, 1, 1, tzinfo=timezone(timedelta(hours=-4)))
    scan = root / "CP_Quack-echo-2021-05-30-01-01-01"
    scan.mkdir(parents=True)
    records = generate_hyperquack_records("echo", 2, n, 7, start)
    (scan / "results.json.gz").write_bytes(
        gzip.compress(b"".join(go_json_line(r) + b"\n" for r in records))
    )
    return root


def beam_temps(tmp: Path) -> list[Path]:
    return sorted(p for p in tmp.rglob(f"{BEAM_PREFIX}*") if p.is_dir())


def test_killed_launcher_leaves_no_beam_temp_after_the_next_start(tmp_path: Path) -> None:
    """Fails on the old code: the killed launcher's ``beam-pipeline-temp*`` stayed in
    TMPDIR for good (Beam removes it only at the end of ``Pipeline.run``)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    inp = write_input(tmp_path / "input")
    wh = tmp_path / "wh"
    argv = [sys.executable, "-m", "services.beam_launcher", "--input", str(inp)]
    argv += ["--warehouse", str(wh)]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env_with_tmp(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not beam_temps(tmp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = beam_temps(tmp)
    proc.kill()
    stderr = proc.communicate()[1].decode()
    assert seen, f"the launcher never made a Beam temp folder (exit {proc.returncode})\n{stderr}"
    assert proc.returncode == -signal.SIGKILL, "the launcher ended before it was killed"
    # Where Beam put it: inside the launcher's own folder, not loose in TMPDIR.
    own = run_root(tmp) / f"beam_launcher-{proc.pid}-"
    assert all(str(p).startswith(str(own)) for p in seen), seen
    assert beam_temps(tmp), "the folder was gone before the next start"

    rerun = subprocess.run(argv, cwd=REPO, env=env_with_tmp(tmp), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert beam_temps(tmp) == []
    assert sorted(p.name for p in tmp.iterdir()) == [lifecycle.RUN_TMP_ROOT]
    assert list(run_root(tmp).iterdir()) == []
    swept = [
        orjson.loads(line)
        for line in rerun.stderr.splitlines()
        if line.startswith("{") and '"run_tmp_swept"' in line
    ]
    assert len(swept) == 1 and swept[0]["removed_dirs"] == 1, rerun.stderr[-3000:]


# A stage process (run_main) that reports its temp folder, optionally starts a child that
# inherits TMPDIR (as Beam's worker subprocesses do), writes a file, and waits.
HOLDER = """
import os, subprocess, sys, tempfile, time
from services.common import lifecycle

def main() -> int:
    folder = tempfile.mkdtemp(prefix="work-")
    open(os.path.join(folder, "part"), "wb").write(b"x" * 100)
    child = None
    if sys.argv[1] == "child":
        child = subprocess.Popen([sys.executable, "-c",
            "import tempfile, time; tempfile.mkstemp(prefix='child-'); time.sleep(120)"])
    print(os.environ["TMPDIR"], tempfile.gettempdir(), child.pid if child else 0, flush=True)
    time.sleep(120)
    return 0

sys.exit(lifecycle.run_main("holder", main))
"""


def start_holder(tmp: Path, mode: str) -> tuple[subprocess.Popen[str], Path, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, mode],
        cwd=REPO,
        env=env_with_tmp(tmp),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    env_tmp, py_tmp, child = proc.stdout.readline().split()
    assert env_tmp == py_tmp, "TMPDIR and tempfile.tempdir differ"
    return proc, Path(env_tmp), int(child)


def wait_file(folder: Path, prefix: str) -> None:
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(prefix) for p in folder.iterdir()):
        assert time.monotonic() < deadline, f"no {prefix}* in {folder}"
        time.sleep(0.02)


def sweep_by_a_new_start(tmp: Path) -> lifecycle.RunTemp:
    """What a starting stage does (in this process: TMPDIR is the test's ``tmp``)."""
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    import tempfile

    saved = tempfile.tempdir
    tempfile.tempdir = None
    try:
        run = lifecycle.RunTemp("probe")
        assert run.enter() is not None
        run.exit()
    finally:
        tempfile.tempdir = saved
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
    return run


def test_start_sweeps_dead_processes_folders_only(tmp_path: Path) -> None:
    """A live stage's folder stays; a killed stage's folder stays while a child of it still
    runs with it as TMPDIR, and goes once the child is gone; foreign entries stay."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    (tmp / f"{BEAM_PREFIX}-foreign").mkdir()  # not ours (no lease): never touched
    (tmp / "someone-else.txt").write_bytes(b"z")
    live, live_dir, _ = start_holder(tmp, "alone")
    dead, dead_dir, _ = start_holder(tmp, "alone")
    orphaned, orphan_dir, child_pid = start_holder(tmp, "child")
    try:
        for d in (live_dir, dead_dir, orphan_dir):
            assert d.parent == run_root(tmp), d
            wait_file(d, "work-")
        wait_file(orphan_dir, "child-")
        for p in (dead, orphaned):
            p.kill()
            p.wait()
        assert os.path.exists(f"/proc/{child_pid}")  # the child outlived its parent

        run = sweep_by_a_new_start(tmp)
        report = run.report
        assert run.users == {orphan_dir.name: [child_pid]}  # named in run_tmp_swept
        kept = [live_dir, orphan_dir]
        leases = [d.with_name(d.name + lifecycle.LEASE_SUFFIX) for d in kept]
        assert sorted(run_root(tmp).iterdir()) == sorted(kept + leases)
        assert (report.removed_dirs, report.removed_bytes, report.kept_live) == (1, 100, 2)
        assert (live_dir / next(iter(os.listdir(live_dir))) / "part").exists()

        os.kill(child_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child_pid}") and time.monotonic() < deadline:
            time.sleep(0.02)  # reaped by init (it was re-parented when its parent died)
        report = sweep_by_a_new_start(tmp).report
        assert (report.removed_dirs, report.kept_live) == (1, 1)
        assert not orphan_dir.exists() and live_dir.exists()
    finally:
        for p in (live, dead, orphaned):
            p.kill()
            p.wait()
        if os.path.exists(f"/proc/{child_pid}"):
            os.kill(child_pid, signal.SIGKILL)
    # The holder killed last is gone too: only foreign entries are left.
    sweep_by_a_new_start(tmp)
    assert list(run_root(tmp).iterdir()) == []
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        [f"{BEAM_PREFIX}-foreign", "someone-else.txt", lifecycle.RUN_TMP_ROOT]
    )


def test_a_stage_that_ends_removes_its_folder_and_restores_tmpdir(tmp_path: Path) -> None:
    """Normal end, failure and a stop signal: the folder goes, nothing else changes."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    for how, code in (("return 0", 0), ("raise RuntimeError('x')", 1)):
        script = (
            "import sys, tempfile, os\nfrom services.common import lifecycle\n"
            "def main():\n    tempfile.mkdtemp(prefix='beam-pipeline-temp')\n"
            f"    {how}\n"
            "try:\n    code = lifecycle.run_main('t', main)\n"
            "except RuntimeError:\n    code = 1\n"
            "assert os.environ['TMPDIR'] == sys.argv[1], os.environ['TMPDIR']\n"
            "assert tempfile.gettempdir() == sys.argv[1]\n"
            "sys.exit(code)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp)], cwd=REPO, env=env_with_tmp(tmp)
        )
        assert done.returncode == code, how
        assert list(run_root(tmp).iterdir()) == [], how
    term, term_dir, _ = start_holder(tmp, "alone")
    wait_file(term_dir, "work-")
    term.send_signal(signal.SIGTERM)
    assert term.wait(30) == 143
    assert list(run_root(tmp).iterdir()) == []


@pytest.mark.slow
def test_multi_process_beam_workers_write_temps_inside_the_run_folder(tmp_path: Path) -> None:
    """Beam's FnApiRunner in multi_processing mode: the worker subprocesses' temp files
    are inside the launching process's folder, and a SIGKILLed launcher's folder (with the
    workers' files) is removed by the next start once its workers are gone."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    script = """
import os, sys, tempfile, time
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from services.common import lifecycle

def where(_x):
    fd, path = tempfile.mkstemp(prefix="worker-")
    os.close(fd)
    return (os.getpid(), path)

def main() -> int:
    opts = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=2)
    with beam.Pipeline(runner="FnApiRunner", options=opts) as p:
        _ = (p | beam.Create(range(4)) | beam.Map(where)
             | beam.Map(lambda t: os.write(1, f"temp {t[0]} {t[1]}\\n".encode())))
    print("done", os.getpid(), tempfile.gettempdir(), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(120)
    return 0

sys.exit(lifecycle.run_main("mp", main))
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "hang"],
        cwd=REPO,
        env=env_with_tmp(tmp),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids, paths = set(), []
    try:
        for line in proc.stdout:
            # Worker subprocesses share this pipe with Beam and gRPC, which may print
            # lines of their own: only the lines the script writes (one atomic write each)
            # are read.
            if line.startswith("done "):
                _, main_pid, own = line.split()
                break
            if line.startswith("temp "):
                _, pid, path = line.split()
                pids.add(int(pid))
                paths.append(Path(path))
        else:
            pytest.fail(f"the pipeline did not run (exit {proc.wait()})")
        assert len(paths) == 4, paths
        assert int(main_pid) not in pids, "no worker subprocess did the work"
        assert all(p.parent == Path(own) and p.exists() for p in paths), (own, paths)
        assert Path(own).parent == run_root(tmp)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    report = sweep_by_a_new_start(tmp).report
    assert report.removed_dirs == 1 and report.removed_files >= len(paths)
    assert list(run_root(tmp).iterdir()) == []
    assert sorted(p.name for p in tmp.iterdir()) == [lifecycle.RUN_TMP_ROOT]


def test_half_written_lease_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    """A process killed between writing its lease and renaming it leaves
    ``.tmp-<stage>-<pid>-<ticks>.lease``: removed once old and its process is gone; a
    live process's (or a fresh) one stays."""
    tmp = tmp_path / "tmpdir"
    root = run_root(tmp)
    root.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    me = os.getpid()
    parts = {
        "dead-old": root / f".tmp-beam_launcher-{int(gone.stdout)}-12345.lease",
        "dead-fresh": root / f".tmp-mirror-{int(gone.stdout)}-999.lease",
        "live-old": root / f".tmp-untar-{me}-{lifecycle.process_start_ticks(me)}.lease",
    }
    for key, p in parts.items():
        p.write_bytes(b"{")
        if key.endswith("old"):
            os.utime(p, (time.time() - 3600, time.time() - 3600))
    sweep_by_a_new_start(tmp)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [parts["dead-fresh"].name, parts["live-old"].name]
    )


def test_sweep_line_comes_with_the_stages_own_sweep(tmp_path: Path) -> None:
    """``--help`` and a usage error (no work begun) still sweep but their stderr stays as
    it was (empty; one ``usage_error`` line); a real run writes one ``run_tmp_swept``
    line through the stage's logging (JSON, labelled) beside its own start-up sweep."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    missing = str(tmp_path / "warehuose")
    cases = [
        (["services.mirror", "--help"], 0),
        (["services.queries", "--warehouse", missing], 2),
        (["services.mirror", "archives", "--source", str(tmp_path), "--dest", str(tmp_path)], 0),
    ]
    for argv, code in cases:
        dead, dead_dir, _ = start_holder(tmp, "alone")
        wait_file(dead_dir, "work-")
        dead.kill()
        dead.wait()
        done = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=REPO,
            env=env_with_tmp(tmp),
            capture_output=True,
            text=True,
        )
        assert done.returncode == code, done.stderr[-3000:]
        assert not dead_dir.exists(), argv
        lines = [orjson.loads(x) for x in done.stderr.splitlines()]
        swept = [r for r in lines if r.get("message") == "run_tmp_swept"]
        if argv[-1] == "--help":
            assert done.stderr == ""
        elif code == 2:  # the one line naming the missing warehouse, nothing else
            assert len(lines) == 1 and not swept, done.stderr
        else:
            assert len(swept) == 1 and swept[0]["removed_dirs"] == 1, done.stderr
            assert swept[0]["logging.googleapis.com/labels"]["stage"] == "mirror"
