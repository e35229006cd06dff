"""The ``make run`` chain: generated archives → mirror → untar → resources → launcher.

The launcher's result on the untar output must equal its result on the generator's own
extracted files (the same scans laid out as ``scans/<scan>/results.json.gz``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sampledata import write_scan_archives
from services.beam_launcher.run import RunConfig, run
from services.mirror.__main__ import main as mirror_main
from services.untar.__main__ import main as untar_main
from services.untar.markers import MARKER_NAME

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_archives_to_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = write_scan_archives(tmp_path / "sample", size=8)
    raw, bucket, res = tmp_path / "raw", tmp_path / "bucket", tmp_path / "resources"
    src = str(tmp_path / "sample" / "archives")
    assert mirror_main(["archives", "--source", src, "--dest", str(raw)]) == 0
    assert untar_main(["--raw", str(raw), "--target", str(bucket)]) == 0
    sample_resources = str(REPO / "resources" / "sample")
    assert mirror_main(["resources", "--url", sample_resources, "--dest", str(res)]) == 0
    # Reruns do nothing.
    capsys.readouterr()
    assert mirror_main(["archives", "--source", src, "--dest", str(raw)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(gen.scans)
    assert untar_main(["--raw", str(raw), "--target", str(bucket)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(gen.scans)

    ours = run(
        RunConfig(
            input=str(bucket / "scans"),
            warehouse=str(tmp_path / "wh"),
            resources=str(res / "current"),
        )
    )
    reference = run(
        RunConfig(input=str(tmp_path / "sample" / "scans"), warehouse=str(tmp_path / "wh_ref"))
    )
    assert ours.files_processed == reference.files_processed == len(gen.scans)
    assert ours.rows_by_table == reference.rows_by_table
    assert sum(ours.rows_by_table.values()) > 0
    # The markers are the only files the launcher does not take (it does not know them yet).
    assert {Path(s["url"]).name for s in ours.skipped} <= {MARKER_NAME}
