"""The launcher as a real process (``python -m services.beam_launcher``) for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = [sys.executable, "-m", "services.beam_launcher"]


def run_launcher(
    args: list[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run the launcher to its end in the repository; stdout and stderr captured as text."""
    return subprocess.run(
        [*LAUNCHER, *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_launcher(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start the launcher in the repository; stdout and stderr piped as text."""
    return subprocess.Popen(
        [*LAUNCHER, *args],
        cwd=REPO,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stderr_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """The process's stderr lines up to the first one holding ``marker`` (all, if none does)."""
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    return seen
