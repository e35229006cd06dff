"""GcsStorage and the launcher against a real GCS JSON API over HTTP (tests/gcs_server.py).

Everything talks to the in-process emulator on 127.0.0.1; the ``gcs_env`` fixture refuses
any other connection.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import random
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from sampledata import generate_hyperquack_records, render_results
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.run import RunConfig, run
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_TABLES
from services.common import storage
from services.common.storage import GcsStorage
from tests.gcs_server import GcsBucket

EDT = timezone(timedelta(hours=-4))
SCAN = "CP_Quack-echo-2021-05-30-01-01-01"
CHUNK = 8 * 1024 * 1024  # GcsStorage.open_read's range size


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def noisy_lines(n_bytes: int, seed: int = 7) -> list[bytes]:
    """JSON-ish lines of incompressible text, ``n_bytes`` in total (roughly)."""
    rng = random.Random(seed)
    lines, total, i = [], 0, 0
    while total < n_bytes:
        line = b'{"i": %d, "pad": "%s"}' % (i, base64.b64encode(rng.randbytes(96)))
        lines.append(line)
        total += len(line) + 1
        i += 1
    return lines


# --------------------------------------------------------------------------------------
# GcsStorage over HTTP
# --------------------------------------------------------------------------------------


def test_write_read_round_trip(gcs_bucket: GcsBucket) -> None:
    st = GcsStorage()
    url = gcs_bucket.url("a/b/data.bin")
    payload = bytes(range(256)) * 1000
    st.write_bytes(url, payload)
    assert st.read_bytes(url) == payload
    with st.open_read(url) as fh:
        assert fh.read() == payload
    # Stored as given: no content-encoding, checksum of our bytes.
    blob = gcs_bucket.client.bucket(gcs_bucket.name).get_blob("a/b/data.bin")
    assert blob.content_encoding is None
    assert blob.md5_hash == md5_b64(payload)
    st.write_bytes(url, b"second")
    assert st.read_bytes(url) == b"second"
    assert storage.storage_for(url).read_bytes(url) == b"second"


def test_list_returns_url_size_version_and_respects_folder_boundary(
    gcs_bucket: GcsBucket,
) -> None:
    st = GcsStorage()
    gcs_bucket.put("scans/s1/results.json", b"x" * 10)
    gcs_bucket.put("scans/s2/results.json.gz", b"y" * 3)
    gcs_bucket.put("scans-old/s1/results.json", b"z")  # shares the string prefix "scans"
    gcs_bucket.put("other/file", b"w")

    listed = {o.url: o for o in st.list(gcs_bucket.url("scans"))}
    assert set(listed) == {
        gcs_bucket.url("scans/s1/results.json"),
        gcs_bucket.url("scans/s2/results.json.gz"),
    }
    assert {o.url for o in st.list(gcs_bucket.url("scans/"))} == set(listed)
    one = listed[gcs_bucket.url("scans/s1/results.json")]
    assert one.size == 10
    blob = gcs_bucket.client.bucket(gcs_bucket.name).get_blob("scans/s1/results.json")
    assert one.version == f"gen:{blob.generation}:md5:{md5_b64(b'x' * 10)}"
    assert st.stat(one.url) == one
    # A URL naming one object lists that object.
    assert list(st.list(one.url)) == [one]
    # The whole bucket.
    assert len(list(st.list(gcs_bucket.url()))) == 4

    # Rewriting (even with identical bytes) gives a new generation, hence a new version.
    gcs_bucket.put("scans/s1/results.json", b"x" * 10)
    again = st.stat(one.url)
    assert again is not None
    assert again.size == 10
    assert again.version != one.version
    assert {o.url: o for o in st.list(gcs_bucket.url("scans"))}[one.url] == again


def test_stat_and_open_of_missing_object(gcs_bucket: GcsBucket) -> None:
    st = GcsStorage()
    assert st.stat(gcs_bucket.url("nope/x.json")) is None
    assert list(st.list(gcs_bucket.url("nope"))) == []
    with pytest.raises(FileNotFoundError):
        st.open_read(gcs_bucket.url("nope/x.json"))
    with pytest.raises(FileNotFoundError):
        st.read_bytes(gcs_bucket.url("nope/x.json"))


def test_delete_prefix_and_single_object(gcs_bucket: GcsBucket) -> None:
    st = GcsStorage()
    for key in ("tmp/run1/a", "tmp/run1/sub/b", "tmp/run10/c", "tmp/run1.keep", "keep/d"):
        gcs_bucket.put(key, b"1")
    st.delete(gcs_bucket.url("tmp/run1"))
    assert gcs_bucket.keys() == ["keep/d", "tmp/run1.keep", "tmp/run10/c"]
    st.delete(gcs_bucket.url("keep/d"))
    st.delete(gcs_bucket.url("missing/prefix"))  # nothing there: no error
    assert gcs_bucket.keys() == ["tmp/run1.keep", "tmp/run10/c"]


def test_open_text_lines_streams_gz_object_line_by_line(gcs_bucket: GcsBucket) -> None:
    lines = noisy_lines(2 * CHUNK)
    data = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    assert len(data) > CHUNK  # several ranged reads
    gcs_bucket.put("scans/big/results.json.gz", data)

    with storage.open_text_lines(gcs_bucket.url("scans/big/results.json.gz")) as fh:
        first = next(iter(fh))
        assert first == lines[0] + b"\n"
        # Only the first range has been fetched, not the whole object.
        assert isinstance(fh, gzip.GzipFile)
        assert fh.fileobj is not None
        assert fh.fileobj.tell() <= CHUNK < len(data)
        rest = list(fh)
    assert [first, *rest] == [line + b"\n" for line in lines]


def test_read_text_of_gz_and_plain(gcs_bucket: GcsBucket) -> None:
    text = "domain,category\nexample.com,News Media\nbücher.de,Shopping\n"
    gcs_bucket.put("res/domain_categories.csv.gz", gzip.compress(text.encode(), mtime=0))
    gcs_bucket.put("res/plain.csv", b"\xef\xbb\xbf" + text.encode())  # UTF-8 BOM dropped
    assert storage.read_text(gcs_bucket.url("res/domain_categories.csv.gz")) == text
    assert storage.read_text(gcs_bucket.url("res/plain.csv")) == text


def test_gzip_content_encoded_objects_are_read_as_stored(gcs_bucket: GcsBucket) -> None:
    """Objects uploaded with Content-Encoding: gzip (``gsutil cp -Z``) are read raw.

    GCS serves them with ``Content-Encoding: gzip`` and the client would gunzip them, so
    a ``.gz`` name would be gunzipped twice, and ranged reads would break mid-stream.
    """
    lines = noisy_lines(CHUNK + CHUNK // 2, seed=3)
    data = gzip.compress(b"\n".join(lines), mtime=0)
    assert len(data) > CHUNK
    gcs_bucket.put("scans/enc/results.json.gz", data, content_encoding="gzip")
    small = gzip.compress(b"hello\n", mtime=0)
    gcs_bucket.put("res/small.txt.gz", small, content_encoding="gzip")

    url = gcs_bucket.url("scans/enc/results.json.gz")
    assert GcsStorage().read_bytes(url) == data
    assert storage.read_text(gcs_bucket.url("res/small.txt.gz")) == "hello\n"
    with storage.open_text_lines(url) as fh:
        got = [line.rstrip(b"\n") for line in fh]
    assert got == lines


def test_reader_does_not_mix_generations(gcs_bucket: GcsBucket) -> None:
    """An object rewritten while it is being read fails the read; it never splices."""
    old = b"A" * (CHUNK + 1000)
    gcs_bucket.put("scans/s/results.json", old)
    url = gcs_bucket.url("scans/s/results.json")
    with GcsStorage().open_read(url) as fh:
        assert fh.read(10) == b"A" * 10  # first range fetched
        gcs_bucket.put("scans/s/results.json", b"B" * (CHUNK + 1000))
        with pytest.raises(Exception) as info:
            fh.read()
    assert "404" in str(info.value) or "NotFound" in type(info.value).__name__


# --------------------------------------------------------------------------------------
# The launcher: gs:// input and resources, local warehouse
# --------------------------------------------------------------------------------------


def scan_bytes() -> bytes:
    records = generate_hyperquack_records(
        "echo", 2, 30, seed=1, start=datetime(2021, 5, 30, 1, 1, 1, tzinfo=EDT)
    )
    content, n_bad = render_results(records)
    assert n_bad == 0
    return gzip.compress(content, mtime=0)


def counts(wh: Path) -> dict[str, int]:
    tables = (HYPERQUACK_TABLES["echo"].name, DEAD_LETTER.name, "processed_files")
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables}


def ledger(wh: Path) -> list[tuple[str, str, str, int, str]]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(
            "SELECT file_key, path, version, size_bytes, status FROM processed_files"
        ).fetchall()


@pytest.mark.slow
def test_launcher_end_to_end_with_gs_input_and_resources(
    gcs_bucket: GcsBucket, tmp_path: Path
) -> None:
    data = scan_bytes()

    # Reference: the same bytes from a local folder.
    local_in = tmp_path / "local_in" / SCAN
    local_in.mkdir(parents=True)
    (local_in / "results.json.gz").write_bytes(data)
    local = run(RunConfig(input=str(tmp_path / "local_in"), warehouse=str(tmp_path / "wh_local")))
    assert local.files_processed == 1
    expected = counts(tmp_path / "wh_local")
    assert expected[HYPERQUACK_TABLES["echo"].name] > 0

    key = f"scans/{SCAN}/results.json.gz"
    gcs_bucket.put(key, data)
    # A sibling folder sharing the string prefix must not be picked up as input.
    gcs_bucket.put(f"scans-old/{SCAN}/results.json", gzip.decompress(data))
    for f in sorted(os.listdir(SAMPLE_RESOURCES)):
        gcs_bucket.put(f"resources/{f}", (SAMPLE_RESOURCES / f).read_bytes())
    gs_resources = gcs_bucket.url("resources")
    assert load_resources(gs_resources).digest == load_resources(str(SAMPLE_RESOURCES)).digest

    wh = tmp_path / "wh"
    cfg = RunConfig(input=gcs_bucket.url("scans"), warehouse=str(wh), resources=gs_resources)

    first = run(cfg)
    assert (first.files_found, first.files_processed, first.skipped) == (1, 1, [])
    assert counts(wh) == expected
    blob = gcs_bucket.client.bucket(gcs_bucket.name).get_blob(key)
    [(file_key, path, version, size, status)] = ledger(wh)
    assert file_key == f"{SCAN}/results.json"
    assert path == gcs_bucket.url(key)
    assert version == f"gen:{blob.generation}:md5:{blob.md5_hash}"
    assert (size, status) == (len(data), "ok")

    second = run(cfg)
    assert (second.files_processed, second.files_skipped_unchanged) == (0, 1)
    assert counts(wh) == expected

    gcs_bucket.put(key, data)  # same bytes, new generation
    new_gen = gcs_bucket.client.bucket(gcs_bucket.name).get_blob(key).generation
    assert new_gen != blob.generation
    third = run(cfg)
    assert (third.files_processed, third.files_skipped_unchanged) == (1, 0)
    assert counts(wh) == expected  # replaced, not duplicated
    [(_, path, version, _, status)] = ledger(wh)
    assert (path, status) == (gcs_bucket.url(key), "ok")
    assert version.startswith(f"gen:{new_gen}:")

    # Parquet of the warehouse holds exactly one file per (table, date) for the scan.
    parquet = [p for p in (wh / "parquet").rglob("*.parquet") if SCAN in p.name]
    assert len(parquet) == len({p.parent for p in parquet})


def test_network_guard_refuses_non_loopback(gcs_env: object) -> None:
    with pytest.raises(ConnectionRefusedError, match="test network guard"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
