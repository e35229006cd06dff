"""Line-aligned gzip members with an index (services.common.gzindex) and the launcher's
streams that enter such files at a member.

The writer's output must be an ordinary gzip file to every reader (Python's gzip, ISA-L,
GNU gzip), its members must end at line ends and the index must describe them; pieces
read through the index must give exactly the file's numbered lines, whatever the
order and skips of the streams; a file whose data does not match its index must fail
where it differs, and an unusable index must only cost speed, never lines.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import random
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st
from isal import igzip

from services.beam_launcher import slices
from services.beam_launcher.hyperquack.pipeline import plan_work
from services.beam_launcher.slices import FileSlice, iter_slice_batches
from services.common import gzindex, storage
from services.common.gzindex import BadIndex, MemberWriter, parse_index, read_index
from services.common.logsetup import configure_logging
from tests.gcs_server import GcsBucket
from tests.test_slices import (
    SCAN,
    SMALL,
    STREAM_DRAWS,
    Numbered,
    check_streams,
    task_for,
    text_st,
)

pytest_plugins = ["tests.gcs_server"]


def indexed_gzip(text: bytes, member_text: int, writes: list[int] | None = None) -> bytes:
    """``text`` through a MemberWriter, written in pieces of the sizes in ``writes``."""
    buf = io.BytesIO()
    with MemberWriter(buf, compresslevel=1, member_text=member_text) as w:
        pos = 0
        for n in writes or []:
            w.write(text[pos : pos + n])
            pos += n
        w.write(text[pos:])
    return buf.getvalue()


def member_texts(data: bytes) -> list[bytes]:
    index = parse_index(data)
    assert index is not None
    out = []
    for m in index.members:
        d = zlib.decompressobj(31)
        out.append(d.decompress(data[m.start : m.end]))
        assert d.eof and not d.unused_data  # exactly one member in [start, end)
    return out


def line_count(text: bytes) -> int:
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


@SMALL
@given(
    text=text_st,
    member_text=st.integers(1, 200),
    writes=st.lists(st.integers(0, 90), max_size=6),
)
def test_members_hold_whole_lines_and_read_as_one_gzip_file(
    text: bytes, member_text: int, writes: list[int]
) -> None:
    data = indexed_gzip(text, member_text, writes)
    assert gzip.decompress(data) == text
    assert igzip.decompress(data) == text
    parts = member_texts(data)
    assert b"".join(parts) == text
    assert all(p.endswith(b"\n") for p in parts[:-1])
    # a member ends at its first line end at or after byte member_text
    assert all(b"\n" not in p[member_text - 1 : -1] for p in parts[:-1])
    index = parse_index(data)
    assert index is not None
    assert [m.lines for m in index.members] == [line_count(p) for p in parts]
    assert [m.lines_before for m in index.members] == [
        sum(line_count(p) for p in parts[:i]) for i in range(len(parts))
    ]


@pytest.mark.skipif(shutil.which("gzip") is None, reason="GNU gzip is not installed")
def test_gnu_gzip_reads_an_indexed_file(tmp_path: Path) -> None:
    text = b"".join(b"line %d\n" % i for i in range(5000)) + b"no line end"
    path = tmp_path / "results.json.gz"
    path.write_bytes(indexed_gzip(text, 1000))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert (
        subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True).stdout == text
    )


def test_empty_text_is_one_empty_member() -> None:
    data = indexed_gzip(b"", 10)
    assert gzip.decompress(data) == b""
    index = parse_index(data)
    assert index is not None and [(m.lines_before, m.lines) for m in index.members] == [(0, 0)]


def test_a_longer_file_than_expected_still_fits_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members grow when a file outgrows its expected size, so the index always fits."""
    monkeypatch.setattr(gzindex, "MAX_MEMBERS", 8)
    text = b"".join(b"%05d\n" % i for i in range(2000))
    buf = io.BytesIO()
    with MemberWriter(buf, member_text=6, expected_size=12) as w:
        for i in range(0, len(text), 7):
            w.write(text[i : i + 7])
    data = buf.getvalue()
    assert gzip.decompress(data) == text
    index = parse_index(data)
    assert index is not None and 2 <= len(index.members) <= 8
    assert sum(m.lines for m in index.members) == 2000
    # the target doubles at 4, 6 and 7 members; the last member takes the rest
    assert [len(t) for t in member_texts(data)] == [6, 6, 6, 6, 12, 12, 24, 11928]


def test_expected_size_sets_the_member_size() -> None:
    buf = io.BytesIO()
    w = MemberWriter(buf, member_text=10, expected_size=gzindex.MAX_MEMBERS * 100)
    w.write(b"".join(b"%09d\n" % i for i in range(100)))  # 1,000 bytes
    w.close()
    assert [len(t) for t in member_texts(buf.getvalue())] == [100] * 10


def test_files_without_an_index_have_none() -> None:
    assert parse_index(gzip.compress(b"a\nb\n")) is None
    assert parse_index(b"") is None
    assert parse_index(b"plain text\n") is None


def tampered(data: bytes, edit: str) -> bytes:
    """``data`` with its index member edited: ``count`` (a member's end), ``order`` (two
    ends swapped), ``length`` (the stored length), ``version``."""
    index = parse_index(data)
    assert index is not None and len(index.members) >= 2
    ends = [(m.end, m.lines) for m in index.members]
    if edit == "count":
        ends[-1] = (ends[-1][0] + 1, ends[-1][1])
    if edit == "order":
        ends[0], ends[1] = ends[1], ends[0]
    member = gzindex.build_index_member(ends)
    if edit == "length":
        member = member[:-18] + struct.pack("<I", 10**6) + member[-14:]
    if edit == "version":
        member = member[:16] + b"\x02" + member[17:]
    return data[: index.data_end] + member


@pytest.mark.parametrize("edit", ["count", "order", "length", "version"])
def test_a_malformed_index_is_refused(edit: str) -> None:
    data = indexed_gzip(b"".join(b"%d\n" % i for i in range(100)), 50)
    with pytest.raises(BadIndex):
        parse_index(tampered(data, edit))


def test_read_index_reads_only_the_files_tail(tmp_path: Path) -> None:
    text = b"".join(b"%d\n" % i for i in range(200_000))
    path = tmp_path / "results.json.gz"
    path.write_bytes(indexed_gzip(text, 100_000))
    index = read_index(str(path), path.stat().st_size)
    assert index == parse_index(path.read_bytes())
    assert index is not None and len(index.members) > 10


# -- the launcher's streams over an indexed file ----------------------------------------


def indexed_task(folder: Path, text: bytes, member_text: int) -> slices.FileTask:
    path = folder / "results.json.gz"
    path.write_bytes(indexed_gzip(text, member_text))
    task = slices.with_index(task_for(str(path), path.stat().st_size))
    assert task.gz_index is not None
    return task


@SMALL
@given(
    text=text_st,
    member_text=st.integers(1, 120),
    draws=st.fixed_dictionaries(STREAM_DRAWS | {"count": st.integers(2, 9)}),
)
def test_streams_over_an_indexed_file_give_exactly_its_numbered_lines(
    tmp_path: Path, text: bytes, member_text: int, draws: dict[str, Any]
) -> None:
    """As for files without an index (test_slices), and piece ``k`` is exactly the
    members from ``piece_members(index, count)[k]`` to the next piece's first."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        task = indexed_task(Path(folder), text, member_text)
        assert task.gz_index is not None
        pieces = check_streams(task, **draws)
        count = draws["count"]
        firsts = [*slices.piece_members(task.gz_index, count), len(task.gz_index.members)]
        members = task.gz_index.members
        for k in range(count):
            in_piece = members[firsts[k] : firsts[k + 1]]
            assert [n for n, _ in pieces[k]] == [
                n for m in in_piece for n in range(m.lines_before + 1, m.lines_before + m.lines + 1)
            ]


def test_a_later_piece_does_not_inflate_the_members_before_it(tmp_path: Path) -> None:
    """Piece 2 of 2 reads from its first member on: garbage in the first member's
    compressed bytes does not reach it (the first piece fails on it)."""
    text = b"".join(b"record %d\n" % i for i in range(3000))
    task = indexed_task(tmp_path, text, 2000)
    assert task.gz_index is not None
    path = Path(task.url)
    data = bytearray(path.read_bytes())
    first = task.gz_index.members[0]
    data[first.start + 12 : first.end - 8] = b"\xff" * (first.end - 20 - first.start)
    path.write_bytes(bytes(data))
    want = reference_lines(text)
    second = [p for f, b in iter_slice_batches(FileSlice(task, 1, 2), 100) for p in enumerate(b, f)]
    assert second and second == want[-len(second) :]
    with pytest.raises(gzip.BadGzipFile):
        list(iter_slice_batches(FileSlice(task, 0, 2), 100))


def reference_lines(text: bytes) -> Numbered:
    return list(enumerate(io.BytesIO(text).readlines(), start=1))


def rewrite_index(path: Path, ends: list[tuple[int, int]]) -> None:
    data = path.read_bytes()
    index = parse_index(data)
    assert index is not None
    path.write_bytes(data[: index.data_end] + gzindex.build_index_member(ends))


@pytest.mark.parametrize("lie", ["lines", "end", "boundary"])
def test_data_that_does_not_match_its_index_fails_the_read(tmp_path: Path, lie: str) -> None:
    """An index whose member boundaries or line counts are wrong (each still well formed)
    makes the stream that reads the member raise, after the lines before it."""
    text = b"".join(b"record %d\n" % i for i in range(3000))
    task = indexed_task(tmp_path, text, 2000)
    assert task.gz_index is not None
    ends = [(m.end, m.lines) for m in task.gz_index.members]
    if lie == "lines":
        ends[3] = (ends[3][0], ends[3][1] + 1)  # line numbers after it would shift
    elif lie == "end":  # members 3 and 4 as one: the "member" ends before its stored end
        ends[3:5] = [(ends[4][0], ends[3][1] + ends[4][1])]
    else:  # member 3 said to end a byte early (and member 4 to start there)
        ends[3] = (ends[3][0] - 1, ends[3][1])
    rewrite_index(Path(task.url), ends)
    lied = slices.with_index(task_for(task.url, Path(task.url).stat().st_size))
    assert lied.gz_index is not None
    read: Numbered = []
    message = {"lines": "member 3 holds", "end": "member 3 ends at", "boundary": "member 3 ends at"}
    with pytest.raises(gzip.BadGzipFile, match=message[lie]):
        for first, batch in slices.iter_stream_batches(lied, 2, 0, lambda _k: True, 50):
            read.extend(enumerate(batch, start=first))
    members = task.gz_index.members
    assert len(read) >= members[3].lines_before - 50  # the members before it were read
    assert read == reference_lines(text)[: len(read)]


def test_a_member_that_ends_inside_a_line_fails_the_read(tmp_path: Path) -> None:
    """Members cut mid-line (not written by MemberWriter) with a well-formed index: the
    line across the cut is never yielded in two halves."""
    first, second = b"one\ntw", b"o\nthree\n"
    data = gzip.compress(first, mtime=0)
    data += gzip.compress(second, mtime=0)
    data += gzindex.build_index_member([(len(data) - len(gzip.compress(second, mtime=0)), 1),
                                        (len(data), 2)])  # fmt: skip
    path = tmp_path / "results.json.gz"
    path.write_bytes(data)
    task = slices.with_index(task_for(str(path), len(data)))
    assert task.gz_index is not None
    with pytest.raises(gzip.BadGzipFile, match="member 0 ends inside a line"):
        list(slices.iter_stream_batches(task, 2, 0, lambda _k: True, 10))


def test_an_unusable_index_costs_speed_not_lines(tmp_path: Path) -> None:
    """A malformed index is logged and ignored: the file is read from its start."""
    text = b"".join(b"record %d\n" % i for i in range(3000))
    path = tmp_path / "results.json.gz"
    path.write_bytes(tampered(indexed_gzip(text, 2000), "order"))
    configure_logging("INFO")  # whatever level an earlier test left configured
    with structlog.testing.capture_logs() as logs:
        task = slices.with_index(task_for(str(path), path.stat().st_size))
    assert task.gz_index is None
    [log] = [e for e in logs if e["event"] == "gz_index_unusable"]
    assert log["log_level"] == "warning" and "BadIndex" in log["reason"]
    got = [
        p for k in range(3) for f, b in iter_slice_batches(FileSlice(task, k, 3), 64)
        for p in enumerate(b, f)
    ]  # fmt: skip
    assert got == reference_lines(text)


def test_plan_work_cuts_indexed_files_at_members(tmp_path: Path) -> None:
    """Pieces of an indexed file carry its index; at most one piece per member."""
    text = b"".join(b"%d %s\n" % (i, bytes(random.Random(i).randbytes(40).hex(), "ascii"))
                    for i in range(40_000))  # fmt: skip
    path = tmp_path / "results.json.gz"
    path.write_bytes(indexed_gzip(text, len(text) // 5 + 1))
    task = task_for(str(path), path.stat().st_size)
    [one, two] = plan_work([task], 2, slice_bytes=1000)
    pieces = one + two
    assert {p.count for p in pieces} == {5} and len(pieces) == 5
    assert all(p.task.gz_index is not None for p in pieces)
    plain = tmp_path / "plain" / "results.json.gz"
    plain.parent.mkdir()
    plain.write_bytes(gzip.compress(text, compresslevel=1))
    bins = plan_work([task_for(str(plain), plain.stat().st_size)], 2, slice_bytes=1000)
    assert all(p.task.gz_index is None for b in bins for p in b)
    assert dataclasses.replace(pieces[0].task, gz_index=None) == task


def test_gs_objects_with_an_index_are_entered_at_members(gcs_bucket: GcsBucket) -> None:
    """Over the GCS test server: the index from a ranged read of the object's tail, and
    pieces that seek to their members give the object's numbered lines."""
    text = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 300)) for i in range(5000))
    key = f"scans/{SCAN}/results.json.gz"
    gcs_bucket.put(key, indexed_gzip(text, 20_000))
    url = gcs_bucket.url(key)
    info = storage.storage_for(url).stat(url)
    assert info is not None
    task = slices.with_index(dataclasses.replace(task_for(url, info.size), version=info.version))
    assert task.gz_index is not None and len(task.gz_index.members) > 20
    for count in (2, 5):
        got = [
            p for k in range(count) for f, b in iter_slice_batches(FileSlice(task, k, count), 300)
            for p in enumerate(b, f)
        ]  # fmt: skip
        assert got == reference_lines(text), count
    gcs_bucket.put(key, indexed_gzip(text + b"more\n", 20_000))  # rewritten after planning
    with pytest.raises(slices.FileChanged):
        list(iter_slice_batches(FileSlice(task, 1, 2), 300))
