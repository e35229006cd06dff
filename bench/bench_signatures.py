"""Benchmark the signature matcher against the legacy per-pattern ``re.search`` loop.

Usage: ``uv run python bench/bench_signatures.py [--seconds 1.0]``

Reads the real signature files from ``../shared/fixtures/real/resources`` (relative
to the repository root) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO.parent / "shared" / "fixtures" / "real" / "resources"
sys.path.insert(0, str(REPO))

from services.beam_launcher.enrichment.signatures import (  # noqa: E402
    BLOCKPAGE,
    FALSE_POSITIVE,
    PageMatch,
    Signature,
    SignatureMatcher,
    load_signatures,
)

_sre_parse: Any = importlib.import_module("re._parser")


def _read_lines(name: str) -> list[str]:
    return (RESOURCES / name).read_text(encoding="utf-8").splitlines(keepends=True)


def _rate(func: Callable[[], object], seconds: float) -> float:
    """Calls per second, measured over at least ``seconds``."""
    func()  # warm-up
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        func()
        calls += 1
        elapsed = time.perf_counter() - start
    return calls / elapsed


def _median_ms(func: Callable[[], object], runs: int) -> float:
    """Median wall time of ``func`` in ms, with Python's regex cache emptied before each run."""
    times = []
    for _ in range(runs):
        re.purge()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class LegacyMatcher:
    """The old behaviour: every pattern compiled with re.DOTALL, tried in order."""

    def __init__(self, false_positives: list[Signature], blockpages: list[Signature]) -> None:
        self.false_positives = [(s, re.compile(s.pattern, re.DOTALL)) for s in false_positives]
        self.blockpages = [(s, re.compile(s.pattern, re.DOTALL)) for s in blockpages]

    def match(self, page: str) -> PageMatch | None:
        for sig, regex in self.false_positives:
            if regex.search(page):
                return PageMatch(False, sig)
        for sig, regex in self.blockpages:
            if regex.search(page):
                return PageMatch(True, sig)
        return None


def _literal_text(pattern: str) -> str | None:
    """The text a pattern matches if it is a plain literal, else None."""
    parsed = _sre_parse.parse(pattern)
    if all(op is _sre_parse.LITERAL for op, _ in parsed):
        return "".join(chr(av) for _, av in parsed)
    return None


def _matching_page(long_page: str, blockpages: list[Signature]) -> tuple[str, Signature]:
    """~2 KB of the long page plus the text of a literal blockpage from mid-file."""
    for sig in blockpages[len(blockpages) // 2 :]:
        text = _literal_text(sig.pattern)
        if text:
            return long_page[: 2048 - len(text)] + text, sig
    raise SystemExit("no literal blockpage signature found to build a matching page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per throughput figure")
    args = parser.parse_args()
    if not RESOURCES.is_dir():
        raise SystemExit(f"real fixtures not found at {RESOURCES}; nothing to benchmark")

    bp_lines = _read_lines("blockpage_signatures.json")
    fp_lines = _read_lines("false_positive_signatures.json")
    long_page = (RESOURCES / "long_blockpage.html").read_text(encoding="utf-8")

    def load() -> tuple[list[Signature], list[Signature]]:
        return (
            load_signatures(fp_lines, FALSE_POSITIVE, "false_positive_signatures.json"),
            load_signatures(bp_lines, BLOCKPAGE, "blockpage_signatures.json"),
        )

    false_positives, blockpages = load()
    n = len(false_positives) + len(blockpages)
    print(f"signatures: {len(blockpages)} blockpage + {len(false_positives)} false positive")
    build_ms = _median_ms(lambda: SignatureMatcher(false_positives, blockpages), 10)
    legacy_ms = _median_ms(lambda: LegacyMatcher(false_positives, blockpages), 10)
    print(f"load + validate both files: {_median_ms(load, 10):.1f} ms (median of 10)")
    print(f"matcher construction (RE2 set): {build_ms:.1f} ms (median of 10)")
    print(f"legacy construction (re.compile each): {legacy_ms:.1f} ms (median of 10)")

    matcher = SignatureMatcher(false_positives, blockpages)
    legacy = LegacyMatcher(false_positives, blockpages)
    print(f"patterns checked with Python re by the matcher: {len(matcher.fallback_signatures)}/{n}")
    small_page, small_sig = _matching_page(long_page, blockpages)
    pages = [
        (f"long_blockpage.html ({len(long_page.encode()) / 1024:.0f} KB, no match)", long_page),
        (f"matching page ({len(small_page.encode()) / 1024:.1f} KB, {small_sig.id})", small_page),
    ]
    for label, page in pages:
        if matcher.match(page) != legacy.match(page):
            raise SystemExit(f"matcher and legacy loop disagree on {label}")
        fast = _rate(lambda page=page: matcher.match(page), args.seconds)
        every = _rate(lambda page=page: matcher.match_all(page), args.seconds)
        slow = _rate(lambda page=page: legacy.match(page), args.seconds)
        print(f"{label}: matcher.match {fast:,.0f} pages/s")
        print(f"{label}: matcher.match_all {every:,.0f} pages/s")
        print(f"{label}: legacy re.search loop {slow:,.0f} pages/s")
        print(f"{label}: speed-up of match over the legacy loop {fast / slow:,.0f}x")


if __name__ == "__main__":
    main()
