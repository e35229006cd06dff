"""services.routeviews against a local CAIDA look-alike on 127.0.0.1.

``FakeCaida`` serves a tree made by each test (generated gzip files, plus the real
CAIDA excerpts read from ../shared at serve time, never copied into the project), with
HTML folder indexes, and scripted misbehaviour per path: a 404, a 503 that recovers, a
body cut short of its Content-Length, a truncated gzip. Every test in this module
refuses connections to anything but loopback.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import ipmeta
from services.common import storage as st
from services.common.ipmeta import ReferenceCatalog, enrich_pairs
from services.routeviews import caida
from services.routeviews.__main__ import main
from services.routeviews.fetch import Fetcher, LocalFetcher
from services.routeviews.metrics import MirrorMetrics
from services.routeviews.mirror import Mirror, verify_gzip
from tests.conftest import REAL

CAIDA_REAL = REAL / "caida"
RV = "routing/routeviews-prefix2as"
TODAY = dt.date(2021, 6, 1)

# ---------------------------------------------------------------------------------------
# The fake CAIDA server


class FakeCaida:
    """Files by path under ``/datasets/``; folder indexes generated; scripted failures."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | Path] = {}
        self.fail_first: dict[str, list[int]] = {}  # path → statuses answered first (GET)
        self.fail_headers: dict[str, dict[str, str]] = {}  # path → headers of those answers
        self.short_first: dict[str, int] = {}  # path → GETs cut short before a good one
        self.no_index: set[str] = set()  # folders answering 404 instead of an index
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    def put(self, path: str, data: bytes | Path) -> None:
        self.files[path] = data

    def body(self, path: str) -> bytes | None:
        data = self.files.get(path)
        if isinstance(data, Path):
            return data.read_bytes()  # a real excerpt, read in place at serve time
        return data

    def index(self, folder: str) -> bytes | None:
        if folder in self.no_index:
            return None
        names = sorted({p[len(folder) :].split("/")[0] for p in self.files if p.startswith(folder)})
        if not names:
            return None
        links = "".join(f'<a href="{n}">{n}</a>\n' for n in names)
        return f'<html><body>\n<a href="../">Parent</a>\n{links}</body></html>'.encode()

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))


def _handler(fake: FakeCaida) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self,
            status: int,
            body: bytes,
            length: int | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.close_connection = True

        def _serve(self) -> None:
            raw = self.path.split("?", 1)[0]
            if not raw.startswith("/datasets/"):
                self._send(404, b"not found")
                return
            path = raw[len("/datasets/") :]
            with fake.lock:
                fake.requests.append((self.command, path))
                if self.command == "GET" and fake.fail_first.get(path):
                    status = fake.fail_first[path].pop(0)
                    self._send(status, b"try again later", headers=fake.fail_headers.get(path))
                    return
                cut = self.command == "GET" and fake.short_first.get(path, 0) > 0
                if cut:
                    fake.short_first[path] -= 1
            body = fake.index(path) if path.endswith("/") or not path else fake.body(path)
            if body is None:
                self._send(404, b"not found")
            elif cut:
                self._send(200, body[: len(body) // 2], length=len(body))
            else:
                self._send(200, body)

        do_GET = _serve
        do_HEAD = _serve

    return Handler


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests may only talk to loopback addresses."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError(f"test network guard: refusing {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def fake() -> Iterator[FakeCaida]:
    fc = FakeCaida()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fc))
    server.daemon_threads = True
    fc.url = f"http://127.0.0.1:{server.server_address[1]}/datasets"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fc
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _real(name: str) -> Path:
    p = CAIDA_REAL / name
    if not p.is_file():
        pytest.skip(f"real CAIDA excerpt not found: {p} (shared/fixtures/real is absent)")
    return p


def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def _pfx2as(marker_asn: int) -> bytes:
    # A small table; 9.9.9.0/24's origin tells which file was used. 300 lines of filler
    # so the gzip is big enough to cut meaningfully.
    filler = [f"44.{i // 256}.{i % 256}.0\t24\t{64000 + i % 50}" for i in range(300)]
    return _gz(["8.8.8.0\t24\t15169", f"9.9.9.0\t24\t{marker_asn}", *filler])


def _as2org_txt() -> bytes:
    return _gz(
        [
            "# name: AS Org",
            "# format:org_id|changed|org_name|country|source",
            "GOGL-ARIN|20191031|Google LLC|US|ARIN",
            "# format:aut|changed|aut_name|org_id|opaque_id|source",
            "15169|20120224|GOOGLE|GOGL-ARIN||ARIN",
        ]
    )


def _as2org_jsonl() -> bytes:
    return _gz(
        [
            json.dumps(
                {"organizationId": "GOGL-ARIN", "name": "Google LLC", "country": "US"}
                | {"type": "Organization"}
            ),
            json.dumps({"asn": "15169", "name": "GOOGLE", "organizationId": "GOGL-ARIN"})[:-1]
            + ', "type": "ASN"}',
        ]
    )


RV_GOOD = "routeviews-rv2-20210526-1200.pfx2as.gz"
RV_404 = "routeviews-rv2-20210527-1200.pfx2as.gz"
RV_503 = "routeviews-rv2-20210528-1400.pfx2as.gz"
RV_TRUNC = "routeviews-rv2-20210529-1200.pfx2as.gz"
RV_REAL = "routeviews-rv2-20210530-1200.pfx2as.gz"
RV_SHORT = "routeviews-rv2-20210531-0800.pfx2as.gz"
RV_PUBLISHED = (RV_GOOD, RV_503, RV_REAL, RV_SHORT)


def build_tree(fc: FakeCaida, *, with_bad_files: bool = True) -> None:
    """Creation log of 6 files (404, 503×2, truncated gzip, short body among them)."""
    names = [RV_GOOD, RV_503, RV_REAL, RV_SHORT]
    if with_bad_files:
        names += [RV_404, RV_TRUNC]
    log = ["# pfx2as creation log", "# seq\ttimestamp\tpath"]
    log += [f"{1000 + i}\t{1622000000 + i}\t2021/05/{n}" for i, n in enumerate(sorted(names))]
    log += ["garbage line", "2000\t1622999999\t../../etc/passwd"]
    fc.put(f"{RV}/pfx2as-creation.log", "\n".join(log).encode())
    fc.put(f"{RV}/2021/05/{RV_GOOD}", _pfx2as(26))
    fc.put(f"{RV}/2021/05/{RV_503}", _pfx2as(28))
    fc.fail_first[f"{RV}/2021/05/{RV_503}"] = [503, 503]
    # The real excerpt (date unknown, 2020) served under a 2021-05-30 name.
    fc.put(f"{RV}/2021/05/{RV_REAL}", _real("routeviews-rv2-00000000-test.pfx2as.gz"))
    fc.put(f"{RV}/2021/05/{RV_SHORT}", _pfx2as(31))
    fc.short_first[f"{RV}/2021/05/{RV_SHORT}"] = 1
    if with_bad_files:
        good = _pfx2as(29)
        fc.put(f"{RV}/2021/05/{RV_TRUNC}", good[: len(good) * 2 // 3])
    fc.put("as-organizations/20190101.as-org2info.txt.gz", _as2org_txt())  # outside window
    fc.put(
        "as-organizations/20201001.as-org2info.txt.gz", _real("20201001.test.as-org2info.txt.gz")
    )
    fc.put("as-organizations/20210401.as-org2info.txt.gz", _as2org_txt())
    fc.put("as-organizations/20210401.as-org2info.jsonl.gz", _as2org_jsonl())
    fc.put("as-organizations/README.txt", b"not a data file")
    fc.put("as-classification/20201101.as2types.txt.gz", _real("20201101.test.as2types.txt.gz"))
    fc.put("as-classification/20210401.as2types.txt.gz", _gz(["15169|peerDB_class|Content"]))


def _mirror(
    fc: FakeCaida, dest: str, sleeps: list[float] | None = None, compile_tables: bool = True
) -> Mirror:
    fetcher = Fetcher(
        retries=3,
        backoff=0.001,
        timeout=5,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
    )
    return Mirror(
        base_url=fc.url,
        dest=dest,
        fetcher=fetcher,
        metrics=MirrorMetrics(),
        compile_tables=compile_tables,
    )


def _files(root: Path) -> list[str]:
    """The mirrored files (not the parsed forms under compiled/)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != ipmeta.COMPILED_DIR
    )


def _compiled(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ipmeta.COMPILED_DIR).glob("*"))


def _entries_of(root: Path, files: list[str]) -> list[str]:
    """The compiled/ names the mirrored ``files`` (paths under ``root``) should have."""
    out = []
    for rel in files:
        kind = next(k for k, f in ipmeta.KIND_FOLDERS.items() if rel.startswith(f + "/"))
        ref = ipmeta.ref_file_from_name(kind, rel)
        assert ref is not None
        data = (root / rel).read_bytes()
        out.append(ipmeta.entry_name(ref.file_id, ipmeta.KIND_CODECS[kind].name, data))
    return sorted(out)


# ---------------------------------------------------------------------------------------
# sync


def test_sync_mirrors_verifies_and_reports(fake: FakeCaida, tmp_path: Path) -> None:
    build_tree(fake)
    dest = tmp_path / "meta"
    sleeps: list[float] = []
    m = _mirror(fake, str(dest), sleeps)
    summary = m.sync(today=TODAY, snapshot_days=400)

    assert _files(dest) == sorted(
        [
            *(f"routeviews/2021/05/{n}" for n in RV_PUBLISHED),
            "as-organizations/20201001.as-org2info.txt.gz",
            "as-organizations/20210401.as-org2info.jsonl.gz",
            "as-organizations/20210401.as-org2info.txt.gz",
            "as-classifications/20201101.as2types.txt.gz",
            "as-classifications/20210401.as2types.txt.gz",
        ]
    )
    # Published bytes are what was served (the real excerpt read from ../shared).
    assert (dest / f"routeviews/2021/05/{RV_REAL}").read_bytes() == _real(
        "routeviews-rv2-00000000-test.pfx2as.gz"
    ).read_bytes()

    by_name = {o.name: o for o in summary.outcomes}
    assert by_name[RV_404].result == "missing"
    assert by_name[RV_404].attempts == 1 and fake.count("GET", RV_404) == 1  # not retried
    # 503, 503, then 200: published after two retries with growing backoff.
    assert (by_name[RV_503].result, by_name[RV_503].attempts) == ("mirrored", 3)
    assert fake.count("GET", RV_503) == 3
    assert len(sleeps) >= 3 and sleeps[1] > sleeps[0] * 1.2
    # Body cut short of its Content-Length once, then complete.
    assert (by_name[RV_SHORT].result, by_name[RV_SHORT].attempts) == ("mirrored", 2)
    # Truncated gzip: downloaded fine, failed verification, not published, reported.
    assert by_name[RV_TRUNC].result == "failed"
    assert "not published" in (by_name[RV_TRUNC].detail or "")
    assert not list(dest.rglob(".tmp-*"))
    # Each published file's parsed form, named by its bytes (nothing for the failed one).
    assert _compiled(dest) == _entries_of(dest, _files(dest))
    assert summary.compiled == {"routeviews": {"compiled": 4}, "as2org": {"compiled": 3},
                                "as2class": {"compiled": 2}}  # fmt: skip

    assert summary.failed
    assert summary.counts() == {
        "routeviews": {"failed": 1, "mirrored": 4, "missing": 1},
        "as2org": {"mirrored": 3},
        "as2class": {"mirrored": 2},
    }
    reg = m.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert sample("cp_routeviews_files_total", kind="routeviews", result="mirrored") == 4
    assert sample("cp_routeviews_files_total", kind="routeviews", result="failed") == 1
    assert sample("cp_routeviews_files_total", kind="routeviews", result="missing") == 1
    assert sample("cp_routeviews_files_total", kind="routeviews", result="skipped") == 0
    published = sum((dest / f"routeviews/2021/05/{n}").stat().st_size for n in RV_PUBLISHED)
    assert sample("cp_routeviews_bytes_total", kind="routeviews") == published
    # routeviews had a failure: no "last success"; the AS kinds succeeded.
    assert sample("cp_routeviews_last_success_timestamp_seconds", kind="routeviews") is None
    assert sample("cp_routeviews_last_success_timestamp_seconds", kind="as2org") is not None
    newest = sample("cp_routeviews_newest_file_timestamp_seconds", kind="routeviews")
    assert newest == dt.datetime(2021, 5, 31, tzinfo=dt.UTC).timestamp()
    assert sample("cp_routeviews_compiled_total", kind="routeviews", result="compiled") == 4
    assert sample("cp_routeviews_compiled_total", kind="routeviews", result="failed") == 0


def test_second_sync_skips_everything_present(fake: FakeCaida, tmp_path: Path) -> None:
    build_tree(fake)
    dest = str(tmp_path / "meta")
    _mirror(fake, dest).sync(today=TODAY)
    before = {p: p.stat().st_mtime_ns for p in Path(dest).rglob("*") if p.is_file()}
    fake.requests.clear()

    m = _mirror(fake, dest)
    summary = m.sync(today=TODAY)
    counts = summary.counts()
    assert counts["routeviews"] == {"failed": 1, "missing": 1, "skipped": 4}
    assert counts["as2org"] == {"skipped": 3} and counts["as2class"] == {"skipped": 2}
    # Present files were only HEADed, never downloaded again, and not rewritten.
    for name in RV_PUBLISHED:
        assert fake.count("GET", name) == 0 and fake.count("HEAD", name) == 1
    assert {p: p.stat().st_mtime_ns for p in Path(dest).rglob("*") if p.is_file()} == before
    # Their parsed forms are there: none is written again (the routeviews ones not even read).
    assert summary.compiled == {"routeviews": {"present": 4}, "as2org": {"present": 3},
                                "as2class": {"present": 2}}  # fmt: skip
    assert (
        m.metrics.registry.get_sample_value(
            "cp_routeviews_files_total", {"kind": "as2org", "result": "skipped"}
        )
        == 3
    )


def test_sync_refetches_a_file_whose_size_changed(fake: FakeCaida, tmp_path: Path) -> None:
    build_tree(fake, with_bad_files=False)
    dest = tmp_path / "meta"
    assert not _mirror(fake, str(dest)).sync(today=TODAY).failed
    new = _pfx2as(99999)  # republished with other content (and size)
    fake.put(f"{RV}/2021/05/{RV_GOOD}", new)
    summary = _mirror(fake, str(dest)).sync(today=TODAY, snapshot_days=400)
    assert [o.name for o in summary.of("mirrored")] == [RV_GOOD]
    assert (dest / f"routeviews/2021/05/{RV_GOOD}").read_bytes() == new


def test_sync_listing_failure_is_reported_not_fatal(fake: FakeCaida, tmp_path: Path) -> None:
    build_tree(fake, with_bad_files=False)
    fake.fail_first[f"{RV}/pfx2as-creation.log"] = [500] * 10
    m = _mirror(fake, str(tmp_path))
    summary = m.sync(today=TODAY)
    assert summary.failed and "routeviews" in summary.listing_errors
    assert summary.counts()["as2org"] == {"mirrored": 3}  # the other kinds still ran
    assert (
        m.metrics.registry.get_sample_value(
            "cp_routeviews_listing_failures_total", {"kind": "routeviews"}
        )
        == 1
    )


def test_sync_keeps_the_newest_snapshot_even_outside_the_window(
    fake: FakeCaida, tmp_path: Path
) -> None:
    build_tree(fake, with_bad_files=False)
    summary = _mirror(fake, str(tmp_path)).sync(
        ["as2org"], today=dt.date(2026, 1, 1), snapshot_days=30
    )
    assert sorted(o.name for o in summary.of("mirrored")) == [
        "20210401.as-org2info.jsonl.gz",
        "20210401.as-org2info.txt.gz",
    ]


def test_mirrored_data_feeds_the_catalog(fake: FakeCaida, tmp_path: Path) -> None:
    """sync → ReferenceCatalog → dated lookups of real fixture IPs, with provenance."""
    build_tree(fake)
    # Serve only the real AS snapshots (20201001 as2org, 20201101 as2types).
    del fake.files["as-organizations/20210401.as-org2info.txt.gz"]
    del fake.files["as-organizations/20210401.as-org2info.jsonl.gz"]
    del fake.files["as-classification/20210401.as2types.txt.gz"]
    dest = str(tmp_path / "meta")
    _mirror(fake, dest).sync(today=TODAY)
    cat = ReferenceCatalog(dest, max_staleness_days=30)
    d_real, d_gen, d_stale = dt.date(2021, 5, 30), dt.date(2021, 5, 27), dt.date(2021, 8, 1)
    out, stats = enrich_pairs(
        cat,
        [
            (d_real, "146.112.62.39"),  # echo server (real fixtures)
            (d_real, "122.155.84.41"),
            (d_gen, "9.9.9.9"),  # 2021-05-27 has no file (404): 2021-05-26 is used
            (d_stale, "146.112.62.39"),
        ],
    )
    m = out[(d_real, "146.112.62.39")]
    assert (m.netblock, m.asn, m.as_name, m.as_full_name, m.as_class, m.country) == (
        "146.112.62.0/24",
        36692,
        "OPENDNS",
        "Cisco OpenDNS, LLC",
        "Content",
        "US",
    )
    assert m.sources == (
        "routeviews-rv2-20210530-1200",
        "20201001.as-org2info",
        "20201101.as2types",
    )
    assert out[(d_real, "122.155.84.41")].as_full_name == "CAT Telecom Public Company Limited"
    # ASN 26 (the generated table's marker) is in neither snapshot: empty names, no error.
    gen = out[(d_gen, "9.9.9.9")]
    assert (gen.asn, gen.as_name, gen.as_class, gen.status) == (26, None, None, "ok")
    assert gen.sources[0] == "routeviews-rv2-20210526-1200"
    assert out[(d_stale, "146.112.62.39")].status == "no_table"
    assert stats.dates_without_routeviews == {d_stale: "stale"}
    assert stats.by_status == {"ok": 3, "no_table": 1}


# ---------------------------------------------------------------------------------------
# backfill


def test_backfill_uses_month_indexes_and_probes_without_one(
    fake: FakeCaida, tmp_path: Path
) -> None:
    # March 2021 has a folder index; February answers 404 for its index → probing.
    fake.put(f"{RV}/2021/02/routeviews-rv2-20210227-0600.pfx2as.gz", _pfx2as(227))
    fake.no_index.add(f"{RV}/2021/02/")
    fake.put(f"{RV}/2021/03/routeviews-rv2-20210301-1200.pfx2as.gz", _pfx2as(301))
    fake.put(f"{RV}/2021/03/routeviews-rv2-20210302-0000.pfx2as.gz", _pfx2as(302))
    fake.put(f"{RV}/2021/03/routeviews-rv2-20210303-0000.pfx2as.gz", _pfx2as(303))  # after end
    dest = tmp_path / "meta"
    m = _mirror(fake, str(dest))
    summary = m.backfill(["routeviews"], dt.date(2021, 2, 27), dt.date(2021, 3, 2))
    assert sorted(o.name for o in summary.of("mirrored")) == [
        "routeviews-rv2-20210227-0600.pfx2as.gz",
        "routeviews-rv2-20210301-1200.pfx2as.gz",
        "routeviews-rv2-20210302-0000.pfx2as.gz",
    ]
    # 2021-02-28 has no file at any of the 12 RIB times: one "missing" for the day.
    assert [o.name for o in summary.of("missing")] == ["routeviews-rv2-20210228-*"]
    assert not summary.failed
    # Probing stops at the first hit: 0000, 0200, 0400, 0600 for 02-27; all 12 for 02-28.
    assert fake.count("GET", "-20210227-0800.pfx2as.gz") == 0
    assert sum(1 for _, p in fake.requests if "-20210228-" in p) == 12
    assert (dest / "routeviews/2021/03/routeviews-rv2-20210301-1200.pfx2as.gz").is_file()

    # Again: everything present is skipped; probed days are not probed again.
    fake.requests.clear()
    again = _mirror(fake, str(dest)).backfill(
        ["routeviews"], dt.date(2021, 2, 27), dt.date(2021, 3, 2)
    )
    assert again.counts()["routeviews"] == {"missing": 1, "skipped": 3}
    assert not any("-20210227-" in p for _, p in fake.requests)


def test_backfill_snapshots_by_index_and_by_probing(fake: FakeCaida, tmp_path: Path) -> None:
    build_tree(fake, with_bad_files=False)
    m = _mirror(fake, str(tmp_path))
    s = m.backfill(["as2org", "as2class"], dt.date(2019, 1, 1), dt.date(2020, 12, 31))
    assert sorted(o.name for o in s.of("mirrored")) == [
        "20190101.as-org2info.txt.gz",
        "20201001.as-org2info.txt.gz",
        "20201101.as2types.txt.gz",
    ]
    # Without an index: the 1st of each month is probed.
    fake.no_index.add("as-classification/")
    s = _mirror(fake, str(tmp_path / "other")).backfill(
        ["as2class"], dt.date(2021, 3, 15), dt.date(2021, 5, 1)
    )
    assert [o.name for o in s.of("mirrored")] == ["20210401.as2types.txt.gz"]
    assert fake.count("GET", "20210501.as2types.txt.gz") == 1


# ---------------------------------------------------------------------------------------
# fetch


def test_fetcher_retries_then_fails_and_honours_retry_after(fake: FakeCaida) -> None:
    fake.put("x.gz", b"data")
    fake.fail_first["x.gz"] = [503, 503, 503]
    sleeps: list[float] = []
    res = Fetcher(retries=2, backoff=0.5, sleep=sleeps.append).get(f"{fake.url}/x.gz")
    assert (res.outcome, res.attempts, res.status) == ("failed", 3, 503)
    assert len(sleeps) == 2 and 0.3 <= sleeps[0] <= 0.7 and 0.7 <= sleeps[1] <= 1.3
    fake.fail_first["x.gz"] = [429]
    res = Fetcher(retries=1, sleep=sleeps.append).get(f"{fake.url}/x.gz")
    assert res.ok and res.data == b"data" and res.attempts == 2
    fake.fail_first["x.gz"] = [403]
    res = Fetcher(retries=5, sleep=sleeps.append).get(f"{fake.url}/x.gz")
    assert (res.outcome, res.attempts) == ("failed", 1)  # other 4xx: not retried


def test_fetcher_honours_retry_after_and_retries_short_bodies_once(fake: FakeCaida) -> None:
    fake.put("r.gz", b"payload")
    fake.fail_first["r.gz"] = [503, 429]
    fake.fail_headers["r.gz"] = {"Retry-After": "9"}
    sleeps: list[float] = []
    res = Fetcher(retries=4, backoff=0.01, sleep=sleeps.append).get(f"{fake.url}/r.gz")
    assert (res.ok, res.data, res.attempts) == (True, b"payload", 3)
    assert sleeps == [9.0, 9.0]  # the server's wait, not the 10 ms backoff
    fake.fail_first["r.gz"] = [503]
    fake.fail_headers["r.gz"] = {"Retry-After": "600"}
    sleeps.clear()
    assert Fetcher(retries=1, max_backoff=60, sleep=sleeps.append).get(f"{fake.url}/r.gz").ok
    assert sleeps == [60.0]  # capped at --max-backoff

    # A body always cut short: one budget of retries (not retries × retries), then failed.
    fake.put("cut.gz", b"x" * 5000)
    fake.short_first["cut.gz"] = 100
    sleeps.clear()
    res = Fetcher(retries=2, backoff=0.01, sleep=sleeps.append).get(f"{fake.url}/cut.gz")
    assert (res.outcome, res.attempts, len(sleeps)) == ("failed", 3, 2)
    assert fake.count("GET", "cut.gz") == 3
    assert "IncompleteRead" in (res.error or "") and "(after 3 attempts)" in (res.error or "")


def test_fetcher_connection_errors_and_limits(fake: FakeCaida) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = Fetcher(retries=1, backoff=0, sleep=lambda s: None).get(f"http://127.0.0.1:{port}/x")
    assert (res.outcome, res.attempts) == ("failed", 2) and "Connection" in (res.error or "")
    fake.put("big", b"x" * 1000)
    res = Fetcher(max_bytes=100, sleep=lambda s: None).get(f"{fake.url}/big")
    assert (res.outcome, res.attempts) == ("failed", 1) and "too large" in (res.error or "")
    assert Fetcher().head_size(f"{fake.url}/big") == 1000
    assert Fetcher().get("ftp://127.0.0.1/x").outcome == "failed"
    res = Fetcher(retries=3, sleep=lambda s: None).get("http://")  # no host
    assert (res.outcome, res.attempts) == ("failed", 0)  # refused before any request


def test_verify_gzip() -> None:
    good = _pfx2as(1)
    assert verify_gzip(good) is None
    assert "not a complete gzip" in (verify_gzip(good[:-4]) or "")  # trailer cut
    assert "not a complete gzip" in (verify_gzip(b"<html>oops</html>") or "")
    assert verify_gzip(gzip.compress(b"")) == "empty after decompression"
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    assert verify_gzip(bytes(corrupt)) is not None


# ---------------------------------------------------------------------------------------
# caida layout helpers


def test_creation_log_and_index_parsing() -> None:
    spec = caida.SPECS["routeviews"]
    log = (
        "# comment\n"
        "3364\t1497803191\t2017/06/routeviews-rv2-20170617-1200.pfx2as.gz\n"
        "3365\t1497803192\t2017/07/routeviews-rv2-20170617-1400.pfx2as.gz\n"  # wrong folder
        "3366\t1497803193\t../2017/06/routeviews-rv2-20170618-1200.pfx2as.gz\n"
        "3367\t1497803194\t2017/06/routeviews-rv6-20170618-1200.pfx2as.gz\n"  # other kind
        "x\ty\tz\n"
    )
    assert [rf.name for rf in caida.files_from_creation_log(spec, log)] == [
        "routeviews-rv2-20170617-1200.pfx2as.gz"
    ]
    html = (
        '<a href="?C=N;O=D">Name</a><a href="../">Parent</a><a href="2021/">2021/</a>'
        '<a href="20210401.as-org2info.txt.gz">x</a>'
        "<A HREF='20210401.as-org2info.jsonl.gz'>y</A>"
        '<a href="https://elsewhere.example/20200101.as-org2info.txt.gz">z</a>'
        '<a href="20210401.as-org2info.txt.gz.md5">md5</a>'
    )
    assert [rf.name for rf in caida.files_from_index(caida.SPECS["as2org"], html)] == [
        "20210401.as-org2info.jsonl.gz",
        "20210401.as-org2info.txt.gz",
    ]
    assert caida.resolve_kinds("pfx2as, asorg,asclass,pfx2as") == (
        "routeviews",
        "as2org",
        "as2class",
    )
    assert len(caida.resolve_kinds("all")) == 4
    with pytest.raises(ValueError):
        caida.resolve_kinds("bogus")
    assert caida.probe_names(spec, dt.date(2021, 2, 3))[-1] == (
        "routeviews-rv2-20210203-2200.pfx2as.gz"
    )
    assert list(caida.months(dt.date(2020, 11, 30), dt.date(2021, 2, 1))) == [
        (2020, 11),
        (2020, 12),
        (2021, 1),
        (2021, 2),
    ]


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_sync_exit_codes_summary_and_metrics_file(
    fake: FakeCaida, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_tree(fake)
    dest, prom = tmp_path / "meta", tmp_path / "routeviews.prom"
    common = ["--base-url", fake.url, "--dest", str(dest), "--backoff", "0.001"]
    code = main(["sync", *common, "--metrics-file", str(prom), "--log-level", "ERROR"])
    assert code == 1  # the truncated gzip failed; the others are published
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert out["counts"]["routeviews"] == {"failed": 1, "mirrored": 4, "missing": 1}
    assert {p["name"]: p["result"] for p in out["problems"]} == {
        RV_404: "missing",
        RV_TRUNC: "failed",
    }
    text = prom.read_text()
    assert 'cp_routeviews_files_total{kind="routeviews",result="mirrored"} 4.0' in text
    assert "cp_routeviews_bytes_total" in text
    assert 'cp_routeviews_last_success_timestamp_seconds{kind="as2org"}' in text

    # The bad files are fixed upstream: the next run succeeds (exit 0), skipping the rest.
    fake.put(f"{RV}/2021/05/{RV_TRUNC}", _pfx2as(29))
    fake.put(f"{RV}/2021/05/{RV_404}", _pfx2as(27))
    assert main(["sync", *common, "--log-level", "ERROR"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["mirrored"]) == [RV_404, RV_TRUNC]

    assert main(["asclass", *common, "--log-level", "ERROR"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"as2class": {"skipped": 1}}
    args = ["backfill", *common, "--start", "2021-05-26", "--end", "2021-05-26"]
    assert main([*args, "--log-level", "ERROR"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"routeviews": {"skipped": 1}}


def test_cli_settings_from_environment_and_usage_errors(
    fake: FakeCaida,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build_tree(fake, with_bad_files=False)
    monkeypatch.setenv("CP_CAIDA_BASE_URL", fake.url)
    monkeypatch.setenv("CP_IP_METADATA", str(tmp_path / "env-dest"))
    monkeypatch.setenv("CP_HTTP_BACKOFF", "0.001")
    assert main(["sync", "--kinds", "pfx2as", "--log-level", "ERROR"]) == 0
    assert (tmp_path / f"env-dest/routeviews/2021/05/{RV_GOOD}").is_file()
    capsys.readouterr()
    monkeypatch.delenv("CP_IP_METADATA")
    for argv in (
        ["sync"],  # no destination
        ["sync", "--dest", "x", "--kinds", "bogus"],
        ["backfill", "--dest", "x", "--start", "2021-02-02", "--end", "2021-02-01"],
        ["backfill", "--dest", "x", "--start", "yesterday", "--end", "2021-02-01"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


# ---------------------------------------------------------------------------------------
# gs:// destination (GCS JSON API emulator on 127.0.0.1)


def test_sync_to_gcs_destination(fake: FakeCaida, gcs_bucket: Any) -> None:
    build_tree(fake)
    dest = gcs_bucket.url("ipmeta")
    summary = _mirror(fake, dest).sync(["routeviews"], today=TODAY)
    assert summary.counts()["routeviews"] == {"failed": 1, "mirrored": 4, "missing": 1}
    keys = sorted(gcs_bucket.keys("ipmeta/"))
    assert [k for k in keys if "/compiled/" not in k] == sorted(
        f"ipmeta/routeviews/2021/05/{n}" for n in RV_PUBLISHED
    )
    assert summary.compiled == {"routeviews": {"compiled": 4}}
    compiled = [k for k in keys if k.startswith("ipmeta/compiled/routeviews-rv2-")]
    assert len(compiled) == 4 and all(k.endswith(".cpmeta") for k in compiled)
    again = _mirror(fake, dest).sync(["routeviews"], today=TODAY)
    assert again.counts()["routeviews"] == {"failed": 1, "missing": 1, "skipped": 4}
    assert again.compiled == {"routeviews": {"present": 4}}
    assert sorted(gcs_bucket.keys("ipmeta/")) == keys
    # The launcher's catalog reads the parsed form from the bucket instead of parsing.
    cat = ReferenceCatalog(dest)
    e, sel = cat.enricher_for(dt.date(2021, 5, 30))
    assert sel.routeviews is not None and sel.routeviews.url.startswith("gs://")
    assert e.lookup("122.155.84.41").netblock == "122.155.80.0/21"
    assert st.basename(sel.routeviews.url) == RV_REAL
    assert cat.compiled_hits == 1


def test_no_size_check_skips_present_files_without_requests(
    fake: FakeCaida, tmp_path: Path
) -> None:
    build_tree(fake, with_bad_files=False)
    _mirror(fake, str(tmp_path)).sync(["routeviews"], today=TODAY)
    fake.requests.clear()
    m = Mirror(
        base_url=fake.url,
        dest=str(tmp_path),
        fetcher=Fetcher(retries=0),
        check_remote_size=False,
    )
    assert m.sync(["routeviews"], today=TODAY).counts() == {"routeviews": {"skipped": 4}}
    assert fake.requests == [("GET", f"{RV}/pfx2as-creation.log")]


# ---------------------------------------------------------------------------------------
# A local folder as the source (--base-url PATH or file://PATH)


def _local_tree(root: Path, fc: FakeCaida) -> None:
    """The same generated tree on disk and on the fake server (a truncated gzip and a
    listed-but-absent file among them)."""
    trunc = _pfx2as(29)
    files = {
        f"{RV}/2021/05/{RV_GOOD}": _pfx2as(26),
        f"{RV}/2021/05/{RV_SHORT}": _pfx2as(31),
        f"{RV}/2021/05/{RV_TRUNC}": trunc[: len(trunc) * 2 // 3],
        "as-organizations/20210401.as-org2info.txt.gz": _as2org_txt(),
        "as-organizations/20210401.as-org2info.jsonl.gz": _as2org_jsonl(),
        "as-organizations/README.txt": b"not a data file",
        "as-classification/20210401.as2types.txt.gz": _gz(["15169|peerDB_class|Content"]),
    }
    log = ["# pfx2as creation log", "garbage line", "2000\t1622999999\t../../etc/passwd"]
    log += [
        f"{1000 + i}\t{1622000000 + i}\t2021/05/{n}"
        for i, n in enumerate([RV_GOOD, RV_404, RV_TRUNC, RV_SHORT])
    ]
    files[f"{RV}/pfx2as-creation.log"] = "\n".join(log).encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        fc.put(rel, data)


def test_local_folder_source_mirrors_exactly_like_http(fake: FakeCaida, tmp_path: Path) -> None:
    src = tmp_path / "caida"
    _local_tree(src, fake)
    over_http = _mirror(fake, str(tmp_path / "http")).sync(today=TODAY, snapshot_days=400)
    results = []
    for base, dest in ((src.as_uri(), "file"), (str(src), "path")):
        m = Mirror(base_url=base, dest=str(tmp_path / dest), fetcher=LocalFetcher())
        results.append(m.sync(today=TODAY, snapshot_days=400))
    for summary, dest in zip(results, ("file", "path"), strict=True):
        assert summary.counts() == over_http.counts()
        assert summary.counts()["routeviews"] == {"failed": 1, "mirrored": 2, "missing": 1}
        assert _files(tmp_path / dest) == _files(tmp_path / "http")
        for rel in _files(tmp_path / dest):
            assert (tmp_path / dest / rel).read_bytes() == (tmp_path / "http" / rel).read_bytes()
    assert not (tmp_path / "file" / "routeviews/2021/05" / RV_TRUNC).exists()

    # Present files are skipped by size; a file replaced at the source is fetched again.
    fresh = _gz(["8.8.8.0\t24\t15169", "9.9.9.0\t24\t99"])
    (src / RV / "2021/05" / RV_GOOD).write_bytes(fresh)
    again = Mirror(base_url=str(src), dest=str(tmp_path / "path"), fetcher=LocalFetcher())
    summary = again.sync(today=TODAY, snapshot_days=400)
    assert [o.name for o in summary.of("mirrored")] == [RV_GOOD]
    assert (tmp_path / "path/routeviews/2021/05" / RV_GOOD).read_bytes() == fresh
    assert {o.name for o in summary.of("skipped")} >= {RV_SHORT, "20210401.as2types.txt.gz"}


def test_local_fetcher_answers() -> None:
    f = LocalFetcher()
    here = Path(__file__)
    assert f.get(str(here)).data == here.read_bytes()
    assert f.head_size(here.as_uri()) == here.stat().st_size
    assert f.get(str(here.parent / "no-such-file.gz")).outcome == "missing"
    listing = f.get(here.parent.as_uri() + "/")
    assert listing.ok and caida.parse_index(listing.data.decode()).count(here.name) == 1
    assert f.get("file://otherhost/etc/hostname").outcome == "failed"


def test_cli_sync_from_a_local_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's step: the sample's CAIDA files synced from a folder, then a missing one."""
    from sampledata import DEFAULT_SCANS
    from sampledata.caida import write_caida

    written = write_caida(tmp_path / "caida", DEFAULT_SCANS, 12, 0)
    dest = tmp_path / "meta"
    args = ["--dest", str(dest), "--snapshot-days", "36500", "--log-level", "ERROR"]
    assert main(["sync", "--base-url", str(tmp_path / "caida"), *args]) == 0
    out = json.loads(capsys.readouterr().out)
    n = len(written.dates)
    assert out["counts"] == {k: {"mirrored": n} for k in ("routeviews", "as2org", "as2class")}
    catalog = ReferenceCatalog(str(dest))
    for day in written.dates:
        sel = catalog.choose(dt.date.fromisoformat(day))
        assert sel.routeviews is not None and sel.routeviews.date.isoformat() == day
        assert sel.as2org is not None and sel.as2org.date.isoformat() == day
    # A base folder that is not there: every listing fails, exit 1, nothing written.
    assert main(["sync", "--base-url", str(tmp_path / "nowhere"), *args[:2]]) == 1
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["listing_errors"]) == ["as2class", "as2org", "routeviews"]


def test_a_file_that_cannot_be_compiled_is_reported_not_fatal(
    fake: FakeCaida, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    build_tree(fake, with_bad_files=False)

    def broken(*args: Any, **kwargs: Any) -> tuple[str, str]:
        raise OSError("disk full")

    monkeypatch.setattr(ipmeta, "compile_reference", broken)
    m = _mirror(fake, str(tmp_path))
    summary = m.sync(["as2class"], today=TODAY, snapshot_days=400)
    assert not summary.failed and summary.counts() == {"as2class": {"mirrored": 2}}
    assert summary.compiled == {"as2class": {"failed": 2}}
    assert (
        m.metrics.registry.get_sample_value(
            "cp_routeviews_compiled_total", {"kind": "as2class", "result": "failed"}
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count('"routeviews_compile_failed"') == 2 and "OSError: disk full" in err
