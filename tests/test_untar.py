"""untar on local folders: real-layout archives, idempotent reruns, hostile and corrupt archives."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from sampledata import write_scan_archives
from services.beam_launcher.inputs import discover
from services.common import gzindex, storage
from services.common.scans import HYPERQUACK_TYPES
from services.untar.__main__ import main as untar_main
from services.untar.markers import MARKER_NAME, completed_archives, read_marker
from services.untar.metrics import UntarMetrics
from services.untar.run import UntarConfig, untar_all
from services.untar.safety import HostileArchive, Limits, check_member
from services.untar.unpack import unpack_archive
from tests.conftest import REAL, REAL_HQ_SCANS, require_real
from tests.test_mirror_support import list_tree, md5_hex, member, random_bytes, scan_archive, tar_gz

SAT_SCAN = "CP_Satellite-2021-10-20-14-00-01"
GOOD = "CP_Quack-echo-2021-01-01-00-00-01"
BAD = "CP_Quack-echo-2021-01-02-00-00-01"
RESULTS = b'{"vp": "1.2.3.4", "test_url": "example.com"}\n' * 50


def outcome(summary: object, name: str) -> tuple[str, str]:
    o = next(o for o in summary.outcomes if o.name == name)  # type: ignore[attr-defined]
    return o.result, o.reason


def build_real_archives(raw: Path) -> dict[str, dict[str, bytes]]:
    """Archives laid out like Censored Planet's, from the real sample files."""
    require_real()
    raw.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict[str, bytes]] = {}
    for rel, scan in REAL_HQ_SCANS.items():
        results = (REAL / rel).read_bytes()
        files = {"results.json": results, "servers.txt": b"1.1.1.1\n", "domains.txt": b"a.org\n"}
        (raw / f"{scan}.tar.gz").write_bytes(scan_archive(scan, files))
        expected[scan] = {"results.json": results}
    sat = {p.name: p.read_bytes() for p in sorted((REAL / "satellite_v2.2").glob("*.json"))}
    (raw / f"{SAT_SCAN}.tar.gz").write_bytes(scan_archive(SAT_SCAN, sat))
    expected[SAT_SCAN] = sat
    return expected


def scan_type(scan: str) -> str:
    return "satellite" if "Satellite" in scan else scan.split("-")[1]


def test_real_layout_archives_yield_the_expected_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gzindex, "MEMBER_TEXT", 1 << 10)  # several members per real file
    expected = build_real_archives(tmp_path / "raw")
    target = tmp_path / "out"
    m = UntarMetrics()
    summary = untar_all(UntarConfig(raw=str(tmp_path / "raw"), target=str(target)), m)
    assert summary.ok and len(summary.of("unpacked")) == 9

    want = []
    members = 0
    for scan, files in expected.items():
        folder = Path("scans") / scan_type(scan) / scan
        want.append(str(folder / MARKER_NAME))
        for name, data in files.items():
            want.append(str(folder / f"{name}.gz"))
            stored = (target / folder / f"{name}.gz").read_bytes()
            assert gzip.decompress(stored) == data
            # line-aligned members, described by the index at the end (gzindex)
            index = gzindex.parse_index(stored)
            assert index is not None
            assert sum(m.lines for m in index.members) == len(data.splitlines())
            texts = [gzip.decompress(stored[m.start : m.end]) for m in index.members]
            assert all(t.endswith(b"\n") for t in texts[:-1])
            assert [len(t.splitlines()) for t in texts] == [m.lines for m in index.members]
            members += len(index.members)
        marker = read_marker(str(target / folder / MARKER_NAME))
        assert marker is not None
        assert [f["name"] for f in marker["files"]] == sorted(f"{n}.gz" for n in files)
        for f in marker["files"]:
            stored = (target / folder / f["name"]).read_bytes()
            assert (f["stored_bytes"], f["md5"]) == (len(stored), md5_hex(stored))
            assert f["member"] == f"{scan}/{f['name'][:-3]}"
        archive = (tmp_path / "raw" / f"{scan}.tar.gz").read_bytes()
        assert (marker["archive_bytes"], marker["archive_md5"]) == (len(archive), md5_hex(archive))
        if "Quack" in scan:
            assert marker["skipped_members"] == [f"{scan}/domains.txt", f"{scan}/servers.txt"]
    assert list_tree(str(target)) == sorted(want)
    assert members > 2 * sum(map(len, expected.values()))  # real files took several members

    assert m.registry.get_sample_value("cp_untar_archives_total", {"result": "unpacked"}) == 9
    assert m.registry.get_sample_value("cp_untar_members_total", {"result": "written"}) == 14
    assert m.registry.get_sample_value("cp_untar_members_total", {"result": "skipped"}) == 16
    assert m.registry.get_sample_value("cp_untar_last_success_timestamp_seconds") > 0

    # The launcher's input discovery finds every Hyperquack results file under scans/.
    plan = discover(str(target / "scans"), HYPERQUACK_TYPES, "test")
    assert {t.source for t in plan.tasks} == set(REAL_HQ_SCANS.values())
    assert completed_archives(storage.storage_for(str(target)), str(target)) == set(expected)
    assert completed_archives(storage.storage_for(str(target)), str(target / "scans")) == set(
        expected
    )

    # Rerun: every archive is skipped, nothing is rewritten.
    stamps = {f: (target / f).stat().st_mtime_ns for f in list_tree(str(target))}
    again = untar_all(UntarConfig(raw=str(tmp_path / "raw"), target=str(target)))
    assert len(again.of("skipped")) == 9 and not again.of("unpacked")
    assert {f: (target / f).stat().st_mtime_ns for f in list_tree(str(target))} == stamps


def test_generated_archives_from_sample_scans(tmp_path: Path) -> None:
    gen = write_scan_archives(tmp_path / "gen", size=5)
    summary = untar_all(UntarConfig(raw=str(tmp_path / "gen" / "archives"), target=str(tmp_path)))
    assert summary.ok and len(summary.of("unpacked")) == len(gen.scans)
    for scan in gen.scans:
        got = tmp_path / "scans" / scan_type(scan) / scan / "results.json.gz"
        want = tmp_path / "gen" / "scans" / scan / "results.json.gz"
        assert gzip.decompress(got.read_bytes()) == gzip.decompress(want.read_bytes())


def test_leftovers_of_a_crashed_run_are_replaced(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{GOOD}.tar.gz").write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    folder = tmp_path / "out" / "scans" / "echo" / GOOD
    folder.mkdir(parents=True)
    (folder / "results.json.gz").write_bytes(b"half-written")  # no marker: unfinished
    (folder / "stale.json.gz").write_bytes(b"from an older layout")
    (folder / ".tmp-abc").write_bytes(b"partial")
    summary = untar_all(UntarConfig(raw=str(raw), target=str(tmp_path / "out")))
    assert summary.ok and len(summary.of("unpacked")) == 1
    assert sorted(os.listdir(folder)) == [MARKER_NAME, "results.json.gz"]
    assert gzip.decompress((folder / "results.json.gz").read_bytes()) == RESULTS


def test_unknown_names_are_reported_not_guessed(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "CP_Quack-ftp-2021-01-01-00-00-01.tar.gz").write_bytes(
        scan_archive("x", {"results.json": RESULTS})
    )
    (raw / "scan-2021.tar.gz").write_bytes(b"")
    (raw / "notes.txt").write_bytes(b"not an archive")
    summary = untar_all(UntarConfig(raw=str(raw), target=str(tmp_path / "out")))
    assert summary.ok  # reported, not a failure
    assert sorted(o.name for o in summary.of("unknown_name")) == [
        "CP_Quack-ftp-2021-01-01-00-00-01.tar.gz",
        "scan-2021.tar.gz",
    ]
    assert not (tmp_path / "out").exists() or list_tree(str(tmp_path / "out")) == []


def test_recheck_redoes_a_replaced_archive(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    archive = raw / f"{GOOD}.tar.gz"
    archive.write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    cfg = UntarConfig(raw=str(raw), target=str(tmp_path / "out"))
    untar_all(cfg)
    archive.write_bytes(scan_archive(GOOD, {"results.json": RESULTS + b"{}\n"}))
    assert outcome(untar_all(cfg), f"{GOOD}.tar.gz")[0] == "skipped"  # markers only
    cfg.recheck = True
    assert outcome(untar_all(cfg), f"{GOOD}.tar.gz")[0] == "unpacked"
    out = tmp_path / "out" / "scans" / "echo" / GOOD / "results.json.gz"
    assert gzip.decompress(out.read_bytes()) == RESULTS + b"{}\n"
    assert outcome(untar_all(cfg), f"{GOOD}.tar.gz")[0] == "skipped"


def test_archive_without_json_fails(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{BAD}.tar.gz").write_bytes(scan_archive(BAD, {"servers.txt": b"1.1.1.1\n"}))
    summary = untar_all(UntarConfig(raw=str(raw), target=str(tmp_path / "out")))
    result, reason = outcome(summary, f"{BAD}.tar.gz")
    assert result == "failed" and "no .json members" in reason
    assert list_tree(str(tmp_path / "out")) == []


# --------------------------------------------------------------------------------------
# Hostile archives
# --------------------------------------------------------------------------------------

ESCAPE = "{ESCAPE}"  # replaced by an absolute path under the test's tmp_path
SMALL = Limits(max_member_bytes=4096)


def _hostile(kind: str) -> tuple[list[tuple[tarfile.TarInfo, bytes]], Limits, str]:
    """Members after a good results.json, the limits to use and the expected reason."""
    d = BAD
    cases: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], Limits, str]] = {
        "absolute": ([member(f"{ESCAPE}/evil.json", b"{}")], Limits(), "absolute path"),
        "dotdot": ([member(f"{d}/../../escape/evil.json", b"{}")], Limits(), "'..' in path"),
        "dotdot-leading": ([member("../evil.json", b"{}")], Limits(), "'..' in path"),
        "backslash": ([member(f"{d}\\..\\evil.json", b"{}")], Limits(), "backslash"),
        "symlink": (
            [member(f"{d}/link.json", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
            Limits(),
            "symlink members are not allowed",
        ),
        "hardlink": (
            [member(f"{d}/hard.json", kind=tarfile.LNKTYPE, linkname=f"{d}/results.json")],
            Limits(),
            "hardlink members are not allowed",
        ),
        "chardev": (
            [member(f"{d}/null.json", kind=tarfile.CHRTYPE)],
            Limits(),
            "device members are not allowed",
        ),
        "blockdev": (
            [member(f"{d}/sda.json", kind=tarfile.BLKTYPE)],
            Limits(),
            "device members are not allowed",
        ),
        "fifo": (
            [member(f"{d}/pipe.json", kind=tarfile.FIFOTYPE)],
            Limits(),
            "fifo members are not allowed",
        ),
        "huge-member": (
            [member(f"{d}/big.json", random_bytes(5000, 1))],
            SMALL,
            "over the limit of 4096 bytes",
        ),
        "zip-bomb": (
            [member(f"{d}/bomb.json", b"\0" * (8 * 1024 * 1024))],
            Limits(),
            "compression ratio over 100:1",
        ),
        "nested": ([member(f"{d}/sub/deep.json", b"{}")], Limits(), "nested folders"),
        "duplicate": ([member("other/results.json", b"{}")], Limits(), "duplicate file name"),
        "unsafe-name": ([member(f"{d}/-rf .json", b"{}")], Limits(), "unsafe file name"),
        "pax-header-bomb": (
            [
                member(
                    f"{d}/meta.json",
                    b"{}",
                    pax={"comment": random_bytes(3 * 1024 * 1024, 2).hex()},
                )
            ],
            Limits(),
            "tar headers/metadata larger than",
        ),
    }
    return cases[kind]


HOSTILE = [
    "absolute",
    "dotdot",
    "dotdot-leading",
    "backslash",
    "symlink",
    "hardlink",
    "chardev",
    "blockdev",
    "fifo",
    "huge-member",
    "zip-bomb",
    "nested",
    "duplicate",
    "unsafe-name",
    "pax-header-bomb",
]


def sparse_archive() -> bytes:
    buf = tarfile.TarInfo(f"{BAD}/sparse.json")
    buf.type = tarfile.GNUTYPE_SPARSE
    good = member(f"{BAD}/results.json", RESULTS)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(good[0], io.BytesIO(good[1]))
        tar.addfile(buf)
    return gzip.compress(out.getvalue())


@pytest.mark.parametrize("kind", [*HOSTILE, "sparse"])
def test_hostile_archive_is_rejected_and_nothing_escapes(tmp_path: Path, kind: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    escape = tmp_path / "escape"
    (raw / f"{GOOD}.tar.gz").write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    if kind == "sparse":
        data, limits, why = sparse_archive(), Limits(), "sparse members are not allowed"
    else:
        members, limits, why = _hostile(kind)
        fixed = []
        for info, payload in members:
            info.name = info.name.replace(ESCAPE, str(escape))
            fixed.append((info, payload))
        # A good file first, so the archive has partial output when it is rejected.
        good = [member(BAD, kind=tarfile.DIRTYPE), member(f"{BAD}/results.json", RESULTS)]
        data = tar_gz(good + fixed)
    (raw / f"{BAD}.tar.gz").write_bytes(data)
    target = tmp_path / "out"

    summary = untar_all(UntarConfig(raw=str(raw), target=str(target), limits=limits))
    result, reason = outcome(summary, f"{BAD}.tar.gz")
    assert result == "rejected", reason
    assert why in reason
    assert outcome(summary, f"{GOOD}.tar.gz")[0] == "unpacked"  # the others go on
    assert not summary.ok
    # Nothing escaped: the whole test folder holds the two archives and the good output.
    assert list_tree(str(tmp_path)) == sorted(
        [
            f"raw/{GOOD}.tar.gz",
            f"raw/{BAD}.tar.gz",
            f"out/scans/echo/{GOOD}/{MARKER_NAME}",
            f"out/scans/echo/{GOOD}/results.json.gz",
        ]
    )
    assert not escape.exists() and not (tmp_path.parent / "evil.json").exists()
    if kind == "zip-bomb":  # stopped while streaming, long before the 8 MB were inflated
        inflated = int(reason.split("(")[1].split(" bytes")[0])
        assert inflated < 4 * 1024 * 1024


def test_zip_bomb_within_member_size_is_caught_by_ratio_alone(tmp_path: Path) -> None:
    archive = tmp_path / f"{BAD}.tar.gz"
    archive.write_bytes(tar_gz([member(f"{BAD}/results.json", b" " * (6 * 1024 * 1024))]))
    with pytest.raises(HostileArchive, match="compression ratio"):
        unpack_archive(str(archive), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "scans" / "echo" / BAD).exists()
    # An operator can raise the limit for such an archive.
    res = unpack_archive(str(archive), str(tmp_path / "out"), limits=Limits(max_ratio=2000))
    assert res.files[0].bytes == 6 * 1024 * 1024


def test_check_member_accepts_the_usual_layouts() -> None:
    lim = Limits()
    assert check_member("results.json", "file", 1, lim) == "results.json"
    assert check_member("./CP/results.json", "file", 1, lim) == "results.json"
    assert check_member("CP/", "dir", 0, lim) is None
    assert check_member("./", "dir", 0, lim) is None
    for bad in ("", "/", "C:/x.json", "CP/a/b.json", "a\x00b"):
        with pytest.raises(HostileArchive):
            check_member(bad, "file", 1, lim)


# --------------------------------------------------------------------------------------
# Corrupt and truncated archives
# --------------------------------------------------------------------------------------


def _two_member_archive() -> bytes:
    """results.json, then a large incompressible member: a cut lands after one output."""
    return scan_archive(
        BAD, {"a_results.json": RESULTS, "b_blockpages.json": random_bytes(400_000, 3)}
    )


def _corrupt(kind: str) -> bytes:
    data = _two_member_archive()
    if kind == "truncated":
        return data[: len(data) * 6 // 10]
    if kind == "flipped":
        mid = len(data) * 6 // 10
        return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
    if kind == "bad-crc":
        return data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]
    if kind == "not-gzip":
        return random_bytes(5000, 4)
    if kind == "empty":
        return b""
    if kind == "tar-truncated-inside-valid-gzip":
        tar = gzip.decompress(data)
        return gzip.compress(tar[:200_000])
    if kind == "trailing-garbage":
        return data + b"garbage!"
    raise AssertionError(kind)


CORRUPT = [
    "truncated",
    "flipped",
    "bad-crc",
    "not-gzip",
    "empty",
    "tar-truncated-inside-valid-gzip",
    "trailing-garbage",
]


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_archive_is_reported_and_cleaned_up(tmp_path: Path, kind: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{BAD}.tar.gz").write_bytes(_corrupt(kind))
    (raw / f"{GOOD}.tar.gz").write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    summary = untar_all(UntarConfig(raw=str(raw), target=str(tmp_path / "out")))
    result, reason = outcome(summary, f"{BAD}.tar.gz")
    assert result == "failed", reason
    assert "CorruptArchive" in reason
    assert outcome(summary, f"{GOOD}.tar.gz")[0] == "unpacked"
    assert list_tree(str(tmp_path / "out")) == [
        f"scans/echo/{GOOD}/{MARKER_NAME}",
        f"scans/echo/{GOOD}/results.json.gz",
    ]
    # The next run tries it again (no marker) and reports it again.
    again = untar_all(UntarConfig(raw=str(raw), target=str(tmp_path / "out")))
    assert outcome(again, f"{BAD}.tar.gz")[0] == "failed"
    assert outcome(again, f"{GOOD}.tar.gz")[0] == "skipped"


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{GOOD}.tar.gz").write_bytes(scan_archive(GOOD, {"results.json": RESULTS}))
    prom = tmp_path / "untar.prom"
    args = ["--raw", str(raw), "--target", str(tmp_path / "out"), "--metrics-file", str(prom)]
    assert untar_main(args) == 0
    assert json.loads(capsys.readouterr().out)["unpacked"] == 1
    assert 'cp_untar_archives_total{result="unpacked"} 1.0' in prom.read_text()

    shutil.copy(raw / f"{GOOD}.tar.gz", raw / "CP_Quack-http-2021-01-03-00-00-01.tar.gz")
    (raw / f"{BAD}.tar.gz").write_bytes(_corrupt("truncated"))
    assert untar_main([*args, "--max-ratio", "50", "--scan-types", "echo"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["skipped"] == 1  # the http archive is not selected
    last = json.loads(out.err.strip().splitlines()[-1])  # the run_failed line ends the run
    assert (last["severity"], last["message"], last["exit_code"]) == ("ERROR", "run_failed", 1)
    assert last["reason"].startswith(
        f"1 of 2 archive(s) not unpacked: {BAD}.tar.gz: failed: CorruptArchive"
    )
    assert 'cp_untar_archives_total{result="failed"} 1.0' in prom.read_text()
    with pytest.raises(SystemExit):
        untar_main([*args, "--max-ratio", "1"])
    capsys.readouterr()
