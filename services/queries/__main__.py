"""CLI: ``python -m services.queries --warehouse DIR [--backend duckdb|bigquery] [...]``.

Exit code 0 on success (summary as JSON on stdout), 1 with a one-line reason on stderr,
143 (SIGTERM) or 130 (SIGINT) when stopped by a signal.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NoReturn

from services.common import lifecycle, progress
from services.common.cli import (
    JsonArgumentParser,
    add_ops_arguments,
    date_arg,
    fail,
    fail_on_exception,
    next_stage,
    print_summary,
    run_stage,
)
from services.common.config import env_or
from services.common.logsetup import configure_logging
from services.common.metrics_export import export_run_metrics

if TYPE_CHECKING:  # DuckDB, pyarrow and sqlglot load only after parsing (fast --help)
    from services.queries.run import QueriesConfig


def parse_args(argv: list[str] | None = None) -> tuple[QueriesConfig, argparse.Namespace]:
    p = JsonArgumentParser(
        prog="python -m services.queries",
        description="Build the derived tables and run the data-quality checks.",
    )
    p.add_argument(
        "--backend",
        default=env_or("CP_QUERIES_BACKEND", "duckdb"),
        choices=["duckdb", "bigquery"],
        help="where the SQL runs (default duckdb: the local warehouse)",
    )
    p.add_argument(
        "--warehouse", default=env_or("CP_WAREHOUSE"), help="local warehouse folder ($CP_WAREHOUSE)"
    )
    p.add_argument("--bq-project", default=env_or("CP_BQ_PROJECT"), help="BigQuery project")
    p.add_argument(
        "--base-dataset",
        default=env_or("CP_BQ_DATASET", "base"),
        help="BigQuery dataset of the base tables and ledger ($CP_BQ_DATASET; default base)",
    )
    p.add_argument(
        "--derived-dataset",
        default=env_or("CP_DERIVED_DATASET", "derived"),
        help="dataset (BigQuery) or schema (DuckDB) of the derived tables (default derived)",
    )
    p.add_argument("--bq-location", default=env_or("CP_BQ_LOCATION"), help="BigQuery location")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="bigquery: validate every statement with dry-run jobs, change nothing",
    )
    p.add_argument("--full", action="store_true", help="rebuild every partition")
    p.add_argument("--start", type=date_arg, help="rebuild the partitions from this date ...")
    p.add_argument("--end", type=date_arg, help="... to this date (inclusive)")
    p.add_argument(
        "--export",
        default=env_or("CP_EXPORT"),
        help="folder or gs:// prefix for the researcher Parquet export (default: none)",
    )
    p.add_argument(
        "--country-names",
        default=env_or("CP_COUNTRY_NAMES"),
        help="country names CSV (default: resources/country_names.csv)",
    )
    p.add_argument("--skip-quality", action="store_true", help="do not run the quality checks")
    p.add_argument(
        "--quality-days",
        type=int,
        default=int(env_or("CP_QUALITY_DAYS", "30") or 30),
        help="quality window: the last N days with data (default 30)",
    )
    p.add_argument(
        "--max-days-per-job",
        type=int,
        default=92,
        help="longest date range rebuilt in one transaction (default 92)",
    )
    add_ops_arguments(p)
    args = p.parse_args(argv)
    from services.queries.run import QueriesConfig, QueriesFailed

    cfg = QueriesConfig(
        warehouse=args.warehouse,
        backend=args.backend,
        bq_project=args.bq_project,
        base_dataset=args.base_dataset,
        derived_dataset=args.derived_dataset,
        bq_location=args.bq_location,
        dry_run=args.dry_run,
        full=args.full,
        start=args.start,
        end=args.end,
        export=args.export,
        country_names=args.country_names,
        quality=not args.skip_quality,
        quality_days=args.quality_days,
        max_days_per_job=args.max_days_per_job,
    )
    try:
        cfg.validate()
    except QueriesFailed as exc:
        p.error(str(exc))
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    configure_logging(args.log_level, stage="queries")
    from services.queries.backends import WarehouseMissing
    from services.queries.metrics import QueriesMetrics
    from services.queries.run import run

    metrics = QueriesMetrics()

    def push(succeeded: bool) -> None:
        export_run_metrics(
            metrics, "cp_queries", args.metrics_file, args.pushgateway, failed=not succeeded
        )

    lifecycle.on_abort(lambda: push(False))  # SIGTERM/SIGINT: services/common/lifecycle.py
    try:
        with progress.shown(args.quiet):  # a terminal only; see common/progress.py
            summary = run(cfg, metrics=metrics)
    except WarehouseMissing as exc:  # a usage error: nothing was run, nothing created
        push(False)
        return fail("queries", str(exc), exit_code=2)
    except Exception as exc:  # one line for the operator; details are in the logs
        lifecycle.reraise_if_aborted(exc)
        push(False)
        return fail_on_exception("queries", exc)
    push(True)
    print_summary(summary.to_dict())
    return next_stage("queries")


def cli() -> NoReturn:
    """Console entry point ``cp-queries``."""
    run_stage("queries", main)


if __name__ == "__main__":
    cli()
