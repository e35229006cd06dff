"""CLI: ``python -m services.untar --raw RAW --target TARGET [...]``.

Exit code 0 when every archive was unpacked or skipped, 1 with a one-line reason on
stderr when any failed or was rejected (the others are still done), 143 (SIGTERM) or
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
    date_arg,
    fail,
    fail_on_exception,
    next_stage,
    print_summary,
    run_stage,
    scan_types_arg,
)
from services.common.config import env_or
from services.common.logsetup import configure_logging, scan_types_label
from services.common.metrics_export import export_run_metrics
from services.common.scans import SCAN_TYPES
from services.untar.metrics import UntarMetrics
from services.untar.run import DEFAULT_TMP_MAX_AGE_S, UntarConfig, untar_all
from services.untar.safety import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_RATIO,
    Limits,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if value <= 1:
        raise argparse.ArgumentTypeError("must be > 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = JsonArgumentParser(
        prog="python -m services.untar",
        description="Unpack mirrored Censored Planet archives into per-file gzip objects.",
    )
    p.add_argument("--raw", default=env_or("CP_RAW"), help="archives: folder or gs:// ($CP_RAW)")
    p.add_argument(
        "--target",
        default=env_or("CP_UNTAR_TARGET"),
        help="output root; files go to TARGET/scans/<type>/<scan>/ ($CP_UNTAR_TARGET)",
    )
    p.add_argument(
        "--max-member-bytes",
        type=_positive_int,
        default=env_or("CP_UNTAR_MAX_MEMBER_BYTES", str(DEFAULT_MAX_MEMBER_BYTES)),
        help="largest accepted member, uncompressed (default 32 GiB)",
    )
    p.add_argument(
        "--max-ratio",
        type=_ratio,
        default=env_or("CP_UNTAR_MAX_RATIO", str(DEFAULT_MAX_RATIO)),
        help="largest accepted inflated/compressed ratio (default 100)",
    )
    p.add_argument(
        "--max-header-bytes",
        type=_positive_int,
        default=env_or("CP_UNTAR_MAX_HEADER_BYTES", str(DEFAULT_MAX_HEADER_BYTES)),
        help="largest accepted tar header block incl. PAX data (default 1 MiB)",
    )
    p.add_argument(
        "--scan-types",
        type=scan_types_arg,
        default=env_or("CP_SCAN_TYPES", "all"),
        help=f"comma-separated subset of {','.join(SCAN_TYPES)} (default all; $CP_SCAN_TYPES)",
    )
    p.add_argument("--since", type=date_arg, default=env_or("CP_UNTAR_SINCE"), help="first date")
    p.add_argument("--until", type=date_arg, default=env_or("CP_UNTAR_UNTIL"), help="last date")
    p.add_argument(
        "--recheck",
        action="store_true",
        help="redo archives whose raw size/MD5 no longer match their marker (reads markers)",
    )
    p.add_argument(
        "--compresslevel", type=int, choices=range(1, 10), default=6, help="gzip level (6)"
    )
    p.add_argument(
        "--tmp-max-age",
        type=float,
        default=DEFAULT_TMP_MAX_AGE_S,
        help="remove abandoned local .tmp-* files older than this many seconds (default 6 h)",
    )
    add_ops_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.raw or not args.target:
        parser.error("--raw and --target are required (or $CP_RAW, $CP_UNTAR_TARGET)")
    configure_logging(args.log_level, stage="untar", scan_type=scan_types_label(args.scan_types))
    cfg = UntarConfig(
        raw=args.raw,
        target=args.target,
        limits=Limits(
            max_member_bytes=args.max_member_bytes,
            max_ratio=args.max_ratio,
            max_header_bytes=args.max_header_bytes,
        ),
        scan_types=args.scan_types,
        since=args.since,
        until=args.until,
        recheck=args.recheck,
        compresslevel=args.compresslevel,
        tmp_max_age_s=args.tmp_max_age,
    )
    metrics = UntarMetrics()

    def push(failed: bool) -> None:
        export_run_metrics(metrics, "cp_untar", args.metrics_file, args.pushgateway, failed=failed)

    lifecycle.on_abort(lambda: push(True))  # SIGTERM/SIGINT: see services/common/lifecycle.py
    try:
        with progress.shown(args.quiet):  # a terminal only; see common/progress.py
            summary = untar_all(cfg, metrics)
    except Exception as exc:  # e.g. the raw location cannot be listed
        lifecycle.reraise_if_aborted(exc)
        push(True)
        return fail_on_exception("untar", exc)
    push(not summary.ok)
    print_summary(summary.to_dict())
    if not summary.ok:
        problems = summary.problems
        detail = "; ".join(f"{o.name}: {o.result}: {o.reason}" for o in problems[:3])
        more = " ..." if len(problems) > 3 else ""
        return fail(
            "untar", f"{len(problems)} of {summary.found} archive(s) not unpacked: {detail}{more}"
        )
    return next_stage("untar")


def cli() -> NoReturn:
    """Console entry point ``cp-untar``."""
    run_stage("untar", main)


if __name__ == "__main__":
    cli()
