"""Streaming atomic writes of services.common.storage (used by mirror and untar).

Local folders, the GCS emulator (gcp-storage-emulator, tests/gcs_server.py) and
fake-gcs-server (which enforces generation preconditions on single-request uploads).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from services.common import storage
from services.common.storage import (
    ChecksumMismatch,
    GcsStorage,
    LocalStorage,
    ObjectExists,
    copy_stream,
    md5_of,
)
from tests import test_mirror_support as support
from tests.test_mirror_support import Bucket, md5_hex, random_bytes

# GCS fixtures (one bucket on the emulator or on fake-gcs-server).
fake_gcs = support.fake_gcs
fake_bucket = support.fake_bucket
emulator_bucket = support.emulator_bucket
any_bucket = support.any_bucket

CHUNK = 256 * 1024  # the smallest resumable chunk: multi-chunk uploads with small data


class Boom(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# Fixtures: one bucket on either GCS server
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Local
# --------------------------------------------------------------------------------------


def test_local_open_write_publishes_only_on_success(tmp_path: Path) -> None:
    st = LocalStorage()
    url = str(tmp_path / "a" / "x.bin")
    payload = random_bytes(300_000, 1)
    with st.open_write(url) as w:
        w.write(payload[:1000])
        assert not os.path.exists(url)  # nothing under the final name while writing
        w.write(payload[1000:])
    assert Path(url).read_bytes() == payload
    assert w.info is not None
    assert (w.info.size, w.info.md5, w.md5_hex()) == (
        len(payload),
        md5_hex(payload),
        md5_hex(payload),
    )
    assert st.stat(url) == storage.ObjectInfo(url, len(payload), w.info.version)  # md5 None

    with pytest.raises(Boom), st.open_write(url) as w:
        w.write(b"half")
        raise Boom
    assert Path(url).read_bytes() == payload  # old content untouched
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.bin"]  # no temp left


def test_local_if_absent(tmp_path: Path) -> None:
    st = LocalStorage()
    url = str(tmp_path / "x.bin")
    with st.open_write(url, if_absent=True) as w:
        w.write(b"first")
    with pytest.raises(ObjectExists), st.open_write(url, if_absent=True) as w:
        w.write(b"second")
    assert Path(url).read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_local_remove_stale_temps_and_listing_hides_them(tmp_path: Path) -> None:
    st = LocalStorage()
    (tmp_path / "d").mkdir()
    old = tmp_path / "d" / ".tmp-old"
    new = tmp_path / "d" / ".tmp-new"
    for p in (old, new):
        p.write_bytes(b"partial")
    (tmp_path / "d" / "kept.bin").write_bytes(b"k")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert [o.url for o in st.list(str(tmp_path))] == [str(tmp_path / "d" / "kept.bin")]
    assert st.remove_stale_temps(str(tmp_path), older_than_s=600) == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".tmp-new", "kept.bin"]
    assert st.remove_stale_temps(str(tmp_path / "missing"), 0) == 0


def test_copy_stream_verifies_before_publishing(tmp_path: Path) -> None:
    data = random_bytes(50_000, 2)
    url = str(tmp_path / "c.bin")
    with pytest.raises(ChecksumMismatch, match="MD5"):
        copy_stream(io.BytesIO(data), url, expected_md5="0" * 32)
    with pytest.raises(ChecksumMismatch, match="bytes"):
        copy_stream(io.BytesIO(data[:-1]), url, expected_size=len(data))
    with pytest.raises(ChecksumMismatch, match="longer"):
        copy_stream(io.BytesIO(data + b"x"), url, expected_size=len(data), chunk_size=1000)
    assert list(tmp_path.iterdir()) == []
    res = copy_stream(io.BytesIO(data), url, expected_size=len(data), expected_md5=md5_hex(data))
    assert (res.size, res.md5) == (len(data), md5_hex(data))
    assert md5_of(url) == md5_hex(data)


# --------------------------------------------------------------------------------------
# GCS (both servers)
# --------------------------------------------------------------------------------------


def test_gcs_small_write_round_trip_and_md5_metadata(any_bucket: Bucket) -> None:
    st = GcsStorage(chunk_size=CHUNK)
    url = any_bucket.url("small/x.json.gz")
    data = random_bytes(10_000, 3)
    with st.open_write(url) as w:
        w.write(data)
    assert w.info is not None and w.info.md5 == md5_hex(data)
    assert any_bucket.get("small/x.json.gz") == data
    info = st.stat(url)
    assert info is not None and (info.size, info.md5) == (len(data), md5_hex(data))
    assert [o.md5 for o in st.list(any_bucket.url("small"))] == [md5_hex(data)]
    assert md5_of(url) == md5_hex(data)


def test_gcs_large_write_is_invisible_until_finished(any_bucket: Bucket) -> None:
    st = GcsStorage(chunk_size=CHUNK)
    url = any_bucket.url("big/archive.tar.gz")
    data = random_bytes(5 * CHUNK + 123, 4)
    with st.open_write(url) as w:
        for i in range(0, len(data), 100_000):
            w.write(data[i : i + 100_000])
            if i > 3 * CHUNK:  # several chunks are on the server by now
                assert st.stat(url) is None
                assert any_bucket.keys() == []
    assert any_bucket.get("big/archive.tar.gz") == data
    assert w.info is not None and w.info.md5 == md5_hex(data)


@pytest.mark.parametrize("size", [1000, 3 * CHUNK], ids=["one-request", "resumable"])
def test_gcs_error_mid_write_publishes_nothing(any_bucket: Bucket, size: int) -> None:
    st = GcsStorage(chunk_size=CHUNK)
    url = any_bucket.url("x/y.bin")
    with pytest.raises(Boom), st.open_write(url) as w:
        w.write(random_bytes(size, 5))
        raise Boom
    assert st.stat(url) is None
    assert any_bucket.keys() == []


def test_gcs_if_absent_new_and_existing_large(any_bucket: Bucket) -> None:
    st = GcsStorage(chunk_size=CHUNK)
    url = any_bucket.url("once.bin")
    big = random_bytes(2 * CHUNK, 6)
    with st.open_write(url, if_absent=True) as w:
        w.write(big)
    with pytest.raises(ObjectExists), st.open_write(url, if_absent=True) as w:
        w.write(random_bytes(2 * CHUNK, 7))
    assert any_bucket.get("once.bin") == big


def test_gcs_if_absent_race_is_refused_by_precondition(fake_bucket: Bucket) -> None:
    """The precondition itself (not our early check) stops a second publisher.

    fake-gcs-server enforces ``ifGenerationMatch`` on single-request uploads (objects up to
    one chunk); it ignores it on resumable sessions, which real GCS checks at finalize.
    """
    st = GcsStorage(chunk_size=CHUNK)
    url = fake_bucket.url("marker")
    with pytest.raises(ObjectExists), st.open_write(url, if_absent=True) as w:
        w.write(b"ours")
        fake_bucket.client.bucket(fake_bucket.name).blob("marker").upload_from_string(b"theirs")
    assert fake_bucket.get("marker") == b"theirs"


def test_gcs_copy_stream_checksum_mismatch_leaves_nothing(any_bucket: Bucket) -> None:
    st = GcsStorage(chunk_size=CHUNK)
    for size in (5000, 3 * CHUNK):
        data = random_bytes(size, 8)
        with pytest.raises(ChecksumMismatch):
            copy_stream(
                io.BytesIO(data), any_bucket.url("c.bin"), storage=st, expected_md5="0" * 32
            )
    assert any_bucket.keys() == []


def test_storage_for_returns_streaming_backends(tmp_path: Path) -> None:
    assert isinstance(storage.storage_for(str(tmp_path)), LocalStorage)
    assert isinstance(storage.storage_for("gs://b/x"), GcsStorage)
    assert storage.md5_hex_of("1B2M2Y8AsgTpgAmY7PhCfg==") == md5_hex(b"")
    assert storage.md5_hex_of(None) is None
    assert storage.md5_hex_of("not base64!") is None


def test_gcs_corrupt_resumable_upload_is_deleted_by_generation(emulator_bucket: Bucket) -> None:
    """If GCS reports another MD5 at the end of a session, exactly that generation goes."""
    from google.cloud.storage.exceptions import DataCorruption

    blob = emulator_bucket.client.bucket(emulator_bucket.name).blob("big.bin")
    blob.upload_from_string(b"corrupted in transit")
    blob.reload()

    class Response:
        def json(self) -> dict[str, str]:
            return {"generation": str(blob.generation)}

    st = GcsStorage(chunk_size=CHUNK)
    writer = storage._GcsWriter(emulator_bucket.url("big.bin"), st, blob, if_absent=False)
    with pytest.raises(ChecksumMismatch, match="MD5"):
        writer._delete_corrupt(DataCorruption(Response(), "MD5 mismatch"))
    assert emulator_bucket.keys() == []
    writer._delete_corrupt(RuntimeError("other errors are left to the caller"))
