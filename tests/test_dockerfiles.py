"""Offline structure checks of services/<svc>/Dockerfile (no docker daemon needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("beam_launcher", "mirror", "queries", "routeviews", "untar")
# pyproject.toml dependency group(s) each image installs besides the shared dependencies.
SERVICE_GROUPS = {
    "beam_launcher": ["beam"],
    "mirror": [],
    "queries": ["queries"],
    "routeviews": [],
    "untar": [],
}
# Beyond services/__init__.py, services/common and the service itself, what each may copy.
EXTRA_COPIES = {
    "beam_launcher": {"resources/sample"},
    "queries": {"resources/country_names.csv"},
}
#: Copies from the builder stage besides the venv: the launcher's compiled parser modules.
BUILDER_COPIES = {
    "beam_launcher": [
        ["/app/services/beam_launcher/native", "services/beam_launcher/native"],
    ],
}
SECRET_WORDS = re.compile(
    r"(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|_KEY\b)", re.I
)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def test_every_service_has_a_dockerfile() -> None:
    found = {p.parent.name for p in (ROOT / "services").glob("*/Dockerfile")}
    assert found == set(SERVICES)


@pytest.mark.parametrize("svc", SERVICES)
def test_dockerfile_structure(svc: str) -> None:
    path = ROOT / "services" / svc / "Dockerfile"
    ins = instructions(path)
    ops = [op for op, _ in ins]

    # FROM: pinned python 3.11 slim, full patch version, never latest; last stage is the runtime.
    froms = [args for op, args in ins if op == "FROM"]
    assert len(froms) == 2
    for args in froms:
        image = args.split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            image
        )
    assert froms[0].endswith(" AS builder")

    # uv installed by pip in the builder; dependencies exactly as locked: the shared ones
    # plus only this service's dependency group (never dev, never another service's).
    runs = [args for op, args in ins if op == "RUN"]
    assert any(re.search(r"pip install uv==\d+\.\d+\.\d+", r) for r in runs)
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 1 and "--frozen --no-default-groups" in syncs[0]
    assert re.findall(r"--group (\w+)", syncs[0]) == SERVICE_GROUPS[svc]

    if svc in BUILDER_COPIES:  # compiled in the builder; a failed build fails the image
        assert any("-m services.beam_launcher.native.build --check" in r for r in runs)

    # No ADD at all (so no ADD of URLs); no curl|wget piping into the build.
    assert "ADD" not in ops
    assert not [r for r in runs if re.search(r"\b(curl|wget)\b", r)]

    # No secret-looking ENV/ARG names.
    for op, args in ins:
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_WORDS.search(n)], (op, args)

    # USER non-root after the last FROM and before ENTRYPOINT.
    last_from = max(i for i, op in enumerate(ops) if op == "FROM")
    users = [i for i, op in enumerate(ops) if op == "USER" and i > last_from]
    entry = ops.index("ENTRYPOINT")
    assert users and users[-1] < entry
    user = ins[users[-1]][1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert ops[-1] == "ENTRYPOINT"
    assert ins[entry][1] == f'["python", "-m", "services.{svc}"]'

    # The runtime stage copies only this service's code (and what it needs to run).
    copies = [args for op, args in ins[last_from:] if op == "COPY"]
    sources = set()
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        if args.startswith("--from=builder"):
            # The venv, and for the launcher its compiled parser modules.
            assert parts in (["/app/.venv", "/app/.venv"], *BUILDER_COPIES.get(svc, []))
            continue
        sources.update(parts[:-1])
    allowed = {
        "pyproject.toml",
        "services/__init__.py",
        "services/common",
        f"services/{svc}",
    } | EXTRA_COPIES.get(svc, set())
    assert sources == allowed
    for src in sources:
        assert (ROOT / src).exists(), src


def test_image_names_match_the_chart() -> None:
    values = yaml.safe_load((ROOT / "helm" / "cp-pipeline" / "values.yaml").read_text())
    repos = {stage: s["image"]["repository"] for stage, s in values["stages"].items()}
    assert repos == {svc.replace("_", "-"): f"cp-{svc.replace('_', '-')}" for svc in SERVICES}
    script = (ROOT / "docker" / "build-images.sh").read_text()
    assert 'image="cp-${svc//_/-}:${TAG}"' in script
