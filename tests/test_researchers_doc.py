"""Every example in docs/researchers.md runs: its fenced code blocks are taken from the
markdown and executed against a warehouse built from the generated sample scans (with
test IP metadata, so Hyperquack rows have countries), laid out as ``var/warehouse`` in a
temporary folder, as after ``make run``.

* ``sh`` blocks: ``uv run python -m …`` lines run with this interpreter; ``duckdb`` lines
  need the DuckDB CLI (skipped, with the reason, when it is not on PATH).
* ``python`` blocks: run as a script in that folder (pandas/polars examples are skipped,
  with the reason, when the package is not installed).
* ``sql duckdb`` blocks: run on the warehouse; ``sql bigquery`` blocks: parsed as
  BigQuery (sqlglot, errors raised), their columns checked against docs/tables.md, then
  translated by the queries service's translator and run on the same warehouse; a question's
  BigQuery query must return the same rows as its DuckDB query.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlglot import exp

from services.queries.dialect import parse_bigquery, to_duckdb
from tests.test_report import Warehouse, _build

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "researchers.md"
TABLES_MD = REPO / "docs" / "tables.md"
# Question 1 names a domain and a country; the test also runs it for a pair that has
# unexpected outcomes in the test warehouse, so it must find rows.
Q1_LITERALS = ("'www.voanews.com'", "'Russian Federation'")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.lang.replace(' ', '-')}@L{self.line}"


def blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```\s*$", text, flags=re.S | re.M):
        out.append(Block(m.group(1).strip(), m.group(2), text[: m.start()].count("\n") + 1))
    return out


BLOCKS = blocks()


def by_lang(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def test_the_doc_has_the_examples_it_promises() -> None:
    langs = {b.lang for b in BLOCKS}
    assert langs == {"sh", "python", "sql duckdb", "sql bigquery"}, langs
    assert len(by_lang("sql duckdb")) == 5  # five questions
    assert len(by_lang("sql bigquery")) == 6  # the first example and the five questions
    text = DOC.read_text()
    for needed in ("hive_partitioning", "read_only=True", "import pandas", "import polars"):
        assert needed in text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Warehouse]]:
    """``<tmp>/var/warehouse`` as make run leaves it; the doc's sh blocks run first."""
    wh = _build(tmp_path_factory.mktemp("docwh"), with_ip_metadata=True)
    root = tmp_path_factory.mktemp("researcher")
    (root / "var").mkdir()
    (root / "var" / "warehouse").symlink_to(wh.path)
    for b in by_lang("sh"):
        for line in _shell_lines(b):
            if line.startswith("uv run python "):
                _run_shell(root, line)
    assert (root / "var" / "export" / "merged_reduced_scans").is_dir()
    yield root, wh


def _shell_lines(b: Block) -> list[str]:
    text = re.sub(r"\\\n", " ", b.code)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _run_shell(root: Path, line: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line)
    if argv[:3] == ["uv", "run", "python"]:
        argv = [sys.executable, *argv[3:]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("block", by_lang("sh"), ids=lambda b: b.id)
def test_shell_examples_run(block: Block, workdir: tuple[Path, Warehouse]) -> None:
    root, _ = workdir
    for line in _shell_lines(block):
        program = shlex.split(line)[0]
        if program == "duckdb" and shutil.which("duckdb") is None:
            pytest.skip("the DuckDB CLI (duckdb) is not on PATH; the Python examples cover it")
        proc = _run_shell(root, line)
        if program == "duckdb":
            assert "outcome" in proc.stdout


def _missing_module(code: str) -> str | None:
    for mod in re.findall(r"^import (\w+)", code, flags=re.M):
        if importlib.util.find_spec(mod) is None:
            return mod
    return None


@pytest.mark.parametrize("block", by_lang("python"), ids=lambda b: b.id)
def test_python_examples_run(block: Block, workdir: tuple[Path, Warehouse]) -> None:
    root, _ = workdir
    missing = _missing_module(block.code)
    if missing:
        pytest.skip(f"{missing} is not installed in this environment (not a project dependency)")
    proc = subprocess.run(
        [sys.executable, "-c", block.code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the example printed nothing"


def _duck(wh: Warehouse, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with duckdb.connect(str(wh.path / "warehouse.duckdb"), read_only=True) as con:
        cur = con.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()


def _from_bigquery(sql: str) -> str:
    """The BigQuery query as DuckDB SQL on the local warehouse (base → main schema)."""
    (tree,) = parse_bigquery(sql)
    for t in tree.find_all(exp.Table):
        if t.args.get("db") is not None and t.db == "base":
            t.set("db", exp.to_identifier("main"))
    return to_duckdb(tree)


def _norm(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 9)
        if hasattr(v, "is_integer") and not isinstance(v, bool):  # Decimal
            return float(v)
        return v

    return sorted((tuple(cell(v) for v in r) for r in rows), key=repr)


def _documented_columns() -> set[str]:
    names: set[str] = set()
    for m in re.finditer(r"^\| `([a-z_.]+)` \|", TABLES_MD.read_text(), flags=re.M):
        names.update(m.group(1).split("."))
    return names


def _derived_columns() -> set[str]:
    from services.queries.tables import DERIVED_TABLES

    return {c.name for t in DERIVED_TABLES for c in t.columns}


@pytest.mark.parametrize("block", by_lang("sql bigquery"), ids=lambda b: b.id)
def test_bigquery_examples_parse_and_name_real_columns(block: Block) -> None:
    (tree,) = parse_bigquery(block.code)  # raises on any error
    aliases = {a.alias for a in tree.find_all(exp.Alias)}
    ctes = {c.alias for c in tree.find_all(exp.CTE)}
    known = _documented_columns() | _derived_columns() | aliases
    unknown = {c.name for c in tree.find_all(exp.Column)} - known
    assert not unknown, f"columns not in docs/tables.md: {unknown}"
    for t in tree.find_all(exp.Table):
        if t.name in ctes:
            continue
        assert t.db in ("base", "derived"), t.sql("bigquery")


QUESTIONS = list(zip(by_lang("sql duckdb"), by_lang("sql bigquery")[1:], strict=True))


@pytest.mark.parametrize(
    ("duck", "bq"), QUESTIONS, ids=[f"question-{i + 1}" for i in range(len(QUESTIONS))]
)
def test_questions_run_and_bigquery_equals_duckdb(
    duck: Block, bq: Block, workdir: tuple[Path, Warehouse]
) -> None:
    _, wh = workdir
    cols, rows = _duck(wh, duck.code)
    bq_cols, bq_rows = _duck(wh, _from_bigquery(bq.code))
    assert cols == bq_cols
    assert _norm(rows) == _norm(bq_rows)
    if duck is by_lang("sql duckdb")[0]:
        return  # question 1 names a pair the warehouse may not have: see the next test
    assert rows, f"{duck.id} found nothing in the sample warehouse"


def test_question_1_finds_blocking_of_a_blocked_pair(workdir: tuple[Path, Warehouse]) -> None:
    _, wh = workdir
    duck, bq = QUESTIONS[0]
    ((domain, country),) = wh.sql(
        "SELECT domain, country_name FROM derived.merged_reduced_scans "
        "WHERE domain <> 'CONTROL' GROUP BY ALL "
        "ORDER BY sum(unexpected_count) DESC NULLS LAST, domain, country_name LIMIT 1"
    )

    def swap(sql: str) -> str:
        for literal in Q1_LITERALS:
            assert sql.count(literal) == 1, literal
        return sql.replace(Q1_LITERALS[0], f"'{domain}'").replace(Q1_LITERALS[1], f"'{country}'")

    cols, rows = _duck(wh, swap(duck.code))
    assert cols == ["date", "source", "measurements", "unexpected", "unexpected_share"]
    assert rows and sum(r[3] or 0 for r in rows) > 0
    (want,) = wh.sql(
        "SELECT sum(unexpected_count) FROM derived.merged_reduced_scans "
        f"WHERE domain = '{domain}' AND country_name = '{country}'"
    )
    assert sum(r[3] or 0 for r in rows) == want[0]
    _, bq_rows = _duck(wh, _from_bigquery(swap(bq.code)))
    assert _norm(rows) == _norm(bq_rows)
