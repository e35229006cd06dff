"""Every service image builds, starts as UID 10001 on a read-only root, and the whole
``make run`` chain runs with each stage in its own container over one shared volume (the
sample scans it processes are generated on the host: no image ships ``sampledata``).

Built with podman on local bases (``tests/images.py``): Debian's Python 3.11 instead of the
official ``python:3.11.*-slim`` image and, for the launcher, a TEST-ONLY stand-in for the
Beam SDK image whose ``boot`` is a script: the real Beam boot program is not exercised here.
Skips with the reason when podman or the local base is missing; fails instead under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.images import (
    BUILDS,
    LOCAL_BASE,
    REPO,
    SERVICES,
    UID,
    beam_version,
    podman,
    require_podman,
    run_args,
    shared_dir,
)

pytestmark = pytest.mark.slow

#: The command the CronJob runs in each image (the launcher image's entrypoint is Beam's boot).
COMMANDS = {svc: ["python", "-m", f"services.{svc}"] for svc in SERVICES}
SAMPLE_SIZE = 40


@pytest.fixture(scope="module", autouse=True)
def _podman() -> None:
    require_podman()


def run_in(svc: str, argv: list[str], *, volumes: tuple[Path, ...] = (), module: str = "") -> str:
    """Run one stage in its image as the CronJob would (command override); return stdout."""
    image = BUILDS.build(svc)
    command = ["python", "-m", module] if module else COMMANDS[svc]
    proc = podman(
        *run_args(volumes=volumes),
        "--entrypoint",
        json.dumps(command),
        image,
        *argv,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{svc} {command} {argv} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("svc", SERVICES)
def test_image_builds_and_starts_read_only_as_10001(svc: str) -> None:
    image = BUILDS.build(svc)
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    t0 = time.monotonic()
    out = run_in(svc, ["--help"])
    help_s = time.monotonic() - t0
    assert out.startswith(f"usage: python -m services.{svc}"), out[:200]
    print(f"{svc}: build {BUILDS.seconds[image]} s, --help {help_s:.1f} s")
    # Nothing may be written outside the tmpfs mounts: the root file system is read-only.
    probe = podman(
        *run_args(), "--entrypoint", "sh", image, "-c", "touch /app/x", check=False, timeout=60
    )
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    # The runtime images carry no compiler (the launcher's C modules are built in its builder).
    cc = podman(*run_args(), "--entrypoint", "sh", image, "-c", "command -v gcc cc", check=False)
    assert cc.returncode != 0 and cc.stdout == ""


def layers(image: str) -> list[str]:
    """The image's layer digests, the base's first."""
    return json.loads(podman("image", "inspect", image).stdout)[0]["RootFS"]["Layers"]


def test_images_share_the_recipes_common_layers() -> None:
    """One recipe: every image starts with the same runtime layers (base, user 10001), and the
    images of the shared dependencies differ only in their service's code, so a node or a
    registry stores their venv once."""
    got = {svc: layers(BUILDS.build(svc)) for svc in SERVICES}
    base = layers(LOCAL_BASE)
    runtime = got["mirror"][: len(base) + 1]
    assert runtime[: len(base)] == base
    assert all(ls[: len(runtime)] == runtime for ls in got.values()), got
    shared = [got[svc] for svc in ("mirror", "routeviews", "untar")]
    assert len({tuple(ls[:-1]) for ls in shared}) == 1, shared
    assert len({ls[-1] for ls in shared}) == 3, shared
    # Right after those: the launcher's Beam SDK files and the queries' own venv.
    after = {svc: got[svc][len(runtime)] for svc in ("beam_launcher", "mirror", "queries")}
    assert len(set(after.values())) == 3, after


def test_launcher_image_is_also_the_worker_image() -> None:
    image = BUILDS.build("beam_launcher")
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/apache/beam/boot"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    # What a worker process started by boot (`python`, another working directory) imports.
    out = podman(
        *run_args(),
        "--entrypoint",
        "python",
        "--workdir",
        "/tmp",
        image,
        "-c",
        "import sys, apache_beam, re2, maxminddb; from services.beam_launcher import native;"
        "print(apache_beam.__version__, sys.prefix, native.status())",
    ).stdout.split(" ", 2)
    assert out[0] == beam_version()
    assert out[1] == "/app/.venv"
    assert out[2].strip() == "{'hyperquack': True, 'satellite': True}"


def warehouse_counts(warehouse: Path) -> dict[str, int]:
    """Row count of every table in <warehouse>/warehouse.duckdb."""
    with duckdb.connect(str(warehouse / "warehouse.duckdb"), read_only=True) as con:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_make_run_chain_in_containers(tmp_path: Path) -> None:
    for svc in ("beam_launcher", "mirror", "untar", "queries"):
        BUILDS.build(svc)
    var = shared_dir(tmp_path, "var")
    resources = REPO / "resources" / "sample"
    t0 = time.monotonic()
    # The Makefile's `run` recipe, one container per line.
    # The sample generator is a development tool that no image ships: it runs on the host.
    subprocess.run(
        [sys.executable, "-m", "sampledata", "--out", f"{var}/sample", "--size", str(SAMPLE_SIZE)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    run_in(
        "mirror", ["archives", "--source", f"{var}/sample/archives", "--dest", f"{var}/raw"],
        volumes=(var,),
    )  # fmt: skip
    run_in(
        "mirror", ["resources", "--url", str(resources), "--dest", f"{var}/resources"],
        volumes=(var, resources),
    )  # fmt: skip
    run_in("untar", ["--raw", f"{var}/raw", "--target", f"{var}/bucket"], volumes=(var,))
    run_in(
        "beam_launcher",
        [
            "--input", f"{var}/bucket/scans", "--require-markers",
            "--resources", f"{var}/resources/current", "--warehouse", f"{var}/warehouse",
        ],
        volumes=(var,),
    )  # fmt: skip
    run_in("queries", ["--warehouse", f"{var}/warehouse"], volumes=(var,))
    report = run_in(
        "beam_launcher",
        ["--warehouse", f"{var}/warehouse"],
        volumes=(var,),
        module="services.beam_launcher.report",
    )
    chain_s = time.monotonic() - t0

    host_var = tmp_path / "host"
    t0 = time.monotonic()
    subprocess.run(
        ["make", "-s", "run", f"VAR={host_var}", f"SAMPLE_SIZE={SAMPLE_SIZE}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
        timeout=900,
    )
    host_s = time.monotonic() - t0
    ours, host = warehouse_counts(var / "warehouse"), warehouse_counts(host_var / "warehouse")
    print(f"containers: {chain_s:.1f} s, host make run: {host_s:.1f} s, rows: {ours}")
    assert ours == host
    assert ours["processed_files"] > 0 and sum(ours.values()) > ours["processed_files"]
    assert report.strip()
    # Every file the stages wrote belongs to the container user (the sample is the host's).
    sample = var / "sample"
    owners = {p.stat().st_uid for p in var.rglob("*") if p != sample and sample not in p.parents}
    assert owners == {UID}
