"""Generate the table docs and BigQuery JSON schemas from the row definitions.

Usage::

    python -m services.beam_launcher.warehouse.schemas --docs docs/tables.md \
        --bigquery-dir docs/bigquery
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.beam_launcher.warehouse.rows import ALL_TABLES
from services.common.rowschema import render_docs

DOCS_TITLE = "Tables written by the pipeline"

#: BigQuery SQL giving the seed's v2.1 ``success`` (``not connect_error``, one value per
#: measurement) from our rows; tests/test_pipeline_satellite.py runs it on real data.
SEED_V21_SUCCESS_SQL = """\
SELECT measurement_id, IFNULL(LOGICAL_OR(received_rcode >= 0), FALSE) AS seed_success
FROM base.satellite_scan
WHERE retry IS NOT NULL
GROUP BY measurement_id"""

SATELLITE_NOTES = f"""\
### Notes on `satellite_scan`

**Rows.** One row per DNS query. v1 records and v2.2 roundtrips are one query each. A v2.1
`results.json` record is one row per attempt: the failed attempts in their order, then
the attempt with rcode 0 (if any), which carries all the answers; `retry` numbers the test
queries of a measurement from 0 (NULL for control-domain queries) and `measurement_id`
is shared by all rows of one record.

**`success`** is a property of the row's query in every format: True when the query
got a DNS response with rcode 0 (NOERROR), else False.

* v1 (`interference*.json`, `answers_*.json`): the data has no rcode; `received_rcode`
  is 0 when the record has no `error` and -1 when it has one (`no_answer`, NXDOMAIN and
  Go error objects alike), so `success` means "no `error`" (as the seed).
* v2.1 `results.json`: the attempt's entry of `response.rcode` (NULL for an empty
  `response`: the test was never sent); only a measurement's last attempt can be a
  success.
* v2.1 `responses_control.json`: the roundtrip's `rcode`.
* v2.2 `results.json`: the roundtrip's `rcode` (as the seed).

`success` says nothing about the answers (rcode 0 without an A record is a success with
no answers: see `has_type_a` and the outcome `ip.empty`) and nothing about interference
(see `anomaly` and `outcome`).

For v2.1 the seed wrote `success = not connect_error`, the measurement's flag, on every
row of the measurement. We do not, because (1) a row is one query, and the seed's
value marked timed-out attempts (with `received_error` "... i/o timeout") and a final
ServFail or NXDOMAIN as successes; (2) the meaning would change between v2.1 and v2.2
(June 2021; the seed uses rcode 0 for v2.2), so a success rate across that date would
jump for no reason in the network. The seed's value stays available: a measurement had
`connect_error` false exactly when one of its test queries got any DNS response
(rcode >= 0):

```sql
{SEED_V21_SUCCESS_SQL}
```

No derived query reads `success`: `merged_reduced_scans` keeps each measurement's last
attempt (`retry` NULL or the highest) and groups by `outcome`, which looks at the
error, the rcode and the answers.

**`domain_controls_failed`** is `not passed_control` (v2.1, both files) or `not
passed_liveness` (v2.2), the same on every row of a measurement. v1 has no liveness
queries of a control domain per measurement (its control resolvers are rows of their own,
from `answers_control.json`), so it is NULL (unknown); the seed wrote False.
`merged_reduced_scans` keeps `domain_controls_failed = FALSE`, which leaves v1 rows out
(without effect today: v1 scans have no page fetches, so no domain of theirs is
HTTPS-capable, which that table also requires); a query that wants v1 rows must test
`domain_controls_failed IS NOT TRUE`.

**rcode -1 without an error text.** Real v2.1 data (April 2021) holds responses such as
`{{"rcode": ["-1"]}}` with no `error` list, or fewer errors than -1 rcodes. Each such
attempt is a row with `received_rcode` -1 and `received_error` NULL: the query got no
DNS response (the prober's connection-error code) and the prober did not record why.
When there are fewer errors than -1 attempts, the errors go to the -1 attempts in order,
so the last ones are the rows without text (as the seed). The outcome is `dns.timedout`
(rule `DNS-RCODE-CONNERR`, as the seed), which `merged_reduced_scans` shows as ❓ and
leaves out of `unexpected_count`. Each such row is counted: `row_warnings.rcode_error_missing`
in the run summary's `stats` and the Beam counter `satellite.row_warnings.rcode_error_missing`;
it is not a dead letter and does not count toward the file's bad-line threshold. (Earlier
versions of this pipeline made these records dead letters of class
`satellite_rcode_error_mismatch`; `--full --scan-type satellite` rebuilds such scans.)
The other row
warning, `row_warnings.confidence_matches_length_mismatch`, counts v2.2 rows whose
`confidence.matches` could not be paired with their answers (`match_confidence` left
NULL).

**Deliberate differences from the seed** in this table: `success` for v2.1 (above); v1
`domain_controls_failed` NULL instead of False (above). The other differences are listed
in `services/beam_launcher/README.md`.
"""

#: Hand-written notes appended after a table's generated column list.
TABLE_NOTES: dict[str, str] = {"satellite_scan": SATELLITE_NOTES}


def docs_text() -> str:
    """docs/tables.md: the generated column lists plus the notes of :data:`TABLE_NOTES`."""
    text = render_docs(ALL_TABLES, DOCS_TITLE)
    for spec in ALL_TABLES:
        notes = TABLE_NOTES.get(spec.name)
        if notes is None:
            continue
        block = spec.markdown()
        if text.count(block) != 1:
            raise RuntimeError(f"cannot place the notes of {spec.name}")
        text = text.replace(block, f"{block}\n{notes}")
    return text


def bigquery_files() -> dict[str, str]:
    return {
        f"{spec.name}.json": json.dumps(spec.bigquery_schema(), indent=2) + "\n"
        for spec in ALL_TABLES
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.beam_launcher.warehouse.schemas")
    p.add_argument("--docs", type=Path, help="write the Markdown table reference here")
    p.add_argument("--bigquery-dir", type=Path, help="write <table>.json BigQuery schemas here")
    args = p.parse_args(argv)
    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(docs_text())
    if args.bigquery_dir:
        args.bigquery_dir.mkdir(parents=True, exist_ok=True)
        for name, text in bigquery_files().items():
            (args.bigquery_dir / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
