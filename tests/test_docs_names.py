"""The docs name only things that exist: images, Helm values keys, CLI flags, CP_* variables.

Scans README.md, docs/*.md, services/*/README.md and helm/cp-pipeline/README.md:

* ``cp-…`` image names must be images of the chart (``stages.*.image.repository``), each
  built from its target of ``docker/Dockerfile`` (``<name>`` with underscores), or console
  commands of ``[project.scripts]``; ``cp-pipeline…`` is the chart/release.
* values keys written like ``stages.beam-launcher.args`` or ``image.registry`` must exist
  in values.yaml (``<stage>``/``<key>``/``*`` are placeholders; a stage may set any
  ``jobDefaults`` key).
* ``--flags`` must be flags of one of our CLIs (read from their real ``--help`` output) or
  Beam/Dataflow pipeline options from BEAM_FLAGS (each checked against Beam's own option
  parser). Flags of other tools (kubectl, helm, uv sync, …) are recognised by the command
  they follow, in code blocks and inline code.
* ``CP_*`` environment variables must appear in the code, the chart or the build scripts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "cp-pipeline"
DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "services").glob("*/README.md"),
        CHART / "README.md",
    ]
)
# Our command-line programs (python -m …); subcommands are found in their --help.
CLI_MODULES = (
    "services.beam_launcher",
    "services.beam_launcher.report",
    "services.beam_launcher.warehouse.schemas",
    "services.beam_launcher.native.build",
    "sampledata",
    "services.mirror",
    "services.untar",
    "services.routeviews",
    "services.queries",
)
CLI_SCRIPTS = ("deploy/dashboards.py", "bench/bench_msgspec.py", "bench/bench_e2e.py")
# Flags of our small scripts that take no argparse parser: flag -> script that reads it.
SCRIPT_FLAGS = {"--write": "tests/test_helm.py", "--check": "helm/chart_readme.py"}
# Beam / Dataflow pipeline options the docs may name (passed through to Beam).
BEAM_FLAGS = frozenset(
    {
        "--runner",
        "--project",
        "--region",
        "--temp_location",
        "--staging_location",
        "--sdk_container_image",
        "--experiments",
        "--max_num_workers",
        "--service_account_email",
        "--subnetwork",
        "--dry_run",
        "--environment_type",
        "--environment_config",
        "--job_name",
        "--job_endpoint",
    }
)
# Commands whose flags are not ours.
FOREIGN = frozenset(
    {
        "kubectl", "helm", "docker", "podman", "buildah", "skopeo", "pip", "apt-get",
        "apt", "git", "promtool", "pytest", "ruff", "mypy", "make", "gcloud", "bq",
        "gsutil", "ct", "curl", "tar", "sudo", "uv", "boot",
    }
)  # fmt: skip
VALUES_ROOTS = ("gcp", "storage", "image", "monitoring", "jobDefaults", "stages")
VALUES_ROOTS += ("nameOverride", "fullnameOverride", "commonLabels")
IMAGE_RE = re.compile(r"(?<![\w.-])cp-[a-z0-9_<>-]+(?![\w@/<>-])")
KEY_RE = re.compile(
    r"(?<![\w/.$-])(?:" + "|".join(VALUES_ROOTS) + r")(?:\.(?:[A-Za-z0-9_*-]+|<[a-z]+>))+"
    r"(?![\w(])"
)
STORAGE_PY = (ROOT / "services" / "common" / "storage.py").read_text()
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
ENV_RE = re.compile(r"\bCP_[A-Z0-9_]+\b(?![a-z-])")


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def values() -> dict[str, Any]:
    data = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(data, dict)
    return data


def key_exists(path: str) -> bool:
    """Whether a dotted values path names a key (placeholders match any key)."""
    nodes: list[Any] = [values()]
    parts = path.split(".")
    for i, part in enumerate(parts):
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if part == "*" or part.startswith("<"):
                nxt.extend(node.values())
            elif part in node:
                nxt.append(node[part])
            elif i == 2 and parts[0] == "stages" and part in values()["jobDefaults"]:
                nxt.append(values()["jobDefaults"][part])  # per-stage override
        nodes = nxt
    return bool(nodes)


def chart_images() -> set[str]:
    return {s["image"]["repository"] for s in values()["stages"].values()}


def console_commands() -> set[str]:
    """The console commands pyproject.toml installs (``cp-launcher``, ...)."""
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def standin_images() -> set[str]:
    """The test-only Beam SDK stand-in that tests/images.py builds (docs may name it)."""
    standin = re.search(r"localhost/(cp-[a-z0-9-]+):", (ROOT / "tests" / "images.py").read_text())
    assert standin, "tests/images.py no longer names its stand-in image"
    return {standin.group(1)}


def _help(cmd: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, *cmd, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, f"{' '.join(cmd)} --help failed: {done.stderr[-2000:]}"
    return done.stdout


@cache
def cli_help() -> dict[str, str]:
    """``--help`` text of every CLI and subcommand, from real subprocesses."""
    commands = [["-m", m] for m in CLI_MODULES] + [[s] for s in CLI_SCRIPTS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = dict(zip(map(" ".join, commands), pool.map(_help, commands), strict=True))
    for cmd, text in list(texts.items()):
        usage = text.split("\n\n", 1)[0]
        for group in re.findall(r"\{([a-z0-9_,-]+)\}", usage):
            for sub in group.split(","):
                texts[f"{cmd} {sub}"] = _help([*cmd.split(), sub])
    return texts


@cache
def our_flags() -> frozenset[str]:
    # --help included: every CLI of ours has it (argparse), and the docs name it.
    return frozenset(f for text in cli_help().values() for f in FLAG_RE.findall(text))


@cache
def known_env_names() -> frozenset[str]:
    sources = [
        *(ROOT / "services").rglob("*.py"),
        *(CHART / "templates").iterdir(),
        CHART / "values.yaml",
        *(ROOT / "docker").iterdir(),
        *(ROOT / ".ci").iterdir(),
        ROOT / "Makefile",
    ]
    names = {n for p in sources if p.is_file() for n in ENV_RE.findall(p.read_text())}
    names |= {n for text in cli_help().values() for n in ENV_RE.findall(text)}
    return frozenset(names)


def segments(text: str) -> Iterator[tuple[str, str]]:
    """``(command word, text)`` pieces: shell commands of code blocks and inline code,
    split at pipes and ``&&``; prose gets the command word ""."""
    blocks = re.split(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    for i, block in enumerate(blocks):
        if i % 2:  # a fenced code block
            logical = re.sub(r"\\\n", " ", block)
            for line in logical.splitlines():
                yield from _commands(line.split("#", 1)[0] if " #" in line else line)
            continue
        for j, part in enumerate(re.split(r"`([^`\n]+)`", block)):
            if j % 2:
                yield from _commands(part)
            else:
                yield "", part


def _commands(line: str) -> Iterator[tuple[str, str]]:
    for piece in re.split(r"\|\s|&&|;", line):
        words = piece.split()
        while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] == "$"):
            words = words[1:]  # VAR=value prefixes and prompts
        if words[:2] == ["uv", "run"]:
            words = words[2:]  # `uv run X` runs X; other uv commands are uv's
        yield (words[0] if words else ""), piece


def problems_in(path: Path) -> list[str]:
    text = path.read_text()
    out: list[str] = []
    images = chart_images() | standin_images() | console_commands()
    for name in sorted(set(IMAGE_RE.findall(text))):
        if name.startswith("cp-pipeline") or "<" in name:
            if "_" in name:  # image and resource names never contain "_"
                out.append(f"name {name!r} cannot exist (Kubernetes names have no '_')")
            continue
        if name not in images:
            out.append(f"image {name!r} is not an image of the chart ({sorted(images)})")
    for key in sorted(set(KEY_RE.findall(text))):
        if key.startswith("storage.") and re.search(rf"def {key.split('.')[1]}\(", STORAGE_PY):
            continue  # a method of services/common/storage.py, not a values key
        if not key_exists(key):
            out.append(f"values key {key!r} is not in helm/cp-pipeline/values.yaml")
    for command, piece in segments(text):
        if command in FOREIGN:
            continue
        for flag in FLAG_RE.findall(piece):
            if flag in our_flags() or flag in BEAM_FLAGS:
                continue
            script = SCRIPT_FLAGS.get(flag)
            if script and flag in (ROOT / script).read_text() and script in text:
                continue
            out.append(f"flag {flag!r} is in no CLI of ours and not an allowed Beam flag")
    for name in sorted(set(ENV_RE.findall(text)) - known_env_names()):
        out.append(f"environment variable {name} is read nowhere in the code or chart")
    return out


def test_beam_allow_list_names_real_beam_options() -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    known = {f"--{name}" for name in PipelineOptions([]).get_all_options()}
    assert BEAM_FLAGS - known == set()


def test_the_scanner_finds_what_it_should(tmp_path: Path) -> None:
    """The checks flag the kinds of errors they exist for (guards against a blind scan)."""
    bad = (
        "Pass `--sdk_container_image=<registry>/cp-beam_launcher:<tag>` via "
        "`stages.beamLauncher.args`, set `CP_NO_SUCH_THING`, run "
        "`python -m services.untar --no-such-flag` or use image `cp-frobnicator`.\n"
        "```sh\nkubectl create job --from=cronjob/x y --dry-run=client -o yaml \\\n"
        "  | kubectl set env --local -f - CP_START_DATE=2021-05-01\n```\n"
    )
    path = tmp_path / "bad.md"
    path.write_text(bad)
    found = problems_in(path)
    assert len(found) == 5, found
    joined = "\n".join(found)
    for needle in (
        "cp-beam_launcher",
        "stages.beamLauncher.args",
        "CP_NO_SUCH_THING",
        "--no-such-flag",
        "cp-frobnicator",
    ):
        assert needle in joined


def test_chart_images_are_built_from_our_dockerfile() -> None:
    recipe = (ROOT / "docker" / "Dockerfile").read_text()
    for image in chart_images():
        service = image.removeprefix("cp-").replace("-", "_")
        assert (ROOT / "services" / service / "__main__.py").is_file(), image
        assert re.search(rf"^FROM \S+ AS {service}$", recipe, re.M), image


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_doc_names_only_what_exists(path: Path) -> None:
    assert problems_in(path) == []
