"""A full destination disk: the mirror stops cleanly, and a rerun with room completes.

The destination is a real small tmpfs (``mount -t tmpfs -o size=…``), so the copy meets
the real ``ENOSPC`` (errno 28) from ``write(2)``; the test skips with the reason when
this machine cannot mount one. Space is freed by remounting the same tmpfs larger
(``-o remount,size=…``), as an operator would free or grow the disk. Real
``python -m services.mirror`` processes.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096  # tmpfs counts whole pages
NAMES = [f"CP_Quack-echo-2021-05-2{i}-01-01-01.tar.gz" for i in range(1, 5)]


def stage_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env.update(PYTHONPATH=str(REPO), LOG_LEVEL="INFO", CP_PROGRESS="0")
    return env


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={40 * PAGE}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def resize(mnt: Path, pages: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={pages * PAGE}", str(mnt)], check=True)


def write_sources(src: Path, sizes: list[int]) -> dict[str, bytes]:
    src.mkdir()
    rng = random.Random(5)
    data = {}
    for name, size in zip(NAMES, sizes, strict=True):
        data[name] = rng.randbytes(size)
        (src / name).write_bytes(data[name])
    return data


def mirror(src: Path, dest: Path) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    argv = ["archives", "--source", str(src), "--dest", str(dest)]
    proc = subprocess.run(
        [sys.executable, "-m", "services.mirror", *argv],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [orjson.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert len(lines) == len(proc.stderr.splitlines()), proc.stderr[-3000:]
    summary = orjson.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, summary, lines


def state(dest: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(visible files with their bytes, the manifest's copy records: size and MD5)."""
    files = {p.name: p.read_bytes() for p in dest.iterdir() if not p.name.startswith(".")}
    manifest = orjson.loads((dest / ".mirror-manifest.json").read_bytes())
    return files, {k: (v["size"], v["md5"]) for k, v in manifest["copies"].items()}


def hidden(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith((".tmp-", ".lease-")))


def check_failed_run(rc: int, lines: list[dict[str, Any]], dest: Path) -> str:
    assert rc == 1, lines[-3:]
    failed = [r for r in lines if r["message"] == "run_failed"]
    assert len(failed) == 1 and failed[0] is lines[-1], lines[-3:]
    reason = failed[0]["reason"]
    assert "\n" not in reason and "No space left on device" in reason, reason
    assert str(dest) in reason and "free space" in reason, reason
    assert hidden(dest) == [], "a temp file or lease outlived the failed run"
    return str(reason)


def check_rerun(src: Path, dest: Path, mnt: Path, data: dict[str, bytes]) -> None:
    resize(mnt, 400)  # space freed
    rc, summary, lines = mirror(src, dest)
    assert rc == 0, lines[-3:]
    assert summary is not None and summary["failed"] == 0
    files, copies = state(dest)
    assert files == data
    assert copies == {n: (len(b), hashlib.md5(b).hexdigest()) for n, b in data.items()}
    assert hidden(dest) == []


def test_copy_into_a_full_disk_stops_cleanly_and_rerun_completes(
    small_disk: Path, tmp_path: Path
) -> None:
    """Archive 3 of 4 meets ENOSPC: nothing of it is left, the manifest records exactly the
    two published archives, archive 4 is not attempted (a full disk fits nothing more),
    the summary says so, one run_failed line names the cause and the destination."""
    data = write_sources(tmp_path / "src", [12 * PAGE, 12 * PAGE, 20 * PAGE, PAGE])
    dest = small_disk / "raw"
    rc, summary, lines = mirror(tmp_path / "src", dest)
    reason = check_failed_run(rc, lines, dest)
    assert summary is not None, "no summary on stdout"
    assert (summary["copied"], summary["failed"]) == (2, 1), summary
    assert summary["not_attempted"] == [NAMES[3]], summary
    assert "No space left on device" in summary["failures"][NAMES[2]]
    assert "1 not attempted" in reason, reason
    files, copies = state(dest)
    assert files == {n: data[n] for n in NAMES[:2]}
    assert copies == {n: (len(data[n]), hashlib.md5(data[n]).hexdigest()) for n in NAMES[:2]}
    check_rerun(tmp_path / "src", dest, small_disk, data)


def test_manifest_that_no_longer_fits_stops_the_run_and_rerun_records_it(
    small_disk: Path, tmp_path: Path
) -> None:
    """Archive 1 fills the disk to the last page, so its manifest record cannot be
    written: the archive stays published (whole), the manifest on disk stays the last
    complete one, the run stops with the reason, and the rerun records the archive."""
    # 40 pages: the run's lease (1) + archive 1 (39) leave no page for the manifest.
    data = write_sources(tmp_path / "src", [39 * PAGE, PAGE, PAGE, PAGE])
    dest = small_disk / "raw"
    rc, summary, lines = mirror(tmp_path / "src", dest)
    reason = check_failed_run(rc, lines, dest)
    assert "manifest" in reason, reason
    assert summary is not None, "no summary on stdout"
    assert summary["copied"] == 1 and summary["failed"] == 0, summary
    assert summary["not_attempted"] == NAMES[1:], summary
    assert {p.name for p in dest.iterdir()} == {NAMES[0]}  # no manifest could be written
    assert (dest / NAMES[0]).read_bytes() == data[NAMES[0]]
    check_rerun(tmp_path / "src", dest, small_disk, data)


def test_destination_already_full_fails_in_one_line(small_disk: Path, tmp_path: Path) -> None:
    """Not even the run's lease fits: one run_failed line naming the destination, nothing
    left behind; with room the rerun copies everything."""
    data = write_sources(tmp_path / "src", [PAGE, PAGE, PAGE, PAGE])
    dest = small_disk / "raw"
    dest.mkdir()
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as fh:  # fill the disk to the last page
        try:
            while True:
                fh.write(b"f" * PAGE)
        except OSError:
            pass
    rc, _summary, lines = mirror(tmp_path / "src", dest)
    check_failed_run(rc, lines, dest)
    assert sorted(p.name for p in dest.iterdir()) == []
    filler.unlink()
    check_rerun(tmp_path / "src", dest, small_disk, data)
