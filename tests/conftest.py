"""Shared test fixtures: the real Censored Planet samples and input layouts built from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"
REAL_RESOURCES = REAL / "resources"

# Real fixture file → the scan (archive) name it is filed under in our input layout.
REAL_HQ_SCANS = {
    "echo_v1/echo_results_v1.json": "CP_Quack-echo-2020-11-14-07-54-49",
    "discard_v1/discard_results_v1.json": "CP_Quack-discard-2020-11-22-02-01-16",
    "http_v1/http_results_v1.json": "CP_Quack-http-2020-11-09-01-02-08",
    "https_v1/https_results_v1.json": "CP_Quack-https-2020-11-06-15-58-07",
    "echo_v2/echo_results_v2.json": "CP_Quack-echo-2021-05-30-01-01-01",
    "discard_v2/discard_results_v2.json": "CP_Quack-discard-2021-05-31-01-01-01",
    "http_v2/http_results_v2.json": "CP_Quack-http-2021-05-30-01-01-01",
    "https_v2/https_results_v2.json": "CP_Quack-https-2021-04-26-04-21-46",
}


def require_real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL} (shared/fixtures/real is absent)")
    return REAL


@pytest.fixture
def real_dir() -> Path:
    return require_real()


def build_real_input(dest: Path, versions: tuple[str, ...] = ("v1", "v2")) -> Path:
    """Lay the real Hyperquack files out as `<dest>/<scan name>/results.json` (in tmp)."""
    require_real()
    for rel, scan in REAL_HQ_SCANS.items():
        if not any(
            rel.startswith(f"{t}_{v}/")
            for v in versions
            for t in ("echo", "discard", "http", "https")
        ):
            continue
        target = dest / scan / "results.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / rel, target)
    return dest


# Real GCS JSON API (gcp-storage-emulator on 127.0.0.1): gcs_server, gcs_env, gcs_bucket;
# real BigQuery REST API (bqemulator subprocess on 127.0.0.1): bq_server, bq_env.
pytest_plugins = ["tests.gcs_server", "tests.bq_server"]


# Real Satellite fixture folder → the scan name it is filed under in our input layout.
REAL_SAT_SCANS = {
    "satellite_v1": "CP_Satellite-2018-08-03-00-00-01",
    "satellite_v2.1": "CP_Satellite-2021-04-25-14-00-01",
    "satellite_v2.2": "CP_Satellite-2021-10-20-14-00-01",
}


def build_real_satellite_input(dest: Path) -> Path:
    """Lay the real Satellite files out as `<dest>/<scan name>/<file>.json` (in tmp)."""
    require_real()
    for folder, scan in REAL_SAT_SCANS.items():
        target = dest / scan
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted((REAL / folder).glob("*.json")):
            shutil.copyfile(f, target / f.name)
    return dest
