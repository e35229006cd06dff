"""End-to-end runs of the launcher on the real Censored Planet Hyperquack samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pytest

from services.beam_launcher.run import RunConfig, run
from tests.conftest import REAL_RESOURCES, build_real_input

pytestmark = pytest.mark.slow


def _run(input_dir: Path, warehouse: Path, **kw: object) -> object:
    cfg = RunConfig(
        input=str(input_dir), warehouse=str(warehouse), resources=str(REAL_RESOURCES), **kw
    )
    return run(cfg)


@pytest.fixture(scope="module")
def real_warehouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for version in ("v1", "v2"):
        base = tmp_path_factory.mktemp(f"real_{version}")
        build_real_input(base / "in", (version,))
        _run(base / "in", base / "wh")
        out[version] = base / "wh"
    return out


def _query(wh: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


ALL_HQ = " UNION ALL ".join(
    f"SELECT '{t}' AS t, * FROM {t}_scan" for t in ("echo", "discard", "http", "https")
)


@pytest.mark.parametrize(
    ("version", "per_table", "measurements"),
    [
        ("v1", {"discard": 14, "echo": 14, "http": 14, "https": 11}, 16),
        ("v2", {"discard": 16, "echo": 17, "http": 16, "https": 8}, 16),
    ],
)
def test_row_counts_match_reference(real_warehouses, version, per_table, measurements) -> None:
    wh = real_warehouses[version]
    got = dict(_query(wh, f"SELECT t, count(*) FROM ({ALL_HQ}) GROUP BY t"))
    assert got == per_table
    assert _query(wh, f"SELECT count(DISTINCT measurement_id) FROM ({ALL_HQ})") == [(measurements,)]
    assert _query(wh, "SELECT count(*) FROM dead_letter") == [(0,)]
    status = _query(wh, "SELECT status, count(*), sum(lines) FROM processed_files GROUP BY 1")
    assert status == [("ok", 4, 16)]


def test_v2_outcomes(real_warehouses) -> None:
    wh = real_warehouses["v2"]
    got = dict(_query(wh, f"SELECT outcome, count(*) FROM ({ALL_HQ}) GROUP BY 1"))
    # The seed's own replay of these files gives exactly these counts.
    assert got == {
        "expected/match": 30,
        "content/mismatch": 9,
        "read/timeout": 4,
        "read/tcp.reset": 4,
        "content/blockpage:b_nat_pak_isp_common_blockpage": 4,
        "content/blockpage:d_corp_cn_ucloud": 4,
        "setup/system_failure": 2,
    }


def test_v1_outcomes(real_warehouses) -> None:
    wh = real_warehouses["v1"]
    got = Counter(dict(_query(wh, f"SELECT outcome, count(*) FROM ({ALL_HQ}) GROUP BY 1")))
    assert got == Counter(
        {
            "expected/match": 16,
            "content/mismatch": 13,
            "expected/trusted_host:akamai": 10,
            "read/timeout": 5,
            "content/status_mismatch:503": 5,
            "dial/timeout": 2,
            "content/status_mismatch:302": 2,
        }
    )
