"""Each container installs the shared dependencies plus its own group only (pyproject.toml):
the modules a service can reach must import nothing else."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# distribution name → import names
IMPORT_NAMES = {
    "apache-beam": {"apache_beam"},
    "google-cloud-bigquery": {"google.cloud.bigquery"},
    "google-cloud-storage": {"google.cloud.storage", "google.auth", "google.api_core"},
    "structlog": {"structlog"},
    "prometheus-client": {"prometheus_client"},
    "duckdb": {"duckdb"},
    "pyarrow": {"pyarrow"},
    "orjson": {"orjson"},
    "cryptography": {"cryptography"},
    "google-re2": {"re2"},
    "sqlglot": {"sqlglot"},
    "kubernetes": {"kubernetes"},
    "maxminddb": {"maxminddb"},
    "pytz": {"pytz"},
    "isal": {"isal"},
    "publicsuffixlist": {"publicsuffixlist"},
    "numpy": {"numpy"},
    "pycountry": {"pycountry"},
    "urllib3": {"urllib3"},
    "tenacity": {"tenacity"},
    "packaging": {"packaging"},
}
SERVICE_GROUPS = {
    "beam_launcher": ["beam"],
    "mirror": [],
    "untar": [],
    "routeviews": [],
    "queries": ["queries"],
}


def _allowed(groups: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = list(project["project"]["dependencies"])
    for g in groups:
        specs += project["dependency-groups"][g]
    names: set[str] = set()
    for spec in specs:
        dist = spec.split("==")[0].split("[")[0]
        names |= IMPORT_NAMES[dist]
    return names


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _reachable_imports(package: str) -> set[str]:
    """Third-party modules imported by the package and the project modules it reaches."""
    todo = [f"services.{package}.{p.stem}" for p in (ROOT / "services" / package).glob("*.py")]
    seen: set[str] = set()
    external: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in mods:
                top = mod.split(".")[0]
                if top == "services":
                    todo.append(mod)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(mod)
    return external


@pytest.mark.parametrize("service", sorted(SERVICE_GROUPS))
def test_service_imports_only_its_dependencies(service: str) -> None:
    allowed = _allowed(SERVICE_GROUPS[service])
    bad = sorted(
        m
        for m in _reachable_imports(service)
        if not any(m == a or m.startswith(a + ".") for a in allowed)
        and not any(a.startswith(m + ".") for a in allowed)  # e.g. "google.cloud" itself
    )
    assert bad == [], f"{service} imports modules outside its dependency set: {bad}"
