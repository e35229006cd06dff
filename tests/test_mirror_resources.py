"""Resource sync: conditional GETs, validation before publishing, dated sets and current/."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.beam_launcher.enrichment.resources import load_resources
from services.common.httpfetch import Backoff
from services.mirror.__main__ import main as mirror_main
from services.mirror.metrics import MirrorMetrics
from services.mirror.resources import (
    CATEGORIES_FILE,
    RESOURCE_FILES,
    STATE_NAME,
    InvalidResource,
    sync_resources,
    validate_categories,
    validate_signatures,
)
from tests.conftest import REAL_RESOURCES, require_real
from tests.test_mirror_support import Bucket, FileHttpServer, list_tree

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "sample"
NO_WAIT = Backoff(retries=3, base=0.0, sleep=lambda _s: None)
DAY = dt.date(2026, 11, 20)


@pytest.fixture
def server() -> Iterator[FileHttpServer]:
    srv = FileHttpServer().start()
    for name in RESOURCE_FILES:
        srv.state.files[f"/assets/{name}"] = (SAMPLE / name).read_bytes()
    yield srv
    srv.stop()


def snapshot(root: Path) -> dict[str, int]:
    return {f: (root / f).stat().st_mtime_ns for f in list_tree(str(root))}


def test_sync_publishes_then_304_writes_nothing(server: FileHttpServer, tmp_path: Path) -> None:
    dest = tmp_path / "res"
    url = server.base + "/assets"
    m = MirrorMetrics()
    first = sync_resources(url, str(dest), today=DAY, metrics=m, backoff=NO_WAIT)
    assert sorted(first.updated) == sorted(RESOURCE_FILES)
    assert first.published == str(dest / "2026-11-20")
    for folder in ("2026-11-20", "current"):
        for name in RESOURCE_FILES:
            assert (dest / folder / name).read_bytes() == (SAMPLE / name).read_bytes()
        manifest = json.loads((dest / folder / "MANIFEST.json").read_text())
        assert set(manifest["files"]) == set(RESOURCE_FILES)
    # The pipeline reads current/ as its --resources.
    assert load_resources(str(dest / "current")).digest == load_resources(str(SAMPLE)).digest
    assert m.registry.get_sample_value("cp_mirror_resource_files_total", {"result": "updated"}) == 3

    before = snapshot(dest)
    second = sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    assert (second.updated, second.published) == ([], None)
    assert snapshot(dest) == before  # 304 ⇒ nothing written, not even the state
    for name in RESOURCE_FILES:
        assert server.state.count("GET", f"/assets/{name}", 304) == 1


def test_changed_file_gives_a_new_complete_set(server: FileHttpServer, tmp_path: Path) -> None:
    dest = tmp_path / "res"
    url = server.base + "/assets/"
    sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    extra = b"\nnew.example.org,News Media\n"
    server.state.files[f"/assets/{CATEGORIES_FILE}"] += extra
    res = sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    assert res.updated == [CATEGORIES_FILE]
    assert sorted(res.unchanged) == sorted(set(RESOURCE_FILES) - {CATEGORIES_FILE})
    assert res.published == str(dest / "2026-11-20.1")  # second set of the same day
    new = (SAMPLE / CATEGORIES_FILE).read_bytes() + extra
    for folder in ("2026-11-20.1", "current"):
        assert (dest / folder / CATEGORIES_FILE).read_bytes() == new
        assert sorted(os.listdir(dest / folder)) == sorted([*RESOURCE_FILES, "MANIFEST.json"])
    assert (dest / "2026-11-20" / CATEGORIES_FILE).read_bytes() == (
        SAMPLE / CATEGORIES_FILE
    ).read_bytes()
    nxt = sync_resources(url, str(dest), today=DAY + dt.timedelta(days=1), backoff=NO_WAIT)
    assert nxt.published is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("blockpage_signatures.json", b'{"fingerprint":"a","pattern":"(unclosed"}\n', "compile"),
        ("blockpage_signatures.json", b'{"fingerprint":"a"}\n', "'pattern'"),
        ("false_positive_signatures.json", b"not json\n", "invalid JSON"),
        ("false_positive_signatures.json", b"[1, 2]\n", "JSON object"),
        ("false_positive_signatures.json", b"\n\n", "no signatures"),
        (CATEGORIES_FILE, b"a.com,News,extra\n", "got 3 fields"),
        (CATEGORIES_FILE, b"a.com,\n", "empty domain or category"),
        (CATEGORIES_FILE, b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_invalid_file_is_not_published(
    server: FileHttpServer, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    dest = tmp_path / "res"
    url = server.base + "/assets"
    sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    before = snapshot(dest)
    good = server.state.files[f"/assets/{name}"]
    server.state.files[f"/assets/{name}"] = content
    m = MirrorMetrics()
    for _ in range(2):  # the ETag is not remembered: the next run checks again
        with pytest.raises(InvalidResource, match=message):
            sync_resources(url, str(dest), today=DAY, metrics=m, backoff=NO_WAIT)
        assert snapshot(dest) == before
    assert server.state.count("GET", f"/assets/{name}", 200) == 3
    assert m.registry.get_sample_value("cp_mirror_resource_files_total", {"result": "invalid"}) == 2
    server.state.files[f"/assets/{name}"] = good + b"\n"
    assert sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT).updated == [name]


def test_missing_current_file_is_fetched_in_full(server: FileHttpServer, tmp_path: Path) -> None:
    dest = tmp_path / "res"
    url = server.base + "/assets"
    sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    (dest / "current" / CATEGORIES_FILE).unlink()
    res = sync_resources(url, str(dest), today=DAY, backoff=NO_WAIT)
    assert res.updated == [CATEGORIES_FILE]
    assert (dest / "current" / CATEGORIES_FILE).exists()


def test_transient_errors_are_retried(server: FileHttpServer, tmp_path: Path) -> None:
    server.state.fail_next[("GET", f"/assets/{CATEGORIES_FILE}")] = 2
    res = sync_resources(server.base + "/assets", str(tmp_path / "r"), today=DAY, backoff=NO_WAIT)
    assert len(res.updated) == 3
    server.state.fail_next[("GET", f"/assets/{CATEGORIES_FILE}")] = 10
    (tmp_path / "r" / STATE_NAME).unlink()
    with pytest.raises(OSError, match="HTTP 503"):
        sync_resources(server.base + "/assets", str(tmp_path / "r"), today=DAY, backoff=NO_WAIT)


def test_folder_source_to_gcs_dest(emulator_bucket: Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in RESOURCE_FILES:
        (src / name).write_bytes((SAMPLE / name).read_bytes())
    dest = emulator_bucket.url("resources")
    first = sync_resources(str(src), dest, today=DAY)
    assert len(first.updated) == 3
    assert sync_resources(str(src), dest, today=DAY).published is None
    assert load_resources(dest + "/current").digest == load_resources(str(SAMPLE)).digest
    keys = emulator_bucket.keys()
    assert (
        "resources/2026-11-20/MANIFEST.json" in keys and "resources/current/MANIFEST.json" in keys
    )


def test_cli_resources(
    server: FileHttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["resources", "--url", server.base + "/assets", "--dest", str(tmp_path / "r")]
    assert mirror_main(args) == 0
    assert len(json.loads(capsys.readouterr().out)["updated"]) == 3
    server.state.files[f"/assets/{CATEGORIES_FILE}"] = b"x,y,z\n"
    assert mirror_main(args) == 1
    last = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (last["severity"], last["message"], last["stage"]) == ("ERROR", "run_failed", "mirror")
    assert last["reason"] == (
        "InvalidResource: domain_categories.csv:1: expected 'domain,category', got 3 fields"
    )


def test_real_resource_files_validate() -> None:
    require_real()

    def text(name: str) -> str:
        return (REAL_RESOURCES / name).read_text(encoding="utf-8")

    for name in ("blockpage_signatures.json", "false_positive_signatures.json"):
        records = [line for line in text(name).splitlines() if line.strip()]
        assert validate_signatures(text(name), name) == len(records) > 400
    assert validate_categories(text(CATEGORIES_FILE), CATEGORIES_FILE) > 6000


# Fixture for the GCS test.
from tests import test_mirror_support as _support  # noqa: E402

emulator_bucket = _support.emulator_bucket
