"""Offline structure checks of services/<svc>/Dockerfile (no docker daemon needed)."""

from __future__ import annotations

import re
import tomllib
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


def build_args(ins: list[tuple[str, str]]) -> dict[str, str]:
    """ARG name=default pairs declared before the first FROM (the ones FROM may use)."""
    out: dict[str, str] = {}
    for op, args in ins:
        if op == "FROM":
            break
        if op == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def test_every_service_has_a_dockerfile() -> None:
    found = {p.parent.name for p in (ROOT / "services").glob("*/Dockerfile")}
    assert found == set(SERVICES)


@pytest.mark.parametrize("svc", SERVICES)
def test_dockerfile_structure(svc: str) -> None:
    path = ROOT / "services" / svc / "Dockerfile"
    ins = instructions(path)
    ops = [op for op, _ in ins]

    # Bases come from build arguments declared before the first FROM (CI overrides them with
    # local images); their defaults are the production bases: pinned python 3.11 slim, full
    # patch version, never latest. The last stage is the runtime.
    args = build_args(ins)
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", args["PYTHON_BASE"]
    ), args
    froms = [a for op, a in ins if op == "FROM"]
    python_froms = [a for a in froms if a.split()[0] == "${PYTHON_BASE}"]
    assert len(python_froms) == 2 and python_froms[0].endswith(" AS builder")
    assert froms[-1] == "${PYTHON_BASE}"
    if svc == "beam_launcher":
        assert froms[0] == "${BEAM_SDK_IMAGE} AS beam_sdk" and len(froms) == 3
    else:
        assert len(froms) == 2

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
    if svc == "beam_launcher":  # worker image: Beam's boot; the CronJob's command starts us
        assert ins[entry][1] == '["/opt/apache/beam/boot"]'
    else:
        assert ins[entry][1] == f'["python", "-m", "services.{svc}"]'

    # The runtime stage copies only this service's code (and what it needs to run).
    copies = [args for op, args in ins[last_from:] if op == "COPY"]
    sources = set()
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        if args.startswith("--from=beam_sdk"):  # only the SDK harness (boot) from Beam's image
            assert parts == ["/opt/apache/beam", "/opt/apache/beam"] and svc == "beam_launcher"
            continue
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


def locked_version(package: str) -> str:
    """The version of ``package`` in uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def test_worker_image_has_the_locked_beam_sdk() -> None:
    """Dataflow workers must run the Beam SDK the launcher submits with (uv.lock)."""
    path = ROOT / "services" / "beam_launcher" / "Dockerfile"
    ins = instructions(path)
    image = build_args(ins)["BEAM_SDK_IMAGE"]
    m = re.fullmatch(r"apache/beam_python(\d)\.(\d+)_sdk:([\w.]+)(@sha256:[0-9a-f]{64})?", image)
    assert m, image
    assert m.group(3) == locked_version("apache-beam"), (image, locked_version("apache-beam"))
    # The SDK image's Python minor version is the runtime base's.
    py = re.match(r"python:(\d)\.(\d+)\.", build_args(ins)["PYTHON_BASE"])
    assert py and (m.group(1), m.group(2)) == py.groups()
    # Workers: Beam's boot entrypoint, our venv's python on PATH, `services` importable from
    # any working directory, and no per-worker venv (it would not see our dependencies).
    assert ins[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    env = " ".join(a for op, a in ins if op == "ENV")
    assert "PATH=/app/.venv/bin:$PATH" in env and "PYTHONPATH=/app" in env
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env


def test_standin_is_test_only_and_versioned_like_the_real_sdk() -> None:
    """CI's stand-in for the Beam SDK image says what it is and is never a production default."""
    standin = ROOT / ".ci" / "beam-sdk-standin"
    assert "TEST-ONLY" in (standin / "Dockerfile").read_text()
    assert "TEST-ONLY" in (standin / "boot").read_text()
    for dockerfile in (ROOT / "services").glob("*/Dockerfile"):
        assert "localhost/" not in "".join(build_args(instructions(dockerfile)).values())
