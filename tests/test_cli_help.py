"""Every command line answers ``--help`` at once and explains itself.

* The console commands of ``[project.scripts]`` (``cp-launcher``, ``cp-report``, ...) are
  the same entry points as ``python -m services.X``; each, and each sub-command, prints
  its help without importing Beam, DuckDB, pyarrow, sqlglot or the Google Cloud clients
  (checked in a real subprocess through ``sys.modules``; the wall time is printed by
  ``bench/bench_cli_help.py``, not asserted here).
* Every parser and sub-parser has a description and every option a help text (walked
  through argparse's own structures, whatever way the parser is built).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# Sub-commands, per script, that have their own --help.
SUBCOMMANDS = {
    "cp-mirror": ["archives", "resources"],
    "cp-routeviews": ["sync", "backfill", "asorg", "asclass"],
}
HEAVY = (
    "apache_beam",
    "duckdb",
    "pyarrow",
    "sqlglot",
    "google.cloud.storage",
    "google.cloud.bigquery",
    "kubernetes",
    "numpy",
    "pandas",
)
# Runs an entry point as its console script does and reports which heavy modules loaded.
WRAPPER = """
import importlib, json, sys
heavy, target, argv = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
module, func = target.split(":")
sys.argv = [argv[0], *argv[1:]]
code = 0
try:
    code = getattr(importlib.import_module(module), func)()
except SystemExit as exc:
    code = exc.code
sys.stderr.write(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def help_cases() -> Iterator[tuple[str, list[str]]]:
    for name in SCRIPTS:
        yield name, []
        for sub in SUBCOMMANDS.get(name, []):
            yield name, [sub]


def test_expected_scripts_are_declared() -> None:
    assert {
        "cp-mirror",
        "cp-untar",
        "cp-routeviews",
        "cp-launcher",
        "cp-queries",
        "cp-report",
        "cp-sample-scans",
    } <= set(SCRIPTS)


@pytest.mark.parametrize(("name", "sub"), list(help_cases()), ids=lambda v: str(v))
def test_help_imports_no_heavy_module(name: str, sub: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, ",".join(HEAVY), SCRIPTS[name], name, *sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] in (0, None), proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    assert result["heavy"] == [], f"{name} {' '.join(sub)} --help imported {result['heavy']}"


def test_installed_scripts_print_help() -> None:
    bindir = Path(sys.executable).parent
    missing = [n for n in SCRIPTS if not (bindir / n).exists()]
    if len(missing) == len(SCRIPTS):
        pytest.skip(f"project not installed into {bindir} (uv sync --no-install-project?)")
    assert missing == [], f"not installed: {missing} (run uv sync)"
    for name in SCRIPTS:
        proc = subprocess.run(
            [str(bindir / name), "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (name, proc.stderr[-500:])
        assert proc.stdout.startswith("usage:"), (name, proc.stdout[:200])


class _Captured(Exception):
    """Raised instead of parsing, carrying the parser that was about to parse."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("captured")
        self.parser = parser


def captured_parser(target: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The top-level parser an entry point builds, caught at its first parse call."""

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    module, func = target.split(":")
    entry = getattr(importlib.import_module(module), func)
    # The console function of a stage wraps main(); main(argv) builds the parser.
    main = getattr(importlib.import_module(module), "main", entry)
    with pytest.raises(_Captured) as caught:
        main([])
    return caught.value.parser


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str]]:
    """(place, problem) for every missing description or option help under ``parser``."""
    if not (parser.description or "").strip():
        yield path, "no description"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
            continue
        if action.option_strings and not (action.help or "").strip():
            yield f"{path} {'/'.join(action.option_strings)}", "no help"
        elif action.help and action.help.strip().startswith("(") and action.dest != "help":
            # e.g. "($LOG_LEVEL)": names the variable but does not say what the option does
            yield f"{path} {'/'.join(action.option_strings)}", f"help only {action.help!r}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_parser_has_description_and_option_help(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = captured_parser(SCRIPTS[name], monkeypatch)
    problems = list(walk(parser, name))
    assert problems == []
