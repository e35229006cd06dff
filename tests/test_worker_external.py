"""The Dataflow worker environment has everything our pipeline needs.

The launcher runs the sample scans with Beam's portable EXTERNAL environment: every bundle
goes to SDK harness processes started by ``python -m apache_beam.runners.worker.worker_pool_main``
in a separate, clean environment holding only what the worker image installs. The tables must
equal those of the usual in-process run.

* The direct runner (FnApiRunner) ignores ``--environment_type``: it always builds the
  pipeline with its own embedded environment. ``--runner PortableRunner --job_endpoint=embed``
  runs the same FnApiRunner behind Beam's in-process job service, which takes the environment
  from the options, so bundles can only run in the external workers.
* ``image``: the worker pool is the built launcher image itself (``boot --worker_pool``, as
  UID 10001 on a read-only root), its boot being the TEST-ONLY stand-in of
  ``.ci/beam-sdk-standin`` (Beam's real boot program is not exercised).
* ``venv``: a venv made with ``uv sync --frozen --no-default-groups --group beam
  --no-install-project`` plus the files the image copies and the compiled C parsers.
* Beam's gRPC servers bind ``[::]``; both sides therefore run in a private network namespace
  that only has a loopback interface (the container's, or one made with ``unshare``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from sampledata import generate
from services.beam_launcher.run import RunConfig, run
from tests.images import BUILDS, REPO, UID, podman, require_podman

pytestmark = pytest.mark.slow

POOL_PORT = 50000
SAMPLE_SIZE = 20
#: Columns that name the run or its commit time (they differ between any two runs): the
#: ledger's run and time, and when schema_versions recorded a version.
RUN_COLUMNS = {"run_id", "processed_at", "updated_at"}
BOOT_STANDIN = REPO / ".ci" / "beam-sdk-standin" / "boot"
EXTERNAL = [
    "--runner", "PortableRunner", "--job_endpoint=embed",
    "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{POOL_PORT}",
]  # fmt: skip


def ci_or_skip(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the EXTERNAL-environment check cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]], int]:
    """Sample scans + resources in a folder UID 10001 can use, and the in-process tables."""
    root = tmp_path_factory.mktemp("external")
    base = root / "shared"
    base.mkdir()
    if os.geteuid() == 0:
        os.chown(base, UID, UID)
    generate(base / "sample", SAMPLE_SIZE, 0, 0.0, False)
    shutil.copytree(REPO / "resources" / "sample", base / "resources")
    summary = run(
        RunConfig(
            input=str(base / "sample" / "scans"),
            warehouse=str(root / "reference"),
            resources=str(base / "resources"),
        )
    )
    assert summary.files_processed > 0
    return base, tables(root / "reference"), summary.files_processed


def tables(warehouse: Path) -> dict[str, list[str]]:
    """Every table's rows (without run id/commit time) as sorted reprs: order-insensitive."""
    out: dict[str, list[str]] = {}
    with duckdb.connect(str(warehouse / "warehouse.duckdb"), read_only=True) as con:
        for (name,) in con.execute("SHOW TABLES").fetchall():
            cols = [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
            keep = ", ".join(f'"{c}"' for c in cols if c not in RUN_COLUMNS)
            rows = con.execute(f'SELECT {keep} FROM "{name}"').fetchall()
            out[name] = sorted(repr(r) for r in rows)
    return out


def launcher_argv(base: Path, warehouse: Path) -> list[str]:
    return [
        sys.executable, "-m", "services.beam_launcher",
        "--input", str(base / "sample" / "scans"), "--warehouse", str(warehouse),
        "--resources", str(base / "resources"), *EXTERNAL,
    ]  # fmt: skip


def wait_for_port(prefix: list[str], deadline_s: float = 60) -> None:
    """Until 127.0.0.1:POOL_PORT accepts connections (run through ``prefix``, e.g. nsenter)."""
    probe = (
        "import socket, sys, time\n"
        f"end = time.time() + {deadline_s}\n"
        "while time.time() < end:\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {POOL_PORT}), 1).close(); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.2)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([*prefix, sys.executable, "-c", probe], check=False, timeout=120)
    assert done.returncode == 0, f"worker pool not listening on 127.0.0.1:{POOL_PORT}"


def boot_events(log: str) -> list[dict[str, object]]:
    """The stand-in boot's JSON lines in the worker pool's output."""
    out = []
    for line in log.splitlines():
        if line.startswith('{"boot_standin"'):
            out.append(json.loads(line))
    return out


def check_run(
    proc: subprocess.CompletedProcess, base: Path, warehouse: Path, data: tuple, seconds: float
) -> None:
    _, reference, files = data
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["files_processed"] == files
    ours = tables(warehouse)
    assert ours.keys() == reference.keys()
    for name in reference:
        assert ours[name] == reference[name], f"table {name} differs from the in-process run"
    print(f"EXTERNAL run {seconds:.1f} s; tables equal: {sorted(ours)}")


def check_workers(events: list[dict[str, object]], prefix: str) -> None:
    started = [e for e in events if e["boot_standin"] == "worker_start"]
    exited = [e for e in events if e["boot_standin"] == "worker_exited"]
    assert started, events
    assert len(exited) == len(started), events
    assert {e["returncode"] for e in exited} == {0}
    assert {e["sys_prefix"] for e in exited} == {prefix}
    print("workers:", [(e["worker_id"], e["cpu_seconds"]) for e in exited])


def test_pipeline_in_the_worker_image(data: tuple, tmp_path: Path) -> None:
    require_podman()
    image = BUILDS.build("beam_launcher")
    base = data[0]
    name = f"cp-external-{os.getpid()}"
    podman(
        "run", "-d", "--name", name, "--read-only", "--user", f"{UID}:{UID}",
        "--network=none", "-v", f"{base}:{base}", image, "--worker_pool",
    )  # fmt: skip
    try:
        pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        netns = ["nsenter", "-t", pid, "-n"]
        wait_for_port(netns)
        warehouse = base / f"wh-image-{os.getpid()}"
        t0 = time.monotonic()
        # umask 0: the workers (UID 10001) write into the folders the launcher creates.
        proc = subprocess.run(
            [*netns, *launcher_argv(base, warehouse)],
            cwd=REPO, capture_output=True, text=True, timeout=900,
            preexec_fn=lambda: os.umask(0),
        )  # fmt: skip
        seconds = time.monotonic() - t0
        check_run(proc, base, warehouse, data, seconds)
        for _ in range(60):  # workers end when the job closes their control stream
            events = boot_events(podman("logs", name).stderr)
            if len([e for e in events if e["boot_standin"] == "worker_exited"]) >= len(
                [e for e in events if e["boot_standin"] == "worker_start"]
            ):
                break
            time.sleep(0.5)
        check_workers(events, "/app/.venv")
    finally:
        podman("rm", "-f", name, check=False)


def worker_venv(dest: Path) -> tuple[Path, Path]:
    """The worker image's Python environment outside a container: (venv, app folder)."""
    venv, app = dest / "venv", dest / "app"
    subprocess.run(
        ["uv", "sync", "--frozen", "--no-default-groups", "--group", "beam",
         "--no-install-project", "--quiet"],
        cwd=REPO, check=True, timeout=600,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
    )  # fmt: skip
    # The files docker/Dockerfile's beam_launcher target copies into /app.
    (app / "services").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", app)
    shutil.copy(REPO / "services" / "__init__.py", app / "services")
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    for pkg in ("common", "beam_launcher"):
        shutil.copytree(REPO / "services" / pkg, app / "services" / pkg, ignore=ignore)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "services.beam_launcher.native.build", "--check"],
        cwd=app, check=True, timeout=300,
    )  # fmt: skip
    return venv, app


def netns_prefix() -> list[str]:
    """A new network namespace (only loopback) for this process tree."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        ci_or_skip("needs unshare and ip (util-linux, iproute2) for a loopback-only namespace")
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run(
        ["unshare", *userns, "--net", "ip", "link", "set", "lo", "up"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        ci_or_skip(f"cannot create a network namespace: {probe.stderr.strip()}")
    return ["unshare", *userns, "--net"]


def pool_and_launcher(
    venv: Path, pythonpath: str, base: Path, warehouse: Path, pool_log: Path
) -> subprocess.CompletedProcess:
    """Inside one fresh network namespace: the worker pool (clean env) and the launcher."""
    pool_env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": "/tmp",
        "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT": "1",
        "BEAM_BOOT_STANDIN_SELF": str(BOOT_STANDIN),
        **({"PYTHONPATH": pythonpath} if pythonpath else {}),
    }
    script = (
        "ip link set lo up && cd /tmp || exit 98\n"
        # The pool alone in the background (not the whole list in a subshell), so $pool is
        # the pool's own pid and the EXIT trap's kill reaches it.
        'env -i "$@" >"$POOL_LOG" 2>&1 & pool=$!\n'
        "trap 'kill $pool 2>/dev/null' EXIT\n"
        f"cd {REPO}\n"
        f'{sys.executable} -c "$PROBE" || exit 97\n'
        'umask 0; eval "$LAUNCHER"\n'
    )
    probe = (
        "import socket, time\nend = time.time() + 60\nwhile True:\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {POOL_PORT}), 1).close(); break\n"
        "    except OSError:\n"
        "        assert time.time() < end; time.sleep(0.2)\n"
    )
    launcher = " ".join(f"'{a}'" for a in launcher_argv(base, warehouse))
    pool_cmd = [f"{k}={v}" for k, v in pool_env.items()] + [str(BOOT_STANDIN), "--worker_pool"]
    return subprocess.run(
        [*netns_prefix(), "bash", "-c", script, "pool", *pool_cmd],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "POOL_LOG": str(pool_log), "PROBE": probe, "LAUNCHER": launcher},
    )  # fmt: skip


def test_pipeline_in_a_clean_worker_venv(data: tuple, tmp_path: Path) -> None:
    base = data[0]
    prefix = netns_prefix()
    assert prefix
    venv, app = worker_venv(tmp_path / "worker")
    log = tmp_path / "pool.log"
    t0 = time.monotonic()
    proc = pool_and_launcher(venv, str(app), base, base / f"wh-venv-{os.getpid()}", log)
    check_run(proc, base, base / f"wh-venv-{os.getpid()}", data, time.monotonic() - t0)
    check_workers(boot_events(log.read_text()), str(venv))
    assert pools_of(venv) == [], "the worker pool outlived its launcher"

    # Control: the same workers without our code (the stock Beam image's situation) fail the
    # run instead of silently running it somewhere else.
    bad = pool_and_launcher(venv, "", base, base / f"wh-bad-{os.getpid()}", tmp_path / "bad.log")
    assert bad.returncode == 1, bad.stderr[-3000:]
    assert "No module named 'services'" in bad.stderr
    assert pools_of(venv) == [], "the control run's worker pool outlived its launcher"


def pools_of(venv: Path, wait_s: float = 10.0) -> list[int]:
    """Pids of worker pools still running from ``venv`` (after up to ``wait_s`` to exit)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes()
                env = (proc / "environ").read_bytes()
            except OSError:
                continue
            if b"worker_pool_main" in cmd and str(venv / "bin").encode() in env:
                found.append(int(proc.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
