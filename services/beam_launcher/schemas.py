"""Generate the table docs and BigQuery JSON schemas from the row definitions.

Usage::

    python -m services.beam_launcher.schemas --docs docs/tables.md --bigquery-dir docs/bigquery
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.beam_launcher.rows import ALL_TABLES
from services.common.rowschema import render_docs

DOCS_TITLE = "Tables written by the pipeline"


def docs_text() -> str:
    return render_docs(ALL_TABLES, DOCS_TITLE)


def bigquery_files() -> dict[str, str]:
    return {
        f"{spec.name}.json": json.dumps(spec.bigquery_schema(), indent=2) + "\n"
        for spec in ALL_TABLES
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.beam_launcher.schemas")
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
