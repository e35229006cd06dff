"""The queries summary says how many base rows merged_reduced_scans leaves out, and why.

Seeded random base rows (every filter's edge values, NULLs included) over several dates
and all scan types; the per scan type/date/reason counts of the ``dropped_rows`` check
must equal a count made here in Python from the rules, and the rows kept must equal the
derived table's ``SUM(count)``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.queries.quality import dropped_totals
from tests.test_queries_support import (
    VALID_CERT,
    answer,
    counter,
    hq_row,
    insert,
    ledger,
    run_queries,
    sat_row,
    sql,
    warehouse,
)

HQ_TYPES = ("echo", "discard", "http", "https")
# Scans far enough apart that the default 30-day quality window does not hold them all.
DATES = (dt.date(2022, 1, 10), dt.date(2022, 3, 2), dt.date(2022, 5, 20))
SETUP_PREFIXES = ("setup/", "setup.", "read/system")


def _source(scan_type: str, day: dt.date) -> str:
    stamp = f"{day:%Y-%m-%d}-01-00-00"
    return f"CP_Satellite-{stamp}" if scan_type == "satellite" else f"CP_Quack-{scan_type}-{stamp}"


def _hq_rows(rng: random.Random, day: dt.date, source: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        rows.append(
            hq_row(
                day,
                source,
                controls_failed=rng.choice((False, False, False, True, None)),
                outcome=rng.choice(
                    ("expected/match", "content/blockpage:b", "setup/x", "read/system", None)
                ),
                server_country=rng.choice(("DE", "IR", None)),
            )
        )
    return rows


def _sat_rows(rng: random.Random, day: dt.date, source: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        domain = rng.choice(("capable.example", "incapable.example", "other.example", None))
        valid = domain == "capable.example" and rng.random() < 0.5
        retries = rng.choice(((None,), (0,), (0, 1), (0, 1, 2)))
        for retry in retries:
            rows.append(
                sat_row(
                    day,
                    source,
                    f"m{i}",
                    retry=retry,
                    domain=domain,
                    domain_controls_failed=rng.choice((False, False, True, None)),
                    resolver_connect_error_rate=rng.choice((None, 0.1, 0.9)),
                    resolver_non_zero_rcode_rate=rng.choice((None, 0.2, 0.8)),
                    outcome=rng.choice(("ip.matchip", "setup.system_failure", "dns.timedout")),
                    resolver_country=rng.choice(("GB", None)),
                    answers=[answer(**VALID_CERT)] if valid else [answer()],
                )
            )
    return rows


def _setup(outcome: str | None) -> bool:
    return (outcome or "").startswith(SETUP_PREFIXES)


def _hq_reason(r: dict[str, Any]) -> str:
    if r["controls_failed"] is not False:
        return "controls_failed"
    if _setup(r["outcome"]):
        return "setup_outcome"
    return "no_country" if r["server_country"] is None else "kept"


def _sat_reasons(rows: list[dict[str, Any]]) -> list[str]:
    last: dict[tuple[dt.date, str], int] = {}
    for r in rows:
        if r["retry"] is not None:
            key = (r["date"], r["measurement_id"])
            last[key] = max(last.get(key, r["retry"]), r["retry"])
    capable = {
        (r["domain"], r["source"])
        for r in rows
        if r["domain"] is not None
        and any(a.get("https_tls_cert_matches_domain") and a.get("https_tls_cert_has_trusted_ca")
                for a in r["answers"])
    }  # fmt: skip
    out = []
    for r in rows:
        rates = (r.get("resolver_connect_error_rate"), r.get("resolver_non_zero_rcode_rate"))
        if r["retry"] is not None and r["retry"] != last[(r["date"], r["measurement_id"])]:
            out.append("not_last_retry")
        elif (r["domain"], r["source"]) not in capable:
            out.append("domain_not_https_capable")
        elif r["domain_controls_failed"] is not False:
            out.append("domain_controls_failed")
        elif any(x is not None and x > 0.75 for x in rates):
            out.append("bad_resolver")
        elif _setup(r["outcome"]):
            out.append("setup_outcome")
        elif r["resolver_country"] is None:
            out.append("no_country")
        else:
            out.append("kept")
    return out


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Counter[tuple[str, str, str]]]:
    """A warehouse of random rows, and the expected (scan type, date, reason) counts."""
    root = warehouse(tmp_path_factory.mktemp("dropped"))
    rng = random.Random(14)
    expected: Counter[tuple[str, str, str]] = Counter()
    for day in DATES:
        for scan_type in (*HQ_TYPES, "satellite"):
            source = _source(scan_type, day)
            if scan_type == "satellite":
                rows = _sat_rows(rng, day, source, 60)
                reasons = _sat_reasons(rows)
            else:
                rows = _hq_rows(rng, day, source, 50)
                reasons = [_hq_reason(r) for r in rows]
            insert(root, scan_type, rows)
            ledger(root, scan_type, source, rows_written=len(rows), lines=len(rows))
            expected.update((scan_type, day.isoformat(), r) for r in reasons)
    return root, expected


def test_drop_counts_equal_an_independent_count(
    wh: tuple[Path, Counter[tuple[str, str, str]]],
) -> None:
    root, expected = wh
    # Incremental run with the default 30-day quality window: the counts still cover every
    # date this run rebuilt.
    summary, metrics = run_queries(root, quality=True)
    assert summary.quality_window is not None and summary.quality_window[0] > "2022-03-02"
    entries = summary.quality["dropped_rows"]
    got: Counter[tuple[str, str, str]] = Counter()
    for e in entries:
        assert e["base_rows"] == e["kept"] + sum(e["dropped"].values())
        got[(e["scan_type"], e["date"], "kept")] += e["kept"]
        for reason, n in e["dropped"].items():
            got[(e["scan_type"], e["date"], reason)] += n
            assert counter(
                metrics, "cp_quality_dropped_rows", scan_type=e["scan_type"], date=e["date"],
                reason=reason,
            ) == n  # fmt: skip
    assert +got == +expected
    # Every reason shows up somewhere in this data (the generator reaches every rule).
    reasons = {r for _, _, r in expected}
    assert reasons == {
        "kept", "controls_failed", "setup_outcome", "no_country", "not_last_retry",
        "domain_not_https_capable", "domain_controls_failed", "bad_resolver",
    }  # fmt: skip

    # 'kept' is what reaches the derived table.
    derived_sums = {
        (src.lower(), day.isoformat()): n
        for src, day, n in sql(
            root, "SELECT source, date, SUM(count) FROM derived.merged_reduced_scans GROUP BY 1, 2"
        )
    }
    for (scan_type, day, reason), n in expected.items():
        if reason == "kept":
            key = ("dns" if scan_type == "satellite" else scan_type, day)
            assert derived_sums.get(key, 0) == n, (scan_type, day)

    # Per scan type totals in the summary, and they survive JSON.
    totals = json.loads(json.dumps(summary.to_dict(), default=str))["dropped_rows"]
    assert totals == dropped_totals(entries)
    for scan_type in (*HQ_TYPES, "satellite"):
        want: Counter[str] = Counter()
        for (t, _, r), n in expected.items():
            if t == scan_type:
                want[r] += n
        assert totals[scan_type]["kept"] == want.pop("kept", 0)
        assert totals[scan_type]["dropped"] == dict(+want)
        assert totals[scan_type]["base_rows"] == sum(
            n for (t, _, _), n in expected.items() if t == scan_type
        )


def test_a_scan_type_with_no_row_left_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the demo did without IP metadata: every Hyperquack row lacked a country."""
    from services.common.logsetup import configure_logging

    root = warehouse(tmp_path / "wh")
    day = DATES[0]
    rows = [hq_row(day, _source("echo", day), server_country=None) for _ in range(7)]
    rows.append(hq_row(day, _source("echo", day), controls_failed=True))
    insert(root, "echo", rows)
    ledger(root, "echo", _source("echo", day), rows_written=len(rows), lines=len(rows))
    sat = sat_row(day, _source("satellite", day), "s1", answers=[answer(**VALID_CERT)])
    insert(root, "satellite", [sat])
    ledger(root, "satellite", _source("satellite", day), rows_written=1, lines=1)
    configure_logging("INFO", stage="queries")
    capsys.readouterr()
    summary, _ = run_queries(root, quality=True)
    assert summary.dropped_rows["echo"] == {
        "base_rows": 8,
        "kept": 0,
        "dropped": {"no_country": 7, "controls_failed": 1},
    }
    assert summary.dropped_rows["satellite"] == {"base_rows": 1, "kept": 1, "dropped": {}}
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    warnings = [x for x in lines if x["severity"] == "WARNING"]
    assert [w["message"] for w in warnings] == ["scan_types_missing_from_merged_reduced_scans"]
    assert warnings[0]["scan_types"] == ["echo"]
    assert warnings[0]["detail"]["echo"]["dropped"] == {"no_country": 7, "controls_failed": 1}
    info = [x for x in lines if x["message"] == "rows_left_out_of_merged_reduced_scans"]
    assert len(info) == 1 and info[0]["by_scan_type"] == {
        "echo": {"no_country": 7, "controls_failed": 1}
    }
