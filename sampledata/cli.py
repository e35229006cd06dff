"""The command line (``python -m sampledata``, ``cp-sample-scans``): writes the default
scans' archives and extracted files under ``--out`` and, unless ``--no-caida``, the
synthetic CAIDA files under ``OUT/caida``; prints a one-line JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sampledata.archives import generate
from sampledata.caida import write_caida
from sampledata.scans import DEFAULT_SCANS, DEFAULT_SIZE, REDUCED_MIN_SIZE


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a one-line JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m sampledata",
        description=(
            "Write deterministic sample Hyperquack and Satellite scans "
            "(archives and extracted files)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=(
            "measurements per scan (Satellite: results.json lines, resolvers x domains); "
            "the extra Satellite scans that give every date both families get a quarter "
            f"of it (at least {REDUCED_MIN_SIZE})"
        ),
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--bad-line-ratio", type=float, default=0.0, help="fraction of bad lines")
    parser.add_argument("--plain", action="store_true", help="extract the files uncompressed")
    parser.add_argument(
        "--compresslevel", type=int, default=6, choices=range(1, 10), help="gzip level (default 6)"
    )
    parser.add_argument(
        "--no-caida",
        action="store_true",
        help="do not write the synthetic CAIDA IP-metadata files under OUT/caida",
    )
    args = parser.parse_args(argv)
    if args.size < 0:
        parser.error("--size must be >= 0")
    if not 0.0 <= args.bad_line_ratio < 1.0:
        parser.error("--bad-line-ratio must be in [0, 1)")
    summary = generate(
        args.out,
        args.size,
        args.seed,
        args.bad_line_ratio,
        args.plain,
        compresslevel=args.compresslevel,
    )
    report = summary.to_json()
    if not args.no_caida:
        caida = write_caida(args.out / "caida", DEFAULT_SCANS, args.size, args.seed)
        report["caida_files"] = len(caida.files)
        report["caida_dates"] = caida.dates
        report["bytes"] += caida.bytes
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return 0
