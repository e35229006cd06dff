"""Beam graph for Satellite scans: parse every file of a scan, join, post-process, classify.

A Satellite scan is several files joined on keys that stay inside one scan:

* resolver tags by (scan, resolver ip),
* answer tags by (scan, answer ip) and page fetches by (scan, domain, answer ip),
* post-processing per (scan, domain).

Every join is a CoGroupByKey on such keys, so no worker ever holds a whole scan.

Example (graph construction only):
    >>> import apache_beam as beam
    >>> p = beam.Pipeline(runner="FnApiRunner")
    >>> _ = build_satellite_graph(p, [], "resources/sample", None, "/tmp/x/_stats")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from services.beam_launcher.hyperquack.parse import BadRecord
from services.beam_launcher.hyperquack.pipeline import (
    NAMESPACE,
    ReadLineBatches,
    SumStats,
    WriteStats,
    plan_progress,
    shared_enricher,
    shared_resources,
)
from services.beam_launcher.hyperquack.processing import (
    SAMPLES_KEY,
    FileTask,
    dead_letter_samples,
    parse_line,
)
from services.beam_launcher.satellite import outcomes as satellite_outcomes
from services.beam_launcher.satellite import parse as satellite
from services.beam_launcher.satellite import post as satellite_post
from services.beam_launcher.satellite.batch import parse_observation_batch
from services.beam_launcher.warehouse.rows import DEAD_LETTER, SATELLITE_SCAN
from services.common.rowschema import Row

SATELLITE_TABLE = SATELLITE_SCAN.name


def scan_key(source: str) -> str:
    """Satellite rows are replaced per scan: their 'file key' is the scan itself."""
    return f"{source}/satellite"


class ParseSatelliteBatch(beam.DoFn):
    """Route each line of a batch by its file's role and parse it.

    Outputs: main = rows (one element per row, for the joins); ``resolver_tags``,
    ``answer_tags``, ``fetches`` keyed for their joins; ``dead`` and ``stats``.
    """

    def __init__(self, resources_location: str, keep_bodies: bool) -> None:
        self.resources_location = resources_location
        self.keep_bodies = keep_bodies
        self.resources: Any = None
        self.matcher: Any = None
        self.counters: dict[str, Any] = {}

    def setup(self) -> None:
        # The whole Resources object is kept: the shared handle holds only a weak reference.
        self.resources = shared_resources(self.resources_location)
        self.matcher = self.resources.matcher

    def _count(self, name: str, value: int = 1) -> None:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Metrics.counter(NAMESPACE, f"satellite.{name}")
        c.inc(value)

    def _tags_of(self, task: FileTask, role: str) -> Callable[[Any, bytes], list[Any]]:
        """The handler of one decoded line of a tag or page-fetch file: its tagged outputs."""

        def outputs(record: Any, _raw: bytes) -> list[Any]:
            if not isinstance(record, dict):
                raise BadRecord("not_an_object", f"record is a JSON {type(record).__name__}")
            if role == "resolver_tags":
                ip, tags = satellite.parse_resolver_tag(record, task.source_file)
                return [beam.pvalue.TaggedOutput("resolver_tags", ((task.source, ip), tags))]
            if role == "answer_tags":
                ip, tags = satellite.parse_answer_tag(record)
                return [beam.pvalue.TaggedOutput("answer_tags", ((task.source, ip), tags))]
            if role == "page_fetches":
                return [
                    beam.pvalue.TaggedOutput("fetches", ((task.source, domain, ip), fetch))
                    for domain, ip, fetch in satellite.parse_page_fetch(
                        record, self.matcher, self.keep_bodies
                    )
                ]
            return []

        return outputs

    def process(self, batch: tuple[FileTask, int, list[bytes]]) -> Iterator[Any]:
        task, first, lines = batch
        role = satellite.file_role(task.source_file)
        stats: dict[str, int] = {}
        dead: list[Row] = []
        if role == "observations":  # C fast path when built, else the Python reference
            yield from parse_observation_batch(task, first, lines, stats, dead)
        else:
            handle = self._tags_of(task, role)
            for offset, raw in enumerate(lines):
                yield from parse_line(task, first + offset, raw, stats, dead, handle) or ()
        if dead:
            yield beam.pvalue.TaggedOutput("dead", ((DEAD_LETTER.name, task.file_key), dead))
        for name, value in stats.items():
            self._count(name, value)
        out: dict[str, Any] = dict(stats)
        if dead:
            out[SAMPLES_KEY] = dead_letter_samples(dead)
        yield beam.pvalue.TaggedOutput("stats", (task.file_key, out))


def _merge_resolver(item: tuple[tuple[str, str], dict[str, list[Any]]]) -> Iterator[Row]:
    _key, groups = item
    tag_list = list(groups["tags"])
    tags = satellite.merge_resolver_tags(tag_list) if tag_list else {}
    for row in groups["rows"]:
        for k, v in tags.items():
            if v is not None:
                row[k] = v
        yield row


def _explode_answers(row: Row) -> Iterator[Any]:
    """Per answer: a tag-join key and a fetch-join key, both pointing back to the row."""
    for idx, answer in enumerate(row.get("answers") or ()):
        ip = answer.get("ip")
        if not ip:
            continue
        ref = (row["_row_id"], idx)
        yield beam.pvalue.TaggedOutput("tag_keys", ((row["source"], ip), ref))
        yield beam.pvalue.TaggedOutput("fetch_keys", ((row["source"], row["domain"], ip), ref))


def _route_answers(
    item: tuple[Any, dict[str, list[Any]]], update_kind: str
) -> Iterator[tuple[str, tuple[str, int, Any]]]:
    _key, groups = item
    values = list(groups["values"])
    if not values:
        return
    for row_id, idx in groups["refs"]:
        yield (row_id, (update_kind, idx, values))


def _apply_updates(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Row]:
    _row_id, groups = item
    rows = list(groups["rows"])
    if not rows:
        return
    row = rows[0]
    answers = row.get("answers") or []
    duplicates = 0
    for kind, idx, values in groups["updates"]:
        if idx >= len(answers):
            continue
        if kind == "tags":
            for tags in values:
                satellite.apply_answer_tags(answers[idx], tags)
        else:
            for fetch in values:
                if satellite.apply_page_fetch(answers[idx], fetch):
                    duplicates += 1
    if duplicates:
        Metrics.counter(NAMESPACE, "satellite.duplicate_page_fetches").inc(duplicates)
    yield row


class PostProcessDomain(beam.DoFn):
    """Post-process one (scan, domain) group, then classify and annotate every row."""

    def __init__(
        self, resources_location: str, ip_metadata: str | None = None, max_staleness_days: int = 30
    ) -> None:
        self.resources_location = resources_location
        self.ip_metadata = ip_metadata
        self.max_staleness_days = max_staleness_days
        self.resources: Any = None
        self.categories: Any = None
        self.rules: Any = None
        self.enricher: Any = None

    def setup(self) -> None:
        self.resources = shared_resources(self.resources_location)  # kept: see above
        self.categories = self.resources.categories
        self.rules = satellite_outcomes.load_satellite_rules()
        self.enricher = shared_enricher(self.ip_metadata, self.max_staleness_days)

    def process(self, item: tuple[tuple[str, str], Iterable[Row]]) -> Iterator[Any]:
        (source, _domain), rows_iter = item
        rows_in = list(rows_iter)
        per_file: dict[str, dict[str, int]] = {}
        for row in rows_in:
            file_stats = per_file.setdefault(f"{row['source']}/{row['source_file']}", {})
            self.enricher.enrich_satellite(row, file_stats)
            for column, stat in (
                ("resolver_asn", "rows_with_asn"),
                ("resolver_country", "rows_with_country"),
            ):
                if row.get(column) is not None:
                    file_stats[stat] = file_stats.get(stat, 0) + 1
        for file_key, file_stats in per_file.items():
            for name, value in file_stats.items():
                Metrics.counter(NAMESPACE, f"satellite.{name}").inc(value)
            yield beam.pvalue.TaggedOutput("stats", (file_key, file_stats))
        rows = satellite_post.post_process(rows_in)
        out: list[Row] = []
        for row in rows:
            row["domain_category"] = self.categories.category(
                row.get("domain") or "", bool(row.get("domain_is_control"))
            )
            outcome, rule_id = self.rules.classify(row)
            row["outcome"] = outcome
            row["outcome_rule_id"] = rule_id
            row["outcome_rules_version"] = self.rules.version
            out.append({k: row.get(k) for k in SATELLITE_SCAN.column_names})
        if out:
            yield ((SATELLITE_TABLE, scan_key(source)), out)


def build_satellite_graph(
    p: beam.Pipeline,
    tasks: list[FileTask],
    resources_location: str,
    sink: Any,
    stats_dir: str,
    batch_lines: int = 500,
    keep_bodies: bool = False,
    ip_metadata: str | None = None,
    max_staleness_days: int = 30,
    spread_batches: bool = True,
) -> Any:
    """Add the Satellite graph for the files of whole scans (``tasks``) to ``p``."""
    plan_progress(tasks)
    read = (
        p
        | "SatFiles" >> beam.Create(tasks)
        | "SatReadLineBatches"
        >> beam.ParDo(ReadLineBatches(batch_lines)).with_outputs(
            "read_errors", "stats", main="batches"
        )
    )
    batches = read.batches
    if spread_batches:
        batches = batches | "SatSpreadBatches" >> beam.Reshuffle()
    parsed = batches | "SatParse" >> beam.ParDo(
        ParseSatelliteBatch(resources_location, keep_bodies)
    ).with_outputs("resolver_tags", "answer_tags", "fetches", "dead", "stats", main="rows")
    with_resolvers = (
        {
            "rows": parsed.rows
            | "KeyByResolver" >> beam.Map(lambda r: ((r["source"], r["resolver_ip"]), r)),
            "tags": parsed.resolver_tags,
        }
        | "JoinResolvers" >> beam.CoGroupByKey()
        | "MergeResolverTags" >> beam.FlatMap(_merge_resolver)
    )
    keys = with_resolvers | "ExplodeAnswers" >> beam.FlatMap(_explode_answers).with_outputs(
        "tag_keys", "fetch_keys"
    )
    tag_updates = (
        {"refs": keys.tag_keys, "values": parsed.answer_tags}
        | "JoinAnswerTags" >> beam.CoGroupByKey()
        | "RouteTags" >> beam.FlatMap(_route_answers, "tags")
    )
    fetch_updates = (
        {"refs": keys.fetch_keys, "values": parsed.fetches}
        | "JoinFetches" >> beam.CoGroupByKey()
        | "RouteFetches" >> beam.FlatMap(_route_answers, "fetch")
    )
    updates = (tag_updates, fetch_updates) | "AllAnswerUpdates" >> beam.Flatten()
    joined = (
        {
            "rows": with_resolvers | "KeyByRowId" >> beam.Map(lambda r: (r["_row_id"], r)),
            "updates": updates,
        }
        | "JoinAnswerUpdates" >> beam.CoGroupByKey()
        | "ApplyAnswerUpdates" >> beam.FlatMap(_apply_updates)
    )
    finished = (
        joined
        | "KeyByDomain" >> beam.Map(lambda r: ((r["source"], r["domain"]), r))
        | "GroupByDomain" >> beam.GroupByKey()
        | "PostProcess"
        >> beam.ParDo(
            PostProcessDomain(resources_location, ip_metadata, max_staleness_days)
        ).with_outputs("stats", main="rows")
    )
    written = (
        sink.write([finished.rows, parsed.dead, read.read_errors]) if sink is not None else None
    )
    stats = (
        (parsed.stats, read.stats, finished.stats)
        | "SatAllStats" >> beam.Flatten()
        | "SatSumPerFile" >> beam.CombinePerKey(SumStats())
        | "SatWriteStats" >> beam.ParDo(WriteStats(stats_dir))
    )
    return written, stats
