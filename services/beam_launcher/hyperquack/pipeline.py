"""The Beam graphs of Hyperquack files: scan files → rows / dead letters / per-file stats.

Two graphs share the parse and enrichment code:

* :func:`build_graph` (Dataflow / BigQuery sink): files → line batches (Beam costs ~8 µs
  per element, so one element per line would dominate the parse cost) → reshuffled over
  the workers → parsed into row dicts keyed by ``(table, file_key)`` → the sink.
* :func:`build_local_graph` (local warehouse): one element per worker process, which
  takes pieces of the files on demand (``slices.py``) and streams through them: reads
  in batches, parses them to columns, enriches them, converts them to Arrow and streams
  them into one Parquet file per (table, date) of that stream. Rows never leave the
  DoFn: nothing is shuffled, merged or held by the runner, so memory stays flat and the
  worker processes share nothing but the plan and the claims on pieces.

Example (graph construction only):
    >>> import apache_beam as beam
    >>> p = beam.Pipeline(runner="FnApiRunner")
    >>> _ = build_graph(p, [], "resources/sample", LocalStagingSink("/tmp/x"), "/tmp/x/_stats")
    >>> _ = build_local_graph(beam.Pipeline(runner="FnApiRunner"), [], "resources/sample",
    ...                       "/tmp/x", "/tmp/x/_stats")
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from services.beam_launcher.enrichment.ip_metadata import RowEnricher
from services.beam_launcher.enrichment.resources import Resources, load_resources
from services.beam_launcher.hyperquack.processing import (
    SAMPLES_KEY,
    FileTask,
    HyperquackProcessor,
    Samples,
    dead_letter,
    dead_letter_samples,
    merge_samples,
)
from services.beam_launcher.slices import (
    ClaimBoard,
    FileSlice,
    iter_slice_batches,
    iter_stream_batches,
    plan_pieces,
    with_index,
)
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_TABLES, SATELLITE_SCAN
from services.beam_launcher.worker import freeze_after_setup
from services.common import progress, storage
from services.common.rowschema import Row, TableSpec

NAMESPACE = "censoredplanet"
DEFAULT_BATCH_LINES = 500
# Parquet row groups of the local graph: written when this many rows (or bytes of Arrow
# data) of one (table, date) have accumulated; bounds each worker's memory.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 32 << 20
PARQUET_COMPRESSION = "zstd"
# Columns written without a dictionary: unique per row or per line, so a dictionary
# page fills, falls back to plain encoding and was work (and bytes) for nothing: writing
# these four columns of 1M bench rows took 326 ms and 16.6 MB with, 154 ms and 8.6 MB
# without (launcher README, "Parquet files").
NO_DICTIONARY = frozenset({"start_time", "end_time", "measurement_id", "source_line"})
# Columns written without min/max statistics: page bodies, headers and certificates, which
# no query filters on by range (and whose min/max of long values cost a comparison per
# value and bytes in the footer).
NO_STATISTICS = frozenset(
    {
        "received_body",
        "received_headers",
        "received_tls_cert",
        "received_tls_cert_alternative_names",
        "raw_line",
    }
)
TABLE_SPECS: dict[str, TableSpec] = {
    **{s.name: s for s in HYPERQUACK_TABLES.values()},
    DEAD_LETTER.name: DEAD_LETTER,
    SATELLITE_SCAN.name: SATELLITE_SCAN,
}

Batch = tuple[FileTask, int, list[bytes]]
Keyed = tuple[tuple[str, str], list[Row]]


def safe_key(file_key: str) -> str:
    """File key → a name usable as one path component."""
    return file_key.replace("/", "__")


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``ParquetWriter`` settings of a table: :data:`PARQUET_COMPRESSION`, dictionaries
    and statistics on every leaf column except those under the top-level names in
    :data:`NO_DICTIONARY` / :data:`NO_STATISTICS`.

    >>> opts = parquet_options(pa.schema([("domain", pa.string()), ("source_line", pa.int64()),
    ...                                   ("received_headers", pa.list_(pa.string()))]))
    >>> opts["use_dictionary"], opts["write_statistics"]
    (['domain', 'received_headers.list.element'], ['domain', 'source_line'])
    """
    paths = _leaf_paths(schema)
    return {
        "compression": PARQUET_COMPRESSION,
        "use_dictionary": [p for p in paths if p.split(".")[0] not in NO_DICTIONARY],
        "write_statistics": [p for p in paths if p.split(".")[0] not in NO_STATISTICS],
    }


@functools.cache
def _leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """Dotted Parquet paths of the leaf columns ``schema`` is written as (the names the
    writer's per-column settings match, e.g. ``received_headers.list.element``)."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    meta = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return tuple(meta.column(i).path for i in range(len(meta)))


def progress_task(scan_type: str) -> progress.Task:
    """The progress counters of a family's files (``services/common/progress.py``)."""
    family = "satellite" if scan_type == "satellite" else "hyperquack"
    return progress.task(f"launcher {family}", unit="files")


def plan_progress(tasks: Iterable[FileTask]) -> None:
    """Count ``tasks`` into their families' progress totals (sizes for the ETA)."""
    for task in tasks:
        progress_task(task.scan_type).add_total(files=1, size=task.size)


class ReadLineBatches(beam.DoFn):
    """Stream one file and emit (task, first line number, lines) batches.

    A file that cannot be read to the end (corrupt gzip, vanished object) yields a
    ``read`` dead letter and a ``read_errors`` stat; the committer then rejects it.

    Progress: after each batch has gone downstream (on the local runner the parse step
    is fused with this one, so the batch has been parsed), its lines are counted into
    :func:`progress_task`; a file is counted when it has been read to the end.
    """

    def __init__(self, batch_lines: int) -> None:
        self.batch_lines = batch_lines
        self.bytes_read = Metrics.counter(NAMESPACE, "bytes_read")
        self.files_read = Metrics.counter(NAMESPACE, "files_read")

    def process(self, task: FileTask) -> Iterator[Any]:
        line_no = 0
        batch: list[bytes] = []
        first = 1
        nbytes = 0
        shown = progress_task(task.scan_type)
        try:
            with storage.open_text_lines(task.url) as fh:
                for line in fh:
                    line_no += 1
                    nbytes += len(line)
                    batch.append(line)
                    if len(batch) >= self.batch_lines:
                        yield (task, first, batch)
                        shown.advance(lines=len(batch))
                        first, batch = line_no + 1, []
            if batch:
                yield (task, first, batch)
                shown.advance(lines=len(batch))
            self.files_read.inc()
            shown.advance(files=1, size=task.size)
        except Exception as exc:
            shown.advance(files=1, size=task.size)
            if batch:
                yield (task, first, batch)
                shown.advance(lines=len(batch))
            msg = f"file unreadable after line {line_no}: {type(exc).__name__}: {exc}"
            row = dead_letter(task, None, "read", "unreadable_file", msg, b"")
            yield beam.pvalue.TaggedOutput(
                "read_errors", ((DEAD_LETTER.name, task.file_key), [row])
            )
            yield beam.pvalue.TaggedOutput(
                "stats", (task.file_key, {"read_errors": 1, "dead_letters": 1})
            )
        self.bytes_read.inc(nbytes)


# Per-process objects the DoFns share, through Beam's ``Shared`` handles (one handle per
# kind of object; each DoFn keeps a strong reference, the handle only a weak one, so an
# object lives as long as some DoFn of this process uses it). The tag is the object's
# configuration: acquiring with another tag builds a new object for the DoFns to come.
_RESOURCES = Shared()
_ENRICHER = Shared()
ORG_MMDB_ENV = "CP_IP_ORG_MMDB"


def shared_enricher(location: str | None, max_staleness_days: int) -> RowEnricher:
    """One IP-metadata enricher (and its reference-table cache) per worker process.

    The optional organisation MMDB comes from ``$CP_IP_ORG_MMDB`` (worker environment).
    """
    org_mmdb = os.environ.get(ORG_MMDB_ENV) or None
    enricher: RowEnricher = _ENRICHER.acquire(
        lambda: RowEnricher(location, max_staleness_days, org_mmdb),
        tag=(location, max_staleness_days, org_mmdb),
    )
    return enricher


def shared_resources(location: str) -> Resources:
    """One compiled matcher per worker process (RE2 matching is thread-safe)."""
    res: Resources = _RESOURCES.acquire(lambda: load_resources(location), tag=location)
    return res


def prepare_shared(
    resources_location: str,
    ip_metadata: str | None,
    max_staleness_days: int,
    dates: Iterable[str],
) -> list[object]:
    """Build this process's shared objects (compiled resources; the enricher with the
    reference tables of ``dates`` loaded) before worker processes are forked from it
    (``services/beam_launcher/zygote.py``): each forked worker's DoFns then acquire these
    instead of building their own. The caller keeps the returned list alive until the
    workers have started (the handles hold weak references only)."""
    held: list[object] = [shared_resources(resources_location)]
    if ip_metadata:
        enricher = shared_enricher(ip_metadata, max_staleness_days)
        enricher.prepare(dates)
        held.append(enricher)
    return held


class _HyperquackDoFn(beam.DoFn):
    """What the Hyperquack parse steps share: the per-worker processor and enricher
    (built in ``setup``) and Beam counters by name."""

    def __init__(
        self, resources_location: str, ip_metadata: str | None = None, max_staleness_days: int = 30
    ) -> None:
        self.resources_location = resources_location
        self.ip_metadata = ip_metadata
        self.max_staleness_days = max_staleness_days
        self.processor: HyperquackProcessor | None = None
        self.enricher: RowEnricher | None = None
        self.counters: dict[str, Any] = {}

    def setup(self) -> None:
        """Once per worker: the compiled resources and the IP-metadata enricher."""
        self.processor = HyperquackProcessor(shared_resources(self.resources_location))
        self.enricher = shared_enricher(self.ip_metadata, self.max_staleness_days)
        freeze_after_setup()

    def _count(self, name: str, value: int) -> None:
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc(value)


class ProcessBatches(_HyperquackDoFn):
    """Parse + annotate a batch; rows keyed by (table, file_key), stats per file."""

    def process(self, batch: Batch) -> Iterator[Any]:
        task, first, lines = batch
        assert self.processor is not None
        out = self.processor.process_lines(task, first, lines)
        assert self.enricher is not None
        ip_stats: dict[str, int] = {}
        for row in out.rows:
            self.enricher.enrich_hyperquack(row, ip_stats)
            if row["server_asn"] is not None:
                ip_stats["rows_with_asn"] = ip_stats.get("rows_with_asn", 0) + 1
            if row["server_country"] is not None:
                ip_stats["rows_with_country"] = ip_stats.get("rows_with_country", 0) + 1
        out.stats.update(ip_stats)
        table = HYPERQUACK_TABLES[task.scan_type].name
        if out.rows:
            yield ((table, task.file_key), out.rows)
        if out.dead_letters:
            yield beam.pvalue.TaggedOutput(
                "dead", ((DEAD_LETTER.name, task.file_key), out.dead_letters)
            )
        stats: dict[str, Any] = dict(out.stats)
        for name, value in stats.items():
            self._count(f"{task.scan_type}.{name}", value)
        if out.dead_letters:
            stats[SAMPLES_KEY] = dead_letter_samples(out.dead_letters)
        yield beam.pvalue.TaggedOutput("stats", (task.file_key, stats))


StatsAcc = tuple[Counter[str], Samples]


class SumStats(beam.CombineFn):
    """Sum per-file stat dicts; their dead-letter samples stay the first few per class."""

    def create_accumulator(self) -> StatsAcc:
        return Counter(), {}

    def add_input(self, acc: StatsAcc, value: dict[str, Any]) -> StatsAcc:
        counts, samples = acc
        counts.update({k: v for k, v in value.items() if k != SAMPLES_KEY})
        if value.get(SAMPLES_KEY):
            samples = merge_samples(samples, value[SAMPLES_KEY])
        return counts, samples

    def merge_accumulators(self, accs: Iterable[StatsAcc]) -> StatsAcc:
        total: Counter[str] = Counter()
        samples: Samples = {}
        for counts, more in accs:
            total.update(counts)
            samples = merge_samples(samples, more)
        return total, samples

    def extract_output(self, acc: StatsAcc) -> dict[str, Any]:
        counts, samples = acc
        return {**counts, SAMPLES_KEY: samples} if samples else dict(counts)


class WriteStats(beam.DoFn):
    """Write one small JSON file of stats per input file into the run's stats folder."""

    def __init__(self, stats_dir: str) -> None:
        self.stats_dir = stats_dir

    def process(self, item: tuple[str, dict[str, int]]) -> Iterator[str]:
        file_key, stats = item
        url = storage.join(self.stats_dir, safe_key(file_key) + ".json")
        storage.storage_for(url).write_bytes(url, orjson.dumps({"file_key": file_key, **stats}))
        yield url


class WriteParquetParts(beam.DoFn):
    """Write each batch of rows straight to Parquet part files, one per date.

    Runs fused with the parse step, so rows are never encoded by the runner nor held by
    a shuffle: only ``((table, file_key), (date, part path))`` goes on.
    Parts: ``<staging>/_parts/<table>/<safe key>/date=<d>.<first line>.<random>.parquet``.
    """

    def __init__(self, staging_dir: str) -> None:
        self.staging_dir = staging_dir

    def process(self, item: tuple[tuple[str, str], list[Row]]) -> Iterator[Any]:
        (table, file_key), rows = item
        if not rows:
            return
        spec = TABLE_SPECS[table]
        by_date: dict[str, list[Row]] = {}
        for row in rows:
            by_date.setdefault(row["date"], []).append(row)
        folder = storage.join(self.staging_dir, "_parts", table, safe_key(file_key))
        os.makedirs(folder, exist_ok=True)
        first = rows[0].get("source_line") or 0
        for date, date_rows in by_date.items():
            name = f"date={date}.{first:012d}.{uuid.uuid4().hex[:8]}.parquet"
            path = storage.join(folder, name)
            pq.write_table(spec.to_arrow(date_rows), path, compression="lz4")
            yield ((table, file_key), (date, path))


class MergeParquetParts(beam.DoFn):
    """Concatenate the parts of one (table, file) into one Parquet file per date.

    Output: ``<staging>/<table>/<safe file key>/date=<YYYY-MM-DD>.parquet``, rows in
    line order; memory holds one part at a time.
    """

    def __init__(self, staging_dir: str) -> None:
        self.staging_dir = staging_dir

    def process(self, item: tuple[tuple[str, str], Iterable[tuple[str, str]]]) -> Iterator[str]:
        (table, file_key), parts = item
        schema = TABLE_SPECS[table].arrow_schema()
        folder = storage.join(self.staging_dir, table, safe_key(file_key))
        os.makedirs(folder, exist_ok=True)
        by_date: dict[str, list[str]] = {}
        for date, path in parts:
            by_date.setdefault(date, []).append(path)
        for date, paths in sorted(by_date.items()):
            target = storage.join(folder, f"date={date}.parquet")
            with pq.ParquetWriter(target, schema, **parquet_options(schema)) as writer:
                for path in sorted(paths):  # names sort by first line
                    writer.write_table(pq.read_table(path, schema=schema))
                    os.remove(path)
            yield target


class LocalStagingSink:
    """Stage rows as Parquet under a local run folder (committed after the run)."""

    def __init__(self, staging_dir: str) -> None:
        self.staging_dir = staging_dir

    def write(self, keyed_rows: Any) -> Any:
        """``keyed_rows``: one PCollection, or a list of them (preferred: not flattened).

        One writer per input, fused with its producer: rows are never buffered by the
        runner (FnApiRunner materialises a multi-input Flatten completely in memory);
        only the small part-file names are flattened and grouped.
        """
        inputs = keyed_rows if isinstance(keyed_rows, list | tuple) else [keyed_rows]
        parts = [
            pcoll | f"WriteParquetParts{i}" >> beam.ParDo(WriteParquetParts(self.staging_dir))
            for i, pcoll in enumerate(inputs)
        ]
        return (
            parts
            | "AllParts" >> beam.Flatten()
            | "GroupPartsByTableAndFile" >> beam.GroupByKey()
            | "MergeParquetParts" >> beam.ParDo(MergeParquetParts(self.staging_dir))
        )


def build_graph(
    p: beam.Pipeline,
    tasks: list[FileTask],
    resources_location: str,
    sink: Any,
    stats_dir: str,
    batch_lines: int = DEFAULT_BATCH_LINES,
    ip_metadata: str | None = None,
    max_staleness_days: int = 30,
    spread_batches: bool = True,
) -> Any:
    """Add the whole processing graph for ``tasks`` to ``p``.

    ``spread_batches`` reshuffles line batches so a distributed runner parses one file on
    many workers. Off on the single-process local runner: there it gains nothing and
    FnApiRunner holds every line of the run in memory for the shuffle.
    """
    plan_progress(tasks)
    read = (
        p
        | "Files" >> beam.Create(tasks)
        | "ReadLineBatches"
        >> beam.ParDo(ReadLineBatches(batch_lines)).with_outputs(
            "read_errors", "stats", main="batches"
        )
    )
    batches = read.batches
    if spread_batches:
        batches = batches | "SpreadBatches" >> beam.Reshuffle()
    parsed = batches | "Process" >> beam.ParDo(
        ProcessBatches(resources_location, ip_metadata, max_staleness_days)
    ).with_outputs("dead", "stats", main="rows")
    # The sink gets the row collections separately: flattening them here would make the
    # local runner buffer every row of the run in memory.
    written = sink.write([parsed.rows, parsed.dead, read.read_errors])
    stats = (
        (parsed.stats, read.stats)
        | "AllStats" >> beam.Flatten()
        | "SumPerFile" >> beam.CombinePerKey(SumStats())
        | "WriteStats" >> beam.ParDo(WriteStats(stats_dir))
    )
    return written, stats


# -- the local graph: slices streamed straight into Parquet ---------------------------


def slice_suffix(piece: FileSlice) -> str:
    """Name part of a slice's files: ``""`` for a whole file, else e.g. ``".02-of-12"``.

    >>> from services.beam_launcher.hyperquack.processing import FileTask
    >>> t = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> slice_suffix(FileSlice(t, 0, 1)), slice_suffix(FileSlice(t, 1, 12))
    ('', '.02-of-12')
    """
    if piece.count == 1:
        return ""
    return f".{piece.index + 1:0{len(str(piece.count))}d}-of-{piece.count}"


class DateWriters:
    """Streams Arrow batches of one table of one slice into one Parquet file per date.

    Files: ``<folder>/date=<YYYY-MM-DD><suffix>.parquet``, written under a
    ``.inprogress`` name and renamed by :meth:`finish`; :meth:`abort` deletes them, so a
    failed slice leaves nothing the commit would load. Batches accumulate per date up
    to ``row_group_rows`` rows (or :data:`ROW_GROUP_BYTES`) and go out as one row group;
    all dates together hold at most about :data:`ROW_GROUP_BYTES` pending.
    """

    def __init__(
        self, spec: TableSpec, folder: str, suffix: str, row_group_rows: int = ROW_GROUP_ROWS
    ) -> None:
        self.spec = spec
        self.schema = spec.arrow_schema()
        self.folder = folder
        self.suffix = suffix
        self.row_group_rows = row_group_rows
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.pending: dict[str, list[pa.Table]] = {}
        self.pending_rows: dict[str, int] = {}
        self.pending_bytes: dict[str, int] = {}
        self.paths: dict[str, str] = {}

    def add(self, table: pa.Table, dates: list[Any]) -> None:
        """Add ``table`` whose rows have the ``date`` values ``dates`` (JSON shape)."""
        n = table.num_rows
        if not n:
            return
        if dates.count(dates[0]) == n:
            self._add(str(dates[0]), table)
            return
        column = table["date"]
        for date in dict.fromkeys(dates):  # first-seen order: rows keep their line order
            if date is None:
                mask = pc.is_null(column)
            else:
                mask = pc.equal(column, pa.scalar(date).cast(column.type))
            self._add(str(date), table.filter(mask))

    def _add(self, date: str, table: pa.Table) -> None:
        # The size of the buffers the table holds, shared out among its rows: one sum per
        # table, where ``nbytes`` of each slice walks its buffers' referenced ranges (136
        # against 17 µs per 500-line batch of the bench scan, ~1% of a run's CPU).
        row_bytes = table.get_total_buffer_size() / max(1, table.num_rows)
        while table.num_rows:
            room = self.row_group_rows - self.pending_rows.get(date, 0)
            part, table = table.slice(0, room), table.slice(room)
            self.pending.setdefault(date, []).append(part)
            self.pending_rows[date] = self.pending_rows.get(date, 0) + part.num_rows
            self.pending_bytes[date] = self.pending_bytes.get(date, 0) + round(
                row_bytes * part.num_rows
            )
            if self.pending_rows[date] >= self.row_group_rows or (
                self.pending_bytes[date] >= ROW_GROUP_BYTES
            ):
                self._flush(date)
        # A scan spans several days: what is pending of the other dates (oldest first)
        # goes out too once all together reach the limit, so memory does not grow with
        # the number of dates.
        for other in list(self.pending):
            if sum(self.pending_bytes.values()) < ROW_GROUP_BYTES:
                break
            self._flush(other)

    def _flush(self, date: str) -> None:
        chunks = self.pending.pop(date, [])
        rows = self.pending_rows.pop(date, 0)
        self.pending_bytes.pop(date, None)
        if not rows:
            return
        writer = self.writers.get(date)
        if writer is None:
            os.makedirs(self.folder, exist_ok=True)
            path = storage.join(self.folder, f"date={date}{self.suffix}.parquet")
            self.paths[date] = path
            writer = self.writers[date] = pq.ParquetWriter(
                path + ".inprogress", self.schema, **parquet_options(self.schema)
            )
        writer.write_table(pa.concat_tables(chunks), row_group_size=rows)

    def finish(self) -> list[str]:
        """Write what is pending, close the files and give them their final names."""
        for date in list(self.pending):
            self._flush(date)
        for writer in self.writers.values():
            writer.close()
        for path in self.paths.values():
            os.replace(path + ".inprogress", path)
        done = sorted(self.paths.values())
        self.writers.clear()
        self.paths.clear()
        return done

    def abort(self) -> None:
        """Close and delete this slice's files (nothing half-written stays behind)."""
        for writer in self.writers.values():
            with contextlib.suppress(Exception):  # already broken (disk full): deleted anyway
                writer.close()
        for path in self.paths.values():
            for name in (path + ".inprogress", path):
                if os.path.exists(name):
                    os.remove(name)
        self.writers.clear()
        self.paths.clear()
        self.pending.clear()


class ProcessSlices(_HyperquackDoFn):
    """Read, parse, enrich and write one slice of a Hyperquack file; yield its stats.

    Rows go straight from the parser's columns to Arrow to Parquet
    (:class:`DateWriters`, staged under ``<staging>/<table>/<safe file key>/``); only the
    slice's stats, keyed by file, leave the DoFn. A file that cannot be read to the end
    gives a ``read`` dead letter and a ``read_errors`` stat per slice that hit the error
    (the committer then rejects the file). Any other error deletes the slice's files and
    fails the run.

    Counters: ``bytes_read`` (lines of the slice, so slices of a file sum to the file),
    ``files_read`` (by a file's last slice, which reads the file to its end) and the
    per-batch stats as ``<scan type>.<stat>``, summed by Beam over all worker processes.
    """

    def __init__(
        self,
        staging_dir: str,
        resources_location: str,
        ip_metadata: str | None = None,
        max_staleness_days: int = 30,
        batch_lines: int = DEFAULT_BATCH_LINES,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        super().__init__(resources_location, ip_metadata, max_staleness_days)
        self.staging_dir = staging_dir
        self.batch_lines = batch_lines
        self.row_group_rows = row_group_rows
        self.bytes_read = Metrics.counter(NAMESPACE, "bytes_read")
        self.files_read = Metrics.counter(NAMESPACE, "files_read")

    def _writers(self, spec: TableSpec, task: FileTask, suffix: str) -> DateWriters:
        folder = storage.join(self.staging_dir, spec.name, safe_key(task.file_key))
        return DateWriters(spec, folder, suffix, self.row_group_rows)

    def process(self, piece: FileSlice) -> Iterator[tuple[str, dict[str, Any]]]:
        where = f" (slice {piece.index + 1} of {piece.count})" if piece.count > 1 else ""
        last = piece.index == piece.count - 1
        batches = iter_slice_batches(piece, self.batch_lines)
        stats, _failed = self._stream(piece.task, slice_suffix(piece), batches, where, lambda: last)
        yield (piece.task.file_key, stats)

    def _stream(
        self,
        task: FileTask,
        suffix: str,
        batches: Iterator[tuple[int, list[bytes]]],
        where: str,
        last: Callable[[], bool],
    ) -> tuple[dict[str, Any], bool]:
        """Parse, enrich and write ``batches`` of ``task`` into Parquet files named with
        ``suffix``; ``last()``: whether these lines ended with the file's last line.
        Returns the stats and whether reading the file failed."""
        rows_out = self._writers(HYPERQUACK_TABLES[task.scan_type], task, suffix)
        dead_out = self._writers(DEAD_LETTER, task, suffix)
        stats: Counter[str] = Counter()
        samples: Samples = {}
        shown = progress_task(task.scan_type)
        nbytes = last_line = 0
        failed = False
        try:
            while True:
                try:
                    first, lines = next(batches)
                except StopIteration:
                    break
                except Exception as exc:  # the file, not our code: a read dead letter
                    msg = (
                        f"file unreadable after line {last_line}{where}: "
                        f"{type(exc).__name__}: {exc}"
                    )
                    row = dead_letter(task, None, "read", "unreadable_file", msg, b"")
                    dead_out.add(DEAD_LETTER.to_arrow([row]), [row["date"]])
                    stats.update({"read_errors": 1, "dead_letters": 1})
                    failed = True
                    break
                nbytes += sum(map(len, lines))
                last_line = first + len(lines) - 1
                samples = self._batch(task, first, lines, rows_out, dead_out, stats, samples)
                shown.advance(lines=len(lines))
            rows_out.finish()
            dead_out.finish()
        except BaseException:
            rows_out.abort()
            dead_out.abort()
            raise
        if last():
            if not failed:
                self.files_read.inc()
            shown.advance(files=1, size=task.size)
        self.bytes_read.inc(nbytes)
        out: dict[str, Any] = dict(stats)
        if samples:
            out[SAMPLES_KEY] = samples
        return out, failed

    def _batch(
        self,
        task: FileTask,
        first: int,
        lines: list[bytes],
        rows_out: DateWriters,
        dead_out: DateWriters,
        stats: Counter[str],
        samples: Samples,
    ) -> Samples:
        assert self.processor is not None and self.enricher is not None
        out = self.processor.process_columns(task, first, lines, arrow=True)
        ip_stats: dict[str, int] = {}
        self.enricher.enrich_hyperquack_columns(out.columns, out.n_rows, ip_stats, arrow=True)
        out.stats.update(ip_stats)
        if out.n_rows:  # the native parser's Arrow arrays (out.arrays) go in as they are
            spec = HYPERQUACK_TABLES[task.scan_type]
            table = spec.columns_to_arrow(out.columns | out.arrays, out.n_rows)
            rows_out.add(table, out.columns["date"])
        if out.dead_letters:
            dates = [r["date"] for r in out.dead_letters]
            dead_out.add(DEAD_LETTER.to_arrow(out.dead_letters), dates)
            samples = merge_samples(samples, dead_letter_samples(out.dead_letters))
        for name, value in out.stats.items():
            self._count(f"{task.scan_type}.{name}", value)
        stats.update(out.stats)
        return samples


class ProcessStreams(ProcessSlices):
    """One element per worker process: take pieces of the run's files on demand
    (:class:`slices.ClaimBoard`) until none is left; yield the stats of each stream.

    A stream runs from the piece it claimed through the following ones it can claim
    (:func:`slices.iter_stream_batches`); refused one, it skips ahead past the pieces
    another stream has done and takes the later part of what that one has left, when
    that ends sooner (:meth:`slices.ClaimBoard.jump`: the skip costs only the distance,
    not the file's prefix). All of it goes into one set of Parquet files named
    ``<date>.<k>-of-<n>.parquet`` after its first piece ``k`` (no suffix for a file of
    one piece). So no worker waits while another still has a long slice: the one that
    runs out of work takes the later part of the other's unclaimed pieces. Which worker
    writes which rows depends on timing; the rows do not. A stream whose file cannot be
    read claims the file's untaken pieces (nobody starts there again) and reports the
    read error as :class:`ProcessSlices` does.
    """

    def __init__(
        self, claims_dir: str, plan: list[tuple[FileTask, int]], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.claims_dir = claims_dir
        self.plan = plan

    def process(self, token: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        board = ClaimBoard(self.claims_dir, self.plan)
        while (nxt := board.next_start()) is not None:
            task, count, start = nxt
            if board.claim(task, start):  # else another worker was quicker: look again
                yield self._one_stream(board, task, count, start)

    def _one_stream(
        self, board: ClaimBoard, task: FileTask, count: int, start: int
    ) -> tuple[str, dict[str, Any]]:
        """Pieces ``start``… of ``task`` (``start`` claimed) while they can be claimed."""
        held = _Held(board, task, start)
        where = f" (from piece {start + 1} of {count})" if count > 1 else ""
        suffix = slice_suffix(FileSlice(task, start, count))
        batches = iter_stream_batches(task, count, start, held.claim, self.batch_lines, held.jump)
        stats, failed = self._stream(task, suffix, batches, where, held.to_end)
        if failed:  # nobody starts in this file again
            for piece in range(count):
                held.claim(piece)
        board.mark_done(task, held.pieces)
        return task.file_key, stats


class _Held:
    """The pieces one stream has claimed, in order (the first one by the caller)."""

    def __init__(self, board: ClaimBoard, task: FileTask, start: int) -> None:
        self.board = board
        self.task = task
        self.pieces = [start]

    def claim(self, piece: int) -> bool:
        if not self.board.claim(self.task, piece):
            return False
        self.pieces.append(piece)
        return True

    def jump(self, pos: float) -> int | None:
        """Refused a piece after ``pos`` stored chunks: where to skip ahead to, if anywhere."""
        counts = {t.file_key: n for t, n in self.board.plan}
        piece = self.board.jump(self.task, counts[self.task.file_key], pos)
        if piece is not None:
            self.pieces.append(piece)
        return piece

    def to_end(self) -> bool:
        """Whether the stream went through the file's last piece (read it to its end)."""
        counts = {t.file_key: n for t, n in self.board.plan}
        return self.pieces[-1] == counts[self.task.file_key] - 1


class CheckPieces(beam.DoFn):
    """After every stream has ended: each piece of each file whose stats arrive must be
    recorded as written (:meth:`ClaimBoard.missing`), or the run fails before its commit.
    Files with a read error are rejected by the commit anyway."""

    def __init__(self, claims_dir: str, plan: list[tuple[FileTask, int]]) -> None:
        self.claims_dir = claims_dir
        self.plan = plan

    def process(self, item: tuple[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
        file_key, stats = item
        if not stats.get("read_errors"):
            board = ClaimBoard(self.claims_dir, self.plan)
            for task, count in self.plan:
                if task.file_key == file_key and (lost := board.missing(task, count)):
                    raise RuntimeError(f"{file_key}: pieces {lost} of {count} were not written")
        yield item


def plan_work(
    tasks: list[FileTask], workers: int, slice_bytes: int | None = None
) -> list[list[FileSlice]]:
    """The pieces of ``tasks`` (:func:`slices.plan_pieces`; ``slice_bytes``: one per that
    many stored bytes, tests use it to cut small files) dealt into up to ``workers``
    lists, round robin; empty lists are dropped. The number of lists is the number of
    worker processes; which pieces each one does is decided while they run
    (:class:`ProcessStreams`). A gzip file cut into pieces carries its index when it has
    one (:func:`slices.with_index`): its pieces then start at gzip members.

    >>> from services.beam_launcher.hyperquack.processing import FileTask
    >>> ts = [FileTask.for_test(f"CP_Quack-echo-2021-05-30-01-01-0{i}") for i in range(3)]
    >>> [len(b) for b in plan_work(ts, 2)]
    [2, 1]
    """
    workers = max(1, workers)
    pieces: list[FileSlice] = []
    for task in tasks:
        n = plan_pieces(task, workers, slice_bytes)
        if n > 1 and (indexed := with_index(task)) is not task:  # pieces at gzip members
            task = indexed
            n = plan_pieces(task, workers, slice_bytes)
        pieces += [FileSlice(task, k, n) for k in range(n)]
    bins: list[list[FileSlice]] = [pieces[i::workers] for i in range(workers)]
    return [b for b in bins if b]


def build_local_graph(
    p: beam.Pipeline,
    tasks: list[FileTask],
    resources_location: str,
    staging_dir: str,
    stats_dir: str,
    batch_lines: int = DEFAULT_BATCH_LINES,
    ip_metadata: str | None = None,
    max_staleness_days: int = 30,
    workers: int = 1,
    row_group_rows: int = ROW_GROUP_ROWS,
    work: list[list[FileSlice]] | None = None,
) -> Any:
    """Add the local graph for ``tasks`` to ``p`` (see the module docstring).

    One element per worker process (the lists of :func:`plan_work`, or of ``work`` when
    the caller planned it to size the runner's worker pool), grouped by its number: the
    local runner hands each group of a ``GroupByKey`` to one worker process in turn, so
    every process gets one (a plain ``Create`` shuffles with random keys and may give
    two to the same process). Each takes pieces on demand (:class:`ProcessStreams`);
    the claims live in ``<staging>/_claims``. Only these small elements and the stats
    move between steps, never rows.
    """
    plan_progress(tasks)
    bins = plan_work(tasks, workers) if work is None else work
    plan = list({(s.task.file_key): (s.task, s.count) for b in bins for s in b}.values())
    claims_dir = os.path.join(staging_dir, "_claims")
    tokens: Any = p | "Workers" >> beam.Create([(i, i) for i in range(len(bins))], reshuffle=False)
    if len(bins) > 1:
        tokens = tokens | "OnePerWorker" >> beam.GroupByKey()
    return (
        tokens
        | "ProcessStreams"
        >> beam.ParDo(
            ProcessStreams(
                claims_dir,
                plan,
                staging_dir,
                resources_location,
                ip_metadata,
                max_staleness_days,
                batch_lines,
                row_group_rows,
            )
        )
        | "SumPerFile" >> beam.CombinePerKey(SumStats())
        | "CheckPieces" >> beam.ParDo(CheckPieces(claims_dir, plan))
        | "WriteStats" >> beam.ParDo(WriteStats(stats_dir))
    )
