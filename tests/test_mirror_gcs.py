"""The mirror against a GCS JSON API on 127.0.0.1 (gcp-storage-emulator and fake-gcs-server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common import storage
from services.common.storage import GcsStorage
from services.mirror.archives import MirrorConfig, mirror_archives
from services.mirror.manifest import MANIFEST_NAME
from services.mirror.metrics import MirrorMetrics
from tests import test_mirror_support as support
from tests.test_mirror import NAMES, CrashingSource, make_archives, results, run_crash_script
from tests.test_mirror_support import Bucket, md5_hex

fake_gcs = support.fake_gcs
fake_bucket = support.fake_bucket
emulator_bucket = support.emulator_bucket
any_bucket = support.any_bucket

CHUNK = 256 * 1024


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """GCS uploads in 256 KiB chunks, so a few hundred KB make a multi-request session."""
    real = storage.storage_for

    def storage_for(url: str) -> storage.StreamStorage:
        st = real(url)
        if isinstance(st, GcsStorage):
            st.chunk_size = CHUNK
        return st

    monkeypatch.setattr(storage, "storage_for", storage_for)


def generations(bucket: Bucket, prefix: str) -> dict[str, int]:
    return {b.name: b.generation for b in bucket.client.list_blobs(bucket.name, prefix=prefix)}


def test_gs_to_gs_twice_copies_once(any_bucket: Bucket, small_chunks: None) -> None:
    blobs = any_bucket.client.bucket(any_bucket.name)
    data = {}
    for i, name in enumerate(NAMES):
        data[name] = support.random_bytes(300_000 + i, seed=40 + i)
        blobs.blob(f"public/{name[:8]}/{name}").upload_from_string(data[name])
    blobs.blob("public/notes.tar.gz").upload_from_string(b"?")
    blobs.blob("public-old/" + NAMES[0]).upload_from_string(b"sibling prefix, not listed")
    cfg = MirrorConfig(source=any_bucket.url("public"), dest=any_bucket.url("raw"))

    m1 = MirrorMetrics()
    first = mirror_archives(cfg, metrics=m1)
    assert results(first) == {**dict.fromkeys(NAMES, "copied"), "notes.tar.gz": "unknown_name"}
    for name, content in data.items():
        assert any_bucket.get(f"raw/{name}") == content
    gens = generations(any_bucket, "raw/")
    assert set(gens) == {f"raw/{n}" for n in NAMES} | {f"raw/{MANIFEST_NAME}"}

    m2 = MirrorMetrics()
    second = mirror_archives(cfg, metrics=m2)
    assert results(second) == {**dict.fromkeys(NAMES, "skipped"), "notes.tar.gz": "unknown_name"}
    assert generations(any_bucket, "raw/") == gens  # nothing rewritten, not even the manifest
    assert m2.registry.get_sample_value("cp_mirror_archives_total", {"result": "skipped"}) == 3
    # MD5s come from GCS metadata: the manifest caches none of them.
    assert json.loads(any_bucket.get(f"raw/{MANIFEST_NAME}"))["hashes"] == {}


def test_crash_mid_copy_to_gcs_then_rerun(
    any_bucket: Bucket, tmp_path: Path, small_chunks: None
) -> None:
    data = make_archives(tmp_path / "src", size=3 * CHUNK)
    dest = any_bucket.url("raw")
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=dest)
    crashing = CrashingSource(str(tmp_path / "src"), NAMES[1], after=2 * CHUNK + 1000)

    first = mirror_archives(cfg, source=crashing)
    assert results(first) == {NAMES[0]: "copied", NAMES[1]: "failed", NAMES[2]: "copied"}
    assert GcsStorage().stat(f"{dest}/{NAMES[1]}") is None  # two chunks were sent, not published
    assert any_bucket.keys() == sorted(f"raw/{n}" for n in (NAMES[0], NAMES[2], MANIFEST_NAME))
    gens = generations(any_bucket, "raw/CP_")

    second = mirror_archives(cfg)
    assert results(second) == {NAMES[0]: "skipped", NAMES[1]: "copied", NAMES[2]: "skipped"}
    for name, content in data.items():
        info = GcsStorage().stat(f"{dest}/{name}")
        assert info is not None and (info.size, info.md5) == (len(content), md5_hex(content))
    after = generations(any_bucket, "raw/CP_")
    assert {k: after[k] for k in gens} == gens  # the complete ones were not copied again


def test_hard_crash_mid_upload_to_gcs_then_rerun(emulator_bucket: Bucket, tmp_path: Path) -> None:
    """The process dies mid resumable upload; nothing appears; the rerun completes."""
    data = make_archives(tmp_path / "src", size=3 * CHUNK)
    dest = emulator_bucket.url("raw")
    proc = run_crash_script(str(tmp_path / "src"), dest, NAMES[1], 2 * CHUNK + 1000, CHUNK)
    assert proc.returncode == 137, proc.stderr
    assert emulator_bucket.keys() == [f"raw/{MANIFEST_NAME}", f"raw/{NAMES[0]}"]

    rerun = mirror_archives(MirrorConfig(source=str(tmp_path / "src"), dest=dest))
    assert results(rerun) == {NAMES[0]: "skipped", NAMES[1]: "copied", NAMES[2]: "copied"}
    for name, content in data.items():
        assert emulator_bucket.get(f"raw/{name}") == content


def test_gcs_to_local(emulator_bucket: Bucket, tmp_path: Path) -> None:
    blobs = emulator_bucket.client.bucket(emulator_bucket.name)
    for i, name in enumerate(NAMES):
        blobs.blob(f"pub/{name}").upload_from_string(support.random_bytes(1000, seed=i))
    cfg = MirrorConfig(source=emulator_bucket.url("pub"), dest=str(tmp_path / "raw"))
    assert set(results(mirror_archives(cfg)).values()) == {"copied"}
    assert set(results(mirror_archives(cfg)).values()) == {"skipped"}
    for name in NAMES:
        assert (tmp_path / "raw" / name).read_bytes() == emulator_bucket.get(f"pub/{name}")
