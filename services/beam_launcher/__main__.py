"""CLI: ``python -m services.beam_launcher --input DIR --warehouse DIR [...]``.

Exit code 0 on success, 1 with a one-line reason on failure (the JSON summary of what was
committed and rejected is printed on stdout either way), 143 (SIGTERM) or 130
(SIGINT) when stopped by a signal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from services.beam_launcher.versions import newer_than_code, version_arg
from services.common import lifecycle, progress
from services.common.chain import ChainError, chain_after_success
from services.common.cli import (
    JsonArgumentParser,
    add_ops_arguments,
    date_arg,
    exception_reason,
    fail,
    run_stage,
)
from services.common.config import env_or, pipeline_version
from services.common.logsetup import configure_logging
from services.common.metrics_export import export_metrics
from services.common.scans import SCAN_TYPES

if TYPE_CHECKING:  # Beam, DuckDB and the cloud clients load only after parsing (fast --help)
    from services.beam_launcher.run import RunConfig


def parse_args(argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    p = JsonArgumentParser(
        prog="python -m services.beam_launcher",
        description="Process extracted Censored Planet scan files into the base tables.",
    )
    p.add_argument(
        "--input", default=env_or("CP_INPUT"), help="folder or gs:// prefix of scans ($CP_INPUT)"
    )
    p.add_argument(
        "--warehouse", default=env_or("CP_WAREHOUSE"), help="local warehouse folder ($CP_WAREHOUSE)"
    )
    p.add_argument(
        "--scan-type",
        default=env_or("CP_SCAN_TYPE", "all"),
        choices=["all", *SCAN_TYPES],
        help="scan type to process (default all)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="rebuild the scan types' tables from all their files, beside the live tables "
        "(a new version <table>__v<N>, resumable; local warehouse and BigQuery), switched "
        "when complete; with a date window: reprocess the window's files in place",
    )
    p.add_argument(
        "--table-versions",
        action="store_true",
        help="print the warehouse's table versions (live, building, old; local, or "
        "BigQuery with --sink bigquery --bq-project --bq-dataset) and exit",
    )
    p.add_argument(
        "--switch-table",
        metavar="TABLE=VERSION",
        help="point TABLE (e.g. http_scan) at VERSION (e.g. v1: a rollback) once its rows "
        "agree with its ledger, and exit",
    )
    p.add_argument(
        "--drop-table-version",
        metavar="TABLE=VERSION",
        help="delete a version that is not live (view and Parquet, or its BigQuery "
        "table; ledger rows) and exit",
    )
    p.add_argument(
        "--reprocess-pipeline-older-than",
        metavar="VERSION",
        type=version_arg,
        default=env_or("CP_REPROCESS_PIPELINE_OLDER_THAN"),
        help="also reprocess the files whose ok ledger row an older pipeline version wrote "
        "(PEP 440 order; with the date window and scan types; not with --full) "
        "($CP_REPROCESS_PIPELINE_OLDER_THAN)",
    )
    p.add_argument(
        "--resources",
        default=env_or("CP_RESOURCES"),
        help="folder or gs:// prefix with signature and category files ($CP_RESOURCES; "
        "default: the project's sample resources)",
    )
    p.add_argument("--runner", default=env_or("CP_RUNNER", "direct"), help="Beam runner (direct)")
    p.add_argument(
        "--bad-line-threshold",
        type=float,
        default=float(env_or("CP_BAD_LINE_THRESHOLD", "0.10") or 0.1),
        help="fail when a file's share of bad lines exceeds this (default 0.10)",
    )
    p.add_argument("--batch-lines", type=int, default=500, help="lines per Beam element")
    p.add_argument(
        "--workers",
        type=workers_arg,
        default=env_or("CP_WORKERS", "auto"),
        help="worker processes of the local runner ($CP_WORKERS): a number, or auto "
        "(default): 1 for inputs under 64 MiB stored, else one per CPU",
    )
    p.add_argument(
        "--keep-satellite-bodies",
        action="store_true",
        default=env_or("CP_KEEP_SATELLITE_BODIES", "") in ("1", "true", "yes"),
        help="keep page bodies of Satellite page fetches (default: dropped for size; "
        "signatures then match status line + headers only)",
    )
    p.add_argument(
        "--sink",
        default=env_or("CP_SINK", "local"),
        choices=["local", "bigquery"],
        help="where tables go: local DuckDB/Parquet (default) or BigQuery",
    )
    p.add_argument(
        "--ip-metadata",
        default=env_or("CP_IP_METADATA"),
        help="folder or gs:// prefix of mirrored CAIDA files (python -m services.routeviews); "
        "without it IP metadata columns stay empty",
    )
    p.add_argument(
        "--ip-org-mmdb",
        default=env_or("CP_IP_ORG_MMDB"),
        help="optional DB-IP/MaxMind ISP MMDB (path or gs://) for server_organization; kept "
        "only when its ASN agrees with CAIDA's ($CP_IP_ORG_MMDB)",
    )
    p.add_argument(
        "--max-staleness-days",
        type=int,
        default=int(env_or("CP_MAX_STALENESS_DAYS", "30") or 30),
        help="newest routeviews file may be this many days older than a measurement (30)",
    )
    p.add_argument(
        "--require-markers",
        action="store_true",
        default=env_or("CP_REQUIRE_MARKERS", "") in ("1", "true", "yes"),
        help="read only scan folders with untar's _COMPLETE marker ($CP_REQUIRE_MARKERS)",
    )
    p.add_argument("--bq-project", default=env_or("CP_BQ_PROJECT"), help="BigQuery project")
    p.add_argument("--bq-dataset", default=env_or("CP_BQ_DATASET"), help="BigQuery dataset")
    p.add_argument("--bq-location", default=env_or("CP_BQ_LOCATION"), help="BigQuery location")
    p.add_argument(
        "--temp-location",
        default=env_or("CP_TEMP_LOCATION"),
        help="gs:// folder for BigQuery loads and run stats (bigquery sink)",
    )
    p.add_argument(
        "--start-date",
        type=date_arg,
        default=env_or("CP_START_DATE"),
        help="only scans dated on/after this day (YYYY-MM-DD, from the scan name)",
    )
    p.add_argument(
        "--end-date",
        type=date_arg,
        default=env_or("CP_END_DATE"),
        help="only scans dated on/before this day (YYYY-MM-DD)",
    )
    p.add_argument(
        "--job-deadline-hours",
        type=float,
        default=float(env_or("CP_JOB_DEADLINE_HOURS", "0") or 0),
        help="cancel and fail a Beam (Dataflow) job still running after this (0: no limit)",
    )
    p.add_argument(
        "--switch-wait-seconds",
        type=switch_wait_arg,
        default=env_or("CP_SWITCH_WAIT_SECONDS", "900"),
        help="BigQuery: how long a switch to a rebuilt table waits for other runs' leases "
        "on its files before it is refused (default 900; $CP_SWITCH_WAIT_SECONDS)",
    )
    add_ops_arguments(p)
    args, beam_args = p.parse_known_args(argv)
    admin = [
        a for a in ("table_versions", "switch_table", "drop_table_version") if getattr(args, a)
    ]
    if len(admin) > 1:
        p.error("--table-versions, --switch-table and --drop-table-version: one at a time")
    from services.beam_launcher.warehouse.schema_versions import table_version_arg

    for name in admin[:1]:
        if args.sink == "local" and not args.warehouse:
            p.error(f"--{name.replace('_', '-')} works on a local warehouse: give --warehouse")
        if args.sink == "bigquery" and not (args.bq_project and args.bq_dataset):
            p.error(f"--{name.replace('_', '-')} on BigQuery needs --bq-project and --bq-dataset")
        if name != "table_versions":
            try:
                table_version_arg(getattr(args, name))
            except ValueError as exc:
                p.error(f"--{name.replace('_', '-')}: {exc}")
    if admin and not args.input:
        args.input = "-"  # not read: the table commands touch only the warehouse
    if not args.input:
        p.error("--input is required (or $CP_INPUT)")
    if args.sink == "local" and not args.warehouse:
        p.error("--warehouse is required for the local sink (or $CP_WAREHOUSE)")
    needs = (args.bq_project, args.bq_dataset, args.temp_location or admin)
    if args.sink == "bigquery" and not all(needs):
        p.error("the bigquery sink needs --bq-project, --bq-dataset and --temp-location")
    if args.reprocess_pipeline_older_than:
        if args.full:
            p.error(
                "--reprocess-pipeline-older-than and --full do not combine: --full already "
                "reprocesses every file of its scan types (and dates)"
            )
        why = newer_than_code(args.reprocess_pipeline_older_than, pipeline_version())
        if why:
            p.error(why)
    from services.beam_launcher.run import RunConfig

    cfg = RunConfig(
        input=args.input,
        warehouse=args.warehouse or "",
        sink=args.sink,
        bq_project=args.bq_project,
        bq_dataset=args.bq_dataset,
        bq_location=args.bq_location,
        temp_location=args.temp_location,
        scan_types=SCAN_TYPES if args.scan_type == "all" else (args.scan_type,),
        full=args.full,
        runner=args.runner,
        bad_line_threshold=args.bad_line_threshold,
        batch_lines=args.batch_lines,
        keep_satellite_bodies=args.keep_satellite_bodies,
        ip_metadata=args.ip_metadata,
        max_staleness_days=args.max_staleness_days,
        require_markers=args.require_markers,
        job_deadline_s=args.job_deadline_hours * 3600 or None,
        start_date=_as_date(args.start_date),
        end_date=_as_date(args.end_date),
        pipeline_args=beam_args,
        workers=workers_arg(args.workers),
        reprocess_older_than=args.reprocess_pipeline_older_than or None,
    )
    if args.resources:
        cfg.resources = args.resources
    return cfg, args


def workers_arg(value: object) -> int | None:
    """``--workers``: a positive number, or ``auto`` (None).

    >>> workers_arg("auto"), workers_arg("3")
    (None, 3)
    """
    if value is None or value == "auto":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {text!r}")
    return int(text)


def switch_wait_arg(value: str) -> float:
    """``--switch-wait-seconds``: a positive number of seconds."""
    from services.beam_launcher.warehouse.schema_versions import switch_wait_seconds

    try:
        return switch_wait_seconds(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (flag or $CP_SWITCH_WAIT_SECONDS)") from None


def _as_date(value: object) -> dt.date | None:
    """Env defaults arrive as strings (argparse applies ``type`` only to given flags)."""
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def table_command(args: argparse.Namespace) -> int:
    """--table-versions, --switch-table, --drop-table-version: print JSON, exit 0 (1 when
    refused, with the reason)."""
    from services.beam_launcher.warehouse.local import LocalWarehouse, SwitchRefused
    from services.beam_launcher.warehouse.schema_versions import table_version_arg

    wh: Any
    if args.sink == "bigquery":
        from services.beam_launcher.warehouse.bigquery import BigQueryWarehouse

        wh = BigQueryWarehouse(
            args.bq_project,
            args.bq_dataset,
            args.bq_location,
            switch_wait_s=args.switch_wait_seconds,
        )
    else:
        wh = LocalWarehouse(args.warehouse)
        if not wh.exists():
            return fail("beam_launcher", f"no warehouse at {args.warehouse} ({wh.db_path} missing)")
    try:
        if args.switch_table:
            out: object = wh.switch(*table_version_arg(args.switch_table), pipeline_version())
        elif args.drop_table_version:
            out = wh.drop_version(*table_version_arg(args.drop_table_version))
        else:
            out = wh.table_versions()
    except SwitchRefused as exc:
        return fail("beam_launcher", str(exc))
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    configure_logging(args.log_level, stage="beam_launcher", scan_type=args.scan_type)
    if args.table_versions or args.switch_table or args.drop_table_version:
        return table_command(args)
    from services.beam_launcher.metrics import LauncherMetrics
    from services.beam_launcher.run import RunFailed, ledger_shares, run

    if args.ip_org_mmdb:  # read by the workers' enrichers (also set on Dataflow workers)
        os.environ["CP_IP_ORG_MMDB"] = args.ip_org_mmdb
    # read by the BigQuery warehouse the run creates (a --full switch waits this long)
    os.environ["CP_SWITCH_WAIT_SECONDS"] = repr(args.switch_wait_seconds)
    metrics = LauncherMetrics()

    def push(succeeded: bool) -> None:
        export_metrics(
            metrics.registry,
            "cp_beam_launcher",
            args.metrics_file,
            args.pushgateway,
            # The metrics carry their own scan_type label; a grouping label of the same
            # name must agree with it, so "all" runs group by job only.
            grouping_key={} if args.scan_type == "all" else {"scan_type": args.scan_type},
            succeeded=succeeded,
        )

    def push_failed() -> None:
        metrics.last_failure.set_to_current_time()
        push(False)

    lifecycle.on_abort(push_failed)  # SIGTERM/SIGINT: see services/common/lifecycle.py
    try:
        with progress.shown(args.quiet):  # a terminal only; see common/progress.py
            summary = run(cfg, metrics)
    except RunFailed as exc:
        ledger_shares(cfg, metrics)
        push_failed()
        if exc.summary is not None:  # what was committed and rejected, as on success
            print_summary(exc.summary.to_dict())
        return fail("beam_launcher", str(exc))
    except Exception as exc:  # one line for the operator; the traceback is in the logs
        lifecycle.reraise_if_aborted(exc)
        push_failed()
        code = fail("beam_launcher", exception_reason(exc))
        if os.environ.get("CP_DEBUG"):
            raise
        return code
    ledger_shares(cfg, metrics)
    push(True)
    print_summary(summary.to_dict())
    try:
        chain_after_success()
    except ChainError as exc:
        return fail("beam_launcher", f"could not start the next stage: {exc}")
    return 0


def print_summary(summary: dict[str, object]) -> None:
    """The run's JSON summary on stdout (also printed when the run fails)."""
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def cli() -> NoReturn:
    """Console entry point ``cp-launcher``. Once a stage that loaded Beam has finished
    (its exit code decided, its run folder removed) the process ends without the
    interpreter's teardown (:func:`services.beam_launcher.worker.exit_now`); ``--help``
    and usage errors, which load none of it, exit as usual."""
    from services.beam_launcher.worker import exit_now

    try:
        run_stage("beam_launcher", main)
    except SystemExit as done:
        heavy = "apache_beam" in sys.modules
        if heavy and (done.code is None or isinstance(done.code, int)):
            exit_now(done.code or 0)
        raise


if __name__ == "__main__":
    cli()
