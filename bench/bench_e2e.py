"""End-to-end benchmark of the launcher on generated HTTP v2 scans (issue 13's targets).

Usage: ``uv run python bench/bench_e2e.py [--lines 100000,1000000] [--big] [--keep DIR]
[--ip-metadata-prefixes 1000000] [--resources DIR] [--parse-runs 3] [--repeat 3]
[--launcher-arg=--flag ...]``

For each N in ``--lines`` (``--big`` adds 10,000,000):

1. A scan of N lines (``CP_Quack-http-2021-05-30-05-02-33/results.json.gz``, gzip level 1)
   is generated once into the cache folder (``--keep DIR``, reused by later runs; else a
   temporary folder). Up to 1M lines it is generated directly (the generator holds ~3x
   the raw size in memory); a multiple of 1M above that is the 1M file's gzip stream
   repeated as concatenated gzip members, with a one-byte ``\\n`` member between copies
   (v2 results end without a newline, so copies would otherwise join two lines). With
   ``--layout untar`` (the default) that file's text is then rewritten as untar writes
   scan files (line-aligned gzip members with an index, :mod:`services.common.gzindex`,
   still level 1), so worker processes enter it at a member; ``--layout plain`` runs on
   the single gzip stream (a stream starting mid-file inflates the file up to there).
2. Parse-only: ``HyperquackProcessor.process_columns`` with Arrow output, as the launcher
   calls it (native path when built, the same resources), over the first
   ``--parse-lines`` lines held in memory, in a child process:
   lines per CPU-second of one core, on the first scan that has that many lines (else
   the largest): one warm-up pass, then ``--parse-runs`` timed passes (default 3, each
   with cold parser caches, as a launcher run starts); all are printed and the median is
   the figure (a single pass swung by 25% between two quiet runs). Measured before the
   first launcher run and again after each plain run: a run's ratio is taken to the mean
   of the measurements just before and just after it, since this machine's speed drifts
   (the same run's CPU moved by 30% within an hour).
3. End to end: ``python -m services.beam_launcher --input … --warehouse <fresh> --runner
   FnApiRunner`` as a subprocess, ``--repeat K`` plain runs per size (default 1; the
   ratio and wall-time targets are judged on the median run, memory on the largest). Wall
   time; CPU seconds of the whole process tree (the launcher's ``wait4`` rusage, which
   includes every descendant it reaped, and the sum of the last ``/proc`` sample of each
   process in the tree as a cross-check; the larger is used); peak RSS of the tree (RSS
   summed over its processes, sampled every 0.1 s; shared pages of forked workers count
   once per process) and of the biggest single process (the larger of the samples and
   ``wait4``'s ``ru_maxrss``). Per Beam worker process, per 10 s: how its busiest thread
   spent the time, from the kernel's scheduler counters
   (``/proc/<pid>/task/<tid>/schedstat``): on a CPU, runnable but waiting while other
   processes held the CPUs, or asleep (idle by itself). On a shared machine "less than
   100% busy" is mostly the second; only the third is the launcher's own idling.
4. With ``--ip-metadata-prefixes P``: a synthetic CAIDA site folder with ~P prefixes
   (every server /24 of the scan plus filler prefixes and ASes) is written once, mirrored
   with ``python -m services.routeviews sync``, and each N runs twice, without and with
   ``--ip-metadata`` (with a new, empty ``$CP_IPMETA_CACHE`` folder: the tables are read
   from the parsed forms the sync published under ``compiled/``, as a launcher pod or a
   Dataflow worker reads them; ``--not-compiled``: from a copy of the mirror without
   them, so the reference files are parsed, as when the sync ran with ``--no-compile``;
   ``--warm-cache`` fills the cache first, as for later runs of one machine with the
   same files); the enrichment share is
   (CPU with - CPU without) / CPU with, judged on CPU time because the wall time of a
   shared machine varies more than that share (the wall-time share is printed too).

Targets (issue 13): 1M lines in <= 30 s wall; end-to-end lines per CPU-second >= 50% of
parse-only; peak RSS of the biggest process <= 1 GB and flat across N (within 25% of the
smallest N's); 10M lines in <= 5 min; enrichment <= 10% of the run. Each is printed
PASS/FAIL; the exit status is 0 either way (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MILLION = 1_000_000
SCAN_TYPE, VERSION = "http", 2
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
GB = 1024**3
MB = 1024**2

# Targets of issue 13.
WALL_1M_S = 30.0
WALL_10M_S = 300.0
CPU_RATIO_MIN = 0.50
RSS_MAX = 1 * GB
RSS_FLAT = 1.25  # biggest process at the largest N <= this x the smallest N's
ENRICH_SHARE_MAX = 0.10
PARSE_RUNS = 3  # timed parse-only passes (after one warm-up); the median is used
IPMETA_CACHE_ENV = "CP_IPMETA_CACHE"  # launchers' cache of parsed CAIDA tables


def bytecode_state() -> str:
    """Whether Beam's modules load from .pyc files here: without them (no
    ``--compile-bytecode`` at install and ``PYTHONDONTWRITEBYTECODE`` set) every process
    compiles them from source, ~1.4 s more per launcher start."""
    import importlib.util

    spec = importlib.util.find_spec("apache_beam")
    if spec is None or spec.origin is None:
        return "apache_beam not installed"
    cached = importlib.util.cache_from_source(spec.origin)
    if Path(cached).exists():
        return "Beam bytecode compiled"
    return "Beam bytecode NOT compiled (run `make env`): every process compiles it"


def in_child(func: Any, *args: Any) -> Any:
    """Run ``func(*args)`` in a fresh spawned process (its memory is returned on exit)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


# --- scans ----------------------------------------------------------------------------------


LAYOUTS = {"untar": "as untar writes them", "plain": "as one plain gzip stream"}


def scan_spec() -> Any:
    from sampledata import HYPERQUACK_SCANS

    return next(s for s in HYPERQUACK_SCANS if s.scan_type == SCAN_TYPE and s.version == VERSION)


def scan_file(cache: Path, n: int, layout: str = "plain") -> Path:
    from sampledata import source_name

    spec = scan_spec()
    name = f"http-v2-{n}" if layout == "plain" else f"http-v2-{n}-{layout}"
    folder = cache / name / "scans" / source_name(spec.scan_type, spec.start)
    return folder / "results.json.gz"


def generate_child(path: str, n: int) -> dict[str, Any]:
    """Write an n-line scan to ``path`` (via a temporary file)."""
    from sampledata import build_scan_files

    start = time.perf_counter()
    members, records, _ = build_scan_files(scan_spec(), n, seed=0)
    data = gzip.compress(members.pop("results.json"), compresslevel=1, mtime=0)
    del members
    tmp = Path(path + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    tmp.replace(path)
    return {"records": records, "seconds": time.perf_counter() - start}


def rewrite_as_untar_child(src: str, dest: str, copies: int) -> dict[str, Any]:
    """Write ``copies`` of the text of ``src`` (joined by a line end) to ``dest`` as
    untar writes files: line-aligned gzip members with an index (gzip level 1, as the
    plain layout, so the two differ only in layout)."""
    from isal import igzip

    from services.common.gzindex import MemberWriter

    start = time.perf_counter()
    tmp = Path(dest + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with tmp.open("wb") as out, MemberWriter(out, compresslevel=1) as w:
        for i in range(copies):
            if i:
                w.write(b"\n")  # v2 files end without a newline
            with igzip.open(src, "rb") as fh:
                while block := fh.read(16 * MB):
                    size += w.write(block)
    tmp.replace(dest)
    return {"bytes": size, "seconds": time.perf_counter() - start}


def ensure_scan(cache: Path, n: int, layout: str = "plain") -> Path:
    """The cached n-line scan, generated (or, above 1M, concatenated) when absent; with
    ``layout="untar"``, the plain one rewritten as untar writes files."""
    path = scan_file(cache, n, layout)
    if path.exists():
        return path
    start = time.perf_counter()
    if layout == "untar":
        base = ensure_scan(cache, n if n <= MILLION or n % MILLION else MILLION)
        copies = 1 if n <= MILLION or n % MILLION else n // MILLION
        in_child(rewrite_as_untar_child, str(base), str(path), copies)
        how = f"{copies} cop{'y' if copies == 1 else 'ies'} of {base} as untar writes files"
    elif n <= MILLION or n % MILLION:
        info = in_child(generate_child, str(path), n)
        how = f"generated ({info['records']:,} records)"
    else:
        base = ensure_scan(cache, MILLION)
        copies = n // MILLION
        separator = gzip.compress(b"\n", mtime=0)  # v2 files end without a newline
        tmp = path.with_name(path.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out:
            for i in range(copies):
                if i:
                    out.write(separator)
                with base.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 * MB)
        tmp.replace(path)
        how = f"{copies} gzip members of the 1M file"
    size = path.stat().st_size
    print(
        f"scan {n:,} lines: {how} in {time.perf_counter() - start:.0f} s, "
        f"{size / MB:,.0f} MB gz -> {path}",
        flush=True,
    )
    return path


# --- synthetic IP metadata --------------------------------------------------------------------


def caida_child(out: str, n_lines: int, prefixes: int, seed: int) -> dict[str, Any]:
    """A CAIDA site folder (sampledata.caida layout) for the scan's date with ~``prefixes``
    prefixes: the scan's server /24s (as the sample gives them) plus filler prefixes
    (/16–/24, outside those /24s) routed by ~70k filler ASes."""
    from sampledata import caida as sc

    spec = scan_spec()
    sample = sc.build_caida([spec], n_lines, 0)
    covered = {int(p.split(".")[0]) << 16 | int(p.split(".")[1]) << 8 | int(p.split(".")[2])
               for p in sample.prefixes}  # fmt: skip
    rng = random.Random(seed)
    n_ases = 70_000
    base_asn = 100_000
    for i in range(n_ases):
        asn = base_asn + i
        cc = chr(65 + i % 26) + chr(65 + (i // 26) % 26)
        sample.ases[asn] = sc.SampleAs(
            asn, f"FILLER-{asn}", f"FILLER-{asn}-ORG", f"Filler network {asn} (synthetic)", cc,
            ("Transit/Access", "Content", "Enterprise")[i % 3],
        )  # fmt: skip
    lines = [sc.pfx2as_text(sample)]  # the scan's prefixes, in address order
    seen: set[tuple[int, int]] = set()
    extra: list[tuple[int, int, int]] = []
    while len(extra) < max(0, prefixes - len(sample.prefixes)):
        length = rng.choice((24, 24, 24, 24, 24, 24, 23, 22, 22, 21, 20, 19, 18, 17, 16))
        net24 = rng.randrange(1 << 16, 224 << 16)  # 1.0.0.0 – 223.255.255.0
        if net24 in covered or (net24 >> 16) in (10, 127):
            continue
        net = (net24 << 8) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        if (net, length) in seen:
            continue
        seen.add((net, length))
        extra.append((net, length, base_asn + rng.randrange(n_ases)))
    lines += [
        f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}\t{length}\t{asn}\n"
        for n, length, asn in sorted(extra)
    ]
    date = sc.scan_dates([spec])[0]
    root = Path(out)
    rel = f"{date:%Y}/{date:%m}/routeviews-rv2-{date:%Y%m%d}-{sc.RIB_TIME}.pfx2as.gz"
    files = {
        f"{sc.PFX2AS_DIR}/{rel}": "".join(lines),
        f"{sc.AS2ORG_DIR}/{date:%Y%m%d}.as-org2info.txt.gz": sc.as2org_text(sample, date),
        f"{sc.AS2TYPES_DIR}/{date:%Y%m%d}.as2types.txt.gz": sc.as2types_text(sample, date),
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(text.encode(), compresslevel=1, mtime=0))
    created = int(dt.datetime(date.year, date.month, date.day, 14, tzinfo=dt.UTC).timestamp())
    (root / sc.PFX2AS_DIR / "pfx2as-creation.log").write_text(
        f"# synthetic benchmark data: seq\tunix_time\tpath\n1\t{created}\t{rel}\n"
    )
    return {"prefixes": len(sample.prefixes) + len(extra), "ases": len(sample.ases)}


def ensure_ip_metadata(cache: Path, n_lines: int, prefixes: int, compiled: bool = True) -> Path:
    """Mirrored IP metadata (``services.routeviews sync`` of a synthetic CAIDA folder),
    with the parsed forms the sync publishes under ``compiled/``; without ``compiled``, a
    copy of the mirror without them (every reader parses the files)."""
    from services.common.ipmeta import COMPILED_DIR

    dest = cache / f"ipmeta-{prefixes}-{n_lines}"
    done = dest / ".bench-complete"
    if done.exists():
        if not (dest / "mirror" / COMPILED_DIR).is_dir():  # made before the sync compiled
            subprocess.run(_sync_cmd(dest), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return dest / "mirror" if compiled else _without_compiled(dest)
    shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    info = in_child(caida_child, str(dest / "caida"), n_lines, prefixes, 0)
    subprocess.run(_sync_cmd(dest), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    done.write_text(json.dumps(info))
    print(
        f"IP metadata: {info['prefixes']:,} prefixes, {info['ases']:,} ASes "
        f"in {time.perf_counter() - start:.0f} s -> {dest / 'mirror'}",
        flush=True,
    )
    return dest / "mirror" if compiled else _without_compiled(dest)


def _sync_cmd(dest: Path) -> list[str]:
    return [sys.executable, "-m", "services.routeviews", "sync", "--base-url",
            str(dest / "caida"), "--dest", str(dest / "mirror"), "--snapshot-days", "36500",
            "--log-level", "ERROR"]  # fmt: skip


def _without_compiled(dest: Path) -> Path:
    """``dest/mirror`` without its ``compiled/`` folder (hard links, made once)."""
    from services.common.ipmeta import COMPILED_DIR

    plain = dest / "mirror-not-compiled"
    if not plain.is_dir():
        tmp = dest / "mirror-not-compiled.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            dest / "mirror", tmp, ignore=shutil.ignore_patterns(COMPILED_DIR), copy_function=os.link
        )
        tmp.rename(plain)
    return plain


# --- parse-only -----------------------------------------------------------------------------


def scan_lines(path: str, max_lines: int) -> tuple[list[bytes], Any]:
    """The first ``max_lines`` lines of the scan file ``path`` and its ``FileTask``."""
    from services.beam_launcher.hyperquack.processing import FileTask
    from services.common.scans import parse_scan_name

    lines: list[bytes] = []
    with gzip.open(path, "rb") as fh:
        for line in fh:
            lines.append(line)
            if len(lines) >= max_lines:
                break
    source = Path(path).parent.name
    scan = parse_scan_name(source)
    task = FileTask(path, source, "results.json", scan.scan_type, scan.date.isoformat(),
                    0, None, "bench")  # fmt: skip
    return lines, task


def parse_only_child(
    path: str, max_lines: int, resources: str, batch: int, runs: int = PARSE_RUNS
) -> dict[str, Any]:
    """Lines per CPU-second of ``process_columns`` over lines already in memory: one
    untimed warm-up pass over all lines, then ``runs`` timed passes (caches cleared
    before each); the median pass is the figure, all are returned."""
    from services.beam_launcher.enrichment.resources import load_resources
    from services.beam_launcher.hyperquack.processing import HyperquackProcessor

    lines, task = scan_lines(path, max_lines)
    proc = HyperquackProcessor(load_resources(resources))

    def one_pass() -> tuple[int, float, float]:
        proc.clear_caches()  # each pass fills the page/category/outcome caches itself
        rows = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(0, len(lines), batch):
            rows += proc.process_columns(task, i + 1, lines[i : i + batch], arrow=True).n_rows
        return rows, time.process_time() - cpu0, time.perf_counter() - wall0

    one_pass()  # warm-up: code paths, allocator, CPU caches; not counted
    passes = [one_pass() for _ in range(max(1, runs))]
    rows, cpu, wall = sorted(passes, key=lambda r: r[1])[len(passes) // 2]
    return {
        "lines": len(lines),
        "rows": rows,
        "cpu": cpu,
        "wall": wall,
        "native": proc.native,
        "cpus": [c for _, c, _ in passes],
    }


# --- one launcher run, measured -------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _proc_sample(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, own CPU seconds) of one process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            rss = int(fh.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (OSError, IndexError, ValueError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return rss, (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _thread_sched(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of ``pid``: (ns on a CPU, ns runnable but waiting for a CPU), from
    ``/proc/<pid>/task/<tid>/schedstat``; {} when the process is gone."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                run_ns, wait_ns = fh.read().split()[:2]
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(run_ns), int(wait_ns))
    return out


def _proc_name(pid: int) -> str:
    """A short label of a process of the run: its kernel name, or ``guard`` / ``sdk``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
        with open(f"/proc/{pid}/comm", "rb") as fh:
            comm = fh.read().strip().decode(errors="replace")
    except OSError:
        return "?"
    if b"services.beam_launcher.worker" in args:
        return "sdk" if b"--sdk" in args else "guard"
    return "launcher" if b"services.beam_launcher" in args and comm == "python" else comm


def _pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages divided among their sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _is_sdk_worker(pid: int) -> bool:
    """A Beam SDK worker: forked by the launcher's zygote (named ``launcher-worker``) or
    started afresh (``-m services.beam_launcher.worker --sdk``)."""
    from services.beam_launcher.zygote import WORKER_NAME

    try:
        with open(f"/proc/{pid}/comm", "rb") as fh:
            if fh.read().strip() == WORKER_NAME.encode():
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return b"services.beam_launcher.worker" in args and b"--sdk" in args


# Width of one window of the workers' scheduler timeline (seconds).
SCHED_WINDOW_S = 10.0


@dataclass
class WorkerSched:
    """One Beam SDK worker process: per window of :data:`SCHED_WINDOW_S`, the share of
    the window its busiest thread spent on a CPU (run), runnable but waiting for a CPU
    other processes held (wait), and neither (sleep: the worker idle by itself)."""

    pid: int
    last: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    windows: dict[int, dict[int, list[float]]] = field(default_factory=dict)

    def sample(self, now: float) -> None:
        for tid, (run_ns, wait_ns) in _thread_sched(self.pid).items():
            prev = self.last.get(tid)
            self.last[tid] = (run_ns, wait_ns, now)
            if prev is None:
                continue
            acc = self.windows.setdefault(int(now // SCHED_WINDOW_S), {}).setdefault(
                tid, [0.0, 0.0, 0.0]
            )
            acc[0] += (run_ns - prev[0]) / 1e9
            acc[1] += (wait_ns - prev[1]) / 1e9
            acc[2] += now - prev[2]

    def timeline(self) -> list[tuple[float, float, float, float]]:
        """(window start s, run, wait, sleep) shares of the busiest thread per window."""
        out = []
        for index, threads in sorted(self.windows.items()):
            run, wait, span = max(threads.values())
            if span <= 0:
                continue
            run, wait = min(1.0, run / span), min(1.0, wait / span)
            out.append((index * SCHED_WINDOW_S, run, wait, max(0.0, 1.0 - run - wait)))
        return out


@dataclass
class Sampler:
    """Samples a process tree every ``interval`` seconds until stopped."""

    root: int
    interval: float = 0.1
    peak_tree_rss: int = 0
    peak_proc_rss: int = 0
    max_procs: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    name_by_pid: dict[int, str] = field(default_factory=dict)
    peak_tree_pss: int = 0
    pss_every: int = 5  # PSS (smaps_rollup walks the page tables) every 5th sample
    workers: dict[int, WorkerSched] = field(default_factory=dict)
    not_workers: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.perf_counter()
        ticks = 0
        while not self._stop.is_set():
            total = 0
            pss_total = 0
            ticks += 1
            pids = _tree(self.root)
            now = time.perf_counter() - start
            for pid in pids:
                if pid not in self.name_by_pid:
                    self.name_by_pid[pid] = _proc_name(pid)
                if ticks % self.pss_every == 0:
                    pss_total += _pss(pid)
                if pid not in self.workers and pid not in self.not_workers:
                    if _is_sdk_worker(pid):
                        self.workers[pid] = WorkerSched(pid)
                    else:
                        self.not_workers.add(pid)
                if pid in self.workers:
                    self.workers[pid].sample(now)
                got = _proc_sample(pid)
                if got is None:
                    continue
                rss, cpu = got
                total += rss
                self.peak_proc_rss = max(self.peak_proc_rss, rss)
                self.cpu_by_pid[pid] = max(cpu, self.cpu_by_pid.get(pid, 0.0))
            self.peak_tree_rss = max(self.peak_tree_rss, total)
            self.peak_tree_pss = max(self.peak_tree_pss, pss_total)
            self.max_procs = max(self.max_procs, len(pids))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


def prime_ipmeta_cache_child(meta: str, cache: str) -> None:
    """Fill the IP-metadata cache folder ``cache`` with the tables of the scan's date."""
    os.environ[IPMETA_CACHE_ENV] = cache
    from sampledata.caida import scan_dates
    from services.beam_launcher.enrichment.ip_metadata import RowEnricher

    date = scan_dates([scan_spec()])[0].isoformat()
    RowEnricher(meta).lookup(date, "1.1.1.1")


def run_launcher(
    scans: Path,
    work: Path,
    resources: str | None,
    ip_metadata: Path | None,
    extra: list[str],
    warm_cache: bool = False,
) -> dict[str, Any]:
    """One launcher run into a fresh warehouse under ``work``; measured."""
    wh = work / "warehouse"
    shutil.rmtree(wh, ignore_errors=True)
    cmd = [sys.executable, "-m", "services.beam_launcher", "--input", str(scans),
           "--warehouse", str(wh), "--runner", "FnApiRunner"]  # fmt: skip
    if resources:
        cmd += ["--resources", resources]
    if ip_metadata is not None:
        cmd += ["--ip-metadata", str(ip_metadata)]
    cmd += extra
    # A new IP-metadata cache folder per run: an enriched run parses the reference files
    # (the cost of the first run on a new routeviews date); with ``warm_cache`` it is
    # filled before the run (unmeasured), as for later runs with the same files.
    cache_dir = work / "ipmeta-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    if warm_cache and ip_metadata is not None:
        in_child(prime_ipmeta_cache_child, str(ip_metadata), str(cache_dir))
    env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        "CP_PROGRESS": "0",
        IPMETA_CACHE_ENV: str(cache_dir),
    }
    with (work / "stdout.txt").open("wb") as out, (work / "stderr.txt").open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, env=env)
        sampler = Sampler(proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.stop()
        thread.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    cpu_wait4 = usage.ru_utime + usage.ru_stime
    cpu_sampled = sum(sampler.cpu_by_pid.values())
    summary: dict[str, Any] = {}
    text = (work / "stdout.txt").read_text(errors="replace")
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    for pos in reversed(starts):  # the last JSON document (the run summary)
        if text.startswith("{", pos):
            try:
                summary = json.loads(text[pos:])
                break
            except ValueError:
                continue
    return {
        "rc": proc.returncode,
        "wall": wall,
        "cpu": max(cpu_wait4, cpu_sampled),
        "cpu_wait4": cpu_wait4,
        "cpu_sampled": cpu_sampled,
        "peak_tree_rss": sampler.peak_tree_rss,
        "peak_tree_pss": sampler.peak_tree_pss,
        "cpu_by_name": _cpu_by_name(sampler),
        "peak_proc_rss": max(sampler.peak_proc_rss, usage.ru_maxrss * 1024),
        "max_procs": sampler.max_procs,
        "lines": int((summary.get("stats") or {}).get("lines", 0)),
        "rows": int((summary.get("stats") or {}).get("rows", 0)),
        "dead_letters": int((summary.get("stats") or {}).get("dead_letters", 0)),
        "rejected": len(summary.get("rejected") or []),
        "enriched_rows": int((summary.get("stats") or {}).get("rows_with_asn", 0)),
        "stderr_tail": (work / "stderr.txt").read_text(errors="replace")[-2000:],
        "workers": {pid: w.timeline() for pid, w in sorted(sampler.workers.items())},
    }


def _cpu_by_name(sampler: Sampler) -> list[tuple[str, float]]:
    """CPU-seconds per process of the run, labelled (``_proc_name``), in start order."""
    return [(sampler.name_by_pid.get(pid, "?"), cpu) for pid, cpu in sampler.cpu_by_pid.items()]


# --- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the upper one of an even count).

    >>> median_run([{"cpu": 3}, {"cpu": 1}, {"cpu": 2}], "cpu")
    {'cpu': 2}
    """
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def print_run(n: int, label: str, res: dict[str, Any], parse_rate: float) -> float:
    """Print one run; returns its lines per CPU-second."""
    rate = res["lines"] / res["cpu"] if res["cpu"] else 0.0
    print(
        f"{n:>11,} {label:<8} wall {res['wall']:7.1f} s  cpu {res['cpu']:7.1f} s "
        f"({res['cpu'] / res['wall']:.2f} cores; wait4 {res['cpu_wait4']:.1f}, "
        f"/proc {res['cpu_sampled']:.1f})  {res['lines'] / res['wall']:>9,.0f} lines/s  "
        f"{rate:>8,.0f} lines/cpu-s = {rate / parse_rate:.0%} of parse-only  "
        f"peak RSS tree {res['peak_tree_rss'] / MB:,.0f} MB (PSS {res['peak_tree_pss'] / MB:,.0f} "
        f"MB), biggest process {res['peak_proc_rss'] / MB:,.0f} MB ({res['max_procs']} "
        "processes)",
        flush=True,
    )
    by_name = ", ".join(f"{name} {cpu:.1f}" for name, cpu in res["cpu_by_name"] if cpu >= 0.05)
    print(f"{'':>11} cpu-s by process: {by_name}", flush=True)
    problems = []
    if res["rc"] != 0:
        problems.append(f"exit status {res['rc']}")
    if res["lines"] != n:
        problems.append(f"launcher counted {res['lines']:,} lines, expected {n:,}")
    if res["rejected"] or res["dead_letters"]:
        problems.append(f"{res['rejected']} rejected files, {res['dead_letters']} dead letters")
    if problems:
        print(f"{'':>11} PROBLEM: {'; '.join(problems)}\n{res['stderr_tail']}", flush=True)
    print_workers(res["workers"])
    return rate


def print_workers(workers: dict[int, list[tuple[float, float, float, float]]]) -> None:
    """Each worker process's busiest thread per window: run / wait for a CPU / sleep %.

    Wait is CPU time other processes held (a loaded machine); sleep is the worker idle
    by itself. Their sum over the run says which of the two made a worker less than
    100% busy.
    """
    for pid, timeline in workers.items():
        if not timeline:
            continue
        run = sum(r for _, r, _, _ in timeline) / len(timeline)
        wait = sum(w for _, _, w, _ in timeline) / len(timeline)
        sleep = sum(s for _, _, _, s in timeline) / len(timeline)
        cells = " ".join(f"{t:.0f}s:{r:.0%}/{w:.0%}/{s:.0%}" for t, r, w, s in timeline)
        print(
            f"{'':>11} worker {pid} busiest thread run/wait/sleep: {run:.0%}/{wait:.0%}/"
            f"{sleep:.0%} (per {SCHED_WINDOW_S:.0f} s: {cells})",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lines", default="100000,1000000", help="comma-separated scan sizes in lines"
    )
    parser.add_argument("--big", action="store_true", help="also 10,000,000 lines")
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default="untar",
        help="scan file as untar writes it (line-aligned gzip members with an index, the "
        "default) or as one plain gzip stream",
    )
    parser.add_argument("--keep", type=Path, help="cache folder for scans (kept and reused)")
    parser.add_argument(
        "--ip-metadata-prefixes",
        type=int,
        default=0,
        help="also run with synthetic IP metadata of this many prefixes (enrichment share)",
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="fill the IP-metadata cache before the enriched runs (default: empty cache)",
    )
    parser.add_argument(
        "--not-compiled",
        action="store_true",
        help="enriched runs on a mirror without the parsed forms services.routeviews "
        "publishes under compiled/ (so an empty cache means parsing every reference file)",
    )
    parser.add_argument("--resources", default="", help="resources (default: the launcher's)")
    parser.add_argument("--parse-lines", type=int, default=200_000, help="parse-only lines")
    parser.add_argument("--parse-batch", type=int, default=500, help="parse-only batch lines")
    parser.add_argument(
        "--parse-runs", type=int, default=PARSE_RUNS, help="timed parse-only passes (median)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="plain runs per size (the ratio and wall targets use the median, memory the max)",
    )
    parser.add_argument(
        "--launcher-arg",
        action="append",
        default=[],
        help="extra launcher argument (repeat; e.g. --launcher-arg=--batch-lines=2000)",
    )
    args = parser.parse_args()
    sizes = sorted({int(x) for x in args.lines.split(",") if x.strip()})
    if args.big:
        sizes = sorted({*sizes, 10 * MILLION})
    cache = args.keep or Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    cache.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip() or os.environ.get("BENCH_COMMIT", "unknown (not a git checkout)")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"bench_e2e: commit {commit}; {os.cpu_count()} CPUs, load {load}; sizes "
        f"{', '.join(f'{n:,}' for n in sizes)}; cache {cache}; {bytecode_state()}; "
        f"scan files {LAYOUTS[args.layout]}",
        flush=True,
    )
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES

    resources = args.resources or str(SAMPLE_RESOURCES)
    paths = {n: ensure_scan(cache, n, args.layout) for n in sizes}
    parse_src = next((n for n in sizes if n >= args.parse_lines), sizes[-1])

    def parse_rate_now(when: str) -> float:
        """One parse-only measurement (a child process), printed; lines per CPU-second."""
        po = in_child(
            parse_only_child,
            str(paths[parse_src]),
            args.parse_lines,
            resources,
            args.parse_batch,
            args.parse_runs,
        )
        each = ", ".join(f"{po['lines'] / c:,.0f}" for c in po["cpus"])
        rate = po["lines"] / po["cpu"]
        print(
            f"parse-only {when} ({'native' if po['native'] else 'PYTHON'} path, "
            f"process_columns to Arrow, {po['lines']:,} lines in memory, {po['rows']:,} rows, "
            f"batches of {args.parse_batch}; a warm-up pass, then the median of "
            f"{len(po['cpus'])}: {each} lines/cpu-s): {rate:,.0f} lines/cpu-s "
            f"({po['cpu']:.2f} cpu-s, {po['wall']:.2f} s wall)",
            flush=True,
        )
        return rate

    parse_rate = parse_rate_now("before the first run")
    results: dict[int, dict[str, Any]] = {}
    enriched: dict[int, dict[str, Any]] = {}
    ratios: dict[int, list[float]] = {}
    runs: dict[int, list[dict[str, Any]]] = {}
    for n in sizes:
        # per bench process: two benches sharing a cache must not delete each other's
        # warehouse mid-run (seen: a run failed renaming a staged file the other removed)
        work = cache / "runs" / f"{os.getpid()}-{n}"
        work.mkdir(parents=True, exist_ok=True)
        scans = paths[n].parent.parent
        for k in range(max(1, args.repeat)):
            res = run_launcher(scans, work, args.resources or None, None, args.launcher_arg)
            # The machine's speed drifts (the same run's CPU moved by 30% within an hour):
            # each run is compared with parse-only measured just before and just after it.
            after = parse_rate_now(f"after run {k + 1} of {n:,} lines")
            around = (parse_rate + after) / 2
            rate = print_run(n, f"plain {k + 1}", res, around)
            print(
                f"{'':>11} parse-only around this run (the ratio above is to their mean): "
                f"{parse_rate:,.0f} before, {after:,.0f} after, {around:,.0f} mean",
                flush=True,
            )
            parse_rate = after
            res["ratio"] = rate / around
            runs.setdefault(n, []).append(res)
        results[n] = median_run(runs[n], "cpu")
        ratios[n] = sorted(r["ratio"] for r in runs[n])
        if args.ip_metadata_prefixes:
            meta = ensure_ip_metadata(
                cache, n, args.ip_metadata_prefixes, compiled=not args.not_compiled
            )
            res = run_launcher(
                scans, work, args.resources or None, meta, args.launcher_arg, args.warm_cache
            )
            enriched[n] = res
            label = "ip-meta" + (" warm" if args.warm_cache else "")
            print_run(n, label + (" parse" if args.not_compiled else ""), res, parse_rate)
            share = (res["wall"] - results[n]["wall"]) / res["wall"]
            cpu_share = (res["cpu"] - results[n]["cpu"]) / res["cpu"]
            print(
                f"{'':>11} enrichment: {share:.1%} of the wall time, {cpu_share:.1%} of the "
                f"CPU time; rows with an ASN {res['enriched_rows']:,} of {res['rows']:,}",
                flush=True,
            )
        shutil.rmtree(work, ignore_errors=True)

    print("targets (issue 13):")
    if MILLION in results:
        wall = median_run(runs[MILLION], "wall")
        ok = wall["wall"] <= WALL_1M_S and wall["cpu"] / wall["wall"] >= 1.5
        print(
            f"  {verdict(ok)} 1M lines in {wall['wall']:.1f} s wall (<= {WALL_1M_S:.0f} s; "
            f"median of {len(runs[MILLION])}) on {wall['cpu'] / wall['wall']:.2f} cores "
            "(both cores: >= 1.5)"
        )
    if 10 * MILLION in results:
        wall = median_run(runs[10 * MILLION], "wall")
        print(
            f"  {verdict(wall['wall'] <= WALL_10M_S)} 10M lines in {wall['wall']:.0f} s (<= 300 s)"
        )
    for n in sizes:
        ratio = ratios[n][len(ratios[n]) // 2]
        each = ", ".join(f"{r:.0%}" for r in ratios[n])
        print(
            f"  {verdict(ratio >= CPU_RATIO_MIN)} {n:,} lines: end-to-end lines/cpu-s "
            f"{ratio:.0%} of parse-only measured around the run (>= {CPU_RATIO_MIN:.0%}; "
            f"median of {len(ratios[n])}: {each})"
        )
    peaks = {n: max(r["peak_proc_rss"] for r in runs[n]) for n in sizes}
    for n in sizes:
        tree = max(r["peak_tree_pss"] for r in runs[n])
        rss = max(r["peak_tree_rss"] for r in runs[n])
        print(
            f"  {verdict(peaks[n] <= RSS_MAX)} {n:,} lines: biggest process "
            f"{peaks[n] / MB:,.0f} MB (<= 1,024 MB)\n"
            f"  {verdict(tree <= RSS_MAX)} {n:,} lines: whole tree {tree / MB:,.0f} MB PSS "
            "(<= 1,024 MB; a shared page divided among the processes sharing it, as the "
            f"workers forked from the launcher do; RSS summed: {rss / MB:,.0f} MB)"
        )
    if len(sizes) > 1:
        flat = peaks[sizes[-1]] <= RSS_FLAT * peaks[sizes[0]]
        print(
            f"  {verdict(flat)} RSS flat: {peaks[sizes[-1]] / MB:,.0f} MB at {sizes[-1]:,} vs "
            f"{peaks[sizes[0]] / MB:,.0f} MB at {sizes[0]:,} (<= {RSS_FLAT:.2f}x)"
        )
    for n, res in enriched.items():
        share = (res["wall"] - results[n]["wall"]) / res["wall"]
        cpu_share = (res["cpu"] - results[n]["cpu"]) / res["cpu"]
        print(
            f"  {verdict(cpu_share <= ENRICH_SHARE_MAX)} {n:,} lines: enrichment with "
            f"{args.ip_metadata_prefixes:,} prefixes {cpu_share:.1%} of the run's CPU time "
            f"(<= 10%; wall: {share:.1%})"
        )
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
