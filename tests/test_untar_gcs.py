"""untar against a GCS JSON API on 127.0.0.1 (gcp-storage-emulator and fake-gcs-server)."""

from __future__ import annotations

import gzip
from pathlib import Path

from sampledata import write_scan_archives
from services.beam_launcher.inputs import discover
from services.common.scans import HYPERQUACK_TYPES
from services.common.storage import GcsStorage
from services.untar.markers import MARKER_NAME, completed_archives, read_marker
from services.untar.run import UntarConfig, untar_all
from tests import test_mirror_support as support
from tests.test_mirror_support import Bucket, md5_hex, member, scan_archive, tar_gz
from tests.test_untar import BAD, GOOD, RESULTS, _corrupt, outcome

fake_gcs = support.fake_gcs
fake_bucket = support.fake_bucket
emulator_bucket = support.emulator_bucket
any_bucket = support.any_bucket


def test_gs_raw_to_gs_target_and_rerun(any_bucket: Bucket, tmp_path: Path) -> None:
    gen = write_scan_archives(tmp_path / "gen", size=5)
    blobs = any_bucket.client.bucket(any_bucket.name)
    for archive in sorted((tmp_path / "gen" / "archives").iterdir()):
        blobs.blob(f"raw/{archive.name}").upload_from_filename(str(archive))
    cfg = UntarConfig(raw=any_bucket.url("raw"), target=any_bucket.url("bucket"))

    summary = untar_all(cfg)
    assert summary.ok and len(summary.of("unpacked")) == 8
    for scan in gen.scans:
        folder = f"bucket/scans/{scan.split('-')[1]}/{scan}"
        want = (tmp_path / "gen" / "scans" / scan / "results.json.gz").read_bytes()
        got = any_bucket.get(f"{folder}/results.json.gz")
        assert gzip.decompress(got) == gzip.decompress(want)
        marker = read_marker(any_bucket.url(f"{folder}/{MARKER_NAME}"))
        assert marker is not None
        raw = any_bucket.get(f"raw/{scan}.tar.gz")
        assert marker["archive_md5"] == md5_hex(raw)
        assert marker["files"][0]["md5"] == md5_hex(got)
    st = GcsStorage()
    assert completed_archives(st, any_bucket.url("bucket/scans")) == set(gen.scans)
    plan = discover(any_bucket.url("bucket/scans"), HYPERQUACK_TYPES, "test")
    assert {t.source for t in plan.tasks} == set(gen.scans)

    gens = {b.name: b.generation for b in any_bucket.client.list_blobs(any_bucket.name)}
    again = untar_all(cfg)
    assert len(again.of("skipped")) == 8
    assert {b.name: b.generation for b in any_bucket.client.list_blobs(any_bucket.name)} == gens


def test_hostile_and_corrupt_archives_on_gcs(emulator_bucket: Bucket) -> None:
    blobs = emulator_bucket.client.bucket(emulator_bucket.name)
    blobs.blob(f"raw/{GOOD}.tar.gz").upload_from_string(
        scan_archive(GOOD, {"results.json": RESULTS})
    )
    hostile = tar_gz(
        [
            member(f"{BAD}/results.json", RESULTS),
            member(f"{BAD}/../../../evil.json", b"{}"),
        ]
    )
    blobs.blob(f"raw/{BAD}.tar.gz").upload_from_string(hostile)
    corrupt = "CP_Quack-http-2021-01-03-00-00-01"
    blobs.blob(f"raw/{corrupt}.tar.gz").upload_from_string(_corrupt("truncated"))

    summary = untar_all(
        UntarConfig(raw=emulator_bucket.url("raw"), target=emulator_bucket.url("t"))
    )
    assert outcome(summary, f"{GOOD}.tar.gz")[0] == "unpacked"
    assert outcome(summary, f"{BAD}.tar.gz")[0] == "rejected"
    result, reason = outcome(summary, f"{corrupt}.tar.gz")
    assert result == "failed" and "CorruptArchive" in reason
    # Only the raw archives and the good archive's output exist anywhere in the bucket.
    assert emulator_bucket.keys() == sorted(
        [
            f"raw/{GOOD}.tar.gz",
            f"raw/{BAD}.tar.gz",
            f"raw/{corrupt}.tar.gz",
            f"t/scans/echo/{GOOD}/{MARKER_NAME}",
            f"t/scans/echo/{GOOD}/results.json.gz",
        ]
    )


def test_local_raw_to_gcs_target(emulator_bucket: Bucket, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{GOOD}.tar.gz").write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    cfg = UntarConfig(raw=str(raw), target=emulator_bucket.url("t"))
    assert outcome(untar_all(cfg), f"{GOOD}.tar.gz")[0] == "unpacked"
    got = emulator_bucket.get(f"t/scans/echo/{GOOD}/results.json.gz")
    assert gzip.decompress(got) == RESULTS
    assert outcome(untar_all(cfg), f"{GOOD}.tar.gz")[0] == "skipped"
