"""Workers forked from the launcher (``services/beam_launcher/zygote.py``), real processes.

A small script plays the launcher: it starts a zygote whose worker function echoes its
environment and ends with the code the request asks for, then asks for workers the way
the guard does. Checked: stdio and environment reach the worker, exit codes and kill
signals come back, every worker is the zygote's child, nothing outlives a SIGKILLed
launcher, and a guard with no zygote to reach falls back (None). The launcher with two
forked workers against fresh ones is in ``tests/test_pipeline_workers.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.beam_launcher import worker, zygote
from services.common import logsetup

REPO = Path(__file__).resolve().parents[1]

LAUNCHER = textwrap.dedent(
    """
    import json, os, sys, time
    from services.beam_launcher import zygote

    def worker_main():
        print("out", os.environ["ASK"], os.getppid(), flush=True)
        sys.stderr.write("err line\\n")
        if os.environ["ASK"] == "sleep":
            time.sleep(60)
        sys.exit(int(os.environ["ASK"]) if os.environ["ASK"].isdigit() else 0)

    with zygote.forking(worker_main) as z:
        path = os.environ[zygote.ZYGOTE_ENV]
        report = {"launcher": os.getpid(), "zygote": z.pid, "workers": []}
        for ask in sys.argv[1:]:
            w = zygote.forked_worker({**os.environ, "ASK": ask})
            if ask == "sleep":  # once the worker has written all it will write
                w.stdout.readline()
                w.stderr.readline()
                print(json.dumps({**report, "sleeping": w.pid}), flush=True)
                time.sleep(60)
            out, err = w.stdout.read().decode(), w.stderr.read().decode()
            report["workers"].append(
                {"pid": w.pid, "out": out, "err": err, "code": w.wait(5)})
    report["after_close"] = zygote.forked_worker({**os.environ, zygote.ZYGOTE_ENV: path})
    report["env_left"] = zygote.ZYGOTE_ENV in os.environ
    report["folder_left"] = os.path.exists(os.path.dirname(path))
    print(json.dumps(report), flush=True)
    """
)


def launcher(*asks: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(zygote.ZYGOTE_ENV, None)
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *asks],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_workers_get_stdio_and_environment_and_report_exit_codes() -> None:
    proc = launcher("0", "3", "7")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert [w["code"] for w in report["workers"]] == [0, 3, 7]
    for w, ask in zip(report["workers"], ("0", "3", "7"), strict=True):
        # forked by the zygote: its parent, not the launcher
        assert w["out"] == f"out {ask} {report['zygote']}\n"
        assert w["err"] == "err line\n"
        assert w["pid"] not in (report["launcher"], report["zygote"])
    assert len({w["pid"] for w in report["workers"]}) == 3
    # closed: the socket folder and the variable are gone, a guard gets None (fresh start)
    assert report["after_close"] is None
    assert report["env_left"] is False and report["folder_left"] is False
    assert not alive(report["zygote"])


def test_a_sigkilled_launcher_takes_its_zygote_and_workers_along() -> None:
    proc = launcher("sleep")
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline())
    worker, zyg = report["sleeping"], report["zygote"]
    assert alive(worker) and alive(zyg)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while (alive(worker) or alive(zyg)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(zyg), "the zygote outlived the launcher"
    assert not alive(worker), "a forked worker outlived the launcher"


def test_a_killed_worker_reports_the_signal(tmp_path: Path) -> None:
    """The guard's view of a worker killed from outside: ``wait`` gives -SIGKILL, and
    ``poll`` before that gives None (still running)."""
    script = textwrap.dedent(
        """
        import json, os, signal, sys, time
        from services.beam_launcher import zygote

        def worker_main():
            time.sleep(60)

        with zygote.forking(worker_main):
            w = zygote.forked_worker()
            first = w.poll()
            os.kill(w.pid, signal.SIGKILL)
            code = w.wait(10)
            print(json.dumps({"first": first, "code": code, "poll": w.poll()}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == {"first": None, "code": -signal.SIGKILL, "poll": -signal.SIGKILL}


def test_no_zygote_means_a_fresh_worker(tmp_path: Path) -> None:
    assert zygote.forked_worker({}) is None
    assert zygote.forked_worker({zygote.ZYGOTE_ENV: str(tmp_path / "no-such-socket")}) is None


@pytest.mark.parametrize(
    ("value", "enabled"), [("0", False), ("off", False), ("no", False), ("1", True), ("", True)]
)
def test_fork_switch(value: str, enabled: bool) -> None:
    assert zygote.fork_enabled({zygote.FORK_ENV: value}) is enabled


def test_forget_configuration_gives_a_fresh_process_logging() -> None:
    """What a forked worker does first: the launcher's JSON handler, level and labels go,
    so Beam's log handler is the only root handler the worker ends up with."""
    import logging
    import threading

    saved = (list(logging.getLogger().handlers), logging.getLogger().level)
    try:
        logsetup.configure_logging("DEBUG", stage="beam_launcher", run_id="r1")
        assert logging.getLogger().handlers and sys.excepthook is not sys.__excepthook__
        logsetup.forget_configuration()
        root = logging.getLogger()
        assert root.handlers == [] and root.level == logging.WARNING
        assert logging.getLogger("apache_beam").level == logging.NOTSET
        assert sys.excepthook is sys.__excepthook__
        assert threading.excepthook is threading.__excepthook__
        assert logsetup._process_labels == {}
    finally:
        logsetup.forget_configuration()
        root = logging.getLogger()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def warehouse_rows(wh: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table of the local warehouse, rows sorted (the ledger without its times)."""
    import duckdb

    out = {}
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        for table in ("http_scan", "https_scan", "dead_letter"):
            out[table] = sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        out["ledger"] = con.execute(
            "SELECT file_key, status, reason, lines, rows_written, dead_letters "
            "FROM processed_files ORDER BY file_key"
        ).fetchall()
    return out


@pytest.mark.slow
def test_launcher_forked_and_fresh_workers_give_identical_tables(tmp_path: Path) -> None:
    """The real launcher with two workers and IP metadata, forked (the default: the
    resources and the reference tables are prepared before the fork) and fresh
    (``CP_FORK_WORKERS=0``): the same tables and ledger, rows enriched; the log says
    which start each run had."""
    from sampledata import HYPERQUACK_SCANS, write_scan_archives
    from sampledata.caida import write_caida
    from services.routeviews.__main__ import main as routeviews_main
    from tests.helpers_launcher import run_launcher
    from tests.test_pipeline_workers import launcher_env

    scans = tuple(s for s in HYPERQUACK_SCANS if s.scan_type in ("http", "https"))
    write_scan_archives(tmp_path / "sample", scans, size=400, bad_line_ratio=0.01)
    write_caida(tmp_path / "caida", scans, 400, 0)
    meta = tmp_path / "ipmeta"
    sync = ["sync", "--base-url", str(tmp_path / "caida"), "--dest", str(meta)]
    assert routeviews_main([*sync, "--snapshot-days", "36500", "--log-level", "ERROR"]) == 0
    results = {}
    for mode, env in (("forked", {}), ("fresh", {zygote.FORK_ENV: "0"})):
        wh = tmp_path / mode
        args = ["--input", str(tmp_path / "sample" / "scans"), "--warehouse", str(wh),
                "--workers", "2", "--ip-metadata", str(meta)]  # fmt: skip
        env = {**launcher_env(), "CP_IPMETA_CACHE": str(tmp_path / f"cache-{mode}"), **env}
        done = run_launcher(args, env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["stats"]["rows_with_asn"] > 0
        lines = [json.loads(line) for line in done.stderr.splitlines()]
        starts = [x for x in lines if x["message"] == "worker_start"]
        assert [(x["start"], x["workers"], x["prepared"]) for x in starts] == [
            (mode, 2, mode == "forked")
        ]
        assert not [x for x in lines if x.get("message") == "worker_output"]
        results[mode] = warehouse_rows(wh)
    assert results["forked"]["http_scan"] and results["forked"]["https_scan"], "no rows"
    assert results["forked"] == results["fresh"]


def test_prepared_objects_are_what_the_dofns_acquire(tmp_path: Path) -> None:
    """``prepare_shared`` builds the resources and the enricher (reference tables of the
    given dates loaded) that a DoFn set up later in the same process (a forked worker)
    acquires, instead of building its own."""
    from sampledata import HYPERQUACK_SCANS
    from sampledata.caida import scan_dates, write_caida
    from services.beam_launcher.hyperquack.pipeline import ProcessSlices, prepare_shared
    from services.routeviews.__main__ import main as routeviews_main

    scans = tuple(s for s in HYPERQUACK_SCANS if s.scan_type == "http")
    write_caida(tmp_path / "caida", scans, 50, 0)
    meta = tmp_path / "ipmeta"
    sync = ["sync", "--base-url", str(tmp_path / "caida"), "--dest", str(meta)]
    assert routeviews_main([*sync, "--snapshot-days", "36500", "--log-level", "ERROR"]) == 0
    sample = str(REPO / "resources" / "sample")
    day = scan_dates(scans)[0].isoformat()
    held = prepare_shared(sample, str(meta), 30, [day, day])
    resources, enricher = held
    assert len(enricher._tables) == 1  # the day's tables, loaded once
    dofn = ProcessSlices(str(tmp_path), sample, ip_metadata=str(meta))
    dofn.setup()
    assert dofn.enricher is enricher
    assert dofn.processor is not None and dofn.processor.resources is resources
    assert prepare_shared(sample, None, 30, [day]) == [resources]  # no IP metadata


def test_sdk_worker_gc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK worker process collects less often and freezes what its DoFns set up;
    any other process (a run inside the launcher, these tests) is left as it is."""
    import gc

    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    worker.freeze_after_setup()
    assert gc.get_freeze_count() == frozen  # not an SDK worker process
    monkeypatch.setattr(worker, "_sdk_process", False)
    try:
        worker.tune_gc_for_sdk_process()
        assert gc.get_threshold() == (worker.GC_GEN0_THRESHOLD, *threshold[1:])
        kept = [[object()] for _ in range(100)]
        worker.freeze_after_setup()
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
