"""Benchmark the Satellite v2.2 parse path on one core: ``results.json`` and ``blockpages.json``.

Usage: ``uv run python bench/bench_satellite.py [--size 20000] [--check] [--profile]``

No Beam. Each line goes through what ``ParseSatelliteBatch`` (satellite/pipeline.py) does
for it, in this process, pinned to one CPU when the OS allows it:

* ``results.json`` (observations): ``satellite_batch.parse_observation_batch``, as the
  pipeline calls it per batch of 500 lines: strip, ``orjson.loads``, the v2.2 flattening and the
  ``_row_id`` stamp on every row, in the C extension (``native/_satfast.c``) when it is
  built and ``$CP_NATIVE_PARSER`` is not ``0`` (the path is printed), else
  ``satellite.flatten_observation``;
* ``blockpages.json`` / ``control_pages.json`` (page fetches): strip, ``orjson.loads``,
  ``satellite.parse_page_fetch(record, matcher, keep_bodies=False)`` with the signature
  matcher of the real resources (``../shared/fixtures/real/resources``, 622 blockpage +
  460 false-positive signatures) when present, else ``resources/sample``.

Two data sets:

* ``real``: the real v2.2 lines of ``../shared/fixtures/real/satellite_v2.2/`` (relative to
  the repository root), repeated until one timed repeat is at least ``--min-seconds`` of
  work, with distinct line numbers (distinct measurement ids), as in a long file. After the
  first pass every certificate is a certificate-cache hit. These are the lines comparable
  to the seed's per-core figures.
* ``generated``: a ``--size`` measurement Satellite v2.2 scan from
  ``sampledata`` (``results.json`` has ``--size`` lines; its
  ``blockpages.json`` has the page fetches of the anomalous answers). The certificate
  cache is emptied before every repeat; a repeat is as many passes over the file as
  ``--min-seconds`` needs.

Each figure is the best of ``--repeats`` timed repeats after one warm-up
(``time.perf_counter``). The ratio is against the seed system's per-core lines/s
(results 10,268, blockpages 1,890); the target is ``--target`` (20x). The script exits 0
unless ``--check`` is given and a figure with a seed value is below the target.
``--profile`` prints a cProfile summary of one pass per file kind (after the figures).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"
REAL_SATELLITE = REAL / "satellite_v2.2"
REAL_RESOURCES = REAL / "resources"
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from sampledata import (  # noqa: E402
    SATELLITE,
    SATELLITE_SCANS,
    build_satellite_files,
    source_name,
)
from services.beam_launcher import native  # noqa: E402
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources  # noqa: E402
from services.beam_launcher.enrichment.signatures import SignatureMatcher  # noqa: E402
from services.beam_launcher.hyperquack import certs  # noqa: E402
from services.beam_launcher.hyperquack.parse import BadRecord  # noqa: E402
from services.beam_launcher.hyperquack.processing import FileTask  # noqa: E402
from services.beam_launcher.satellite import batch as satellite_batch  # noqa: E402
from services.beam_launcher.satellite import parse as satellite  # noqa: E402

#: The seed system's Satellite parse throughput, lines/s on one core.
SEED_LINES_PER_S: dict[str, float | None] = {
    "results.json": 10_268,
    "blockpages.json": 1_890,
    "control_pages.json": None,
}
FILES = ("results.json", "blockpages.json", "control_pages.json")
#: The scan name the real v2.2 folder is filed under (as in tests/conftest.py).
REAL_SOURCE = "CP_Satellite-2021-10-20-12-00-01"

Counts = tuple[int, int, int]  # lines, rows (or fetches), dead letters


@dataclass
class Figure:
    dataset: str
    file: str
    lines: int  # per timed repeat
    rows: int
    dead_letters: int
    seconds: float  # best repeat
    note: str = ""

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def seed(self) -> float | None:
        return SEED_LINES_PER_S.get(self.file)


def pin_to_one_cpu(cpu: int | None = None) -> str:
    """Keep the process on one CPU (no migrations; the last one unless ``cpu`` is given)."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    chosen = cpus[-1] if cpu is None or cpu not in cpus else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} of {len(cpus)} available"


# --- the per-line work, as ParseSatelliteBatch.process does it ------------------------------


#: Lines per batch, as ``ReadLineBatches`` cuts a file (``build_satellite_graph``'s default).
BATCH_LINES = 500


def parse_observations(task: FileTask, first: int, lines: list[bytes]) -> Counts:
    """``results.json`` lines → rows (role ``observations``): the pipeline's own batch path,
    ``satellite_batch.parse_observation_batch`` on batches of ``BATCH_LINES`` lines (the C
    extension when it is built and ``$CP_NATIVE_PARSER`` is not 0, else the pure-Python
    reference). The rows of a batch are dropped when the next batch starts."""
    stats: dict[str, int] = {}
    for start in range(0, len(lines), BATCH_LINES):
        batch = lines[start : start + BATCH_LINES]
        satellite_batch.parse_observation_batch(task, first + start, batch, stats, [])
    return stats.get("lines", 0), stats.get("rows", 0), stats.get("dead_letters", 0)


def parse_fetches(matcher: SignatureMatcher) -> Callable[[FileTask, int, list[bytes]], Counts]:
    """``blockpages.json`` / ``control_pages.json`` lines → fetches (role ``page_fetches``)."""

    def run(task: FileTask, first: int, lines: list[bytes]) -> Counts:
        n_lines = n_fetches = dead = 0
        for raw in lines:
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            n_lines += 1
            try:
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise BadRecord("invalid_json", f"invalid JSON: {exc}") from None
                if not isinstance(record, dict):
                    raise BadRecord("not_an_object", f"record is a JSON {type(record).__name__}")
                for _domain, _ip, _fetch in satellite.parse_page_fetch(record, matcher, False):
                    n_fetches += 1
            except BadRecord:
                dead += 1
        return n_lines, n_fetches, dead

    return run


Parser = Callable[[FileTask, int, list[bytes]], Counts]


def parser_for(name: str, matcher: SignatureMatcher) -> Parser:
    role = satellite.file_role(name)
    if role == "observations":
        return parse_observations
    if role == "page_fetches":
        return parse_fetches(matcher)
    raise ValueError(f"{name}: role {role!r} is not benchmarked")


# --- timing ---------------------------------------------------------------------------------


def passes(parse: Parser, task: FileTask, lines: list[bytes], n: int, cold: bool = False) -> Counts:
    """``n`` passes over ``lines``, with line numbers continuing (distinct measurement ids).

    ``cold``: empty the certificate cache before every pass (each pass is a new file).
    """
    total = [0, 0, 0]
    for i in range(n):
        if cold:
            certs.clear_cache()
        counts = parse(task, 1 + i * len(lines), lines)
        for j in range(3):
            total[j] += counts[j]
    return total[0], total[1], total[2]


def best_of(
    repeats: int, before: Callable[[], None], work: Callable[[], Counts]
) -> tuple[float, Counts]:
    best = float("inf")
    counts: Counts = (0, 0, 0)
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        counts = work()
        best = min(best, time.perf_counter() - start)
    return best, counts


def passes_for(parse: Parser, task: FileTask, lines: list[bytes], min_seconds: float) -> int:
    passes(parse, task, lines, 1)  # warm-up: imports, caches, RE2 DFA states
    start = time.perf_counter()
    passes(parse, task, lines, 1)
    one = max(time.perf_counter() - start, 1e-6)
    return max(1, int(min_seconds / one) + 1)


def bench(
    dataset: str,
    name: str,
    lines: list[bytes],
    task: FileTask,
    matcher: SignatureMatcher,
    args: argparse.Namespace,
    cold: bool,
) -> Figure:
    parse = parser_for(name, matcher)
    n = passes_for(parse, task, lines, args.min_seconds)
    seconds, (n_lines, rows, dead) = best_of(
        args.repeats, lambda: None, lambda: passes(parse, task, lines, n, cold)
    )
    mb = n * sum(len(line) + 1 for line in lines) / 1e6
    note = f"{len(lines):,} lines x{n:,}, {mb / seconds:.1f} MB/s"
    if cold:
        note += ", certificate cache emptied per pass"
    return Figure(dataset, name, n_lines, rows, dead, seconds, note)


def verdict(fig: Figure, target: float) -> tuple[str, str]:
    if fig.seed is None:
        return "n/a", "n/a"
    ratio = fig.lines_per_s / fig.seed
    return f"{ratio:5.1f}x", "PASS" if ratio >= target else "BELOW"


def print_figure(fig: Figure, target: float) -> None:
    ratio, status = verdict(fig, target)
    seed = f"{fig.seed:,.0f}" if fig.seed else "n/a"
    dead = f" DEAD LETTERS {fig.dead_letters:,}" if fig.dead_letters else ""
    unit = "rows" if fig.file == "results.json" else "fetches"
    print(
        f"{fig.dataset:<9} {fig.file:<18} {fig.lines_per_s:>9,.0f} lines/s  "
        f"{1e6 / fig.lines_per_s:>7.1f} us/line  {fig.rows / fig.lines:4.2f} {unit}/line  "
        f"seed {seed:>6}  {ratio:>6}  {status:<5}  ({fig.note}){dead}",
        flush=True,
    )


# --- data -----------------------------------------------------------------------------------


def real_lines(name: str) -> list[bytes] | None:
    path = REAL_SATELLITE / name
    if not path.is_file():
        return None
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def generated_files(size: int, seed: int) -> tuple[str, dict[str, list[bytes]], float]:
    spec = SATELLITE_SCANS[0]
    start = time.perf_counter()
    members, _, _ = build_satellite_files(size, seed, spec.start)
    seconds = time.perf_counter() - start
    files = {name: [x for x in members[name].split(b"\n") if x.strip()] for name in FILES}
    return source_name(SATELLITE, spec.start), files, seconds


def profile(
    name: str, lines: list[bytes], task: FileTask, matcher: SignatureMatcher, top: int
) -> None:
    parse = parser_for(name, matcher)
    certs.clear_cache()
    passes(parse, task, lines, 1)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    passes(parse, task, lines, max(1, 5_000 // max(1, len(lines))))
    prof.disable()
    print(f"\n--- cProfile: {task.source}/{name} ({len(lines):,} lines per pass) ---")
    stats = pstats.Stats(prof).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="generated measurements")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="work per timed repeat")
    parser.add_argument("--target", type=float, default=20.0, help="target ratio to the seed")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass per file")
    parser.add_argument("--profile-top", type=int, default=25, help="functions to list")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a figure is BELOW")
    args = parser.parse_args()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()} on {platform.machine()}; {pin_to_one_cpu(args.cpu)}; "
        f"load average {load} (other processes on the machine skew the figures)"
    )
    print(
        f"results.json parse path: {satellite_batch.parser_path()} "
        f"(${native.NATIVE_ENV}={os.environ.get(native.NATIVE_ENV, '')!r}; "
        "native = C extension services/beam_launcher/native/_satfast.c)"
    )
    location = REAL_RESOURCES if REAL_RESOURCES.is_dir() else SAMPLE_RESOURCES
    res = load_resources(str(location))
    print(
        f"signatures: {res.location} ({res.n_blockpage} blockpage + "
        f"{res.n_false_positive} false-positive); keep_bodies=False; best of {args.repeats} "
        f"after one warm-up; target {args.target:g}x the seed's per-core lines/s"
    )

    figures: list[Figure] = []
    to_profile: list[tuple[str, list[bytes], FileTask]] = []
    if not args.skip_real:
        if not REAL_SATELLITE.is_dir():
            print(f"real: skipped, real fixtures not found at {REAL_SATELLITE}")
        for name in FILES if REAL_SATELLITE.is_dir() else ():
            lines = real_lines(name)
            if not lines:
                print(f"real      {name:<18} skipped: no lines")
                continue
            task = replace(FileTask.for_test(REAL_SOURCE, name), pipeline_version="bench")
            fig = bench("real", name, lines, task, res.matcher, args, cold=False)
            figures.append(fig)
            print_figure(fig, args.target)
            to_profile.append((name, lines, task))
    if not args.skip_generated:
        source, files, gen_seconds = generated_files(args.size, args.seed)
        total = sum(len(x) for x in files.values())
        print(
            f"generated: {source}, --size {args.size:,} (seed {args.seed}): "
            + ", ".join(f"{n} {len(x):,} lines" for n, x in files.items())
            + f"; generated in {gen_seconds:.1f} s ({total:,} lines)"
        )
        for name in FILES:
            lines = files[name]
            if not lines:
                print(f"generated {name:<18} skipped: no lines")
                continue
            task = replace(FileTask.for_test(source, name), pipeline_version="bench")
            fig = bench("generated", name, lines, task, res.matcher, args, cold=True)
            figures.append(fig)
            print_figure(fig, args.target)
            to_profile.append((name, lines, task))

    below = [f for f in figures if verdict(f, args.target)[1] == "BELOW"]
    comparable = [f for f in figures if f.seed is not None]
    print(
        f"summary: {len(comparable) - len(below)}/{len(comparable)} comparable lines "
        f"at >= {args.target:g}x the seed"
    )
    if args.profile:
        seen: set[tuple[str, str]] = set()
        for name, lines, task in to_profile:
            if name == "control_pages.json" or (task.source, name) in seen:
                continue
            seen.add((task.source, name))
            profile(name, lines, task, res.matcher, args.profile_top)
    if args.check and below:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
