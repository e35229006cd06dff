"""The mirror on local folders and over HTTP: exactly-once copies, crashes, retries, filters."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from sampledata import write_scan_archives
from services.common import storage
from services.common.httpfetch import Backoff
from services.common.logsetup import configure_logging
from services.mirror.__main__ import main as mirror_main
from services.mirror.archives import MirrorConfig, decide, mirror_archives, select
from services.mirror.manifest import MANIFEST_NAME, CopyRecord
from services.mirror.metrics import MirrorMetrics
from services.mirror.sources import (
    HttpIndexSource,
    SourceEntry,
    StorageSource,
    md5_from_headers,
    parse_index,
)
from tests.test_mirror_support import FileHttpServer, list_tree, md5_hex, random_bytes

REPO = Path(__file__).resolve().parents[1]
NO_WAIT = Backoff(retries=4, base=0.0, sleep=lambda _s: None)

# Three archives in date order; tests crash the copy of the middle one.
NAMES = (
    "CP_Quack-echo-2021-05-30-01-01-01.tar.gz",
    "CP_Quack-http-2021-05-31-01-01-01.tar.gz",
    "CP_Satellite-2021-06-01-01-01-01.tar.gz",
)


def make_archives(folder: Path, size: int = 300_000) -> dict[str, bytes]:
    """Archive-named files of random bytes (the mirror does not look inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(NAMES):
        data = random_bytes(size + i, seed=i)
        (folder / name).write_bytes(data)
        out[name] = data
    return out


def results(summary: Any) -> dict[str, str]:
    return {o.name: o.result for o in summary.outcomes}


def metric(m: MirrorMetrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class CrashingReader:
    """A source stream that raises after ``limit`` bytes (an injected crash mid-copy)."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise RuntimeError("injected crash")
        data = self.inner.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> CrashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CrashingSource(StorageSource):
    def __init__(self, location: str, crash_name: str, after: int) -> None:
        super().__init__(location)
        self.crash_name = crash_name
        self.after = after

    def open(self, entry: SourceEntry) -> IO[bytes]:
        fh = super().open(entry)
        if entry.name == self.crash_name:
            return CrashingReader(fh, self.after)  # type: ignore[return-value]
        return fh


# --------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------


def test_select_parses_strictly_and_filters() -> None:
    names = [
        *NAMES,
        "CP_Quack-echo-2021-05-29-23-59-59.tar.gz",
        "CP_Quack-ftp-2021-05-30-01-01-01.tar.gz",  # unknown scan type
        "CP_Quack-echo-2021-13-30-01-01-01.tar.gz",  # impossible date
        "random.tar.gz",
    ]
    sel = select(names, dt.date(2021, 5, 30), dt.date(2021, 5, 31), ("echo", "http"))
    assert [n for n, _ in sel.selected] == list(NAMES[:2])
    assert sel.unknown == names[4:]
    assert sel.filtered_out == 2  # the satellite scan (type) and the 29th (date)


def test_decide_rules() -> None:
    entry = SourceEntry("a.tar.gz", "src/a.tar.gz", 10, "ab" * 16, '"e1"')
    dest = storage.ObjectInfo("d/a.tar.gz", 10, "10:1")
    same, other = (lambda: "ab" * 16), (lambda: "cd" * 16)
    assert decide(entry, None, same, same, None).copy
    assert decide(entry, storage.ObjectInfo("d", 9, "9:1"), same, same, None).copy
    assert not decide(entry, dest, same, same, None).copy
    assert decide(entry, dest, same, other, None).reason == "MD5 differs"

    # A source without checksum: recognised by the ETag recorded at copy time.
    def no_md5() -> None:
        return None

    record = CopyRecord("src/a.tar.gz", '"e1"', 10, "ab" * 16, "10:1", "t")
    assert not decide(entry, dest, no_md5, same, record).copy
    moved = SourceEntry("a.tar.gz", "src/a.tar.gz", 10, None, '"e2"')
    assert decide(moved, dest, no_md5, same, record).copy
    stale = CopyRecord("src/a.tar.gz", '"e1"', 10, "ab" * 16, "10:2", "t")  # dest rewritten
    assert decide(entry, dest, no_md5, same, stale).copy
    bare = SourceEntry("a.tar.gz", "src/a.tar.gz", 10, None, None)
    assert not decide(bare, dest, no_md5, same, None).copy  # size is all there is


def test_parse_index_and_hash_headers() -> None:
    html = """
      <a href="CP_Quack-echo-2021-05-30-01-01-01.tar.gz">rel</a>
      <A HREF="/raw/CP_Quack-http-2021-05-30-01-01-01.tar.gz#frag">abs path</A>
      <a href="https://data.example/raw/sub/CP_Satellite-2021-06-01-01-01-01.tar.gz">full</a>
      <a href="https://evil.example/CP_Quack-echo-2021-05-30-01-01-02.tar.gz">other host</a>
      <a href="CP_Quack-echo-2021-05-30-01-01-01.tar.gz">duplicate</a>
      <a href="README.md">doc</a> <a>no href</a> <a href="../">up</a>
      <a href="CP_Quack%2Decho-2021-05-30-01-01-03.tar.gz">escaped</a>
    """
    got = parse_index(html, "https://data.example/raw/")
    assert [(c.name, c.url) for c in got] == [
        (
            "CP_Quack-echo-2021-05-30-01-01-01.tar.gz",
            "https://data.example/raw/CP_Quack-echo-2021-05-30-01-01-01.tar.gz",
        ),
        (
            "CP_Quack-http-2021-05-30-01-01-01.tar.gz",
            "https://data.example/raw/CP_Quack-http-2021-05-30-01-01-01.tar.gz",
        ),
        (
            "CP_Satellite-2021-06-01-01-01-01.tar.gz",
            "https://data.example/raw/sub/CP_Satellite-2021-06-01-01-01-01.tar.gz",
        ),
        (
            "CP_Quack-echo-2021-05-30-01-01-03.tar.gz",
            "https://data.example/raw/CP_Quack%2Decho-2021-05-30-01-01-03.tar.gz",
        ),
    ]
    foreign: list[str] = []
    allowed = parse_index(html, "https://data.example/raw/", ("evil.example",), foreign)
    assert len(allowed) == 5 and foreign == []
    parse_index(html, "https://data.example/raw/", (), foreign)
    assert foreign == ["https://evil.example/CP_Quack-echo-2021-05-30-01-01-02.tar.gz"]
    md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # MD5 of b""
    assert md5_from_headers([f"crc32c=AAAAAA==,md5={md5}"], None) == md5_hex(b"")
    assert md5_from_headers(["crc32c=AAAAAA==", f"md5={md5}"], None) == md5_hex(b"")
    assert md5_from_headers([], md5) == md5_hex(b"")
    assert md5_from_headers([], None) is None
    assert md5_from_headers(["md5=bad!"], None) is None


# --------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------


def test_mirror_twice_copies_each_archive_once(tmp_path: Path) -> None:
    gen = write_scan_archives(tmp_path / "src", size=5)
    src = tmp_path / "src" / "archives"
    (src / "notes.tar.gz").write_bytes(b"not a scan")  # reported, never guessed at
    (src / "README.txt").write_bytes(b"ignored")
    dest = tmp_path / "raw"
    cfg = MirrorConfig(source=str(src), dest=str(dest))

    m1 = MirrorMetrics()
    first = mirror_archives(cfg, metrics=m1)
    assert first.found == len(gen.scans) == 8
    assert len(first.names("copied")) == 8
    assert first.names("unknown_name") == ["notes.tar.gz"]
    assert not first.failed
    assert metric(m1, "cp_mirror_archives_total", result="copied") == 8
    assert metric(m1, "cp_mirror_archives_total", result="unknown_name") == 1
    assert metric(m1, "cp_mirror_archives_found_total") == 8
    assert metric(m1, "cp_mirror_bytes_total") == first.bytes > 0
    assert metric(m1, "cp_mirror_last_success_timestamp_seconds") > 0
    for name in first.names("copied"):
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}

    m2 = MirrorMetrics()
    second = mirror_archives(cfg, metrics=m2)
    assert second.names("copied") == []
    assert len(second.names("skipped")) == 8
    assert {o.reason for o in second.outcomes if o.result == "skipped"} == {"same size and MD5"}
    assert metric(m2, "cp_mirror_archives_total", result="skipped") == 8
    assert metric(m2, "cp_mirror_bytes_total") == 0
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamps  # not rewritten
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert set(manifest["copies"]) == set(first.names("copied"))
    # Both sides' MD5s are cached under their versions: the second run read no archive.
    assert len(manifest["hashes"]) == 16


def test_changed_archives_are_copied_again(tmp_path: Path) -> None:
    data = make_archives(tmp_path / "src", size=1000)
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "raw"))
    mirror_archives(cfg)
    # Same size, other bytes at the source; truncated at the destination; and the
    # destination rewritten with the same size (the cached MD5 no longer applies).
    a, b, c = NAMES
    (tmp_path / "src" / a).write_bytes(bytes(reversed(data[a])))
    (tmp_path / "raw" / b).write_bytes(data[b][:-10])
    (tmp_path / "raw" / c).write_bytes(b"\0" * len(data[c]))
    again = mirror_archives(cfg)
    reasons = {o.name: o.reason for o in again.outcomes}
    assert results(again) == dict.fromkeys(NAMES, "copied")
    assert reasons[a] == reasons[c] == "MD5 differs"
    assert reasons[b].startswith("size differs")
    for name in NAMES:
        assert (tmp_path / "raw" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()


def test_crash_mid_copy_then_rerun_completes_without_duplicates(tmp_path: Path) -> None:
    data = make_archives(tmp_path / "src")
    dest = tmp_path / "raw"
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=str(dest))
    crashing = CrashingSource(str(tmp_path / "src"), NAMES[1], after=100_000)

    m1 = MirrorMetrics()
    first = mirror_archives(cfg, source=crashing, metrics=m1)
    assert results(first) == {NAMES[0]: "copied", NAMES[1]: "failed", NAMES[2]: "copied"}
    assert "injected crash" in first.failed[0].reason
    assert metric(m1, "cp_mirror_archives_total", result="failed") == 1
    assert metric(m1, "cp_mirror_last_success_timestamp_seconds") == 0
    # Nothing under the final name, no truncated copy, no temp file left behind.
    assert list_tree(str(dest)) == sorted([NAMES[0], NAMES[2], MANIFEST_NAME])

    m2 = MirrorMetrics()
    second = mirror_archives(cfg, metrics=m2)
    assert results(second) == {NAMES[0]: "skipped", NAMES[1]: "copied", NAMES[2]: "skipped"}
    assert metric(m2, "cp_mirror_archives_total", result="copied") == 1
    for name, content in data.items():
        assert md5_hex((dest / name).read_bytes()) == md5_hex(content)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from services.common import storage
    from services.mirror import archives, sources

    source, dest, crash_name, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if len(sys.argv) > 5:  # small resumable chunks: the crash happens mid-session
        real_storage_for = storage.storage_for
        def storage_for(url):
            st = real_storage_for(url)
            if storage.is_gcs(url):
                st.chunk_size = int(sys.argv[5])
            return st
        storage.storage_for = storage_for

    class Dying:
        def __init__(self, inner):
            self.inner, self.left = inner, after
        def read(self, n=-1):
            if self.left <= 0:
                os._exit(137)  # a hard crash: no cleanup, no exception handlers
            data = self.inner.read(min(n, self.left))
            self.left -= len(data)
            return data
        def close(self):
            self.inner.close()
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.close()

    class Source(sources.StorageSource):
        def open(self, entry):
            fh = super().open(entry)
            return Dying(fh) if entry.name == crash_name else fh

    archives.mirror_archives(archives.MirrorConfig(source, dest), source=Source(source))
    sys.exit(0)
    """
)


def run_crash_script(
    source: str, dest: str, crash_name: str, after: int, chunk: int | None = None
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", CRASH_SCRIPT, source, dest, crash_name, str(after)]
    if chunk:
        args.append(str(chunk))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_hard_crash_mid_copy_then_rerun(tmp_path: Path) -> None:
    """The process dies (os._exit) mid-copy; the rerun finishes the job."""
    data = make_archives(tmp_path / "src")
    dest = tmp_path / "raw"
    proc = run_crash_script(str(tmp_path / "src"), str(dest), NAMES[1], 100_000)
    assert proc.returncode == 137, proc.stderr
    files = list_tree(str(dest))
    # The first archive is complete; the interrupted one exists only as a hidden temp.
    assert NAMES[0] in files and NAMES[1] not in files and NAMES[2] not in files
    temps = [f for f in files if f.startswith(".tmp-")]
    assert len(temps) == 1 and (dest / temps[0]).stat().st_size <= 100_000
    assert [storage.basename(o.url) for o in storage.storage_for(str(dest)).list(str(dest))] == [
        MANIFEST_NAME,
        NAMES[0],
    ]

    rerun = mirror_archives(MirrorConfig(source=str(tmp_path / "src"), dest=str(dest)))
    assert results(rerun) == {NAMES[0]: "skipped", NAMES[1]: "copied", NAMES[2]: "copied"}
    for name, content in data.items():
        assert (dest / name).read_bytes() == content
    # The abandoned temp file is swept once it is old enough.
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=str(dest), tmp_max_age_s=0)
    assert set(results(mirror_archives(cfg)).values()) == {"skipped"}
    assert not [f for f in list_tree(str(dest)) if f.startswith(".tmp-")]


def test_filters_and_dry_run(tmp_path: Path) -> None:
    make_archives(tmp_path / "src", size=100)
    dest = tmp_path / "raw"
    dry = mirror_archives(
        MirrorConfig(
            source=str(tmp_path / "src"),
            dest=str(dest),
            since=dt.date(2021, 5, 31),
            dry_run=True,
        )
    )
    assert results(dry) == {NAMES[1]: "would_copy", NAMES[2]: "would_copy"}
    assert dry.filtered_out == 1
    assert not dest.exists()
    typed = mirror_archives(
        MirrorConfig(source=str(tmp_path / "src"), dest=str(dest), scan_types=("satellite",))
    )
    assert results(typed) == {NAMES[2]: "copied"}
    assert sorted(os.listdir(dest)) == [MANIFEST_NAME, NAMES[2]]


def test_concurrent_publisher_is_not_overwritten(tmp_path: Path) -> None:
    """Another mirror publishes the archive while we copy it: ours is not published."""
    data = make_archives(tmp_path / "src", size=50_000)
    dest = tmp_path / "raw"

    class Racing(StorageSource):
        def open(self, entry: SourceEntry) -> IO[bytes]:
            if entry.name == NAMES[0]:  # the "other mirror" finishes first
                (dest / entry.name).parent.mkdir(parents=True, exist_ok=True)
                (dest / entry.name).write_bytes(data[entry.name])
            return super().open(entry)

    summary = mirror_archives(
        MirrorConfig(source=str(tmp_path / "src"), dest=str(dest)),
        source=Racing(str(tmp_path / "src")),
    )
    outcome = next(o for o in summary.outcomes if o.name == NAMES[0])
    assert (outcome.result, outcome.reason) == (
        "skipped",
        "published concurrently: same size and MD5",
    )
    assert not [f for f in list_tree(str(dest)) if f.startswith(".tmp-")]


def test_duplicate_names_at_the_source_are_reported(tmp_path: Path) -> None:
    make_archives(tmp_path / "src" / "a", size=10)
    make_archives(tmp_path / "src" / "b", size=20)
    summary = mirror_archives(MirrorConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "r")))
    assert len(summary.names("copied")) == 3
    assert sorted(o.name for o in summary.failed) == sorted(NAMES)
    assert all("name also at" in o.reason for o in summary.failed)
    assert (tmp_path / "r" / NAMES[0]).stat().st_size == 10  # the first listed wins


class FlakySource(StorageSource):
    """Each open of ``name`` until ``failures`` run out gives a reader that breaks off."""

    def __init__(self, location: str, name: str, failures: int) -> None:
        super().__init__(location)
        self.name, self.failures, self.opens = name, failures, 0

    def open(self, entry: SourceEntry) -> IO[bytes]:
        fh = super().open(entry)
        if entry.name != self.name:
            return fh
        self.opens += 1
        if self.opens > self.failures:
            return fh
        return BreakingReader(fh, 50_000, self.opens)  # type: ignore[return-value]


class BreakingReader(CrashingReader):
    def __init__(self, inner: IO[bytes], limit: int, n: int) -> None:
        super().__init__(inner, limit)
        self.n = n

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError(f"peer reset #{self.n}")
        return super().read(n)


def test_archive_copy_is_retried_on_the_policy_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_archives(tmp_path / "src")
    waits: list[float] = []
    policy = Backoff(retries=9, base=1.0, sleep=waits.append)
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "raw"), backoff=policy)
    flaky = FlakySource(str(tmp_path / "src"), NAMES[1], failures=2)
    configure_logging("INFO")  # an earlier test may have left a higher level
    capsys.readouterr()
    summary = mirror_archives(cfg, source=flaky)
    assert results(summary) == dict.fromkeys(NAMES, "copied")
    assert (tmp_path / "raw" / NAMES[1]).read_bytes() == data[NAMES[1]]
    assert flaky.opens == 3  # two broken copies, then a whole one
    assert len(waits) == 2 and 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    retried = [x for x in lines if x.get("message") == "archive_retry"]
    assert [(x["archive"], x["attempt"], x["error"]) for x in retried] == [
        (NAMES[1], 1, "peer reset #1"),
        (NAMES[1], 2, "peer reset #2"),
    ]

    # Attempts spent: the archive fails with the last error; the others are unaffected.
    cfg = MirrorConfig(
        source=str(tmp_path / "src"), dest=str(tmp_path / "raw2"), attempts=2, backoff=policy
    )
    flaky = FlakySource(str(tmp_path / "src"), NAMES[0], failures=5)
    summary = mirror_archives(cfg, source=flaky)
    assert results(summary) == {NAMES[0]: "failed", NAMES[1]: "copied", NAMES[2]: "copied"}
    assert summary.failed[0].reason == "ConnectionResetError: peer reset #2"
    assert flaky.opens == 2
    assert not (tmp_path / "raw2" / NAMES[0]).exists()

    # Not transient (a bug, a corrupt reader): one attempt only.
    crashing = CrashingSource(str(tmp_path / "src"), NAMES[2], after=1000)
    cfg = MirrorConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "raw3"), backoff=policy)
    waits.clear()
    summary = mirror_archives(cfg, source=crashing)
    assert results(summary)[NAMES[2]] == "failed" and waits == []


# --------------------------------------------------------------------------------------
# HTTP(S) index source
# --------------------------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[FileHttpServer]:
    server = FileHttpServer().start()
    yield server
    server.stop()


def test_http_source_with_transient_errors(tmp_path: Path, http_server: FileHttpServer) -> None:
    data = {name: random_bytes(200_000 + i, seed=10 + i) for i, name in enumerate(NAMES)}
    http_server.add_archives("raw", data, extra_links='<a href="/other/readme.txt">x</a>')
    st = http_server.state
    st.fail_next[("GET", "/raw/")] = 1  # the index page
    st.fail_next[("HEAD", f"/raw/{NAMES[0]}")] = 2
    st.fail_next[("GET", f"/raw/{NAMES[1]}")] = 1
    st.truncate_next[f"/raw/{NAMES[2]}"] = 50_000  # connection drops mid-body
    dest = tmp_path / "raw"
    cfg = MirrorConfig(source=http_server.base + "/raw/", dest=str(dest), backoff=NO_WAIT)

    first = mirror_archives(cfg)
    assert results(first) == dict.fromkeys(NAMES, "copied"), first.to_dict()
    for name, content in data.items():
        assert (dest / name).read_bytes() == content
    assert st.count("GET", "/raw/", 503) == 1
    assert st.count("GET", f"/raw/{NAMES[0]}") == 1
    assert st.count("GET", f"/raw/{NAMES[1]}", 503) == 1
    assert st.count("GET", f"/raw/{NAMES[2]}", 200) == 2  # truncated once, then whole
    assert not [f for f in list_tree(str(dest)) if f.startswith(".tmp-")]

    second = mirror_archives(cfg)
    assert results(second) == dict.fromkeys(NAMES, "skipped")
    for name in NAMES:  # HEAD only: nothing downloaded again
        assert st.count("GET", f"/raw/{name}", 200) == (2 if name == NAMES[2] else 1)


def test_http_source_without_checksums(tmp_path: Path, http_server: FileHttpServer) -> None:
    data = {name: random_bytes(5000, seed=20 + i) for i, name in enumerate(NAMES)}
    http_server.add_archives("raw", data)
    st = http_server.state
    st.md5_header = False  # ETag only
    dest = tmp_path / "raw"
    cfg = MirrorConfig(source=http_server.base + "/raw", dest=str(dest), backoff=NO_WAIT)
    assert set(results(mirror_archives(cfg)).values()) == {"copied"}
    # Recognised by size + the ETag recorded when copied (MD5 cached under that ETag).
    assert set(results(mirror_archives(cfg)).values()) == {"skipped"}
    # The server's file changes (same size): new ETag ⇒ copied again.
    st.files[f"/raw/{NAMES[0]}"] = bytes(reversed(data[NAMES[0]]))
    assert results(mirror_archives(cfg))[NAMES[0]] == "copied"
    assert (dest / NAMES[0]).read_bytes() == bytes(reversed(data[NAMES[0]]))
    for name in NAMES:
        assert st.count("GET", f"/raw/{name}", 200) == (2 if name == NAMES[0] else 1)


def test_http_source_permanent_errors_fail_only_that_archive(
    tmp_path: Path, http_server: FileHttpServer
) -> None:
    data = {name: random_bytes(3000, seed=30 + i) for i, name in enumerate(NAMES)}
    http_server.add_archives("raw", data)
    http_server.state.fail_next[("GET", f"/raw/{NAMES[0]}")] = 100  # always 503
    del http_server.state.files[f"/raw/{NAMES[1]}"]  # listed, but 404
    cfg = MirrorConfig(
        source=http_server.base + "/raw/", dest=str(tmp_path / "raw"), backoff=NO_WAIT
    )
    summary = mirror_archives(cfg)
    assert results(summary) == {NAMES[0]: "failed", NAMES[1]: "failed", NAMES[2]: "copied"}
    reasons = {o.name: o.reason for o in summary.failed}
    assert "HTTP 503" in reasons[NAMES[0]] and "HTTP 404" in reasons[NAMES[1]]
    # 3 attempts per archive, each with 4 retries of the request itself.
    assert http_server.state.count("GET", f"/raw/{NAMES[0]}", 503) == 3 * 5


def test_http_index_unreachable_is_an_error(tmp_path: Path, http_server: FileHttpServer) -> None:
    src = HttpIndexSource(http_server.base + "/nothing/", NO_WAIT)
    with pytest.raises(OSError, match="HTTP 404"):
        list(src.candidates())


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_archives(
    tmp_path: Path,
    http_server: FileHttpServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_archives(tmp_path / "src", size=100)
    metrics_file = tmp_path / "mirror.prom"
    monkeypatch.setenv("CP_SCAN_TYPES", "echo,http")
    rc = mirror_main(
        [
            "archives",
            "--source",
            str(tmp_path / "src"),
            "--dest",
            str(tmp_path / "raw"),
            "--metrics-file",
            str(metrics_file),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["copied"] == 2
    prom = metrics_file.read_text()
    assert 'cp_mirror_archives_total{result="copied"} 2.0' in prom
    assert "cp_mirror_last_success_timestamp_seconds" in prom

    data = {NAMES[0]: b"x" * 10}
    http_server.add_archives("raw", data)
    http_server.state.fail_next[("GET", f"/raw/{NAMES[0]}")] = 100
    rc = mirror_main(
        [
            "archives",
            "--source",
            http_server.base + "/raw/",
            "--dest",
            str(tmp_path / "raw2"),
            "--retries",
            "1",
            "--backoff",
            "0",
        ]
    )
    last = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rc == 1
    assert (last["severity"], last["message"], last["exit_code"]) == ("ERROR", "run_failed", 1)
    assert last["reason"].startswith("1 of 1 archive(s) failed: " + NAMES[0])

    with pytest.raises(SystemExit):
        mirror_main(["archives", "--source", "x", "--dest", "y", "--since", "yesterday"])
    with pytest.raises(SystemExit):
        mirror_main(["archives", "--source", "x", "--dest", "y", "--scan-types", "ftp"])
    capsys.readouterr()
