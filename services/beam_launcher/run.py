"""One launcher run: discover → select (ledger) → lease → Beam pipeline → judge → commit.

Runs side by side (the nightly run and a backfill) divide the files between them: a run
leases the files it selected (a Satellite scan as a whole) and leaves those another live
run holds to that run, saying so in its summary (``left_to_other_run``); files another run
committed meanwhile are not processed again (``done_by_other_run``). A rebuild (``--full``
without a date window) resets whole tables, so it needs every file of its scan types and
fails at once, before any work, when another run holds some. A run with nothing to write
writes nothing (the local warehouse is opened read-only, nothing is created).

Example:
    >>> cfg = RunConfig(input="in", warehouse="wh")
    >>> cfg.scan_types
    ('echo', 'discard', 'http', 'https')
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from services.beam_launcher import native, zygote
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.hyperquack import pipeline as graph
from services.beam_launcher.hyperquack.processing import (
    SAMPLES_KEY,
    FileTask,
    Samples,
    merge_samples,
)
from services.beam_launcher.inputs import discover
from services.beam_launcher.jobwait import wait_for_job
from services.beam_launcher.metrics import LauncherMetrics
from services.beam_launcher.versions import OlderThan
from services.beam_launcher.warehouse.local import FileVerdict, LocalTarget, judge
from services.beam_launcher.warehouse.rows import DEAD_LETTER, SCAN_TABLES
from services.beam_launcher.warehouse.schema_versions import (
    BREAKING,
    SchemaCheck,
    check_schemas,
    rebuilt_by_full,
    refusal,
    schema_hash,
)
from services.beam_launcher.worker import command as worker_command
from services.beam_launcher.worker import sdk_main, stop_workers
from services.common import lifecycle, storage
from services.common.config import pipeline_version
from services.common.logsetup import get_logger
from services.common.scans import SCAN_TYPES

SCAN_SPECS = {spec.name: spec for spec in SCAN_TABLES.values()}

LOCAL_RUNNERS = {"direct": "FnApiRunner", "fnapi": "FnApiRunner", "FnApiRunner": "FnApiRunner"}


class RunFailed(RuntimeError):
    """The run finished but must exit non-zero (e.g. a file had too many bad lines).

    ``summary`` is what the run did anyway (committed and rejected files): the command
    line prints it before the ``run_failed`` line.
    """

    def __init__(self, reason: str, summary: RunSummary | None = None) -> None:
        super().__init__(reason)
        self.summary = summary


@dataclass
class RunConfig:
    input: str
    warehouse: str
    scan_types: tuple[str, ...] = SCAN_TYPES
    full: bool = False
    resources: str = str(SAMPLE_RESOURCES)
    runner: str = "direct"
    batch_lines: int = graph.DEFAULT_BATCH_LINES
    keep_satellite_bodies: bool = False
    ip_metadata: str | None = None  # mirrored CAIDA files (python -m services.routeviews)
    max_staleness_days: int = 30
    require_markers: bool = False  # read only scan folders untar marked complete
    job_deadline_s: float | None = None  # cancel and fail a Beam job running longer
    start_date: dt.date | None = None  # only scans whose name date is in [start, end]
    end_date: dt.date | None = None
    bad_line_threshold: float = 0.10
    sink: str = "local"  # local | bigquery
    bq_project: str | None = None
    bq_dataset: str | None = None
    bq_location: str | None = None
    temp_location: str | None = None
    pipeline_args: list[str] = field(default_factory=list)
    workers: int | None = None  # local worker processes; None: auto (see resolve_workers)
    slice_bytes: int | None = None  # tests: slice files per this many bytes (plan_work)
    # --reprocess-pipeline-older-than: also take ok files written by an older pipeline
    reprocess_older_than: str | None = None


@dataclass
class RunSummary:
    run_id: str
    files_found: int = 0
    files_processed: int = 0
    files_skipped_unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    # Files whose rows (or skip/empty record) this run committed with status ok.
    committed: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    rows_by_table: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warehouse: str = ""
    beam_counters: dict[str, int] = field(default_factory=dict)
    # Files (Satellite: scans) another live run holds a lease on: that run processes them.
    left_to_other_run: list[dict[str, str]] = field(default_factory=list)
    # Files this run selected that another run committed before this one started them.
    done_by_other_run: list[str] = field(default_factory=list)
    # Per table: the kind of schema change (none/new_table/additive/breaking) this code
    # brings to the warehouse, the columns added and the problems (warehouse/schema_versions.py).
    schema_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --reprocess-pipeline-older-than: {"version", "files", "by_pipeline_version"} of the
    # files selected only because an older pipeline version wrote them.
    reprocess_older_than: dict[str, Any] = field(default_factory=dict)
    # --full: per table, the version built beside the live one and what
    # its check found (state switched or building, files done/expected/missing).
    rebuild: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Scan types a run without --full left to the rebuild in progress of their table
    # (their table's new columns are being built beside): scan type -> building version.
    left_to_rebuild: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def needs_processing(
    task: FileTask, entry: Any, older_than: Callable[[str | None], bool] | None = None
) -> bool:
    """New, changed, not yet ok, or (``older_than`` given) written by older code."""
    if entry is None or entry.status != "ok" or entry.version != task.version:
        return True
    return older_than is not None and older_than(entry.pipeline_version)


def reprocess_reasons(
    tasks: list[FileTask], ledger: dict[str, Any], older_than: Callable[[str | None], bool]
) -> dict[str, str]:
    """file_key -> old pipeline version, of the files selected only because of it."""
    out: dict[str, str] = {}
    for t in tasks:
        entry = ledger.get(t.file_key)
        if (
            entry is not None
            and not needs_processing(t, entry)
            and older_than(entry.pipeline_version)
        ):
            out[t.file_key] = str(entry.pipeline_version)
    return out


def select_tasks(
    tasks: list[FileTask],
    ledger: dict[str, Any],
    full: bool,
    older_than: Callable[[str | None], bool] | None = None,
) -> tuple[list[FileTask], int]:
    """Files to process: all with --full; else new, changed, or not yet ok, and with
    ``older_than`` (--reprocess-pipeline-older-than) those whose ok ledger row that
    predicate calls older.

    A Satellite scan is processed as a whole (its rows join all its files): when any of
    its files needs processing, all of them are taken.
    """
    if full:
        return tasks, 0
    todo = [t for t in tasks if needs_processing(t, ledger.get(t.file_key), older_than)]
    sat_sources = {t.source for t in todo if t.scan_type == "satellite"}
    chosen = {t.file_key for t in todo}
    todo += [t for t in tasks if t.source in sat_sources and t.file_key not in chosen]
    todo.sort(key=lambda t: t.file_key)
    return todo, len(tasks) - len(todo)


def _read_stats(
    stats_dir: str, tasks: list[FileTask]
) -> tuple[dict[str, dict[str, int]], dict[str, Samples]]:
    """Per-file counts, and apart from them the dead-letter samples (first lines per class)."""
    out: dict[str, dict[str, int]] = {}
    samples: dict[str, Samples] = {}
    for t in tasks:
        url = storage.join(stats_dir, graph.safe_key(t.file_key) + ".json")
        st = storage.storage_for(url)
        if st.stat(url) is None:
            out[t.file_key] = {}
            continue
        data = orjson.loads(st.read_bytes(url))
        data.pop("file_key", None)
        samples[t.file_key] = merge_samples({}, data.pop(SAMPLES_KEY, None) or {})
        out[t.file_key] = data
    return out, samples


def beam_counters(result: Any) -> dict[str, int]:
    """Committed Beam counters of our namespace, read back from the finished pipeline."""
    out: dict[str, int] = {}
    try:
        for c in result.metrics().query(MetricsFilter().with_namespace(graph.NAMESPACE))[
            "counters"
        ]:
            value = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    except Exception as exc:  # some runners (e.g. a dry run) have no metrics
        get_logger("beam_launcher").warning("beam_counters_unavailable", error=str(exc))
    return dict(sorted(out.items()))


# --workers auto: below this much stored input a run stays in one process (starting a
# worker process costs ~2.7 s, more than a second process saves on a small input; see
# the launcher README for the measurement).
AUTO_WORKERS_MIN_BYTES = 64 << 20


def cpu_count() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (``cpu.max`` of a container limited to e.g. 2 CPUs on a bigger host)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def resolve_workers(workers: int | None, tasks: list[FileTask]) -> int:
    """Worker processes of a local run: ``workers``, or auto (None): 1 for an input below
    :data:`AUTO_WORKERS_MIN_BYTES` stored bytes, else one per CPU.

    >>> resolve_workers(3, [])
    3
    >>> resolve_workers(None, [])
    1
    """
    if workers is not None:
        return max(1, workers)
    total = sum(t.size for t in tasks)
    return 1 if total < AUTO_WORKERS_MIN_BYTES else cpu_count()


class _NoModeWarning(logging.Filter):
    """Drops FnApiRunner's advice to set ``direct_running_mode`` when several workers run
    in the subprocess environment given to it directly (:func:`local_runner`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("If direct_num_workers is not equal to 1")


def local_runner(workers: int) -> Any:
    """The local runner: FnApiRunner in this process, or with ``workers`` > 1 in worker
    processes (``services/beam_launcher/worker.py``: JSON output, stopped with us)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if workers <= 1:
        return FnApiRunner()
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    mode_logger = logging.getLogger(fn_runner.__name__)
    if not any(isinstance(f, _NoModeWarning) for f in mode_logger.filters):
        mode_logger.addFilter(_NoModeWarning())
    env = SubprocessSDKEnvironment.from_command_string(worker_command(sys.executable, os.getpid()))
    return FnApiRunner(default_environment=env)


def run_beam(p: beam.Pipeline, workers: int, prepare: Callable[[], object] | None = None) -> Any:
    """``p.run()``; with worker processes (forked by a zygote, :mod:`.zygote`, after
    ``prepare`` built what they share) it runs in a thread while this (main) thread
    waits, so a stop signal lands here: the workers are killed (and waited for) before
    the abort removes the staging they write into. Beam itself would wait for each worker
    to finish its slice first."""
    if workers <= 1:
        return p.run()
    # Imported here, once: the workers forked from this process find it loaded.
    from apache_beam.runners.worker import sdk_worker_main  # noqa: F401

    enabled = zygote.fork_enabled()
    blocker = zygote.fork_blocker() if enabled else f"{zygote.FORK_ENV}=0"
    # What the forked workers would each build, built once here (kept until they end).
    held = prepare() if prepare is not None and blocker is None else None
    with zygote.forking(sdk_main, enabled=blocker is None) as forked:
        get_logger("beam_launcher").info(
            "worker_start",
            workers=workers,
            start="forked" if forked is not None else "fresh",
            reason=blocker,
            prepared=held is not None,
        )
        result = _run_in_thread(p)
    del held
    return result


def _preparer(cfg: RunConfig, tasks: list[FileTask]) -> Callable[[], object]:
    """What :func:`run_beam` builds before it forks Hyperquack workers: the resources
    and the enricher with the reference tables of the scans' dates."""

    def prepare() -> object:
        try:
            return graph.prepare_shared(
                cfg.resources,
                cfg.ip_metadata,
                cfg.max_staleness_days,
                [t.scan_date for t in tasks],
            )
        except Exception as exc:  # the workers load it themselves and report as usual
            get_logger("beam_launcher").warning("prepare_shared_failed", error=repr(exc))
            return None

    return prepare


def _run_in_thread(p: beam.Pipeline) -> Any:
    """``p.run()`` in a thread; a stop signal in the main thread kills the workers."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = p.run()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="beam-pipeline", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:
        threading.excepthook = _quiet_threads
        stop_workers()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def _quiet_threads(_args: Any) -> None:
    """``threading.excepthook`` once the run is stopping: Beam's threads that talk to the
    killed workers (gRPC streams, worker watchers) fail as a consequence; not news."""


def _pipeline_options(cfg: RunConfig, run_id: str, workers: int = 1) -> PipelineOptions:
    runner = LOCAL_RUNNERS.get(cfg.runner, cfg.runner)
    args = [f"--runner={runner}", f"--job_name=cp-hq-{run_id}"]
    if runner == "FnApiRunner" and workers > 1:
        args.append(f"--direct_num_workers={workers}")
    if cfg.bq_project:
        args.append(f"--project={cfg.bq_project}")
    if cfg.temp_location:
        args.append(f"--temp_location={cfg.temp_location}")
    return PipelineOptions([*args, *cfg.pipeline_args])


def _coverage(verdicts: list[FileVerdict], metrics: LauncherMetrics, log: Any) -> None:
    """Enrichment coverage per scan type: share of rows with ASN and with country."""
    by_type: dict[str, Counter[str]] = {}
    for v in verdicts:
        by_type.setdefault(v.task.scan_type, Counter()).update(v.stats)
    for scan_type, st in by_type.items():
        rows = st.get("rows", 0)
        if rows:
            for field_name in ("asn", "country"):
                share = st.get(f"rows_with_{field_name}", 0) / rows
                metrics.coverage.labels(scan_type=scan_type, field=field_name).set(share)
        missing = sum(n for k, n in st.items() if k.endswith(".no_table"))
        metrics.ip_metadata_missing.labels(scan_type=scan_type).set(missing)
        if missing:
            log.warning("ip_metadata_missing", scan_type=scan_type, lookups=missing)


def lease_unit(task: FileTask) -> str:
    """What a lease covers: a Hyperquack file, or a whole Satellite scan (its rows join)."""
    return task.source if task.scan_type == "satellite" else task.file_key


def done_meanwhile(
    todo: list[FileTask],
    fresh: dict[str, Any],
    older_than: Callable[[str | None], bool] | None = None,
) -> set[str]:
    """Units all of whose files the ledger now holds as ok with the version seen here
    (and, with ``older_than``, written by code that is no longer older)."""
    pending = {
        lease_unit(t) for t in todo if needs_processing(t, fresh.get(t.file_key), older_than)
    }
    return {lease_unit(t) for t in todo} - pending


def tables_for(tasks: list[FileTask]) -> list[str]:
    """Tables a set of files writes: their scan tables plus dead_letter."""
    return [*sorted({SCAN_TABLES[t.scan_type].name for t in tasks}), DEAD_LETTER.name]


def judge_scans(verdicts: list[FileVerdict]) -> list[FileVerdict]:
    """Satellite rows join all files of a scan: one rejected file rejects the whole scan."""
    bad = {v.task.source: v for v in verdicts if v.status != "ok"}
    out = []
    for v in verdicts:
        first = bad.get(v.task.source)
        if first is not None and v.status == "ok":
            reason = f"scan rejected because of {first.task.source_file}: {first.reason}"
            v = FileVerdict(v.task, "rejected", reason, v.stats)
        out.append(v)
    return out


def _skip_reasons(skipped: list[Any], sources: set[str]) -> list[tuple[FileTask, str]]:
    return [(s.task, s.reason) for s in skipped if s.task is not None and s.task.source in sources]


def build_pipeline(
    cfg: RunConfig, todo: list[FileTask], target: Any, run_id: str, family: str = "hyperquack"
) -> beam.Pipeline:
    """The Beam pipeline of a run (also used for offline Dataflow dry runs).

    Hyperquack files into the local warehouse take the local graph
    (:func:`graph.build_local_graph`: slices streamed into Parquet, ``cfg.workers``
    processes); everything else the sink graph.
    """
    if family == "hyperquack" and isinstance(target, LocalTarget):
        work = graph.plan_work(todo, resolve_workers(cfg.workers, todo), cfg.slice_bytes)
        options = _pipeline_options(cfg, run_id, len(work))
        if LOCAL_RUNNERS.get(cfg.runner) == "FnApiRunner":
            p = beam.Pipeline(runner=local_runner(len(work)), options=options)
        else:
            p = beam.Pipeline(options=options)
        p.cp_workers = len(work)  # type: ignore[attr-defined]  # read by _process
        graph.build_local_graph(
            p,
            todo,
            cfg.resources,
            target.staging_dir(run_id),
            target.stats_dir(run_id),
            cfg.batch_lines,
            cfg.ip_metadata,
            cfg.max_staleness_days,
            work=work,
        )
        return p
    p = beam.Pipeline(options=_pipeline_options(cfg, run_id))
    sink = target.sink(run_id, tables_for(todo))
    # The local runner gains nothing from reshuffling and would hold every line.
    spread = LOCAL_RUNNERS.get(cfg.runner) != "FnApiRunner"
    if family == "satellite":
        from services.beam_launcher.satellite.pipeline import build_satellite_graph

        build_satellite_graph(
            p,
            todo,
            cfg.resources,
            sink,
            target.stats_dir(run_id),
            cfg.batch_lines,
            cfg.keep_satellite_bodies,
            cfg.ip_metadata,
            cfg.max_staleness_days,
            spread_batches=spread,
        )
    else:
        graph.build_graph(
            p,
            todo,
            cfg.resources,
            sink,
            target.stats_dir(run_id),
            cfg.batch_lines,
            cfg.ip_metadata,
            cfg.max_staleness_days,
            spread_batches=spread,
        )
    return p


def make_target(cfg: RunConfig) -> Any:
    """The warehouse the run writes to, from configuration."""
    if cfg.sink == "local":
        return LocalTarget(cfg.warehouse)
    if cfg.sink == "bigquery":
        from services.beam_launcher.warehouse.bigquery import BigQueryTarget

        return BigQueryTarget(
            cfg.bq_project or "", cfg.bq_dataset or "", cfg.temp_location or "", cfg.bq_location
        )
    raise ValueError(f"unknown sink {cfg.sink!r} (local or bigquery)")


def run(cfg: RunConfig, metrics: LauncherMetrics | None = None) -> RunSummary:
    """Execute one run against the local warehouse; raises RunFailed on rejected files."""
    started = time.monotonic()
    metrics = metrics or LauncherMetrics()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S") + "-" + secrets.token_hex(3)
    log = get_logger("beam_launcher", run_id=run_id)
    version = pipeline_version()
    summary = RunSummary(run_id=run_id, warehouse=cfg.warehouse)
    # A mistyped --input is an error (exit 2), not "nothing new"; an empty folder is fine.
    lifecycle.require_input("beam_launcher", cfg.input, "--input")

    # Fail fast on bad resources before reading any scan file.
    res = load_resources(cfg.resources)
    log.info(
        "resources_loaded",
        location=cfg.resources,
        digest=res.digest,
        blockpage_signatures=res.n_blockpage,
        false_positive_signatures=res.n_false_positive,
        domain_categories=len(res.categories),
    )

    warehouse = make_target(cfg)
    # Parquet of a killed run's commit is published (or, not committed, discarded) first.
    finish = getattr(warehouse, "finish_publishes", None)
    for done in finish() if finish is not None else []:
        log.warning("interrupted_publish_finished", what=done)
    # Staging of runs that died (SIGKILL, node loss) goes before this run stages anything,
    # also when this run finds nothing new to do (a kill after the last commit).
    staging = lifecycle.StagingArea(warehouse.staging_root(), "beam_launcher")
    warehouse.sweep_staging()
    staging.sweep()
    # Before any input is read: what the row definitions change in the warehouse.
    schema = schema_check(cfg, warehouse, summary, metrics, log)
    dated = bool(cfg.start_date or cfg.end_date)
    beside = cfg.full and not dated and hasattr(warehouse, "start_rebuild")
    scan_types = tuple(t for t in cfg.scan_types if t not in summary.left_to_rebuild)
    if not scan_types:
        return _nothing_to_do(summary, metrics, started)
    plan = discover(
        cfg.input, scan_types, version, cfg.require_markers, cfg.start_date, cfg.end_date
    )
    for s in plan.skipped:
        log.warning("input_skipped", url=s.url, reason=s.reason)
        metrics.files_skipped.labels(reason="unrecognised").inc()
    summary.skipped = [{"url": s.url, "reason": s.reason} for s in plan.skipped]
    summary.files_found = len(plan.tasks)
    if not plan.tasks:
        log.warning("no_input_files", input=cfg.input, scan_types=list(cfg.scan_types))
        return _nothing_to_do(summary, metrics, started)
    # Read-only until there is something to write: the ledger of a missing warehouse is
    # empty, and nothing is created for a run that ends here.
    older_than = OlderThan(cfg.reprocess_older_than) if cfg.reprocess_older_than else None
    builds: dict[str, Any] = {}
    if beside:  # --full: a new version of each table beside the live one, resumable
        warehouse.ensure_tables()
        # the scan types with input files: a table is never rebuilt from nothing
        present = {t.scan_type for t in plan.tasks}
        tables = rebuilt_by_full(True, False, [t for t in scan_types if t in present])
        builds = warehouse.start_rebuild(sorted(tables), version)
        ledger = warehouse.version_ledger()
        todo, unchanged = select_tasks(plan.tasks, ledger, False)
    else:
        ledger = warehouse.ledger()
        todo, unchanged = select_tasks(plan.tasks, ledger, cfg.full, older_than)
    if older_than is not None:
        _reprocess_selected(plan.tasks, ledger, older_than, summary, metrics, log)
    summary.files_skipped_unchanged = unchanged
    metrics.files_skipped.labels(reason="already_processed").inc(unchanged)
    if not todo:
        log.info("no_new_files", files_found=len(plan.tasks), already_processed=unchanged)
        _finish_rebuilds(plan.tasks, warehouse, builds, version, summary, metrics, log)
        return _nothing_to_do(summary, metrics, started)
    if not cfg.ip_metadata:
        log.warning(
            "ip_metadata_not_configured",
            missing="netblock, ASN, AS names, AS class and country of servers, resolvers and "
            "DNS answers",
            effect="Hyperquack rows get no country and are left out of merged_reduced_scans; "
            "Satellite rows keep only what the scan's own files say about resolvers and answers",
            fix="pass --ip-metadata (or $CP_IP_METADATA): the folder python -m "
            "services.routeviews sync --dest fills",
        )

    warehouse.ensure_tables()
    migrated = warehouse.apply_schema(schema, version)
    if migrated:
        log.info("schema_recorded", tables=migrated, additive=schema.of_kind("additive"))
    units = sorted({lease_unit(t) for t in todo})
    claim = warehouse.claim(units, run_id)
    try:
        if claim.others and cfg.full and not (cfg.start_date or cfg.end_date):
            holders = sorted(set(claim.others.values()))
            raise RunFailed(
                f"--full without a date window rebuilds {', '.join(cfg.scan_types)} and needs "
                f"all their files, but {len(claim.others)} of them are being processed by "
                f"{'; '.join(holders)}; run it when that run has finished",
                summary,
            )
        if claim.others:
            summary.left_to_other_run = [
                {"file": u, "held_by": h} for u, h in sorted(claim.others.items())
            ]
            log.warning(
                "left_to_other_run",
                files=len(claim.others),
                held_by=sorted(set(claim.others.values())),
                first=sorted(claim.others)[0],
            )
        mine = set(claim.mine)
        todo = [t for t in todo if lease_unit(t) in mine]
        if todo and (builds or not cfg.full):  # committed by another run since our read
            keys = [t.file_key for t in todo]
            fresh = warehouse.version_ledger(keys) if builds else warehouse.ledger(keys)
            done = done_meanwhile(todo, fresh, older_than)
            if done:
                summary.done_by_other_run = sorted(done)
                log.info("done_by_other_run", files=len(done), first=min(done))
                todo = [t for t in todo if lease_unit(t) not in done]
        if not todo:
            log.info(
                "nothing_left",
                left_to_other_run=len(claim.others),
                done_by_other_run=len(summary.done_by_other_run),
            )
            _finish_rebuilds(plan.tasks, warehouse, builds, version, summary, metrics, log)
            return _nothing_to_do(summary, metrics, started)
        if builds:
            done = _process(cfg, plan, todo, warehouse, staging, run_id, summary, metrics, started)
            _finish_rebuilds(plan.tasks, warehouse, builds, version, summary, metrics, log)
            return done
        if cfg.full and not (cfg.start_date or cfg.end_date):  # a sink without versions
            warehouse.reset(cfg.scan_types)
            rebuilt = rebuilt_by_full(True, False, cfg.scan_types) & set(schema.of_kind(BREAKING))
            if rebuilt:
                warehouse.apply_schema(SchemaCheck({}), version, sorted(rebuilt))
                log.info("schema_recorded", tables=sorted(rebuilt), rebuilt_by_full=True)
                for table in rebuilt:
                    metrics.schema_version.labels(table=table).set(
                        schema.changes[table].code_version
                    )
        return _process(cfg, plan, todo, warehouse, staging, run_id, summary, metrics, started)
    finally:
        if claim.mine:
            released = warehouse.release(claim.mine, run_id)
            log.info("leases_released", leases=released)


def _reprocess_selected(
    tasks: list[FileTask],
    ledger: dict[str, Any],
    older_than: OlderThan,
    summary: RunSummary,
    metrics: LauncherMetrics,
    log: Any,
) -> None:
    """Summary, log line and metric of the files selected because of their version."""
    reasons = reprocess_reasons(tasks, ledger, older_than)
    by_version = Counter(reasons.values())
    types = {t.file_key: t.scan_type for t in tasks}
    for key, old in reasons.items():
        metrics.reprocess_selected.labels(scan_type=types[key], pipeline_version=old).inc()
    summary.reprocess_older_than = {
        "version": older_than.version,
        "files": len(reasons),
        "by_pipeline_version": dict(sorted(by_version.items())),
    }
    log.info("reprocess_older_than", **summary.reprocess_older_than)


def _finish_rebuilds(
    tasks: list[FileTask],
    warehouse: Any,
    builds: dict[str, Any],
    version: str,
    summary: RunSummary,
    metrics: LauncherMetrics,
    log: Any,
) -> None:
    """After a rebuild's files: check each building version against all the input's
    files of its scan type and switch the stable name when complete (summary
    ``rebuild``, log ``rebuild_switched`` or ``rebuild_incomplete``, gauges)."""
    for table, build in sorted(builds.items()):
        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == table)
        expected = {t.file_key: t.version for t in tasks if t.scan_type == scan_type}
        report = warehouse.finish_rebuild(build, expected, version)
        summary.rebuild[table] = report
        for state in ("done", "expected"):
            metrics.rebuild_files.labels(table=table, table_version=build.name, state=state).set(
                report.get(f"files_{state}", 0)
            )
        if report["state"] == "switched":
            metrics.schema_version.labels(table=table).set(build.schema_version)
            log.info("rebuild_switched", **report)
        else:
            log.warning("rebuild_incomplete", **report)


def ledger_shares(cfg: RunConfig, metrics: LauncherMetrics) -> None:
    """Set ``cp_launcher_ledger_rows``/``_files`` per scan type and pipeline version from
    the ledger (the run's scan types only: they are its push group). A failed read is
    logged, never fatal: the run's own outcome is already decided."""
    log = get_logger("beam_launcher")
    try:
        found = make_target(cfg).ledger_rows(cfg.scan_types)
    except Exception as exc:
        log.warning("ledger_versions_unavailable", error=f"{type(exc).__name__}: {exc}")
        return
    for scan_type, version, rows, files in found:
        metrics.ledger_rows.labels(scan_type=scan_type, pipeline_version=version).set(rows)
        metrics.ledger_files.labels(scan_type=scan_type, pipeline_version=version).set(files)
    log.info(
        "ledger_pipeline_versions",
        rows={f"{t}/{v}": n for t, v, n, _f in found},
        files={f"{t}/{v}": f for t, v, _n, f in found},
    )


def schema_check(
    cfg: RunConfig, warehouse: Any, summary: RunSummary, metrics: LauncherMetrics, log: Any
) -> SchemaCheck:
    """Compare the warehouse's ``schema_versions`` with the row definitions: one
    ``schema_check`` line, the summary's ``schema_check``, the schema version gauge; a
    breaking change this run does not rebuild (``--full``) fails it before any input is
    read (RunFailed)."""
    check = check_schemas(warehouse.schema_records())
    summary.schema_check = check.to_dict()
    log.info(
        "schema_check",
        kinds=check.kinds(),
        added={t: c.added for t, c in check.changes.items() if c.added},
        problems={t: c.problems for t, c in check.changes.items() if c.problems},
    )
    dated = bool(cfg.start_date or cfg.end_date)
    rebuilt = rebuilt_by_full(cfg.full, dated, cfg.scan_types)
    building: dict[str, Any] = getattr(warehouse, "building", lambda: {})()
    breaking = set(check.of_kind(BREAKING))
    waiting = {  # a rebuild of the code's new columns is in progress: leave these to it
        table: v.name
        for table, v in building.items()
        if table in breaking
        and table not in rebuilt
        and v.schema_hash == schema_hash(SCAN_SPECS[table])
    }
    reason = refusal(check, rebuilt, waiting)
    for scan_type, spec in SCAN_TABLES.items():
        if spec.name in waiting and scan_type in cfg.scan_types:
            summary.left_to_rebuild[scan_type] = waiting[spec.name]
    if summary.left_to_rebuild:
        log.warning(
            "left_to_rebuild",
            scan_types=summary.left_to_rebuild,
            reason="their tables are being rebuilt beside the live ones (--full); readers "
            "keep the live versions until the rebuild switches them",
        )
    for table, change in check.changes.items():
        # a breaking change is live only once its rebuild switched (see _finish_rebuilds)
        version = change.recorded_version if change.kind == BREAKING else change.code_version
        if version is not None:
            metrics.schema_version.labels(table=table).set(version)
    if reason is not None:
        raise RunFailed(reason, summary)
    return check


def _nothing_to_do(summary: RunSummary, metrics: LauncherMetrics, started: float) -> RunSummary:
    summary.seconds = round(time.monotonic() - started, 3)
    metrics.duration.set(summary.seconds)
    metrics.last_success.set_to_current_time()
    return summary


def _process(
    cfg: RunConfig,
    plan: Any,
    todo: list[FileTask],
    warehouse: Any,
    staging: lifecycle.StagingArea,
    run_id: str,
    summary: RunSummary,
    metrics: LauncherMetrics,
    started: float,
) -> RunSummary:
    """Beam pipelines, judgement and commit per family of the leased files."""
    log = get_logger("beam_launcher", run_id=run_id)
    unchanged = summary.files_skipped_unchanged
    log.info(
        "run_start",
        files=len(todo),
        already_processed=unchanged,
        target=warehouse.name,
        native_parsers=native.status(),
    )
    verdicts: list[FileVerdict] = []
    rows_by_table: dict[str, int] = {}
    family_errors: list[str] = []
    for family in ("hyperquack", "satellite"):
        tasks = [t for t in todo if (t.scan_type == "satellite") == (family == "satellite")]
        if not tasks:
            continue
        lifecycle.check()  # after a stop signal no new family starts
        fam_run = f"{run_id}-{family[:3]}"
        staging.claim(fam_run)
        try:
            pipeline = build_pipeline(cfg, tasks, warehouse, fam_run, family)
            workers = getattr(pipeline, "cp_workers", 1)
            if workers > 1:
                log.info("worker_processes", family=family, workers=workers)
            prepare = _preparer(cfg, tasks) if family == "hyperquack" else None
            result = run_beam(pipeline, workers, prepare)
            wait_for_job(result, cfg.job_deadline_s, log)
            counters = beam_counters(result)
            for name, value in counters.items():  # summed over the families of the run
                summary.beam_counters[name] = summary.beam_counters.get(name, 0) + value
            log.info("beam_counters", family=family, **counters)
            stats, samples = _read_stats(warehouse.stats_dir(fam_run), tasks)
            fam_verdicts = [
                judge(t, stats[t.file_key], cfg.bad_line_threshold, samples.get(t.file_key))
                for t in tasks
            ]
            if family == "satellite":
                fam_verdicts = judge_scans(fam_verdicts)
            skipped = [
                FileVerdict(t, "skipped", s_reason, {})
                for t, s_reason in _skip_reasons(plan.skipped, {t.source for t in tasks})
            ]
            with lifecycle.critical():  # a signal waits until the commit has finished
                rows_by_table.update(
                    warehouse.commit(fam_run, fam_verdicts + skipped, tables_for(tasks), run_id)
                )
                verdicts.extend(fam_verdicts)
        except Exception as exc:  # one family failing must not block the other
            lifecycle.reraise_if_aborted(exc)  # ... but a stop signal stops both
            log.error("family_failed", family=family, error=f"{type(exc).__name__}: {exc}")
            family_errors.append(f"{family}: {type(exc).__name__}: {exc}")
        finally:
            warehouse.cleanup(fam_run)
            staging.release(fam_run)

    totals: Counter[str] = Counter()
    for v in verdicts:
        totals.update(v.stats)
        metrics.files.labels(scan_type=v.task.scan_type, status=v.status).inc()
        metrics.lines.labels(scan_type=v.task.scan_type).inc(v.stats.get("lines", 0))
        if v.status == "ok":
            metrics.rows.labels(scan_type=v.task.scan_type).inc(v.stats.get("rows", 0))
        metrics.cert_parse_errors.labels(scan_type=v.task.scan_type).inc(
            v.stats.get("cert_parse_errors", 0)
        )
        for k, n in v.stats.items():
            if k.startswith("dead_letters."):
                metrics.dead_letters.labels(
                    scan_type=v.task.scan_type, error_class=k.split(".", 1)[1]
                ).inc(n)
        # A rejected file is a warning (the run goes on, then exits 1); a failure an error.
        log_at = log.info if v.status == "ok" and not v.reason else log.warning
        log_at(
            "file_done",
            file_key=v.task.file_key,
            status=v.status,
            reason=v.reason or None,
            lines=v.stats.get("lines", 0),
            rows=v.stats.get("rows", 0),
            dead_letters=v.stats.get("dead_letters", 0),
        )
    _coverage(verdicts, metrics, log)
    for name, value in summary.beam_counters.items():
        metrics.beam_counter.labels(name=name).set(value)
    summary.files_processed = len(verdicts)
    summary.stats = dict(totals)
    summary.rows_by_table = rows_by_table
    summary.rejected = [
        {"file_key": v.task.file_key, "reason": v.reason} for v in verdicts if v.status != "ok"
    ]
    summary.committed = [v.task.file_key for v in verdicts if v.status == "ok"]
    summary.seconds = round(time.monotonic() - started, 3)
    metrics.duration.set(summary.seconds)
    log.info(
        "run_done",
        files=summary.files_processed,
        lines=totals.get("lines", 0),
        rows=totals.get("rows", 0),
        dead_letters=totals.get("dead_letters", 0),
        rejected=len(summary.rejected),
        seconds=summary.seconds,
    )
    if family_errors:
        raise RunFailed("; ".join(family_errors), summary)
    if summary.rejected:
        first = summary.rejected[0]
        raise RunFailed(
            f"{len(summary.rejected)} file(s) rejected; "
            f"first: {first['file_key']}: {first['reason']}",
            summary,
        )
    metrics.last_success.set_to_current_time()
    return summary
