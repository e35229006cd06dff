"""Tests for the deterministic sample data generator (``sampledata``: Hyperquack,
Satellite, archives, CAIDA files) and the sample resources."""

from __future__ import annotations

import ast
import base64
import csv
import doctest
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import sampledata as ss
from sampledata import caida, certs, satellite, scans
from sampledata.common import epoch_ns

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "sample"
ARCHIVE_RE = re.compile(
    r"^CP_Quack-(echo|discard|https|http)-(\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)\.tar\.gz$"
)
TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([+-]\d\d:\d\d|Z)$")
V1_RT_KEYS = ("Sent", "Received", "Success", "Error", "StartTime", "EndTime")
V2_RT_KEYS = ("matches_template", "response", "error", "control_url", "start_time", "end_time")
CONTROL_DOMAINS = set(ss.V1_CONTROL_DOMAINS.values())
SATELLITE_SOURCE = "CP_Satellite-2021-10-20-14-00-01"
SATELLITE_ARCHIVE = SATELLITE_SOURCE + ".tar.gz"
REAL_SATELLITE = ROOT.parent / "shared" / "fixtures" / "real" / "satellite_v2.2"

Record = dict[str, Any]
HYPERQUACK_SPECS = [s for s in ss.DEFAULT_SCANS if s.scan_type != ss.SATELLITE]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def load_signatures(path: Path) -> dict[str, re.Pattern[str]]:
    """Signature file as the reference pipeline loads it: ordered dict, later duplicates win."""
    out: dict[str, re.Pattern[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            out[entry["fingerprint"]] = re.compile(entry["pattern"], re.DOTALL)
    return out


BLOCKPAGES = load_signatures(SAMPLE / "blockpage_signatures.json")
FALSE_POSITIVES = load_signatures(SAMPLE / "false_positive_signatures.json")


def match_page(page: str) -> tuple[bool | None, str | None]:
    """False positives first, then blockpages (``(None, None)`` when nothing matches)."""
    for fp, pattern in FALSE_POSITIVES.items():
        if pattern.search(page):
            return False, fp
    for fp, pattern in BLOCKPAGES.items():
        if pattern.search(page):
            return True, fp
    return None, None


def page_text(received: Any) -> str:
    """Text the blockpage matcher sees: the raw string, or status + headers + body."""
    if isinstance(received, str):
        return received
    lines = "".join(
        f"{name}: {value}\r\n"
        for name, values in received.get("headers", {}).items()
        for value in values
    )
    return f"{received['status_line']}\r\n{lines}\r\n{received['body']}"


def read_lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def scan_type_of(source: str) -> str:
    match = re.match(r"CP_Quack-(echo|discard|https|http)-", source)
    assert match, source
    return match.group(1)


def is_valid_record(obj: Any) -> bool:
    """A record with the complete v1 or v2 key set and the right container types."""
    if not isinstance(obj, dict):
        return False
    keys: tuple[str, ...]
    if "Server" in obj:
        keys, rts = ss.V1_KEYS, obj.get("Results")
    elif "vp" in obj:
        keys, rts = ss.V2_KEYS, obj.get("response")
    else:
        return False
    return tuple(obj) == keys and isinstance(rts, list) and all(isinstance(rt, dict) for rt in rts)


def split_v1(rec: Record) -> tuple[list[Record], list[Record]]:
    n = rec["Retries"] + 1
    return rec["Results"][:n], rec["Results"][n:]


def split_v2(rec: Record) -> tuple[list[Record], list[Record]]:
    tests = [rt for rt in rec["response"] if "control_url" not in rt]
    controls = [rt for rt in rec["response"] if "control_url" in rt]
    return tests, controls


def roundtrips(rec: Record) -> list[Record]:
    return rec["Results"] if "Server" in rec else rec["response"]


def rt_ok(rt: Record) -> bool:
    return bool(rt["Success"] if "Success" in rt else rt["matches_template"])


def rt_error(rt: Record) -> str | None:
    return rt.get("Error", rt.get("error"))


def rt_received(rt: Record) -> Any:
    return rt.get("Received", rt.get("response"))


def parse_ns(stamp: str) -> int:
    match = TIME_RE.match(stamp)
    assert match, stamp
    base, frac, offset = match.groups()
    iso = base + ("+00:00" if offset == "Z" else offset)
    seconds = int(datetime.fromisoformat(iso).timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _files_per_sample() -> int:
    """Files a default sample writes: archive + results.json.gz per Hyperquack scan,
    archive + every member per Satellite scan."""
    return sum(
        2 if s.scan_type != ss.SATELLITE else 1 + len(ss.SATELLITE_FILES) for s in ss.DEFAULT_SCANS
    )


def iter_all(records_by_source: dict[str, list[Record]]) -> Iterator[tuple[str, int, Record]]:
    for source, records in records_by_source.items():
        version = 1 if "Server" in records[0] else 2
        for rec in records:
            yield scan_type_of(source), version, rec


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample_default")
    summary = ss.generate(out)
    assert summary.records == sum(ss.scan_size(s, ss.DEFAULT_SIZE) for s in ss.DEFAULT_SCANS)
    return out


@pytest.fixture(scope="module")
def records_by_source(default_out: Path) -> dict[str, list[Record]]:
    """Hyperquack records per scan (the Satellite scan has its own fixtures below)."""
    out: dict[str, list[Record]] = {}
    for path in sorted((default_out / "scans").glob("CP_Quack-*/results.json.gz")):
        data = gzip.decompress(path.read_bytes())
        out[path.parent.name] = [json.loads(line) for line in read_lines(data)]
    return out


# ---------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("blockpage_signatures.json", 8, 16), ("false_positive_signatures.json", 4, 7)],
)
def test_signature_files(name: str, lo: int, hi: int) -> None:
    lines = (SAMPLE / name).read_text(encoding="utf-8").split("\n")
    assert any(not line.strip() for line in lines[:-1]), "a blank line, as in the real files"
    entries = [json.loads(line) for line in lines if line.strip()]
    assert all(list(e) == ["fingerprint", "pattern"] for e in entries)
    fingerprints = Counter(e["fingerprint"] for e in entries)
    assert lo <= len(fingerprints) <= hi
    assert any(count > 1 for count in fingerprints.values()), "a duplicated fingerprint"
    for entry in entries:
        re.compile(entry["pattern"], re.DOTALL)
    re2 = pytest.importorskip("re2")
    for entry in entries:
        re2.compile(entry["pattern"])


def test_domain_categories_csv() -> None:
    text = (SAMPLE / "domain_categories.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(row) == 2 for row in rows)
    assert rows[0][0] != "domain", "no header"
    assert 38 <= len(rows) <= 50
    assert [tuple(r) for r in rows] == list(ss.SAMPLE_DOMAIN_CATEGORIES)
    categories = {c for _, c in rows}
    assert {"News Media", "Social Networking", "Human Rights Issues", "Gambling"} <= categories
    listed = {d for d, _ in rows}
    keywords = ss.sample_keywords()
    assert listed <= set(keywords)
    assert any(k.partition("/")[0] not in listed for k in keywords), "some domains are unlisted"


@pytest.mark.parametrize("template", ss.PAGE_TEMPLATES, ids=lambda t: t.name)
def test_page_templates_match_their_signature(template: ss.PageTemplate) -> None:
    values = {
        "{{domain}}": "www.example.org",
        "{{url}}": "www.example.org/path",
        "{{num3}}": "042",
        "{{num}}": "31337",
        "{{ref}}": "18.abc.1600000000",
        "{{local}}": "198.51.100.1",
        "{{cat}}": "news",
        "{{len}}": "10",
    }

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    body = fill(template.body)
    headers = [(k, fill(v)) for k, v in template.headers]
    nl = template.newline
    raw = (
        body
        if template.body_only
        else (
            f"HTTP/1.1 {template.status_line}{nl}"
            + "".join(f"{k}: {v}{nl}" for k, v in headers)
            + nl
            + body
        )
    )
    http = page_text(
        {"status_line": template.status_line, "headers": {k: [v] for k, v in headers}, "body": body}
    )
    expected = (not template.false_positive, template.fingerprint)
    assert match_page(raw) == expected
    assert match_page(http) == expected


# ---------------------------------------------------------------------------------------
# Determinism, layout, serialisation
# ---------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic_byte_identical(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ss.generate(a, size=60, seed=7, bad_line_ratio=0.05)
    ss.generate(b, size=60, seed=7, bad_line_ratio=0.05)
    ss.generate(c, size=60, seed=8, bad_line_ratio=0.05)
    tree_a, tree_b, tree_c = _tree(a), _tree(b), _tree(c)
    # Hyperquack scans: archive + results.json.gz; Satellite scans: archive + its 7 files.
    assert len(tree_a) == _files_per_sample()
    assert tree_a == tree_b
    assert tree_a.keys() == tree_c.keys()
    assert all(tree_a[k] != tree_c[k] for k in tree_a)
    start = ss.DEFAULT_SCANS[0].start
    assert ss.generate_hyperquack_records("https", 2, 40, 3, start) == (
        ss.generate_hyperquack_records("https", 2, 40, 3, start)
    )


def test_plain_option(tmp_path: Path) -> None:
    summary = ss.generate(tmp_path, size=30, seed=1, plain=True)
    plain = sorted((tmp_path / "scans").glob("*/results.json"))
    assert len(plain) == len(ss.DEFAULT_SCANS)
    assert not list((tmp_path / "scans").glob("*/*.gz"))
    satellite = tmp_path / "scans" / ss.source_name("satellite", ss.SATELLITE_SCANS[0].start)
    assert sorted(p.name for p in satellite.iterdir()) == sorted(ss.SATELLITE_FILES)
    assert summary.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


def test_archive_names_and_members(default_out: Path) -> None:
    archives = sorted((default_out / "archives").iterdir())
    assert len(archives) == len(ss.DEFAULT_SCANS)
    quack = [a for a in archives if a.name.startswith("CP_Quack-")]
    assert len(quack) == len(HYPERQUACK_SPECS)
    assert [a.name for a in archives if a not in quack] == sorted(
        ss.archive_name(s.scan_type, s.start) for s in ss.DEFAULT_SCANS if s not in HYPERQUACK_SPECS
    )
    assert SATELLITE_ARCHIVE in {a.name for a in archives}
    seen = set()
    for archive in quack:
        match = ARCHIVE_RE.match(archive.name)
        assert match, archive.name
        scan_type, stamp = match.groups()
        source = archive.name.removesuffix(".tar.gz")
        raw = archive.read_bytes()
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0", "gzip mtime 0"
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            files = {m.name.split("/")[-1]: tar.extractfile(m) for m in members if m.isfile()}
            contents = {k: f.read() for k, f in files.items() if f is not None}
        version = 1 if stamp.startswith("2020") else 2
        assert stamp.startswith(("2020-11-1", "2021-05-3", "2021-07-", "2021-10-20"))
        seen.add((scan_type, version))
        expected = {"results.json"} | ({"servers.txt", "domains.txt"} if version == 1 else set())
        assert names[0] == source and members[0].isdir()
        assert set(contents) == expected
        assert all(n.startswith(source + "/") for n in names[1:])
        assert names[1:] == sorted(names[1:])
        assert len({m.mtime for m in members}) == 1
        assert all(m.uid == 0 and m.gid == 0 for m in members)
        extracted = default_out / "scans" / source / "results.json.gz"
        gz = extracted.read_bytes()
        assert gz[4:8] == b"\0\0\0\0"
        assert gzip.decompress(gz) == contents["results.json"]
        # Real v1 files end with a newline, real v2 files do not.
        assert contents["results.json"].endswith(b"\n") == (version == 1)
        if version == 1:
            records = [json.loads(x) for x in read_lines(contents["results.json"])]
            servers = contents["servers.txt"].decode().splitlines()
            domains = contents["domains.txt"].decode().splitlines()
            assert set(servers) == {r["Server"] for r in records}
            assert set(domains) == {r["Keyword"] for r in records}
    assert seen == {(t, v) for t in ss.SCAN_TYPES for v in (1, 2)}


def test_go_style_json(default_out: Path) -> None:
    data = gzip.decompress(
        next((default_out / "scans").glob("CP_Quack-http-2020*/results.json.gz")).read_bytes()
    )
    assert b"<" not in data and b">" not in data and b"&" not in data
    assert b"\\u003c" in data and b"\\u003e" in data
    assert b'","' in data and b'", "' not in data, "compact separators"
    assert re.search(rb'^\{"Server":"[\d.]+","Keyword":', data)
    assert ss.go_json_line({"a": "<é&>"}) == '{"a":"\\u003cé\\u0026\\u003e"}'.encode()


# ---------------------------------------------------------------------------------------
# Record structure and semantics
# ---------------------------------------------------------------------------------------


def test_record_keys_types_and_times(records_by_source: dict[str, list[Record]]) -> None:
    assert len(records_by_source) == len(HYPERQUACK_SPECS)
    for scan_type, version, rec in iter_all(records_by_source):
        assert is_valid_record(rec)
        rts = roundtrips(rec)
        assert rts
        if version == 1:
            assert isinstance(rec["Retries"], int) and 0 <= rec["Retries"] <= 4
            for key in ("Blocked", "FailSanity", "StatefulBlock"):
                assert isinstance(rec[key], bool)
            order = V1_RT_KEYS
        else:
            assert set(rec["location"]) == {"country_name", "country_code"}
            assert rec["service"] in (scan_type, f"{scan_type}:{ss.ALT_PORTS[scan_type]}")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", rec["tag"])
            order = V2_RT_KEYS
        offset = "-05:00" if version == 1 else "-04:00"
        for rt in rts:
            keys = list(rt)
            assert keys == [k for k in order if k in rt], keys
            start, end = (
                (rt["StartTime"], rt["EndTime"])
                if version == 1
                else (
                    rt["start_time"],
                    rt["end_time"],
                )
            )
            assert start.endswith(offset) and end.endswith(offset)
            assert not re.search(r"\.\d*0[+-]", start), "Go trims trailing zeros"
            assert parse_ns(start) <= parse_ns(end)
            if "control_url" in rt:
                assert re.fullmatch(r"control-[0-9a-f]{1,16}\.com", rt["control_url"])
            received = rt_received(rt)
            if received is None:
                continue
            if scan_type in ("echo", "discard"):
                assert isinstance(received, str)
            else:
                assert isinstance(received, dict)
                assert isinstance(received["status_line"], str)
                assert isinstance(received["body"], str)
                assert len(received["body"].encode()) <= 65536
                headers = received.get("headers", {})
                assert list(headers) == sorted(headers)
                for name, values in headers.items():
                    assert re.fullmatch(r"[A-Z][a-z0-9]*(-[A-Z0-9][a-z0-9]*)*", name), name
                    assert isinstance(values, list) and all(isinstance(v, str) for v in values)
                if scan_type == "https":
                    if version == 1:
                        assert set(received["tls"]) == {"version", "cipher_suite", "cert"}
                    else:
                        assert {"TlsVersion", "CipherSuite", "Certificate"} <= set(received)


def test_measurement_semantics(records_by_source: dict[str, list[Record]]) -> None:
    """Blocked/anomaly: all tests failed and the control after them passed, etc."""
    for scan_type, version, rec in iter_all(records_by_source):
        if version == 1:
            tests, controls = split_v1(rec)
            blocked, failed, stateful = rec["Blocked"], rec["FailSanity"], rec["StatefulBlock"]
            control = ss.V1_CONTROL_DOMAINS[scan_type]
            for rt in controls:
                assert rt["Sent"] == "" or control in rt["Sent"]
            for rt in tests:
                assert control not in rt["Sent"]
            if controls:
                assert len(tests) == 5 and not any(rt_ok(rt) for rt in tests)
        else:
            tests, controls = split_v2(rec)
            blocked, failed, stateful = (
                rec["anomaly"],
                rec["controls_failed"],
                rec["stateful_block"],
            )
            assert controls, "v2 always sends a control"
        if blocked:
            assert tests and not any(rt_ok(rt) for rt in tests)
            assert rt_ok(roundtrips(rec)[-1]) and roundtrips(rec)[-1] in controls
            assert not failed
        if stateful:
            assert blocked
            after = controls[-2:]
            assert len(after) == 2 and not rt_ok(after[0]) and rt_ok(after[1])
        if failed:
            assert not blocked and not stateful
            assert not rt_ok(roundtrips(rec)[-1]) and roundtrips(rec)[-1] in controls
        if not blocked and not failed:
            assert tests and rt_ok(tests[-1])
            assert all(rt_ok(c) for c in controls)
            if version == 1:
                assert not controls
        for rt in roundtrips(rec):
            if rt_ok(rt):
                assert rt_error(rt) is None and rt_received(rt) is None
            else:
                assert rt_error(rt) is not None or rt_received(rt) is not None


def test_coverage_of_cases(records_by_source: dict[str, list[Record]]) -> None:
    counts: Counter[str] = Counter()
    retries: set[int] = set()
    for _scan_type, version, rec in iter_all(records_by_source):
        rts = roundtrips(rec)
        if version == 1:
            counts["v1_stateful"] += rec["StatefulBlock"]
            counts["v1_fail_sanity"] += rec["FailSanity"]
            counts["v1_blocked"] += rec["Blocked"]
            retries.add(rec["Retries"])
            for rt in rts:
                sent = rt["Sent"]
                counts["v1_sent_empty"] += sent == ""
                counts["v1_control"] += any(c in sent for c in CONTROL_DOMAINS)
                counts["v1_swapped"] += bool(re.match(r"GET [^/ ][^ ]* HTTP/1\.1\r\nHost: /", sent))
        else:
            counts["v2_stateful"] += rec["stateful_block"]
            counts["v2_controls_failed"] += rec["controls_failed"]
            counts["v2_anomaly"] += rec["anomaly"]
            counts["v2_alt_port"] += ":" in rec["service"]
            counts["v2_control_first"] += "control_url" in rts[0]
            counts["v2_control_last"] += len(rts) > 1 and "control_url" in rts[-1]
            counts["v2_only_failed_control"] += len(rts) == 1 and not rt_ok(rts[0])
        for rt in rts:
            error = rt_error(rt) or ""
            received = rt_received(rt)
            counts["multi_error"] += ";" in error
            if not rt_ok(rt) and not error and received not in (None, ""):
                counts["v2_mismatch_no_error"] += 1
            counts["received_empty_string"] += received == ""
            if isinstance(received, dict):
                headers = received.get("headers")
                counts["http_no_headers"] += headers is None
                server = (headers or {}).get("Server", [])
                counts["akamai"] += "AkamaiGHost" in server or "GHost" in server
                counts["body_capped"] += len(received["body"]) == 65536
                if "tls" in received:
                    counts["v1_tls_cert"] += isinstance(received["tls"]["cert"], str)
                cert = received.get("Certificate")
                counts["v2_cert_string"] += isinstance(cert, str)
                counts["v2_cert_list"] += isinstance(cert, list) and len(cert) >= 2
            if isinstance(received, str) and any(ord(ch) > 127 for ch in received):
                counts["non_ascii"] += 1
            for label, needle in ERROR_NEEDLES.items():
                counts[label] += needle in error
    missing = [k for k in (*ERROR_NEEDLES, *EXPECTED_CASES) if counts[k] == 0]
    assert not missing, (missing, counts)
    assert retries == {0, 1, 2, 3, 4}


ERROR_NEEDLES = {
    "dial_timeout": "connect: connection timed out",
    "read_timeout": ": i/o timeout",
    "conn_reset": "read: connection reset by peer",
    "dial_reset": "connect: connection reset by peer",
    "conn_refused": "connect: connection refused",
    "net_unreachable": "connect: network is unreachable",
    "no_route": "connect: no route to host",
    "bind": "bind: address already in use",
    "broken_pipe": "write: broken pipe",
    "tls_handshake": "remote error: tls: handshake failure",
    "tls_oversized": "tls: oversized record received with length",
    "tls_timeout": "TLS handshake timeout",
    "request_canceled": "request canceled (Client.Timeout exceeded",
    "eof": "EOF",
    "unexpected_eof": "unexpected EOF",
    "malformed_status": "malformed HTTP status code",
    "v1_echo": "Incorrect echo response",
    "v1_discard": "Received response",
    "v1_status": "Incorrect web response: status lines don't match",
    "v1_body": "Incorrect web response: bodies don't match",
    "v1_cert": "Incorrect web response: certificates don't match",
    "v1_cipher": "Incorrect web response: cipher suites don't match",
    "v1_tls_version": "Incorrect web response: TLS versions don't match",
    "v2_echo": "echo response does not match echo request",
    "v2_discard": "discard response is not empty",
    "v2_status_do": "Status lines do not match",
    "v2_status_does": "Status lines does not match",
    "v2_body": "Bodies do not match",
    "v2_cert": "Certificates do not match",
    "v2_cipher": "Cipher suites do not match",
    "v2_tls_version": "TLS versions do not match",
    "v2_header": "header field m",
}
EXPECTED_CASES = (
    "v1_stateful",
    "v1_fail_sanity",
    "v1_blocked",
    "v1_sent_empty",
    "v1_control",
    "v1_swapped",
    "v2_stateful",
    "v2_controls_failed",
    "v2_anomaly",
    "v2_alt_port",
    "v2_control_first",
    "v2_control_last",
    "v2_only_failed_control",
    "multi_error",
    "v2_mismatch_no_error",
    "received_empty_string",
    "http_no_headers",
    "akamai",
    "body_capped",
    "v1_tls_cert",
    "v2_cert_string",
    "v2_cert_list",
    "non_ascii",
)


def test_per_scan_minimum_coverage(records_by_source: dict[str, list[Record]]) -> None:
    for source, records in records_by_source.items():
        v1 = "Server" in records[0]
        stateful = sum(r["StatefulBlock" if v1 else "stateful_block"] for r in records)
        failed = sum(r["FailSanity" if v1 else "controls_failed"] for r in records)
        blocked = sum(r["Blocked" if v1 else "anomaly"] for r in records)
        passing = sum(all(rt_ok(rt) for rt in roundtrips(r)) for r in records)
        assert stateful and failed and blocked > 20, source
        assert passing > len(records) // 3, source


def test_blockpages_match_sample_signatures(records_by_source: dict[str, list[Record]]) -> None:
    blockpage_hits: Counter[str] = Counter()
    false_positive_hits: Counter[str] = Counter()
    for _scan_type, version, rec in iter_all(records_by_source):
        anomaly = rec["Blocked"] if version == 1 else rec["anomaly"]
        for rt in roundtrips(rec):
            received = rt_received(rt)
            if not received:
                continue
            known, fingerprint = match_page(page_text(received))
            if fingerprint is None:
                continue
            assert anomaly or rec.get("StatefulBlock") or not rt_ok(rt)
            (blockpage_hits if known else false_positive_hits)[fingerprint] += 1
    assert set(blockpage_hits) == set(BLOCKPAGES), blockpage_hits
    assert set(false_positive_hits) == set(FALSE_POSITIVES), false_positive_hits


def test_certificates(records_by_source: dict[str, list[Record]]) -> None:
    kinds: Counter[str] = Counter()
    for scan_type, version, rec in iter_all(records_by_source):
        if scan_type != "https":
            continue
        domain = (rec["Keyword"] if version == 1 else rec["test_url"]).partition("/")[0]
        for rt in roundtrips(rec):
            received = rt_received(rt)
            if not isinstance(received, dict):
                continue
            raw = received["tls"]["cert"] if version == 1 else received["Certificate"]
            chain = [raw] if isinstance(raw, str) else raw
            certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain]
            leaf = certs[0]
            assert leaf.not_valid_before_utc.year in (2019, 2020)
            if len(certs) > 1:
                leaf.verify_directly_issued_by(certs[1])
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = san.value.get_values_for_type(x509.DNSName)
            if domain in names:
                kinds["match"] += 1
            elif any(n.startswith("*.") and host_matches(n, domain) for n in names):
                kinds["wildcard"] += 1
            else:
                assert not any(host_matches(n, domain) for n in names)
                kinds["mismatch"] += 1
    assert kinds["match"] and kinds["wildcard"] and kinds["mismatch"], kinds


def test_certificate_chain_is_deterministic() -> None:
    first = ss.certificate_chain(99, "match", "www.example.org")
    certs._CERT_CACHE.clear()
    certs._CA_CACHE.clear()
    assert ss.certificate_chain(99, "match", "www.example.org") == first
    assert ss.certificate_chain(98, "match", "www.example.org") != first
    leaf = x509.load_der_x509_certificate(base64.b64decode(first[0]))
    assert leaf.not_valid_before_utc == datetime(2020, 6, 1, tzinfo=UTC)
    middlebox = ss.certificate_chain(99, "middlebox")
    assert len(middlebox) == 1
    mb = x509.load_der_x509_certificate(base64.b64decode(middlebox[0]))
    assert mb.issuer == mb.subject


# ---------------------------------------------------------------------------------------
# Malformed lines and CLI
# ---------------------------------------------------------------------------------------


def classify_bad(line: bytes) -> str | None:
    """Kind of a malformed line, or ``None`` for a valid record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return "truncated" if line.startswith(b"{") else "text"
    if isinstance(obj, list):
        return "array"
    if not isinstance(obj, dict):
        return "text"
    if "Server" not in obj and "vp" not in obj:
        return "unknown_format"
    key = "Results" if "Server" in obj else "response"
    if key not in obj:
        return "missing_key"
    if not isinstance(obj[key], list):
        return "wrong_type"
    return None if is_valid_record(obj) else "other"


@pytest.mark.parametrize("ratio", [0.05, 0.2])
def test_bad_lines(tmp_path: Path, ratio: float) -> None:
    scans = [s for s in ss.DEFAULT_SCANS if s.scan_type in ("echo", "https")]
    bad_summary = ss.write_scan_archives(tmp_path / "bad", scans, 150, 5, bad_line_ratio=ratio)
    good_summary = ss.write_scan_archives(tmp_path / "good", scans, 150, 5)
    assert good_summary.bad_lines == 0
    total_bad = 0
    kinds: Counter[str] = Counter()
    for path in sorted((tmp_path / "bad" / "scans").glob("*/results.json.gz")):
        lines = read_lines(gzip.decompress(path.read_bytes()))
        good_path = tmp_path / "good" / "scans" / path.parent.name / path.name
        good_lines = read_lines(gzip.decompress(good_path.read_bytes()))
        labels = [classify_bad(line) for line in lines]
        bad = [k for k in labels if k is not None]
        assert "other" not in bad
        kinds.update(bad)
        total_bad += len(bad)
        assert abs(len(bad) / len(lines) - ratio) < 0.02
        # Bad lines are inserted; the valid records are unchanged and in order.
        assert [ln for ln, k in zip(lines, labels, strict=True) if k is None] == good_lines
    assert total_bad == bad_summary.bad_lines
    assert set(kinds) == set(ss.BAD_LINE_KINDS)


def test_render_results_ratio_zero_and_validation() -> None:
    data, n_bad = ss.render_results([], bad_line_ratio=0.3)
    assert (data, n_bad) == (b"", 0)
    with pytest.raises(ValueError):
        ss.render_results([], bad_line_ratio=1.0)
    with pytest.raises(ValueError):
        ss.generate_hyperquack_records("dns", 1, 1, 0, ss.DEFAULT_SCANS[0].start)
    with pytest.raises(ValueError):
        ss.generate_hyperquack_records("echo", 1, 1, 0, datetime(2020, 1, 1))


def test_small_sizes() -> None:
    start = ss.DEFAULT_SCANS[4].start
    assert ss.generate_hyperquack_records("echo", 2, 0, 0, start) == []
    records = ss.generate_hyperquack_records("http", 2, 3, 0, start)
    assert len(records) == 3 and all(is_valid_record(r) for r in records)


def test_every_date_has_both_families(default_out: Path) -> None:
    """The default set has Hyperquack and Satellite scans on every date (the demo's derived
    table needs both); the companion Satellite scans that make it so are smaller."""
    by_date: dict[Any, set[str]] = {}
    for spec in ss.DEFAULT_SCANS:
        day = spec.start.astimezone(UTC).date()
        assert spec.start.date() == day, "local and UTC start dates agree"
        family = "satellite" if spec.scan_type == ss.SATELLITE else "hyperquack"
        by_date.setdefault(day, set()).add(family)
    assert by_date and all(f == {"satellite", "hyperquack"} for f in by_date.values()), by_date
    assert ss.DEFAULT_SCANS == ss.HYPERQUACK_SCANS + ss.SATELLITE_SCANS + ss.COMPANION_SCANS
    reduced = [s for s in ss.DEFAULT_SCANS if s.reduced]
    assert reduced == [s for s in ss.COMPANION_SCANS if s.scan_type == ss.SATELLITE]
    assert len({ss.source_name(s.scan_type, s.start) for s in ss.DEFAULT_SCANS}) == len(
        ss.DEFAULT_SCANS
    )
    for spec in ss.DEFAULT_SCANS:
        data = gzip.decompress(
            (
                default_out
                / "scans"
                / ss.source_name(spec.scan_type, spec.start)
                / "results.json.gz"
            ).read_bytes()
        )
        expected = ss.scan_size(spec, ss.DEFAULT_SIZE)
        assert len(read_lines(data)) == expected, spec
        assert expected == (ss.DEFAULT_SIZE // 4 if spec.reduced else ss.DEFAULT_SIZE)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ss.main(["--out", str(tmp_path), "--size", "20", "--seed", "3", "--plain"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    summary = json.loads(out)
    assert summary["records"] == sum(ss.scan_size(s, 20) for s in ss.DEFAULT_SCANS)
    assert summary["files_written"] == _files_per_sample()
    assert summary["scans"] == len(ss.DEFAULT_SCANS)
    assert summary["bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    dates = sorted({s.start.astimezone(UTC).date().isoformat() for s in ss.DEFAULT_SCANS})
    assert summary["caida_dates"] == dates
    assert summary["caida_files"] == 3 * len(dates) + 1  # + the pfx2as creation log
    assert ss.main(["--out", str(tmp_path / "bare"), "--size", "2", "--no-caida"]) == 0
    assert "caida_files" not in json.loads(capsys.readouterr().out)
    assert not (tmp_path / "bare" / "caida").exists()


# ---------------------------------------------------------------------------------------
# Satellite v2.2
# ---------------------------------------------------------------------------------------

GO_TIME_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{0,8}[1-9])? -0400 EDT(?: m=\+\d+\.\d{9})?$"
)
RT_KEYS = ["url", "has_type_a", "response", "error", "rcode"]
ANSWER_KEYS = ["http", "cert", "asnum", "asname", "matched"]
SHA_RE = re.compile(r"^(?:[0-9a-f]{64})?$")
RATE_RE = re.compile(r"^[01]\.\d{4}$")
UDP_ERROR_RE = re.compile(
    r"^read udp 198\.51\.100\.185:\d+->[\d.]+:53: (?:i/o timeout|read: connection refused)$"
)


def jsonl(data: bytes) -> list[Record]:
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


@pytest.fixture(scope="module")
def sat_files(default_out: Path) -> dict[str, bytes]:
    """The extracted members of the default Satellite scan (decompressed)."""
    folder = default_out / "scans" / SATELLITE_SOURCE
    return {p.name.removesuffix(".gz"): gzip.decompress(p.read_bytes()) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def sat(sat_files: dict[str, bytes]) -> dict[str, list[Record]]:
    return {name: jsonl(data) for name, data in sat_files.items() if name.endswith(".json")}


def page_head(side: Record) -> str:
    """Status line + headers of a fetch side, as matched when bodies are dropped."""
    return page_text({**side, "body": ""})


def cert_names(chain: list[str]) -> tuple[x509.Certificate, list[str]]:
    leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return leaf, san.value.get_values_for_type(x509.DNSName)


def test_satellite_archive_layout(default_out: Path, sat_files: dict[str, bytes]) -> None:
    raw = (default_out / "archives" / SATELLITE_ARCHIVE).read_bytes()
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime 0"
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        members = tar.getmembers()
        contents = {
            m.name: f.read()
            for m in members
            if m.isfile() and (f := tar.extractfile(m)) is not None
        }
    assert members[0].name == SATELLITE_SOURCE and members[0].isdir()
    assert [m.name for m in members[1:]] == [f"{SATELLITE_SOURCE}/{n}" for n in ss.SATELLITE_FILES]
    assert {m.mtime for m in members} == {int(ss.SATELLITE_SCANS[0].start.timestamp())}
    assert {k.split("/")[1]: v for k, v in contents.items()} == sat_files
    for name, data in sat_files.items():
        if name.endswith(".json"):
            assert data and not data.endswith(b"\n"), f"{name}: no trailing newline, as real files"
    # Go-written files: compact, HTML-safe escapes; Python-written ones: json.dumps style.
    compact = {
        "results.json": b'{"confidence":{"average":',
        "resolvers.json": b'{"vp":"',
        "blockpages.json": b'{"ip":"',
    }
    for name, head in compact.items():
        assert all(line.startswith(head) for line in sat_files[name].split(b"\n")), name
    assert b"\\u003c" in sat_files["blockpages.json"] and b"<" not in sat_files["blockpages.json"]
    assert b"-\\u003e" in sat_files["results.json"], "Go escapes '->' in error strings"
    for name in ("control_pages.json", "resolvers_profile.json", "resolvers_extra.json"):
        assert sat_files[name].startswith(b'{"'), name
        assert b'", "' in sat_files[name] and sat_files[name].isascii(), name
    assert sat_files["dns.pkt"][2:6] == b"\x01\x00\x00\x01", "a recursive query, one question"
    assert b"\x01a\x0croot-servers\x03net\x00" in sat_files["dns.pkt"]


def test_satellite_deterministic_and_seeded() -> None:
    start = ss.SATELLITE_SCANS[0].start
    first = ss.build_satellite_files(120, 5, start, bad_line_ratio=0.05)
    assert first == ss.build_satellite_files(120, 5, start, bad_line_ratio=0.05)
    other, _, _ = ss.build_satellite_files(120, 6, start)
    assert all(first[0][k] != other[k] for k in ss.SATELLITE_FILES)
    assert first[1] == 120 and first[2] > 0
    assert ss.generate_satellite_scan(30, 1, start) == ss.generate_satellite_scan(30, 1, start)


def test_satellite_size_scales_resolvers_x_domains() -> None:
    start = ss.SATELLITE_SCANS[0].start
    n_domains = len(ss.satellite_domains())
    assert ss.generate_satellite_scan(0, 0, start).results == []
    for size in (7, 200, 1000):
        scan = ss.generate_satellite_scan(size, 0, start)
        assert len(scan.results) == size
        pairs = {(r["vp"], r["test_url"]) for r in scan.results}
        assert len(pairs) == size, "each (resolver, domain) is measured once"
        vps = {r["vp"] for r in scan.results}
        assert len(vps) == min(size, max(8, -(-size // n_domains)))
        assert {"1.1.1.1", "8.8.8.8"} <= vps or size < 2
    with pytest.raises(ValueError):
        ss.generate_satellite_scan(-1, 0, start)
    with pytest.raises(ValueError):
        ss.build_scan_files(ss.ScanSpec("satellite", 1, start), 10, 0)


def test_satellite_results_format(sat: dict[str, list[Record]]) -> None:
    results = sat["results.json"]
    assert len(results) == ss.DEFAULT_SIZE
    if (REAL_SATELLITE / "results.json").is_file():  # same key order as the real file
        real = json.loads((REAL_SATELLITE / "results.json").read_bytes().split(b"\n")[0])
        assert list(ss.SATELLITE_RESULT_KEYS) == list(real)
        assert list(real["response"][0]) == RT_KEYS
        assert list(next(iter(real["response"][0]["response"].values()))) == ANSWER_KEYS
    for rec in results:
        assert tuple(rec) == ss.SATELLITE_RESULT_KEYS
        assert GO_TIME_RE.match(rec["start_time"]) and GO_TIME_RE.match(rec["end_time"])
        assert "m=" not in rec["start_time"]
        assert rec["start_time"] <= rec["end_time"]
        assert rec["start_time"].startswith("2021-10-20 14:")
        conf = rec["confidence"]
        assert list(conf) == ["average", "matches", "untagged_controls", "untagged_response"]
        assert isinstance(rec["exclude_reason"], list)
        assert rec["excluded"] == bool(rec["exclude_reason"])
        assert set(rec["location"]) == {"country_name", "country_code"}
        assert rec["response"], "at least one roundtrip"
        for rt in rec["response"]:
            assert list(rt) == RT_KEYS
            assert rt["url"] in (rec["test_url"], ss.LIVENESS_DOMAIN)
            assert type(rt["rcode"]) is int and rt["rcode"] >= -1
            assert rt["error"] == "null" or UDP_ERROR_RE.match(rt["error"]), rt["error"]
            assert rt["error"] == "null" or rt["rcode"] == -1
            assert rt["has_type_a"] == bool(rt["response"])
            assert list(rt["response"]) == sorted(rt["response"]), "Go sorts map keys"
            for answer in rt["response"].values():
                assert list(answer) == ANSWER_KEYS
                assert SHA_RE.match(answer["http"]) and SHA_RE.match(answer["cert"])
                assert type(answer["asnum"]) is int
                assert answer["matched"] is None or isinstance(answer["matched"], list)
        final = rec["response"][-1]
        if final["rcode"] == 0 and final["response"]:
            assert len(conf["matches"]) == len(final["response"])
            assert conf["average"] == pytest.approx(sum(conf["matches"]) / len(conf["matches"]))
        else:
            assert conf["matches"] is None and conf["average"] == 0
        for value in (conf["average"], *(conf["matches"] or ())):
            assert type(value) is int or not float(value).is_integer(), "Go writes 100, not 100.0"
        if not rec["passed_liveness"]:
            assert rec["connect_error"] and not rec["anomaly"]
            urls = [rt["url"] for rt in rec["response"]]
            assert urls[0] == urls[-1] == ss.LIVENESS_DOMAIN


def test_satellite_case_coverage(sat: dict[str, list[Record]]) -> None:
    """Every case the pipeline must handle appears in the default Satellite scan."""
    counts: Counter[str] = Counter()
    for rec in sat["results.json"]:
        vp = rec["vp"]
        counts["control_resolver_" + vp] += vp in ("1.1.1.1", "8.8.8.8")
        counts["anomaly"] += rec["anomaly"]
        counts["passed_liveness_false"] += not rec["passed_liveness"]
        counts["connect_error"] += rec["connect_error"]
        counts["untagged_response"] += rec["confidence"]["untagged_response"]
        counts["matches_null"] += rec["confidence"]["matches"] is None
        for reason in rec["exclude_reason"]:
            counts["excluded_" + reason] += 1
        rts = rec["response"]
        counts["retries"] += len([rt for rt in rts if rt["url"] == rec["test_url"]]) > 1
        for rt in rts:
            counts[f"rcode_{rt['rcode']}"] += 1
            counts["liveness_rt"] += rt["url"] == ss.LIVENESS_DOMAIN
            counts["timeout"] += rt["error"].endswith("i/o timeout")
            counts["conn_refused"] += rt["error"].endswith("connection refused")
            counts["rcode_-1_null_error"] += rt["rcode"] == -1 and rt["error"] == "null"
            counts["empty_noerror"] += rt["rcode"] == 0 and not rt["response"]
            for ip, answer in rt["response"].items():
                counts["zero_ip"] += ip == "0.0.0.0"
                counts["localhost"] += ip == "127.0.0.1"
                counts["private"] += ip.startswith(("10.", "192.168.")) or bool(
                    re.match(r"172\.(1[6-9]|2\d|3[01])\.", ip)
                )
                counts["cdn_" + answer["asname"]] += answer["asname"] in (
                    "AMAZON-02",
                    "AKAMAI-AS",
                    "CLOUDFLARENET",
                )
                matched = answer["matched"]
                counts["matched_all"] += bool(matched) and "ip" in matched
                counts["matched_partial"] += bool(matched) and "ip" not in matched
                counts["matched_null"] += matched is None
                counts["cert_tag_empty"] += answer["cert"] == ""
    expected = [
        "control_resolver_1.1.1.1",
        "control_resolver_8.8.8.8",
        "anomaly",
        "passed_liveness_false",
        "connect_error",
        "untagged_response",
        "matches_null",
        "excluded_is_CDN",
        "excluded_domain_below_threshold",
        "retries",
        "rcode_0",
        "rcode_2",
        "rcode_3",
        "rcode_5",
        "rcode_-1",
        "liveness_rt",
        "timeout",
        "conn_refused",
        "rcode_-1_null_error",
        "empty_noerror",
        "zero_ip",
        "localhost",
        "private",
        "cdn_AMAZON-02",
        "cdn_AKAMAI-AS",
        "cdn_CLOUDFLARENET",
        "matched_all",
        "matched_partial",
        "matched_null",
        "cert_tag_empty",
    ]
    missing = [k for k in expected if not counts[k]]
    assert not missing, (missing, counts)
    assert counts["matched_all"] > len(sat["results.json"]) // 2, "most answers are normal"


def test_satellite_page_fetches(sat: dict[str, list[Record]]) -> None:
    results = sat["results.json"]
    anomalous = {
        (ip, r["test_url"]) for r in results if r["anomaly"] for ip in r["response"][-1]["response"]
    }
    control = {
        (ip, r["test_url"])
        for r in results
        if r["vp"] in ("1.1.1.1", "8.8.8.8")
        for ip in r["response"][-1]["response"]
    }
    counts: Counter[str] = Counter()
    for name, wanted in (("blockpages.json", anomalous), ("control_pages.json", control)):
        fetches = sat[name]
        keys = [(f["ip"], f["keyword"]) for f in fetches]
        assert len(keys) == len(set(keys)) and set(keys) == wanted, name
        ends = [f["end_time"] for f in fetches]
        assert ends == sorted(ends)
        for f in fetches:
            assert tuple(f) == ss.PAGE_FETCH_KEYS
            assert GO_TIME_RE.match(f["start_time"]) and " m=+" in f["start_time"]
            assert f["fetched"] == (isinstance(f["http"], dict) or isinstance(f["https"], dict))
            for side in ("http", "https"):
                value = f[side]
                if isinstance(value, str):
                    counts[f"{side}_error"] += 1
                    assert value == "EOF" or value.startswith(f'Get "{side}://{f["ip"]}:'), value
                    continue
                assert list(value)[:3] == ["status_line", "headers", "body"]
                assert list(value["headers"]) == sorted(value["headers"])
                assert "Date" in value["headers"]
                known, fingerprint = match_page(page_head(value))
                if known:
                    counts["blockpage_" + str(fingerprint)] += 1
                    assert name == "blockpages.json"
            https = f["https"]
            if not isinstance(https, dict):
                assert f["trusted_cert"] is None and f["cert_hostname_match"] is None
                continue
            assert {"TlsVersion", "CipherSuite", "Certificate"} <= set(https)
            chain = https["Certificate"]
            assert isinstance(chain, list) and chain, "2022+ format: the chain as a list"
            leaf, names = cert_names(chain)
            match = any(n == f["keyword"] or host_matches(n, f["keyword"]) for n in names)
            assert f["cert_hostname_match"] is match
            assert isinstance(f["trusted_cert"], bool)
            counts["cert_mismatch"] += not match
            counts["untrusted_ca"] += not f["trusted_cert"] and match
            counts["self_signed"] += leaf.issuer == leaf.subject
            counts["valid"] += f["trusted_cert"] and match
            counts["chain_2"] += len(chain) == 2
    for key in (
        "http_error",
        "https_error",
        "blockpage_a_prod_sampleguard_1",
        "blockpage_b_nat_sample_redirect_1",
        "cert_mismatch",
        "untrusted_ca",
        "self_signed",
        "valid",
        "chain_2",
    ):
        assert counts[key], (key, counts)
    assert any(
        isinstance(f["http"], str) and isinstance(f["https"], str) and not f["fetched"]
        for f in sat["blockpages.json"]
    ), "a sinkhole: both fetches failed"


def test_satellite_resolver_files(sat: dict[str, list[Record]]) -> None:
    vps = {r["vp"] for r in sat["results.json"]}
    resolvers = sat["resolvers.json"]
    assert all(list(r) == ["vp", "name", "location"] for r in resolvers)
    assert {r["vp"] for r in resolvers} == vps
    assert len(resolvers) == len(vps) + 1, "one duplicated line"
    lines = [json.dumps(r, sort_keys=True) for r in resolvers]
    assert len(set(lines)) == len(vps)
    assert all(r["name"].endswith(".") for r in resolvers)
    names = {r["vp"]: r["name"] for r in resolvers}
    assert names["8.8.8.8"] == "dns.google." and names["1.1.1.1"] == "one.one.one.one."
    profiles = sat["resolvers_profile.json"]
    assert all(tuple(p) == ss.PROFILE_KEYS for p in profiles)
    assert all(RATE_RE.match(p[k]) for p in profiles for k in ss.PROFILE_KEYS[1:])
    assert {p["resolver"] for p in profiles} > vps, "plus a resolver not measured in this scan"
    rates = {k: max(float(p[k]) for p in profiles) for k in ss.PROFILE_KEYS[1:]}
    assert all(v > 0 for v in rates.values()), rates
    extra = sat["resolvers_extra.json"]
    assert extra and all(tuple(e) == ss.PROFILE_KEYS for e in extra)


def _outcomes_without_beam(sat_files: dict[str, bytes]) -> tuple[Counter[str], int]:
    """Parse, join, post-process and classify the scan with the pipeline's pure functions."""
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
    from services.beam_launcher.hyperquack.parse import BadRecord, FileContext
    from services.beam_launcher.satellite import outcomes as satellite_outcomes
    from services.beam_launcher.satellite import parse as satellite
    from services.beam_launcher.satellite import post as satellite_post

    matcher = load_resources(str(SAMPLE_RESOURCES)).matcher
    roles = {name: satellite.file_role(name) for name in sat_files}
    assert roles["resolvers_extra.json"] == "unknown" and roles["dns.pkt"] == "unused"
    rows: list[Record] = []
    tags: dict[str, list[Record]] = {}
    fetches: dict[tuple[str, str], list[Record]] = {}
    bad = 0
    for name, data in sorted(sat_files.items()):
        ctx = FileContext("satellite", SATELLITE_SOURCE, name, "test")
        for line_no, raw in enumerate(data.split(b"\n"), 1):
            try:
                if roles[name] == "observations":
                    rows += satellite.flatten_observation(
                        json.loads(raw), name, line_no, raw, ctx, "2021-10-20"
                    )
                elif roles[name] == "resolver_tags":
                    ip, values = satellite.parse_resolver_tag(json.loads(raw), name)
                    tags.setdefault(ip, []).append(values)
                elif roles[name] == "page_fetches":
                    for domain, ip, fetch in satellite.parse_page_fetch(
                        json.loads(raw), matcher, False
                    ):
                        fetches.setdefault((domain, ip), []).append(fetch)
            except BadRecord:
                bad += 1
    for row in rows:
        for key, value in satellite.merge_resolver_tags(tags.get(row["resolver_ip"], [])).items():
            row[key] = value
        for answer in row["answers"]:
            for fetch in fetches.get((row["domain"], answer["ip"]), []):
                satellite.apply_page_fetch(answer, fetch)
    groups: dict[tuple[str, str], list[Record]] = {}
    for row in rows:
        groups.setdefault(satellite_post.group_key(row), []).append(row)
    rules = satellite_outcomes.load_satellite_rules()
    outcomes: Counter[str] = Counter()
    for group in groups.values():
        for row in satellite_post.post_process(group):
            outcomes[rules.classify(row)[0]] += 1
    return outcomes, bad


def test_satellite_parses_and_classifies(sat_files: dict[str, bytes]) -> None:
    outcomes, bad = _outcomes_without_beam(sat_files)
    assert bad == 0
    classes = {o.partition(":")[0] for o in outcomes}
    assert {
        "ip.matchip",
        "ip.matchasn",
        "ip.empty",
        "dns.timedout",
        "dns.connrefused",
        "tls.validcert",
        "tls.connerror",
    } <= classes, outcomes
    for outcome in (
        "dns.error:NXDomain",
        "dns.error:ServFail",
        "dns.error:Refused",
        "ip.invalid:zero",
        "ip.invalid:local_host",
        "ip.invalid:local_net",
        "http.blockpage:a_prod_sampleguard_1",
        "http.blockpage:b_nat_sample_redirect_1",
        "tls.baddomain:edge.sample-hosting.example",
        "tls.baddomain:*.sample-filter.example",
        "tls.badca:SampleGuard Inspection CA",
    ):
        assert outcomes[outcome], (outcome, outcomes)
    assert not any(o.startswith("unknown_error") for o in outcomes), outcomes


def test_go_clock_format() -> None:
    clock = satellite._GoClock(ss.SATELLITE_SCANS[0].start)
    base = epoch_ns(datetime(2021, 10, 20, 18, 51, 41, tzinfo=UTC))
    assert clock.fmt(base + 221_546_144) == "2021-10-20 14:51:41.221546144 -0400 EDT"
    assert clock.fmt(base + 335_769_350) == "2021-10-20 14:51:41.33576935 -0400 EDT"
    assert clock.fmt(base) == "2021-10-20 14:51:41 -0400 EDT"
    assert clock.fmt(base + 1, 24_069_053_224_779) == (
        "2021-10-20 14:51:41.000000001 -0400 EDT m=+24069.053224779"
    )
    assert satellite._GoClock(ss.HYPERQUACK_SCANS[0].start).fmt(base) == (
        "2021-10-20 13:51:41 -0500 EST"
    )


# ---------------------------------------------------------------------------------------
# Synthetic CAIDA files (IP metadata for the demo)
# ---------------------------------------------------------------------------------------


def _gz_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def _measured_hosts(scans_dir: Path) -> tuple[dict[str, str | None], dict[str, tuple[int, str]]]:
    """Read back from the generated scan files: server/resolver IP → the country the files
    give it (None for v1, which has none), and public answer IP → its (asnum, asname) tag."""
    hosts: dict[str, str | None] = {}
    answers: dict[str, tuple[int, str]] = {}
    for results in sorted(scans_dir.glob("*/results.json")):
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            if "Server" in rec:
                hosts.setdefault(rec["Server"], None)
                continue
            hosts[rec["vp"]] = rec["location"]["country_code"]
            if not results.parent.name.startswith("CP_Satellite-"):
                continue
            for rt in rec["response"]:
                if isinstance(rt.get("response"), dict):
                    for ip, tag in rt["response"].items():
                        if tag.get("asnum"):
                            answers[ip] = (tag["asnum"], tag["asname"])
    for resolvers in scans_dir.glob("CP_Satellite-*/resolvers.json"):
        for line in resolvers.read_text().splitlines():
            rec = json.loads(line)
            hosts[rec["vp"]] = rec["location"]["country_code"]
    return hosts, answers


def test_caida_files_cover_every_generated_host_with_its_country(tmp_path: Path) -> None:
    from services.common import ipmeta

    assert ss.main(["--out", str(tmp_path), "--size", "40", "--seed", "5", "--plain"]) == 0
    caida = tmp_path / "caida"
    hosts, answers = _measured_hosts(tmp_path / "scans")
    assert len(hosts) > 40 and len(answers) > 5
    dates = sorted({s.start.astimezone(UTC).date() for s in ss.DEFAULT_SCANS})
    log = (caida / "routing/routeviews-prefix2as/pfx2as-creation.log").read_text()
    for day in dates:
        stamp = f"{day:%Y%m%d}"
        rv = (
            caida
            / f"routing/routeviews-prefix2as/{day:%Y/%m}/routeviews-rv2-{stamp}-1200.pfx2as.gz"
        )
        assert f"\t{day:%Y/%m}/{rv.name}" in log
        enricher = ipmeta.Enricher(
            pfx2as=ipmeta.parse_pfx2as(_gz_lines(rv)),
            pfx2as_id=rv.name,
            as2org=ipmeta.parse_as2org(
                _gz_lines(caida / f"as-organizations/{stamp}.as-org2info.txt.gz")
            ),
            as2org_id=stamp,
            as2types=ipmeta.parse_as2types(
                _gz_lines(caida / f"as-classification/{stamp}.as2types.txt.gz")
            ),
            as2types_id=stamp,
        )
        countries = set()
        for ip, cc in hosts.items():
            m = enricher.lookup(ip)
            assert m.status == "ok" and m.asn and m.as_name and m.as_class, (ip, m)
            assert m.country is not None and (cc is None or m.country == cc), (ip, cc, m)
            assert m.as_full_name is not None and m.as_full_name.endswith("(synthetic)")
            countries.add(m.country)
        assert len(countries) >= 8  # the report has countries to show
        checked = 0
        for ip, (asn, asname) in answers.items():
            m = enricher.lookup(ip)
            if m.status == "special":  # documentation ranges: the enrichment keeps the tags
                continue
            assert (m.asn, m.as_name) == (asn, asname), ip  # outcomes keep their AS tags
            checked += 1
        assert checked > 5


def test_caida_files_are_deterministic(tmp_path: Path) -> None:
    from sampledata.caida import write_caida

    a = write_caida(tmp_path / "a", ss.DEFAULT_SCANS, 30, 2)
    b = write_caida(tmp_path / "b", ss.DEFAULT_SCANS, 30, 2)
    write_caida(tmp_path / "c", ss.DEFAULT_SCANS, 30, 3)
    assert a.files == b.files and a.prefixes > 0
    for rel in a.files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert any(
        (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
        for rel in a.files
    )


# ---------------------------------------------------------------------------------------
# The package: a development tool outside the runtime services
# ---------------------------------------------------------------------------------------


def _generated(root: Path, argv0: list[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run the generator as a real subprocess; its JSON summary and the files it wrote."""
    out = root / "out"
    proc = subprocess.run(
        [*argv0, "--out", str(out), "--size", "12", "--seed", "5", "--bad-line-ratio", "0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    summary.pop("out")
    return summary, _tree(out)


def test_module_and_console_script_write_the_same_sample(tmp_path: Path) -> None:
    """``python -m sampledata`` and ``cp-sample-scans`` are one program: same flags, same bytes."""
    script = Path(sys.executable).with_name("cp-sample-scans")
    if not script.exists():
        pytest.skip(f"{script} is not installed (make env installs the project's commands)")
    by_module = _generated(tmp_path / "module", [sys.executable, "-m", "sampledata"])
    by_script = _generated(tmp_path / "script", [str(script)])
    assert by_module == by_script
    summary, tree = by_module
    assert summary["scans"] == len(ss.DEFAULT_SCANS) and summary["bad_lines"] > 0
    assert sum(1 for name in tree if name.startswith("caida/")) == summary["caida_files"]
    assert tree == _generated(tmp_path / "again", [sys.executable, "-m", "sampledata"])[1]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_service_imports_the_generator() -> None:
    """The images ship ``services/``: nothing there may need the sample generator."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] == "sampledata"
        )
        for path in sorted((ROOT / "services").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert not (ROOT / "services" / "common" / "sample_scans.py").exists()


def test_images_do_not_copy_the_generator() -> None:
    """Every COPY of the build recipe names its sources; none is the generator or the
    whole build context."""
    sources: list[str] = []
    for dockerfile in sorted((ROOT / "docker").glob("Dockerfile*")):
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if words[:1] in (["COPY"], ["ADD"]) and not any(w.startswith("--from") for w in words):
                sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert sources, "no COPY line found in docker/Dockerfile*"
    assert not [s for s in sources if s.rstrip("/") in (".", "sampledata", "*")], sources
    assert not [s for s in sources if s.startswith("sampledata")], sources


@pytest.mark.parametrize("module", [scans, caida], ids=lambda m: m.__name__)
def test_docstring_examples(module: Any) -> None:
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
