"""CLI: mirror CAIDA RouteViews pfx2as, AS-organisation and AS-class files.

    python -m services.routeviews sync [--kinds routeviews,as2org,as2class]
    python -m services.routeviews backfill --start 2021-05-01 --end 2021-05-31 [--kinds …]
    python -m services.routeviews asorg      # = sync --kinds as2org
    python -m services.routeviews asclass    # = sync --kinds as2class
    python -m services.routeviews sync --base-url var/sample/caida --dest var/ip-metadata
                                             # a local folder with CAIDA's layout

Prints a JSON summary on stdout. Exit code 0 when nothing failed, 1 when a file or a
listing failed (the other files are still published; a ``run_failed`` log line says
which), 2 on bad usage (a ``usage_error`` log line), 143 (SIGTERM) or
130 (SIGINT) when stopped by a signal.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from services.common import lifecycle
from services.common.cli import (
    JsonArgumentParser,
    add_ops_arguments,
    add_retry_arguments,
    date_arg,
    fail,
    print_summary,
    run_stage,
)
from services.common.config import env_or
from services.common.logsetup import configure_logging
from services.common.metrics_export import export_run_metrics
from services.routeviews import caida
from services.routeviews.fetch import Fetcher, LocalFetcher, is_local_base
from services.routeviews.metrics import MirrorMetrics
from services.routeviews.mirror import Mirror, RunSummary

TMP_MAX_AGE_S = 6 * 3600.0  # .tmp-* files are swept at this age while another run is alive


def _kinds(text: str) -> tuple[str, ...]:
    try:
        kinds = caida.resolve_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not kinds:
        raise argparse.ArgumentTypeError("no kind given")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    common = JsonArgumentParser(add_help=False)
    common.add_argument(
        "--base-url",
        default=env_or("CP_CAIDA_BASE_URL", caida.DEFAULT_BASE_URL),
        help="CAIDA datasets URL, or a local folder (path or file:// URL) with the same "
        f"layout ($CP_CAIDA_BASE_URL; default {caida.DEFAULT_BASE_URL})",
    )
    common.add_argument(
        "--dest",
        default=env_or("CP_IP_METADATA"),
        help="folder or gs:// prefix of the mirrored reference data ($CP_IP_METADATA)",
    )
    add_retry_arguments(common, "CP_HTTP", 2.0)
    common.add_argument(
        "--timeout",
        type=float,
        default=float(env_or("CP_HTTP_TIMEOUT", "120") or 120),
        help="socket timeout per request in seconds ($CP_HTTP_TIMEOUT; default 120)",
    )
    common.add_argument(
        "--no-size-check",
        action="store_true",
        help="skip present files without asking CAIDA for their size (no HEAD requests)",
    )
    common.add_argument(
        "--no-compile",
        action="store_true",
        help="do not publish the parsed form of the files under <dest>/compiled/ (readers "
        "then parse each file themselves)",
    )
    add_ops_arguments(common)
    snapshots = JsonArgumentParser(add_help=False)
    snapshots.add_argument(
        "--snapshot-days",
        type=int,
        default=int(env_or("CP_SNAPSHOT_DAYS", "400") or 400),
        help="AS snapshots dated within this many days are mirrored; the newest always is "
        "($CP_SNAPSHOT_DAYS; default 400)",
    )

    p = JsonArgumentParser(
        prog="python -m services.routeviews",
        description="Mirror CAIDA RouteViews prefix-to-AS, AS-organisation and AS-class files.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sync = sub.add_parser(
        "sync",
        parents=[common, snapshots],
        help="mirror the current files (creation log, recent snapshots)",
        description="Mirror the current CAIDA files of --kinds: the prefix-to-AS files listed "
        "in the creation log and the AS snapshots of the last --snapshot-days.",
    )
    sync.add_argument(
        "--kinds",
        type=_kinds,
        default=caida.DEFAULT_KINDS,
        help="comma-separated: routeviews (pfx2as), routeviews6 (pfx2as6), as2org (asorg), "
        "as2class (asclass), or all (default: routeviews,as2org,as2class)",
    )
    back = sub.add_parser(
        "backfill",
        parents=[common],
        help="mirror every file in a date range",
        description="Mirror every CAIDA file of --kinds dated from --start to --end.",
    )
    back.add_argument("--start", type=date_arg, required=True, help="first date (YYYY-MM-DD)")
    back.add_argument("--end", type=date_arg, required=True, help="last date, inclusive")
    back.add_argument(
        "--kinds",
        type=_kinds,
        default=(caida.SPECS["routeviews"].kind,),
        help="comma-separated kinds as for sync (default: routeviews)",
    )
    sub.add_parser(
        "asorg",
        parents=[common, snapshots],
        help="sync the AS-organisation files only",
        description="Same as sync --kinds as2org: mirror the AS-organisation snapshots.",
    )
    sub.add_parser(
        "asclass",
        parents=[common, snapshots],
        help="sync the AS-classification files only",
        description="Same as sync --kinds as2class: mirror the AS-classification snapshots.",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dest:
        parser.error("--dest is required (or $CP_IP_METADATA)")
    if args.command == "backfill" and args.end < args.start:
        parser.error("--end is before --start")
    configure_logging(args.log_level, stage="routeviews")
    metrics = MirrorMetrics()
    mirror = Mirror(
        base_url=args.base_url,
        dest=args.dest,
        fetcher=LocalFetcher()
        if is_local_base(args.base_url)
        else Fetcher(retries=args.retries, backoff=args.backoff, timeout=args.timeout),
        metrics=metrics,
        check_remote_size=not args.no_size_check,
        compile_tables=not args.no_compile,
    )

    def push(failed: bool) -> None:
        export_run_metrics(
            metrics,
            "cp_routeviews",
            args.metrics_file,
            args.pushgateway,
            failed=failed,
            # last_success is per kind and only set for kinds that succeeded: always send it.
            send_last_success=True,
        )

    lifecycle.on_abort(lambda: push(True))  # SIGTERM/SIGINT: see services/common/lifecycle.py
    temps = lifecycle.TempLease(args.dest, "routeviews", TMP_MAX_AGE_S)
    temps.claim_and_sweep()  # this run's lease; .tmp-* files of runs no longer alive go
    summary: RunSummary
    try:
        if args.command == "backfill":
            summary = mirror.backfill(args.kinds, args.start, args.end)
        elif args.command == "sync":
            summary = mirror.sync(args.kinds, snapshot_days=args.snapshot_days)
        else:
            kind = "as2org" if args.command == "asorg" else "as2class"
            summary = mirror.sync((kind,), snapshot_days=args.snapshot_days)
    finally:
        temps.release()
    push(bool(summary.failed))
    print_summary(summary.to_dict())
    if summary.failed:
        return fail("routeviews", _failure_reason(summary))
    return 0


def _failure_reason(summary: RunSummary) -> str:
    """One line naming the first few listing errors and failed files."""
    failed = summary.of("failed")
    parts = [f"listing {kind}: {err}" for kind, err in sorted(summary.listing_errors.items())]
    parts += [f"{o.name}: {o.detail or 'failed'}" for o in failed]
    head = f"{len(summary.listing_errors)} listing(s) and {len(failed)} file(s) failed: "
    return head + "; ".join(parts[:3]) + (" ..." if len(parts) > 3 else "")


def cli() -> NoReturn:
    """Console entry point ``cp-routeviews``."""
    run_stage("routeviews", main)


if __name__ == "__main__":
    cli()
