"""CLI: ``python -m services.mirror archives|resources ...``.

Exit code 0 on success, 1 with a one-line reason on stderr on failure, 143 (SIGTERM) or
130 (SIGINT) when stopped by a signal; the run summary is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from services.common import lifecycle, progress
from services.common.cli import (
    JsonArgumentParser,
    add_ops_arguments,
    add_retry_arguments,
    date_arg,
    fail,
    fail_on_exception,
    next_stage,
    print_summary,
    run_stage,
    scan_types_arg,
)
from services.common.config import env_or
from services.common.httpfetch import Backoff
from services.common.logsetup import configure_logging, scan_types_label
from services.common.metrics_export import export_run_metrics
from services.common.scans import SCAN_TYPES
from services.mirror.archives import (
    DEFAULT_TMP_MAX_AGE_S,
    MirrorConfig,
    MirrorSummary,
    full_reason,
    mirror_archives,
    no_space,
)
from services.mirror.metrics import MirrorMetrics
from services.mirror.resources import sync_resources


def build_parser() -> argparse.ArgumentParser:
    p = JsonArgumentParser(
        prog="python -m services.mirror",
        description="Mirror Censored Planet scan archives and resource files.",
    )
    common = JsonArgumentParser(add_help=False)
    add_ops_arguments(common)
    add_retry_arguments(common, "CP_MIRROR", 0.5)
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "archives",
        parents=[common],
        help="copy new scan archives",
        description="Copy the scan archives of --source that --dest lacks (or holds with "
        "another size or MD5), each exactly once; a manifest records every copy.",
    )
    a.add_argument(
        "--source",
        default=env_or("CP_MIRROR_SOURCE"),
        help="gs://bucket/prefix, https:// index page or local folder ($CP_MIRROR_SOURCE)",
    )
    a.add_argument(
        "--dest", default=env_or("CP_RAW"), help="raw archive folder or gs:// prefix ($CP_RAW)"
    )
    a.add_argument(
        "--since",
        type=date_arg,
        default=env_or("CP_MIRROR_SINCE"),
        help="first scan date, inclusive ($CP_MIRROR_SINCE)",
    )
    a.add_argument(
        "--until",
        type=date_arg,
        default=env_or("CP_MIRROR_UNTIL"),
        help="last scan date, inclusive ($CP_MIRROR_UNTIL)",
    )
    a.add_argument(
        "--scan-types",
        type=scan_types_arg,
        default=env_or("CP_SCAN_TYPES", "all"),
        help=f"comma-separated subset of {','.join(SCAN_TYPES)} (default all; $CP_SCAN_TYPES)",
    )
    a.add_argument(
        "--attempts",
        type=int,
        default=int(env_or("CP_MIRROR_ATTEMPTS", "3") or 3),
        help="copy attempts per archive on transient errors (default 3)",
    )
    a.add_argument(
        "--tmp-max-age",
        type=float,
        default=DEFAULT_TMP_MAX_AGE_S,
        help="remove abandoned local .tmp-* files older than this many seconds (default 6 h)",
    )
    a.add_argument(
        "--allow-host",
        action="append",
        default=[h for h in (env_or("CP_MIRROR_ALLOW_HOSTS", "") or "").split(",") if h],
        help="host an https index may link archives on (repeatable; $CP_MIRROR_ALLOW_HOSTS)",
    )
    a.add_argument("--dry-run", action="store_true", help="report what would be copied")

    r = sub.add_parser(
        "resources",
        parents=[common],
        help="sync signatures and categories",
        description="Sync the blockpage and false-positive signature files and the domain "
        "categories from --url into a dated set under --dest, then copy it to current/.",
    )
    r.add_argument(
        "--url",
        default=env_or("CP_RESOURCES_URL"),
        help="base URL (http/https), folder or gs:// prefix of the files ($CP_RESOURCES_URL)",
    )
    r.add_argument(
        "--dest",
        default=env_or("CP_RESOURCES_DEST"),
        help="folder or gs:// prefix for dated sets and current/ ($CP_RESOURCES_DEST)",
    )
    return p


def failure_reason(summary: MirrorSummary) -> str | None:
    """One line when the run failed: failed archives, or why it stopped early."""
    failed = summary.failed
    if summary.stopped:
        left = len(summary.names("not_attempted"))
        return (
            f"{summary.stopped}: {len(summary.names('copied'))} archive(s) copied, "
            f"{len(failed)} failed, {left} not attempted"
        )
    if not failed:
        return None
    return (
        f"{len(failed)} of {summary.found} archive(s) failed: "
        + "; ".join(f"{o.name}: {o.reason}" for o in failed[:3])
        + (" ..." if len(failed) > 3 else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "archives":
        if not args.source or not args.dest:
            parser.error("archives needs --source and --dest (or $CP_MIRROR_SOURCE, $CP_RAW)")
    elif not args.url or not args.dest:
        parser.error("resources needs --url and --dest (or $CP_RESOURCES_URL, $CP_RESOURCES_DEST)")
    configure_logging(
        args.log_level,
        stage="mirror",
        scan_type=scan_types_label(args.scan_types) if args.command == "archives" else None,
    )
    backoff = Backoff(retries=args.retries, base=args.backoff)
    metrics = MirrorMetrics()

    def push(succeeded: bool) -> None:
        export_run_metrics(
            metrics, "cp_mirror", args.metrics_file, args.pushgateway, failed=not succeeded
        )

    lifecycle.on_abort(lambda: push(False))  # SIGTERM/SIGINT: services/common/lifecycle.py
    try:
        if args.command == "archives":
            cfg = MirrorConfig(
                source=args.source,
                dest=args.dest,
                since=args.since,
                until=args.until,
                scan_types=args.scan_types,
                attempts=max(1, args.attempts),
                backoff=backoff,
                dry_run=args.dry_run,
                tmp_max_age_s=args.tmp_max_age,
                allowed_hosts=tuple(args.allow_host),
            )
            with progress.shown(args.quiet):  # a terminal only; see common/progress.py
                summary = mirror_archives(cfg, metrics=metrics)
            out = summary.to_dict()
            reason = failure_reason(summary)
        else:
            result = sync_resources(args.url, args.dest, metrics=metrics, backoff=backoff)
            out, reason = result.to_dict(), None
    except Exception as exc:  # one line for the operator; details are in the logs
        lifecycle.reraise_if_aborted(exc)
        push(False)
        full = no_space(exc)  # e.g. not even the run's lease fits
        return fail_on_exception("mirror", exc, full_reason(args.dest, full) if full else None)
    push(reason is None)
    print_summary(out)
    if reason:
        return fail("mirror", reason)
    return next_stage("mirror")


def cli() -> NoReturn:
    """Console entry point ``cp-mirror``."""
    run_stage("mirror", main)


if __name__ == "__main__":
    cli()
