"""The SQL files: loading, header directives, and safe rendering of table names.

Files under ``sql/`` named ``NN_name.sql`` form the ordered set a run executes;
``sql/internal/*.sql`` are the bookkeeping queries of the service itself. All are
BigQuery SQL. A file names tables *logically*, ``base.<table>`` (tables the launcher
writes) or ``derived.<table>`` (tables this service writes). Rendering parses the file
with sqlglot and replaces each such name, **in the AST**, by the backend's physical
table (``exp.table_`` with quoted identifiers from validated configuration). Anything
else - a name outside the whitelist, a project in a file, an unqualified table that is
not a CTE - is refused. Values reach the SQL only as named query parameters
(``@start_date``); there is no textual substitution anywhere.

Header directives are ``-- key: value`` comment lines before the first statement, for
the keys ``target`` (table written), ``mode`` (``replace``: whole table; ``partitions``:
date partitions; ``check``: read-only data-quality query) and ``check`` (its name).

Example:
    >>> f = sql_file("10_merged_reduced_scans.sql")
    >>> (f.mode, f.target, sorted(f.parameters))
    ('partitions', 'merged_reduced_scans', ['end_date', 'start_date'])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from sqlglot import exp

from services.queries.dialect import parse_bigquery
from services.queries.tables import BASE_TABLE_NAMES, DERIVED_TABLES, STATE_TABLES

SQL_DIR = Path(__file__).resolve().parent / "sql"
ORDERED_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.sql$")
_DIRECTIVE = re.compile(r"^--\s*(target|mode|check)\s*:\s*([A-Za-z0-9_]+)\s*$")
MODES = ("replace", "partitions", "check")

# Logical dataset → tables a SQL file may name in it.
LOGICAL_TABLES: Mapping[str, frozenset[str]] = {
    "base": frozenset(BASE_TABLE_NAMES),
    "derived": frozenset(t.name for t in (*DERIVED_TABLES, *STATE_TABLES)),
}


class SqlTemplateError(ValueError):
    """A SQL file breaks the rules above."""


class TableResolver(Protocol):
    def table_ref(self, dataset: str, name: str) -> exp.Table:
        """The physical table of a logical ``dataset.name``."""
        ...


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @cached_property
    def statements(self) -> tuple[exp.Expression, ...]:
        try:
            stmts = tuple(parse_bigquery(self.text))
        except Exception as exc:
            raise SqlTemplateError(f"{self.name}: does not parse as BigQuery SQL: {exc}") from exc
        if not stmts:
            raise SqlTemplateError(f"{self.name}: no statement")
        for stmt in stmts:
            logical_tables(stmt, self.name)  # validates every table name
        return stmts

    @property
    def statement(self) -> exp.Expression:
        if len(self.statements) != 1:
            raise SqlTemplateError(f"{self.name}: expected one statement")
        return self.statements[0]

    @property
    def mode(self) -> str | None:
        return self.directives.get("mode")

    @property
    def target(self) -> str | None:
        return self.directives.get("target")

    @property
    def check(self) -> str | None:
        return self.directives.get("check")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def parameters(self) -> frozenset[str]:
        return frozenset(n for s in self.statements for n in parameters(s))


def parse_directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        m = _DIRECTIVE.match(stripped)
        if m:
            out[m[1]] = m[2]
    return out


def _load(path: Path) -> SqlFile:
    text = path.read_text(encoding="utf-8")
    f = SqlFile(path.name, text, parse_directives(text))
    if f.mode is not None and f.mode not in MODES:
        raise SqlTemplateError(f"{f.name}: unknown mode {f.mode!r} (one of {MODES})")
    return f


def ordered_files(sql_dir: Path = SQL_DIR) -> list[SqlFile]:
    """The ``NN_*.sql`` files in execution order (by name)."""
    files = [_load(p) for p in sorted(sql_dir.glob("*.sql")) if ORDERED_NAME.match(p.name)]
    for f in files:
        if f.mode is None:
            raise SqlTemplateError(f"{f.name}: missing '-- mode:' directive")
        if f.mode in ("replace", "partitions") and not f.target:
            raise SqlTemplateError(f"{f.name}: missing '-- target:' directive")
        if f.mode == "check" and not f.check:
            raise SqlTemplateError(f"{f.name}: missing '-- check:' directive")
    return files


def sql_file(name: str, sql_dir: Path = SQL_DIR) -> SqlFile:
    """One file by name: ``10_x.sql`` or an internal one, ``internal/x.sql``."""
    path = sql_dir / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return _load(path)


def all_files(sql_dir: Path = SQL_DIR) -> list[SqlFile]:
    """Every SQL file (ordered set + internal), for checks."""
    return [_load(p) for p in sorted(sql_dir.rglob("*.sql"))]


def parameters(stmt: exp.Expression) -> set[str]:
    return {p.name for p in stmt.find_all(exp.Parameter)}


def _cte_names(stmt: exp.Expression) -> set[str]:
    return {cte.alias_or_name for cte in stmt.find_all(exp.CTE)}


def logical_tables(stmt: exp.Expression, where: str = "sql") -> list[tuple[str, str]]:
    """``(dataset, table)`` of every table the statement names; raises on a bad name."""
    ctes = _cte_names(stmt)
    out = []
    for table in stmt.find_all(exp.Table):
        name, db = table.name, table.db
        if not name:
            continue
        if table.catalog:
            raise SqlTemplateError(f"{where}: {table.sql('bigquery')}: no project in SQL files")
        if not db:
            if name in ctes:
                continue
            raise SqlTemplateError(
                f"{where}: table {name!r} must be written base.<table> or derived.<table>"
            )
        allowed = LOGICAL_TABLES.get(db)
        if allowed is None:
            raise SqlTemplateError(f"{where}: unknown dataset {db!r} (base or derived)")
        if name not in allowed:
            raise SqlTemplateError(f"{where}: table {db}.{name} is not a known table")
        out.append((db, name))
    return out


def render(stmt: exp.Expression, resolver: TableResolver) -> exp.Expression:
    """A copy of ``stmt`` with every logical table replaced by the physical one."""
    logical_tables(stmt)
    tree = stmt.copy()
    ctes = _cte_names(tree)
    for table in list(tree.find_all(exp.Table)):
        if not table.name or (not table.db and table.name in ctes):
            continue
        physical = resolver.table_ref(table.db, table.name)
        for arg in ("alias", "joins", "laterals", "pivots", "hints"):
            value = table.args.get(arg)
            if value:
                physical.set(arg, value)
        table.replace(physical)
    return tree


def render_all(stmts: Iterable[exp.Expression], resolver: TableResolver) -> list[exp.Expression]:
    return [render(s, resolver) for s in stmts]
