"""Building and running the service images with podman for tests (not a test module).

Every image is a target of the one build recipe, ``docker/Dockerfile`` (target = service).
No registry is reachable here, so the official bases are replaced by local images through
its build arguments: ``localhost/debian-py311:bookworm`` (built by
``.ci/build-local-base.sh``) for ``PYTHON_BASE`` and a TEST-ONLY stand-in for the Beam SDK
image (``.ci/beam-sdk-standin``, its ``boot`` is a script, not Beam's Go program) for
``BEAM_SDK_IMAGE``. When podman or the local base is missing the tests skip with the reason,
except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("beam_launcher", "mirror", "queries", "routeviews", "untar")
LOCAL_BASE = "localhost/debian-py311:bookworm"
STANDIN_DIR = REPO / ".ci" / "beam-sdk-standin"
# One tag per checkout: two checkouts on one machine (a developer's tree and a CI clone)
# share podman's image store, and must not run each other's images.
TAG = "ci-" + hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
UID = 10001


def beam_version() -> str:
    """The apache-beam version locked in uv.lock."""
    lines = (REPO / "uv.lock").read_text().splitlines()
    for i, line in enumerate(lines):
        if line == 'name = "apache-beam"':
            return lines[i + 1].split('"')[1]
    raise AssertionError("apache-beam not found in uv.lock")


def standin_image() -> str:
    """Tag of the TEST-ONLY Beam SDK stand-in (same version as the real one it replaces)."""
    return f"localhost/cp-test-beam-sdk-standin:{beam_version()}"


def image_name(svc: str) -> str:
    return f"localhost/cp-{svc.replace('_', '-')}:{TAG}"


def unavailable_reason() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    if shutil.which("podman") is None:
        return (
            "podman is not installed (run .ci/build-local-base.sh as root: it installs podman "
            "from Debian and builds the local base image)"
        )
    if os.geteuid() != 0:
        return "not root: the local base image and these tests use rootful podman"
    probe = subprocess.run(
        ["podman", "image", "exists", LOCAL_BASE], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"local base image {LOCAL_BASE} is missing (run .ci/build-local-base.sh as root)"
    return None


def require_podman() -> None:
    """Skip with the exact reason, or fail under CI=true (CI must build and run images)."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but container images cannot be built: {reason}")
    pytest.skip(reason)


def podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman, capturing text output; raise with its stderr on failure when check."""
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@dataclass
class Builds:
    """Images built in this session and how long each build took (seconds)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def build_standin(self) -> str:
        image = standin_image()
        if image not in self.seconds:
            t0 = time.monotonic()
            podman("build", "-q", "-t", image, str(STANDIN_DIR))
            self.seconds[image] = round(time.monotonic() - t0, 1)
        return image

    def build(self, svc: str) -> str:
        """Build docker/Dockerfile's target <svc> with the local bases (podman's layer cache
        applies: the stages the images share are built once)."""
        image = image_name(svc)
        if image in self.seconds:
            return image
        args = ["--build-arg", f"PYTHON_BASE={LOCAL_BASE}"]
        if svc == "beam_launcher":
            args += ["--build-arg", f"BEAM_SDK_IMAGE={self.build_standin()}"]
        t0 = time.monotonic()
        podman(
            "build", "-q", *args, "-f", str(REPO / "docker" / "Dockerfile"), "--target", svc,
            "-t", image, str(REPO),
            timeout=1800,
        )  # fmt: skip
        self.seconds[image] = round(time.monotonic() - t0, 1)
        # No `podman image prune` here: the untagged builder stages are the layer cache of the
        # next build. .ci/run prunes them after the tests.
        return image


BUILDS = Builds()


def run_args(*, volumes: tuple[Path, ...] = (), network: str = "none") -> list[str]:
    """`podman run` options every smoke run uses: UID 10001, read-only root, no network."""
    args = ["run", "--rm", "--read-only", "--user", f"{UID}:{UID}", f"--network={network}"]
    for v in volumes:
        args += ["-v", f"{v}:{v}"]
    return args


def shared_dir(tmp_path: Path, name: str) -> Path:
    """A folder the container user (UID 10001) owns, mounted at the same path everywhere."""
    d = tmp_path / name
    d.mkdir()
    os.chown(d, UID, UID)
    return d
