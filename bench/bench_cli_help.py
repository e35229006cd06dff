"""Time ``--help`` of every console command and sub-command (target: under 1 s each).

Usage: ``uv run python bench/bench_cli_help.py [--repeats 3] [--check]``

Each command of ``[project.scripts]`` runs as a fresh subprocess (the installed script in
the environment's ``bin/`` when it exists, else ``python -c`` calling the same entry
point); the figure is the best wall time of ``--repeats`` runs. With ``--check`` the
script exits 1 when any is 1 s or more; otherwise it always exits 0. The tests check the
cause (no heavy import on ``--help``, ``tests/test_cli_help.py``), not the time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {
    "cp-mirror": ["archives", "resources"],
    "cp-routeviews": ["sync", "backfill", "asorg", "asclass"],
}


def command(name: str, target: str) -> list[str]:
    """The argv that starts console command ``name``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module, func = target.split(":")
    code = f"import sys; from {module} import {func} as f; sys.argv[0] = {name!r}; sys.exit(f())"
    return [sys.executable, "-c", code]


def best_time(argv: list[str], repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` runs of ``argv``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True, timeout=120)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per command (best is kept)")
    p.add_argument("--check", action="store_true", help="exit 1 when any takes 1 s or more")
    args = p.parse_args()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    slow = []
    for name, target in scripts.items():
        for sub in [[], *([s] for s in SUBCOMMANDS.get(name, []))]:
            argv = [*command(name, target), *sub, "--help"]
            seconds = best_time(argv, args.repeats)
            label = " ".join([name, *sub, "--help"])
            print(f"{label:<32} {seconds * 1000:7.0f} ms")
            if seconds >= 1.0:
                slow.append(label)
    print(f"slowest allowed: 1000 ms; over: {', '.join(slow) or 'none'}")
    return 1 if args.check and slow else 0


if __name__ == "__main__":
    sys.exit(main())
