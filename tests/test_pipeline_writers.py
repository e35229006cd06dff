"""The local graph's Parquet writing: DateWriters and one ProcessSlices element, directly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sampledata import go_json_line, iter_hyperquack_records
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES
from services.beam_launcher.hyperquack.pipeline import DateWriters, ProcessSlices, slice_suffix
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.slices import FileSlice
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_TABLES


def dl_rows(n: int, date: str, start: int) -> list[dict[str, Any]]:
    task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    return [
        {
            "date": date,
            "scan_type": "echo",
            "source": task.source,
            "source_file": task.source_file,
            "source_line": start + i,
            "stage": "parse",
            "error_class": "x",
            "message": "m",
            "raw_line": "r",
            "raw_line_truncated": False,
            "pipeline_version": "v",
        }
        for i in range(n)
    ]


def add(writers: DateWriters, rows: list[dict[str, Any]]) -> None:
    writers.add(DEAD_LETTER.to_arrow(rows), [r["date"] for r in rows])


def test_rows_per_date_in_order_with_exact_row_groups(tmp_path: Path) -> None:
    w = DateWriters(DEAD_LETTER, str(tmp_path / "f"), ".2-of-3", row_group_rows=1000)
    line = 0
    for size in (700, 900, 50, 1300):  # batches mixing two dates
        rows = dl_rows(size, "2021-05-30", line) + dl_rows(size // 2, "2021-05-31", line + size)
        add(w, rows)
        line += size + size // 2
    add(w, dl_rows(3, "2021-05-30", line))
    done = w.finish()
    assert [Path(p).name for p in done] == [
        "date=2021-05-30.2-of-3.parquet",
        "date=2021-05-31.2-of-3.parquet",
    ]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [Path(p).name for p in done]
    for path, n in zip(done, (2953, 1475), strict=True):
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow == DEAD_LETTER.arrow_schema()
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        assert sum(groups) == n and all(g == 1000 for g in groups[:-1]) and groups[-1] <= 1000
        lines = pf.read().column("source_line").to_pylist()
        assert lines == sorted(lines)  # line order kept within the date


def test_abort_leaves_nothing_and_empty_finish_writes_nothing(tmp_path: Path) -> None:
    w = DateWriters(DEAD_LETTER, str(tmp_path / "f"), "", row_group_rows=100)
    add(w, dl_rows(250, "2021-05-30", 1))  # two row groups already written
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["date=2021-05-30.parquet.inprogress"]
    w.abort()
    assert list((tmp_path / "f").iterdir()) == []
    empty = DateWriters(DEAD_LETTER, str(tmp_path / "g"), "")
    assert empty.finish() == [] and not (tmp_path / "g").exists()


def test_slice_suffix_pads_to_the_count() -> None:
    task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    assert [slice_suffix(FileSlice(task, i, 10)) for i in (0, 9)] == [".01-of-10", ".10-of-10"]


def http_file(tmp_path: Path, n: int) -> FileTask:
    start = dt.datetime(2021, 5, 30, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    lines = [go_json_line(r) + b"\n" for r in iter_hyperquack_records("http", 2, n, 1, start)]
    path = tmp_path / "CP_Quack-http-2021-05-30-10-00-00" / "results.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    task = FileTask.for_test("CP_Quack-http-2021-05-30-10-00-00", "results.json")
    return dataclasses.replace(task, url=str(path), size=path.stat().st_size)


def slice_dofn(staging: Path, row_group_rows: int = 500) -> ProcessSlices:
    dofn = ProcessSlices(str(staging), str(SAMPLE_RESOURCES), batch_lines=100)
    dofn.row_group_rows = row_group_rows
    dofn.setup()
    return dofn


def test_failing_slice_deletes_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = http_file(tmp_path, 600)
    dofn = slice_dofn(tmp_path / "staging")
    assert dofn.processor is not None
    real = dofn.processor.process_columns
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:  # after row groups have been written
            raise RuntimeError("bug in a later batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(dofn.processor, "process_columns", failing)
    with pytest.raises(RuntimeError, match="bug in a later batch"):
        list(dofn.process(FileSlice(task, 0, 1)))
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []


def test_unreadable_file_gives_a_read_dead_letter(tmp_path: Path) -> None:
    task = http_file(tmp_path, 600)
    data = Path(task.url).read_bytes()
    Path(task.url).write_bytes(data[: len(data) // 2])  # truncated gzip
    [(key, stats)] = list(slice_dofn(tmp_path / "staging").process(FileSlice(task, 0, 1)))
    assert key == task.file_key
    assert stats["read_errors"] == 1 and stats["lines"] > 0
    dead = [p for p in (tmp_path / "staging" / "dead_letter").rglob("*.parquet")]
    rows = pq.read_table(dead[0]).to_pylist()
    assert [(r["stage"], r["error_class"]) for r in rows] == [("read", "unreadable_file")]
    assert rows[0]["message"].startswith(f"file unreadable after line {stats['lines']}: ")
    scan = [p for p in (tmp_path / "staging" / HYPERQUACK_TABLES["http"].name).rglob("*.parquet")]
    assert scan and pq.read_table(scan[0]).num_rows == stats["rows"]


def test_pending_rows_of_all_dates_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice spanning many days holds at most about one row group's bytes pending."""
    from services.beam_launcher.hyperquack import pipeline

    limit = DEAD_LETTER.to_arrow(dl_rows(300, "2021-05-30", 0)).get_total_buffer_size()
    monkeypatch.setattr(pipeline, "ROW_GROUP_BYTES", limit)
    w = DateWriters(DEAD_LETTER, str(tmp_path / "f"), "", row_group_rows=10_000)
    batch = DEAD_LETTER.to_arrow(dl_rows(100, "2021-05-30", 0)).get_total_buffer_size()
    line = 0
    for day in range(1, 12):
        for _ in range(2):
            add(w, dl_rows(100, f"2021-06-{day:02d}", line))
            line += 100
            assert sum(w.pending_bytes.values()) < limit + batch
            # ... and what is pending is what the rows added and not yet written hold.
            held = sum(t.get_total_buffer_size() for ts in w.pending.values() for t in ts)
            assert sum(w.pending_bytes.values()) >= held * 0.9
            assert sum(w.pending_rows.values()) <= 400
    done = w.finish()
    assert len(done) == 11
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in done) == 2200


def test_written_files_use_the_chosen_encodings_and_keep_every_value(tmp_path: Path) -> None:
    """Per-row columns are stored plain (no dictionary), page bodies/headers without
    statistics, everything else dictionary-encoded with statistics (DuckDB prunes row
    groups on date, domain, server_ip, outcome...)."""
    task = http_file(tmp_path, 400)
    [(_key, stats)] = list(slice_dofn(tmp_path / "staging").process(FileSlice(task, 0, 1)))
    [path] = (tmp_path / "staging" / HYPERQUACK_TABLES["http"].name).rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    group = meta.row_group(0)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for name in ("start_time", "end_time", "measurement_id", "source_line"):
        assert "RLE_DICTIONARY" not in chunks[name].encodings, name
        assert chunks[name].is_stats_set, name
    for name in ("domain", "server_ip", "outcome", "received_body", "source"):
        assert "RLE_DICTIONARY" in chunks[name].encodings, name
    for name in ("received_body", "received_headers.list.element"):
        assert not chunks[name].is_stats_set, name
    for name in ("date", "domain", "server_ip", "outcome", "controls_failed", "retry"):
        assert chunks[name].is_stats_set, name
    table = pq.read_table(path)  # values: test_e2e_fingerprint compares whole tables
    assert table.num_rows == stats["rows"]
    lines = table.column("source_line").to_pylist()
    assert lines == sorted(lines) and len(set(table.column("measurement_id").to_pylist())) == 400
