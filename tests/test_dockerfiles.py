"""Offline structure checks of docker/Dockerfile, the one build recipe of the service images
(one target per service; no docker daemon needed)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SERVICES = ("beam_launcher", "mirror", "queries", "routeviews", "untar")
# pyproject.toml dependency group(s) each image installs besides the shared dependencies.
SERVICE_GROUPS = {
    "beam_launcher": ["beam"],
    "mirror": [],
    "queries": ["queries"],
    "routeviews": [],
    "untar": [],
}
# Beyond pyproject.toml, services/__init__.py, services/common and the service, what each copies.
EXTRA_COPIES = {
    "beam_launcher": {"resources/sample"},
    "queries": {"resources/country_names.csv"},
}
#: Copies from the venv stage besides the venv: the launcher's compiled parser modules.
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


@dataclass
class Stage:
    """One ``FROM <base> AS <name>`` stage and its instructions."""

    name: str
    base: str
    ins: list[tuple[str, str]] = field(default_factory=list)


def stages(ins: list[tuple[str, str]]) -> dict[str, Stage]:
    """The named stages in file order (every stage of the recipe must be named)."""
    out: dict[str, Stage] = {}
    current: Stage | None = None
    for op, args in ins:
        if op == "FROM":
            m = re.fullmatch(r"(\S+) AS (\w+)", args)
            assert m, f"unnamed stage: FROM {args}"
            assert m.group(2) not in out, f"stage {m.group(2)} defined twice"
            current = out[m.group(2)] = Stage(m.group(2), m.group(1))
        elif current is not None:
            current.ins.append((op, args))
    return out


STAGES = stages(instructions(DOCKERFILE))


def chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, the outermost base first."""
    out = [STAGES[name]]
    while out[0].base in STAGES:
        out.insert(0, STAGES[out[0].base])
    return out


def copies_from(stage: str) -> list[tuple[str, list[str]]]:
    """(source stage or "" for the build context, [sources..., dest]) of a stage's chain."""
    out = []
    for s in chain(stage):
        for op, args in s.ins:
            if op == "COPY":
                m = re.match(r"--from=(\w+)", args)
                parts = [p for p in args.split() if not p.startswith("--")]
                out.append((m.group(1) if m else "", parts))
    return out


def env_of(stage: str) -> dict[str, str]:
    """ENV name=value pairs set along a stage's chain (later ones win)."""
    env: dict[str, str] = {}
    for s in chain(stage):
        for op, args in s.ins:
            if op == "ENV":
                env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args))
    return env


def test_every_service_is_a_target_of_the_one_recipe() -> None:
    assert not list((ROOT / "services").glob("*/Dockerfile")), "per-service Dockerfiles are back"
    with_main = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    assert with_main == set(SERVICES)
    assert set(SERVICES) <= set(STAGES)
    # Every stage is used by some service image (no dead recipe).
    used = {s.name for svc in SERVICES for s in chain(svc)}
    used |= {src for svc in SERVICES for src, _ in copies_from(svc) if src}
    used |= {s.name for name in list(used) if name in STAGES for s in chain(name)}
    assert used == set(STAGES)


def test_bases_are_pinned_build_arguments() -> None:
    # Bases come from build arguments declared before the first FROM (CI overrides them with
    # local images); their defaults are the production bases: pinned python 3.11 slim, full
    # patch version, never latest. Build and runtime stages start from the same base.
    args = build_args(instructions(DOCKERFILE))
    assert set(args) == {"PYTHON_BASE", "BEAM_SDK_IMAGE"}
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", args["PYTHON_BASE"]
    ), args
    assert {s.base for s in STAGES.values() if s.base not in STAGES} == {
        "${PYTHON_BASE}",
        "${BEAM_SDK_IMAGE}",
    }
    assert STAGES["beam_sdk"].base == "${BEAM_SDK_IMAGE}" and not STAGES["beam_sdk"].ins


def test_uv_setup_is_written_once() -> None:
    # uv installed by pip once, in the stage every venv stage starts from; its settings make
    # each `uv sync` install exactly the locked shared dependencies plus the named groups.
    pip = [s.name for s in STAGES.values() for op, a in s.ins if "pip install uv==" in a]
    assert pip == ["uv"]
    assert re.search(r"pip install uv==\d+\.\d+\.\d+", str(STAGES["uv"].ins))
    env = env_of("uv")
    for name in ("UV_FROZEN", "UV_NO_DEFAULT_GROUPS", "UV_NO_INSTALL_PROJECT"):
        assert env[name] == "1", name
    assert env["UV_PROJECT_ENVIRONMENT"] == "/app/.venv"
    syncs = [(s.name, a) for s in STAGES.values() for op, a in s.ins if "uv sync" in a]
    assert all(chain(name)[0].name == "uv" for name, _ in syncs)
    assert len({name for name, _ in syncs}) == len(syncs), "one uv sync per venv stage"
    assert not [a for _, a in syncs if "--all-groups" in a or "--group dev" in a]


@pytest.mark.parametrize("svc", SERVICES)
def test_service_target(svc: str) -> None:
    ins = [(op, a) for s in chain(svc) for op, a in s.ins]
    ops = [op for op, _ in ins]

    # Exactly one venv, from a venv stage whose sync installs only this service's groups.
    venvs = [(src, p) for src, p in copies_from(svc) if p == ["/app/.venv", "/app/.venv"]]
    assert len(venvs) == 1, venvs
    venv_stage = STAGES[venvs[0][0]]
    assert chain(venv_stage.name)[0].name == "uv"
    runs = [a for s in chain(venv_stage.name) for op, a in s.ins if op == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 1
    assert re.findall(r"--group (\w+)", syncs[0]) == SERVICE_GROUPS[svc]
    if svc in BUILDER_COPIES:  # compiled in the venv stage; a failed build fails the image
        assert any("-m services.beam_launcher.native.build --check" in r for r in runs)

    # The runtime chain starts from the plain base: no compiler, no uv, no build stage.
    assert chain(svc)[0].base == "${PYTHON_BASE}"
    assert not [a for op, a in ins if op == "RUN" and re.search(r"\b(apt-get|pip|uv)\b", a)]

    # No ADD at all (so no ADD of URLs); no curl|wget piping into any build.
    all_ins = instructions(DOCKERFILE)
    assert "ADD" not in [op for op, _ in all_ins]
    assert not [a for op, a in all_ins if op == "RUN" and re.search(r"\b(curl|wget)\b", a)]

    # No secret-looking ENV/ARG names.
    for op, args in all_ins:
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_WORDS.search(n)], (op, args)

    # USER non-root before ENTRYPOINT, which comes last; its own ENTRYPOINT.
    users = [a for op, a in ins if op == "USER"]
    assert users and ops[-1] == "ENTRYPOINT" and ops.count("ENTRYPOINT") == 1
    assert users[-1] == "10001:10001"
    assert env_of(svc)["PATH"] == "/app/.venv/bin:$PATH"
    if svc == "beam_launcher":  # worker image: Beam's boot; the CronJob's command starts us
        assert ins[-1][1] == '["/opt/apache/beam/boot"]'
    else:
        assert ins[-1][1] == f'["python", "-m", "services.{svc}"]'

    # The image copies only this service's code (and what it needs to run).
    sources = set()
    for src, parts in copies_from(svc):
        if src == "beam_sdk":  # only the SDK harness (boot) from Beam's image
            assert parts == ["/opt/apache/beam", "/opt/apache/beam"] and svc == "beam_launcher"
        elif src:
            assert src == venv_stage.name
            assert parts in (["/app/.venv", "/app/.venv"], *BUILDER_COPIES.get(svc, []))
        else:
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
    assert re.search(r"for svc in ([\w ]+);", script).group(1).split() == list(SERVICES)


def locked_version(package: str) -> str:
    """The version of ``package`` in uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def test_worker_image_has_the_locked_beam_sdk() -> None:
    """Dataflow workers must run the Beam SDK the launcher submits with (uv.lock)."""
    args = build_args(instructions(DOCKERFILE))
    image = args["BEAM_SDK_IMAGE"]
    m = re.fullmatch(r"apache/beam_python(\d)\.(\d+)_sdk:([\w.]+)(@sha256:[0-9a-f]{64})?", image)
    assert m, image
    assert m.group(3) == locked_version("apache-beam"), (image, locked_version("apache-beam"))
    # The SDK image's Python minor version is the runtime base's.
    py = re.match(r"python:(\d)\.(\d+)\.", args["PYTHON_BASE"])
    assert py and (m.group(1), m.group(2)) == py.groups()
    # Workers: Beam's boot entrypoint, our venv's python on PATH, `services` importable from
    # any working directory, and no per-worker venv (it would not see our dependencies).
    assert STAGES["beam_launcher"].ins[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    env = env_of("beam_launcher")
    assert env["PATH"] == "/app/.venv/bin:$PATH" and env["PYTHONPATH"] == "/app"
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    # Only the launcher's image is a worker image.
    for svc in set(SERVICES) - {"beam_launcher"}:
        assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT" not in env_of(svc)


def test_standin_is_test_only_and_versioned_like_the_real_sdk() -> None:
    """CI's stand-in for the Beam SDK image says what it is and is never a production default."""
    standin = ROOT / ".ci" / "beam-sdk-standin"
    assert "TEST-ONLY" in (standin / "Dockerfile").read_text()
    assert "TEST-ONLY" in (standin / "boot").read_text()
    assert "localhost/" not in "".join(build_args(instructions(DOCKERFILE)).values())
