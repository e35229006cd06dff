"""The embedded warehouse: Parquet files per table and date plus a DuckDB database.

Layout under ``<warehouse>``::

    warehouse.duckdb
    parquet/<table>/date=YYYY-MM-DD/<source>__<file>.parquet
    parquet/<table>/date=YYYY-MM-DD/<source>__<file>.<k>-of-<n>.parquet

Each input file owns its Parquet files per (table, date): one, or one per slice when
the run split the file into ``n`` slices processed side by side (slice ``k``, numbered
from 1 and zero-padded). Re-processing a file replaces all it wrote before, whatever
its earlier slicing: no duplicates, nothing lost. Readers glob ``date=*/*.parquet``.

The Parquet is the data. In ``warehouse.duckdb`` the scan tables and ``dead_letter`` are
views over it (``CAST`` per column to the table's DuckDB types, over
``read_parquet('<warehouse>/parquet/<table>/date=*/*.parquet', union_by_name=true)``
with the warehouse's absolute path), so a commit copies no rows; a table without files
is an empty view of the same columns. Only the ledger ``processed_files`` is a native
table. :meth:`LocalWarehouse._refresh_views` re-creates the views whenever files may have
appeared or gone and on every opening for writing, which also repoints the views of a
moved warehouse. A warehouse whose tables are native (made by earlier versions) is
converted on its first opening for writing when each table holds as many rows as its
Parquet (``warehouse_table_to_view``); otherwise the table stays as it is and a commit
refuses to write (:class:`WarehouseUnusable`, both counts) until ``--full`` rebuilds it.

The Parquet export follows the commit, never precedes it: under the exclusive lock the
staged files move to ``publishing/<run>/`` with a ``manifest.json``, one DuckDB
transaction writes the ledger, and only after ``COMMIT`` are the files renamed into
``parquet/`` and the views refreshed. A process killed in between leaves a
``publishing/<run>/`` folder; the next opening for writing finishes it when the ledger
holds that commit and deletes it otherwise (the ledger never recorded those files).

Runs side by side (a nightly run and a backfill): every opening of ``warehouse.duckdb``
holds ``.warehouse.lock`` (``flock``: shared to read, exclusive to write), so a second
launcher waits for a commit in progress (bounded, logged) instead of failing on DuckDB's
own file lock. Which run processes which file is decided by per-file leases
(:class:`LocalLeases`). A run with nothing to write opens the database read-only and
creates nothing: no empty database appears at a mistyped path.

Example:
    >>> import tempfile
    >>> wh = LocalWarehouse(tempfile.mkdtemp())
    >>> wh.ensure_tables(); wh.ledger()
    {}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import glob
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from services.beam_launcher.hyperquack.pipeline import safe_key
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.warehouse.rebuild import (
    SwitchRefused,
    TableVersion,
    WarehouseTarget,
    building_version,
    count_problems,
    find_version,
)
from services.beam_launcher.warehouse.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    PROCESSED_FILES,
    SCAN_TABLES,
)
from services.beam_launcher.warehouse.schema_versions import (
    ADDITIVE,
    BUILDING,
    LIVE,
    NEW_TABLE,
    OLD,
    SCHEMA_TABLE,
    SCHEMA_VERSIONS,
    TABLE_VERSIONS,
    TABLE_VERSIONS_SPEC,
    VERSION_FILES,
    VERSION_FILES_SPEC,
    SchemaCheck,
    SchemaRecord,
    next_version_id,
    spec_of,
)
from services.common import lifecycle
from services.common.logsetup import get_logger
from services.common.rowschema import TableSpec

DB_NAME = "warehouse.duckdb"
LOCK_NAME = lifecycle.WAREHOUSE_LOCK
PUBLISHING_DIR = "publishing"  # committed-or-not Parquet between staging and parquet/
MANIFEST_NAME = "manifest.json"
LEASE_DIR = "leases"
LEASE_MAX_AGE_S = 24 * 3600.0  # a lease of another host counts as abandoned after this
DUCKDB_MEMORY_LIMIT = "256MB"  # per connection; more spills to <warehouse>.duckdb.tmp/
# Tables whose rows are the published Parquet: views in warehouse.duckdb (the ledger is not).
PARQUET_TABLES = (*SCAN_TABLES.values(), DEAD_LETTER)


@dataclass(frozen=True)
class ViewTarget:
    """A view to keep over a Parquet folder: a stable table name or a table version."""

    name: str
    spec: TableSpec  # named ``name``
    folder: str
    stable: bool


@dataclass(frozen=True)
class LedgerEntry:
    version: str | None
    status: str
    pipeline_version: str


@dataclass
class FileVerdict:
    task: FileTask
    status: str  # ok | rejected
    reason: str
    stats: Mapping[str, int]


@dataclass
class CommitReport:
    verdicts: list[FileVerdict] = field(default_factory=list)
    rows_by_table: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> list[FileVerdict]:
        return [v for v in self.verdicts if v.status != "ok"]


def judge(
    task: FileTask,
    stats: Mapping[str, int],
    threshold: float,
    samples: Mapping[str, list[tuple[int, str]]] | None = None,
) -> FileVerdict:
    """ok, or rejected when unreadable or when bad lines exceed ``threshold`` of lines.

    The reason of a rejection for bad lines names the most frequent dead-letter classes
    and quotes the messages of their first lines (``samples``, see processing.py).

    A ``.gz`` file of 0 bytes is not gzip (reading it yields nothing, no error): rejected.
    A readable file without a line is ok, with the reason "empty" (logged as a warning).
    """
    if task.url.endswith(".gz") and task.size == 0:
        return FileVerdict(task, "rejected", "not a gzip file (0 bytes)", stats)
    if stats.get("read_errors"):
        return FileVerdict(task, "rejected", "file could not be read to the end", stats)
    lines = stats.get("lines", 0)
    bad = stats.get("dead_letters", 0)
    if lines and bad / lines > threshold:
        return FileVerdict(
            task,
            "rejected",
            f"{bad} of {lines} lines bad ({bad / lines:.1%}) exceeds threshold "
            f"{threshold:.1%}; dead letters: {dead_letter_classes(stats, samples)}",
            stats,
        )
    if not lines:
        return FileVerdict(task, "ok", "empty: the file holds no lines", stats)
    return FileVerdict(task, "ok", "", stats)


def dead_letter_classes(
    stats: Mapping[str, int],
    samples: Mapping[str, list[tuple[int, str]]] | None = None,
    top: int = 3,
) -> str:
    """The most frequent dead-letter classes of a file with the messages of their first
    lines, e.g. ``not_an_object x12 (line 1: record is a JSON list; line 2: ...)``.

    >>> dead_letter_classes({"dead_letters.x": 2}, {"x": [(1, "bad\\nthing"), (4, "worse")]})
    'x x2 (line 1: bad thing; line 4: worse)'
    """
    classes = sorted(
        ((n, k.split(".", 1)[1]) for k, n in stats.items() if k.startswith("dead_letters.")),
        key=lambda nk: (-nk[0], nk[1]),
    )
    parts = []
    for n, k in classes[:top]:
        quoted = "; ".join(
            f"line {line}: {' '.join(msg.split())}" for line, msg in (samples or {}).get(k, [])
        )
        parts.append(f"{k} x{n}" + (f" ({quoted})" if quoted else ""))
    text = ", ".join(parts)
    return (text + (" ..." if len(classes) > top else "")) or "unknown"


def memory_limit() -> str:
    """DuckDB's memory limit for writers: ``$CP_DUCKDB_MEMORY_LIMIT`` or the default.

    >>> memory_limit()
    '256MB'
    """
    limit = (os.environ.get("CP_DUCKDB_MEMORY_LIMIT") or DUCKDB_MEMORY_LIMIT).strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", limit, re.IGNORECASE):
        raise ValueError(f"CP_DUCKDB_MEMORY_LIMIT={limit!r}: expected e.g. 512MB or 2GiB")
    return limit


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def view_sql(spec: TableSpec, pattern: str | None, present: Iterable[str] = ()) -> str:
    """``CREATE OR REPLACE VIEW`` of ``spec`` over the Parquet files ``pattern`` matches
    (a glob), every column cast to the table's DuckDB type, in the table's order.

    A column none of the files holds (``present`` lists those they hold) is NULL of its
    type; without ``pattern`` the view is empty (DuckDB refuses a glob matching nothing).

    >>> from services.common.rowschema import Column, TableSpec
    >>> t = TableSpec("t", (Column("n", "INTEGER", "N"), Column("s", "STRING", "S")))
    >>> view_sql(t, None).split(" AS SELECT ")[1]
    'CAST(NULL AS BIGINT) AS "n", CAST(NULL AS VARCHAR) AS "s" WHERE false'
    >>> print(view_sql(t, "/w/*.parquet", ["n"]).replace(" FROM ", "\\n"))
    CREATE OR REPLACE VIEW "t" AS SELECT CAST("n" AS BIGINT) AS "n", CAST(NULL AS VARCHAR) AS "s"
    read_parquet('/w/*.parquet', hive_partitioning=false, union_by_name=true)
    """
    have = set(present) if pattern else set()
    cols = ", ".join(
        f"CAST({_ident(c.name) if c.name in have else 'NULL'} AS {c.duckdb_type()}) "
        f"AS {_ident(c.name)}"
        for c in spec.columns
    )
    head = f'CREATE OR REPLACE VIEW "{spec.name}" AS SELECT {cols}'
    if pattern is None:
        return head + " WHERE false"
    return (
        f"{head} FROM read_parquet({_sql_text(pattern)}, hive_partitioning=false, "
        "union_by_name=true)"
    )


class WarehouseUnusable(RuntimeError):
    """The warehouse folder cannot be created or written; the message says why."""


def create_folder(path: Path, what: str) -> None:
    """``mkdir -p`` whose error names the cause: permission, read-only filesystem, a file
    in the way, or a parent that cannot hold folders (e.g. under /proc)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        return
    except OSError as exc:
        err = exc
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    causes = {
        errno.EACCES: f"permission denied: this user may not create folders in {parent}",
        errno.EPERM: f"permission denied: this user may not create folders in {parent}",
        errno.EROFS: f"{parent} is on a read-only filesystem",
        errno.ENOTDIR: f"{parent} is a file, not a folder",
        errno.ENOSPC: f"no space left on the device of {parent}",
        errno.ENOENT: f"{parent} cannot hold new folders (missing parent or special filesystem)",
    }
    cause = causes.get(err.errno or 0, f"{type(err).__name__}: {err.strerror}")
    raise WarehouseUnusable(f"cannot create the {what} folder {path}: {cause}") from err


class LocalWarehouse:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.parquet_root = self.root / "parquet"
        self.db_path = self.root / DB_NAME

    def exists(self) -> bool:
        return self.db_path.is_file()

    @contextlib.contextmanager
    def connect(
        self, read_only: bool = False, purpose: str = "write"
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """The database under the warehouse lock; writing creates the folder and file.

        A writer caps DuckDB's memory (:data:`DUCKDB_MEMORY_LIMIT`, or
        ``$CP_DUCKDB_MEMORY_LIMIT``) so loading a big run spills to disk instead of
        growing the process.
        """
        if not read_only:
            create_folder(self.root, "warehouse")
        with lifecycle.flocked(self.root / LOCK_NAME, not read_only, purpose, "beam_launcher"):
            con = duckdb.connect(str(self.db_path), read_only=read_only)
            if not read_only:
                con.execute(f"SET memory_limit = '{memory_limit()}'")
            try:
                yield con
            finally:
                con.close()

    def ensure_tables(self) -> None:
        """Create the ledger and the views (converting tables of earlier versions)."""
        with self.connect(purpose="create tables") as con:
            self._prepare(con, strict=False)

    def schema_records(self) -> dict[str, SchemaRecord]:
        """The ``schema_versions`` rows (read-only); empty without a database or table."""
        if not self.exists():
            return {}
        with self.connect(read_only=True, purpose="read schema versions") as con:
            found = con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_name = ?",
                [SCHEMA_TABLE],
            ).fetchone()
            if not found or not found[0]:
                return {}
            rows = con.execute(
                "SELECT table_name, schema_version, schema_hash, columns, pipeline_version "
                f"FROM {_ident(SCHEMA_TABLE)}"
            ).fetchall()
        return {r[0]: SchemaRecord(r[0], r[1], r[2], orjson.loads(r[3]), r[4]) for r in rows}

    def apply_schema(
        self, check: SchemaCheck, pipeline_version: str, rebuilt: Iterable[str] = ()
    ) -> list[str]:
        """Migrate additive changes in place and record the code's schema versions of the
        tables that are new, additive or ``rebuilt`` (by ``--full``); returns the tables
        recorded.

        The views are re-created from the new definitions (a column or RECORD field the
        older Parquet lacks reads as NULL: ``union_by_name`` and DuckDB's by-name STRUCT
        casts); a native table gets ``ALTER TABLE … ADD COLUMN``. Idempotent: a run killed
        half-way leaves the old record, and the next run does what is left.
        """
        specs = {s.name: s for s in ALL_TABLES}
        record = [*check.of_kind(NEW_TABLE, ADDITIVE), *rebuilt]
        if not record:
            return []
        with self.connect(purpose="schema migration") as con:
            self._prepare(con, strict=False)
            kinds = _table_kinds(con)
            statements: list[str] = []
            for table in check.of_kind(ADDITIVE):
                if kinds.get(table) != "BASE TABLE":
                    continue  # a view: re-created below
                have = {r[0] for r in con.execute(f"DESCRIBE {_ident(table)}").fetchall()}
                nested = [a for a in check.changes[table].added if "." in a]
                if nested:
                    raise WarehouseUnusable(
                        f"table {table} of {self.db_path} is a native table and cannot gain "
                        f"the RECORD fields {', '.join(nested)} in place"
                    )
                statements += [
                    f"ALTER TABLE {_ident(table)} ADD COLUMN {_ident(c.name)} {c.duckdb_type()}"
                    for c in specs[table].columns
                    if c.name not in have
                ]
            views = {s.name for s in PARQUET_TABLES}
            now = dt.datetime.now(dt.UTC)
            recs = [SchemaRecord.of(specs[t], pipeline_version) for t in record]
            con.execute("BEGIN")
            try:
                for sql in statements:
                    con.execute(sql)
                con.execute(
                    f"DELETE FROM {_ident(SCHEMA_TABLE)} "
                    "WHERE table_name IN (SELECT unnest(?::VARCHAR[]))",
                    [record],
                )
                con.executemany(
                    f"INSERT INTO {_ident(SCHEMA_TABLE)} VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (r.table, r.version, r.hash, r.columns_json(), r.pipeline_version, now)
                        for r in recs
                    ],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            # The views follow the recorded columns (a kill before this: the next opening
            # finds a view whose columns differ from the record and re-creates it).
            self._refresh_views(
                con, strict=False, force=[t for t in check.of_kind(ADDITIVE) if t in views]
            )
        return record

    def refresh_views(self) -> None:
        """Re-create every view from the Parquet files present (e.g. after files were
        added or removed by hand)."""
        with self.connect(purpose="refresh views") as con:
            self._prepare(con, strict=False)
            self._refresh_views(con, strict=False, force=[s.name for s in PARQUET_TABLES])

    def _prepare(self, con: duckdb.DuckDBPyConnection, strict: bool | set[str]) -> list[str]:
        """What every opening for writing does first: the ledger table, interrupted
        publishes finished (see :meth:`_finish_publishes`), views refreshed."""
        con.execute(PROCESSED_FILES.duckdb_ddl())
        con.execute(SCHEMA_VERSIONS.duckdb_ddl())
        done = self._finish_publishes(con)
        self._refresh_views(con, strict, force=[s.name for s in PARQUET_TABLES] if done else [])
        return done

    def _pattern(self, folder: str) -> str:
        """The glob of a Parquet folder's published files (absolute)."""
        return str(self.parquet_root.absolute() / folder / "date=*" / "*.parquet")

    def _has_files(self, folder: str) -> bool:
        base = glob.escape(str(self.parquet_root.absolute() / folder))
        return next(glob.iglob(base + "/date=*/*.parquet"), None) is not None

    @staticmethod
    def _versions(con: duckdb.DuckDBPyConnection) -> list[TableVersion]:
        """The ``table_versions`` rows (none before the first rebuild beside)."""
        if TABLE_VERSIONS not in _table_kinds(con):
            return []
        rows = con.execute(
            "SELECT table_name, version_id, folder, schema_version, schema_hash, columns, state "
            f"FROM {TABLE_VERSIONS} ORDER BY table_name, created_at, version_id"
        ).fetchall()
        return [TableVersion(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), r[6]) for r in rows]

    @staticmethod
    def _records(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
        """Recorded columns per table (``schema_versions``)."""
        if SCHEMA_TABLE not in _table_kinds(con):
            return {}
        rows = con.execute(f"SELECT table_name, columns FROM {SCHEMA_TABLE}").fetchall()
        return {r[0]: orjson.loads(r[1]) for r in rows}

    def _live_folders(self, con: duckdb.DuckDBPyConnection) -> dict[str, str]:
        """The Parquet folder each stable table name reads (its own name until a switch)."""
        live = {v.table: v.folder for v in self._versions(con) if v.state == LIVE}
        return {s.name: live.get(s.name, s.name) for s in PARQUET_TABLES}

    def _view_targets(self, con: duckdb.DuckDBPyConnection) -> list[ViewTarget]:
        """Every view to keep: the stable names over their live folders, with the recorded
        columns (the code's before a first record), and one view per table version."""
        records = self._records(con)
        folders = self._live_folders(con)
        out = [
            ViewTarget(
                s.name,
                spec_of(s.name, records[s.name]) if s.name in records else s,
                folders[s.name],
                True,
            )
            for s in PARQUET_TABLES
        ]
        for v in self._versions(con):
            cols = records.get(v.table, v.columns) if v.state == LIVE else v.columns
            out.append(ViewTarget(v.name, spec_of(v.name, cols), v.folder, False))
        return out

    def _refresh_views(
        self,
        con: duckdb.DuckDBPyConnection,
        strict: bool | set[str],
        force: Iterable[str] = (),
        complete: Iterable[str] = (),
    ) -> None:
        """(Re)create the views over the Parquet files present, in one transaction: the
        stable table names over their live folders and one view per table version
        (:meth:`_view_targets`). Re-created are those in ``force`` (by view or folder name:
        their files changed) and those whose view does not have the form the files call
        for (no view yet, empty while files exist or the reverse, over another folder: a
        moved warehouse, or other columns than recorded). Binding a view reads the footer
        of each of its files (``union_by_name``), so views already right are left alone,
        also a forced one whose folder is in ``complete`` (its new files hold every
        column) whose view already reads every column from the files.

        A native table of an earlier version becomes its view when it holds as many rows
        as its Parquet (logged ``warehouse_table_to_view``). When it does not, it is left
        as it is: logged as an error, or with ``strict`` (before a commit; a set: only for
        the stable tables named in it, those the commit writes) raised as
        :class:`WarehouseUnusable` naming both counts and the fix (``--full``).
        """
        kinds = _table_kinds(con)
        views = dict(
            con.execute(
                "SELECT view_name, sql FROM duckdb_views() "
                "WHERE schema_name = 'main' AND NOT internal"
            ).fetchall()
        )
        view_cols: dict[str, list[str]] = {}
        for name, col in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE schema_name = 'main' ORDER BY table_name, column_index"
        ).fetchall():
            view_cols.setdefault(name, []).append(col)
        forced, full = set(force), set(complete)
        log = get_logger("beam_launcher")
        statements: list[str] = []
        converted: list[tuple[str, int]] = []
        for target in self._view_targets(con):
            spec = target.spec
            if not target.stable and kinds.get(target.name) == "BASE TABLE":
                continue  # a native table of an earlier version, renamed by a switch
            pattern = self._pattern(target.folder) if self._has_files(target.folder) else None
            current = views.get(target.name)
            right_form = (
                current is not None
                and view_cols.get(target.name) == list(spec.column_names)
                and (
                    "read_parquet" not in current  # empty, and no file
                    if pattern is None
                    else f"read_parquet({_sql_text(pattern)}" in current  # this warehouse's
                )
            )
            is_forced = target.name in forced or target.folder in forced
            if right_form and (
                not is_forced or (target.folder in full and "CAST(NULL" not in str(current))
            ):
                continue
            try:
                present: list[str] = []
                if pattern is not None:
                    present = [
                        r[0]
                        for r in con.execute(
                            f"DESCRIBE SELECT * FROM read_parquet({_sql_text(pattern)}, "
                            "hive_partitioning=false, union_by_name=true)"
                        ).fetchall()
                    ]
                if target.stable and kinds.get(spec.name) == "BASE TABLE":
                    rows = con.execute(f"SELECT count(*) FROM {_ident(spec.name)}").fetchone()
                    in_files = (
                        con.execute(
                            f"SELECT count(*) FROM read_parquet({_sql_text(pattern)}, "
                            "hive_partitioning=false, union_by_name=true)"
                        ).fetchone()
                        if pattern is not None
                        else (0,)
                    )
                    n_rows, n_files = (rows or (0,))[0], (in_files or (0,))[0]
                    if n_rows != n_files:
                        scan_types = [t for t, s in SCAN_TABLES.items() if s.name == spec.name]
                        message = (
                            f"table {spec.name} of {self.db_path} is a table of an earlier "
                            f"version holding {n_rows} rows, but its Parquet "
                            f"({pattern or self.parquet_root / target.folder}) holds "
                            f"{n_files}, so it cannot become a view of that Parquet; rerun the "
                            "launcher with --full --scan-type "
                            f"{scan_types[0] if scan_types else 'all'} to rebuild it from "
                            "the scans"
                        )
                        if strict is True or (isinstance(strict, set) and spec.name in strict):
                            raise WarehouseUnusable(message)
                        log.error("warehouse_table_mismatch", table=spec.name, reason=message)
                        continue
                    statements.append(f"DROP TABLE {_ident(spec.name)}")
                    converted.append((spec.name, n_rows))
            except duckdb.Error as exc:
                raise WarehouseUnusable(
                    f"the Parquet of table {target.name} ({self._pattern(target.folder)}) "
                    f"cannot be read: {' '.join(str(exc).split())}"
                ) from exc
            statements.append(view_sql(spec, pattern, present))
        con.execute("BEGIN")
        try:
            for sql in statements:
                con.execute(sql)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for table, n in converted:
            log.info("warehouse_table_to_view", table=table, rows=n, db=str(self.db_path))

    def ledger(self, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        """The ledger (only ``keys`` when given), read-only; empty without a database."""
        if not self.exists():
            return {}
        sql = "SELECT file_key, version, status, pipeline_version FROM processed_files"
        with self.connect(read_only=True, purpose="read the ledger") as con:
            found = con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_name = 'processed_files'"
            ).fetchone()
            if not found or not found[0]:
                return {}
            if keys is None:
                rows = con.execute(sql).fetchall()
            else:
                rows = con.execute(
                    sql + " WHERE file_key IN (SELECT unnest(?::VARCHAR[]))", [sorted(keys)]
                ).fetchall()
        return {r[0]: LedgerEntry(r[1], r[2], r[3]) for r in rows}

    def ledger_rows(self, scan_types: Iterable[str]) -> list[tuple[str, str, int, int]]:
        """(scan type, pipeline version, rows, files) of the ok ledger rows, read-only."""
        if not self.exists():
            return []
        with self.connect(read_only=True, purpose="read the ledger") as con:
            found = con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_name = 'processed_files'"
            ).fetchone()
            if not found or not found[0]:
                return []
            rows = con.execute(
                "SELECT scan_type, pipeline_version, sum(rows_written), count(*) "
                "FROM processed_files WHERE status = 'ok' "
                "AND scan_type IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1, 2 ORDER BY 1, 2",
                [sorted(set(scan_types))],
            ).fetchall()
        return [(r[0], r[1], int(r[2] or 0), int(r[3])) for r in rows]

    # -- table versions: a rebuild beside the live table, then the switch ------------------

    def start_rebuild(
        self, tables: Iterable[str], pipeline_version: str
    ) -> dict[str, TableVersion]:
        """Register, or resume, a building version of each scan table in ``tables`` with
        the code's columns (``<table>__v<N>``: its own Parquet folder, view and ledger
        scope); returns table -> that version. A building version of other columns (an
        abandoned rebuild of other code) becomes ``old``. The stable views do not change.
        """
        specs = {s.name: s for s in SCAN_TABLES.values()}
        log = get_logger("beam_launcher")
        out: dict[str, TableVersion] = {}
        created: list[TableVersion] = []
        with self.connect(purpose="start a rebuild beside") as con:
            self._prepare(con, strict=False)
            con.execute(TABLE_VERSIONS_SPEC.duckdb_ddl())
            con.execute(VERSION_FILES_SPEC.duckdb_ddl())
            recorded = {
                r[0]: (int(r[1]), r[2], orjson.loads(r[3]))
                for r in con.execute(
                    f"SELECT table_name, schema_version, schema_hash, columns FROM {SCHEMA_TABLE}"
                ).fetchall()
            }
            versions = self._versions(con)
            now = dt.datetime.now(dt.UTC)
            insert = f"INSERT INTO {TABLE_VERSIONS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            con.execute("BEGIN")
            try:
                for table in sorted(set(tables)):
                    code = SchemaRecord.of(specs[table], pipeline_version)
                    mine = [v for v in versions if v.table == table]
                    resumed = [
                        v for v in mine if v.state == BUILDING and v.schema_hash == code.hash
                    ]
                    if resumed:
                        out[table] = resumed[-1]
                        continue
                    for v in mine:
                        if v.state == BUILDING:
                            con.execute(
                                f"UPDATE {TABLE_VERSIONS} SET state = ? "
                                "WHERE table_name = ? AND version_id = ?",
                                [OLD, table, v.version_id],
                            )
                            log.warning("rebuild_abandoned", version=v.name, reason="other columns")
                    taken = [v.version_id for v in mine]
                    if not any(v.state == LIVE for v in mine):  # the table as it is now
                        rec_version, rec_hash, rec_cols = recorded.get(
                            table, (code.version, code.hash, code.columns)
                        )
                        live_id = next_version_id(rec_version, taken)
                        taken.append(live_id)
                        con.execute(
                            insert,
                            [
                                table,
                                live_id,
                                table,
                                rec_version,
                                rec_hash,
                                orjson.dumps(rec_cols).decode(),
                                LIVE,
                                pipeline_version,
                                now,
                                None,
                            ],
                        )
                    new = building_version(code, taken)
                    vid = new.version_id
                    con.execute(
                        insert,
                        [
                            table,
                            vid,
                            new.folder,
                            new.schema_version,
                            new.schema_hash,
                            code.columns_json(),
                            BUILDING,
                            pipeline_version,
                            now,
                            None,
                        ],
                    )
                    out[table] = new
                    created.append(new)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            for v in created:  # a folder no version owns (left by a crash): not anyone's data
                shutil.rmtree(self.parquet_root / v.folder, ignore_errors=True)
            self._refresh_views(con, strict=False)
        for table, v in out.items():
            log.info(
                "rebuild_beside",
                table=table,
                version=v.name,
                resumed=v not in created,
                schema_version=v.schema_version,
            )
        return out

    def building(self) -> dict[str, TableVersion]:
        """Table -> its building version (read-only; empty without any)."""
        if not self.exists():
            return {}
        with self.connect(read_only=True, purpose="read table versions") as con:
            return {v.table: v for v in self._versions(con) if v.state == BUILDING}

    def version_ledger(self, builds: Mapping[str, TableVersion]) -> dict[str, LedgerEntry]:
        """The ledger of building versions (``version_files``), read-only."""
        names = sorted(v.name for v in builds.values())
        if not names or not self.exists():
            return {}
        with self.connect(read_only=True, purpose="read a version's ledger") as con:
            if VERSION_FILES not in _table_kinds(con):
                return {}
            rows = con.execute(
                "SELECT file_key, version, status, pipeline_version FROM version_files "
                "WHERE table_version IN (SELECT unnest(?::VARCHAR[]))",
                [names],
            ).fetchall()
        return {r[0]: LedgerEntry(r[1], r[2], r[3]) for r in rows}

    def _count_problems(self, con: duckdb.DuckDBPyConnection, v: TableVersion) -> list[str]:
        """Where a version's Parquet disagrees with its ledger: rows per date (from
        ``rows_by_date``; a ledger without it, e.g. of a version that was live, is
        compared in total with ``rows_written``). Empty: they agree."""
        if v.state == LIVE:
            scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == v.table)
            ledger = con.execute(
                "SELECT NULL, rows_written FROM processed_files WHERE scan_type = ? "
                "AND status = 'ok'",
                [scan_type],
            ).fetchall()
        else:
            ledger = con.execute(
                "SELECT rows_by_date, rows_written FROM version_files WHERE table_version = ? "
                "AND status = 'ok'",
                [v.name],
            ).fetchall()
        in_files: dict[str, int] = {}
        for day in sorted((self.parquet_root / v.folder).glob("date=*")):
            files = sorted(str(f) for f in day.glob("*.parquet"))
            if files:
                found = con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()
                in_files[day.name.removeprefix("date=")] = int((found or (0,))[0])
        return count_problems(in_files, [(r[0], r[1]) for r in ledger], "in its Parquet")

    def finish_rebuild(
        self,
        build: TableVersion,
        expected: Mapping[str, str | None],
        pipeline_version: str,
    ) -> dict[str, Any]:
        """Check a building version and switch the stable name to it when it is complete:
        every file of ``expected`` (file_key -> version, all the input's files of its scan
        type) ok in its ledger with that version, also every file the live ledger took
        since the rebuild began, and its rows per date equal to its ledger's. Returns
        what was found (``state``: ``switched`` or ``building``)."""
        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == build.table)
        _test_pause_point("before_switch_check")
        with self.connect(purpose="check and switch a rebuild") as con:
            self._prepare(con, strict=False)
            current = next((v for v in self._versions(con) if v.name == build.name), None)
            report: dict[str, Any] = {"table": build.table, "version": build.name}
            if current is None or current.state != BUILDING:
                report["state"] = current.state if current else "dropped"
                return report
            ledger = {
                r[0]: (r[1], r[2])
                for r in con.execute(
                    "SELECT file_key, version, status FROM version_files WHERE table_version = ?",
                    [build.name],
                ).fetchall()
            }
            since = [
                r[0]
                for r in con.execute(
                    "SELECT file_key FROM processed_files WHERE scan_type = ? AND status = 'ok' "
                    f"AND processed_at >= (SELECT created_at FROM {TABLE_VERSIONS} "
                    "WHERE table_name = ? AND version_id = ?)",
                    [scan_type, build.table, build.version_id],
                ).fetchall()
            ]
            missing = sorted(
                k for k, version in expected.items() if ledger.get(k) != (version, "ok")
            )
            missing += sorted(
                k for k in since if k not in expected and ledger.get(k, ("", ""))[1] != "ok"
            )
            report.update(
                files_expected=len(expected),
                files_done=sum(1 for k in expected if k not in missing),
                files_missing=len(missing),
            )
            if missing:
                report.update(state=BUILDING, first_missing=missing[0])
                return report
            problems = self._count_problems(con, current)
            if problems:
                report.update(state=BUILDING, count_problems=problems)
                return report
            self._switch(con, current, pipeline_version)
            report["state"] = "switched"
            return report

    def switch(self, table: str, version_id: str, pipeline_version: str) -> dict[str, Any]:
        """Point the stable name ``table`` at an existing version (e.g. back to the old
        one: a rollback) once its rows per date equal its ledger's."""
        with self.connect(purpose="switch a table version") as con:
            self._prepare(con, strict=False)
            target, previous = find_version(self._versions(con), table, version_id)
            if target.state == LIVE:
                return {"table": table, "version": target.name, "state": "already live"}
            problems = self._count_problems(con, target)
            if problems:
                raise SwitchRefused(
                    f"{target.name} disagrees with its ledger: {'; '.join(problems)}"
                )
            self._switch(con, target, pipeline_version)
        return {"table": table, "version": target.name, "state": "switched", "previous": previous}

    def _switch(
        self, con: duckdb.DuckDBPyConnection, target: TableVersion, pipeline_version: str
    ) -> None:
        """One transaction: the live version's ledger rows move to ``version_files``, the
        target's into ``processed_files``, the states and the schema record follow, and
        one ``CREATE OR REPLACE VIEW`` points the stable name at the target's folder (a
        native table of an earlier version is renamed to its version's name first)."""
        table = target.table
        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == table)
        live = next((v for v in self._versions(con) if v.table == table and v.state == LIVE), None)
        cols = ", ".join(map(_ident, PROCESSED_FILES.column_names))
        spec = spec_of(table, target.columns)
        pattern = self._pattern(target.folder) if self._has_files(target.folder) else None
        present = (
            [
                r[0]
                for r in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({_sql_text(pattern)}, "
                    "hive_partitioning=false, union_by_name=true)"
                ).fetchall()
            ]
            if pattern
            else []
        )
        now = dt.datetime.now(dt.UTC)
        con.execute("BEGIN")
        try:
            if live is not None:
                con.execute(
                    f"INSERT INTO {VERSION_FILES} (table_version, {cols}) "
                    f"SELECT ?, {cols} FROM processed_files WHERE scan_type = ?",
                    [live.name, scan_type],
                )
                con.execute(
                    f"UPDATE {TABLE_VERSIONS} SET state = ? WHERE table_name = ? "
                    "AND version_id = ?",
                    [OLD, table, live.version_id],
                )
            con.execute("DELETE FROM processed_files WHERE scan_type = ?", [scan_type])
            con.execute(
                f"INSERT INTO processed_files ({cols}) SELECT {cols} FROM {VERSION_FILES} "
                "WHERE table_version = ?",
                [target.name],
            )
            con.execute(f"DELETE FROM {VERSION_FILES} WHERE table_version = ?", [target.name])
            con.execute(
                f"UPDATE {TABLE_VERSIONS} SET state = ?, switched_at = ? WHERE table_name = ? "
                "AND version_id = ?",
                [LIVE, now, table, target.version_id],
            )
            con.execute(f"DELETE FROM {SCHEMA_TABLE} WHERE table_name = ?", [table])
            con.execute(
                f"INSERT INTO {SCHEMA_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
                [
                    table,
                    target.schema_version,
                    target.schema_hash,
                    orjson.dumps(target.columns).decode(),
                    pipeline_version,
                    now,
                ],
            )
            if _table_kinds(con).get(table) == "BASE TABLE" and live is not None:
                # the native table is that version's rows (not its view over the folder)
                con.execute(f"DROP VIEW IF EXISTS {_ident(live.name)}")
                con.execute(f"ALTER TABLE {_ident(table)} RENAME TO {_ident(live.name)}")
            _test_kill_point("before_switch")
            con.execute(view_sql(spec, pattern, present))  # the switch readers see
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._refresh_views(con, strict=False)
        get_logger("beam_launcher").info(
            "table_switched",
            table=table,
            version=target.name,
            previous=live.name if live else None,
        )

    def drop_version(self, table: str, version_id: str) -> dict[str, Any]:
        """Remove a version that is not live: its view, ledger rows, record and Parquet."""
        with self.connect(purpose="drop a table version") as con:
            self._prepare(con, strict=False)
            target, _live = find_version(self._versions(con), table, version_id)
            if target.state == LIVE:
                raise SwitchRefused(
                    f"{target.name} is live (readers of {table} read it): switch {table} to "
                    "another version first"
                )
            kind = _table_kinds(con).get(target.name)
            con.execute("BEGIN")
            try:
                if kind == "VIEW":
                    con.execute(f"DROP VIEW {_ident(target.name)}")
                elif kind == "BASE TABLE":
                    con.execute(f"DROP TABLE {_ident(target.name)}")
                con.execute(f"DELETE FROM {VERSION_FILES} WHERE table_version = ?", [target.name])
                con.execute(
                    f"DELETE FROM {TABLE_VERSIONS} WHERE table_name = ? AND version_id = ?",
                    [table, version_id],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            if target.folder not in self._live_folders(con).values():
                shutil.rmtree(self.parquet_root / target.folder, ignore_errors=True)
        get_logger("beam_launcher").info("table_version_dropped", version=target.name)
        return {"table": table, "version": target.name, "state": "dropped"}

    def table_versions(self) -> list[dict[str, Any]]:
        """Every table version with its state, files in its ledger and rows (read-only)."""
        if not self.exists():
            return []
        out: list[dict[str, Any]] = []
        with self.connect(read_only=True, purpose="read table versions") as con:
            for v in self._versions(con):
                scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == v.table)
                files = (
                    con.execute(
                        "SELECT count(*) FILTER (status = 'ok') FROM processed_files "
                        "WHERE scan_type = ?",
                        [scan_type],
                    )
                    if v.state == LIVE
                    else con.execute(
                        "SELECT count(*) FILTER (status = 'ok') FROM version_files "
                        "WHERE table_version = ?",
                        [v.name],
                    )
                ).fetchone()
                rows = con.execute(f"SELECT count(*) FROM {_ident(v.name)}").fetchone()
                out.append(
                    v.listing(
                        folder=v.folder,
                        ok_files=int((files or (0,))[0]),
                        rows=int((rows or (0,))[0]),
                    )
                )
        return out

    def _final_files(self, table: str, key: str) -> list[Path]:
        """Every published file of input ``key`` in ``table``: ``<key>.parquet`` and the
        slices ``<key>.<k>-of-<n>.parquet`` (of any earlier slicing)."""
        sliced = re.compile(re.escape(key) + r"\.\d+-of-\d+\.parquet")
        return sorted(
            path
            for path in (self.parquet_root / table).glob(f"date=*/{glob.escape(key)}.*parquet")
            if path.name == f"{key}.parquet" or sliced.fullmatch(path.name)
        )

    def _stage_for_publish(
        self,
        staging: Path,
        folder: Path,
        table: str,
        key: str,
        manifest: dict[str, Any],
        dest: str | None = None,
        by_date: dict[str, list[Path]] | None = None,
    ) -> list[Path]:
        """Move the file's staged Parquet of ``table`` into ``folder`` (the run's
        publishing folder) and note in ``manifest`` where each goes after the commit: the
        Parquet folder ``dest`` (default: ``table``). ``by_date`` collects the moved files
        per date."""
        target = dest or table
        manifest["units"].append([target, key])
        moved: list[Path] = []
        for staged in sorted((staging / table / key).glob("date=*.parquet")):
            name = f"{len(manifest['files']):06d}.parquet"
            shutil.move(str(staged), folder / name)
            # date=<d>.parquet, or date=<d>.<k>-of-<n>.parquet for slice k of n
            date, dot, part = staged.stem.partition(".")
            manifest["files"].append([name, f"{target}/{date}/{key}{dot}{part}.parquet"])
            moved.append(folder / name)
            if by_date is not None:
                by_date.setdefault(date.removeprefix("date="), []).append(folder / name)
        return moved

    def _publish(self, folder: Path, manifest: Mapping[str, Any]) -> None:
        """Replace the units' Parquet files by the committed ones (atomic renames).

        Idempotent, so a publish cut short is finished by running it again: a unit's old
        files are removed unless the manifest writes them, then every file still in the
        publishing folder is renamed into place.
        """
        dests = {dest for _name, dest in manifest["files"]}
        for table, key in manifest["units"]:
            for old in self._final_files(table, key):
                if str(old.relative_to(self.parquet_root)) not in dests:
                    old.unlink()
        for name, dest in manifest["files"]:
            src, target = folder / name, self.parquet_root / dest
            if src.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, target)

    def _finish_publishes(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Publishing folders of runs that died (the caller holds the exclusive lock, under
        which every publish runs to its end): publish those whose commit is in the ledger,
        delete the others. Returns what was done, e.g. ``["published <run>"]``."""
        done: list[str] = []
        root = self.root / PUBLISHING_DIR
        for folder in sorted(p for p in root.glob("*") if p.is_dir()):
            manifest_path = folder / MANIFEST_NAME
            manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else None
            committed = False
            if manifest and manifest.get("ledger_keys"):
                ledgers = ["processed_files"]  # and the ledger of versions built beside
                if VERSION_FILES in _table_kinds(con):
                    ledgers.append(VERSION_FILES)
                for ledger in ledgers:
                    found = con.execute(
                        f"SELECT count(*) FROM {ledger} WHERE run_id = ? "
                        "AND file_key IN (SELECT unnest(?::VARCHAR[]))",
                        [manifest["run_id"], manifest["ledger_keys"]],
                    ).fetchone()
                    committed = committed or bool(found and found[0])
            if committed:
                self._publish(folder, manifest)  # type: ignore[arg-type]
            shutil.rmtree(folder, ignore_errors=True)
            done.append(f"{'published' if committed else 'discarded'} {folder.name}")
        return done

    def finish_publishes(self) -> list[str]:
        """Finish or discard what killed runs left in ``publishing/`` (no-op without it)."""
        root = self.root / PUBLISHING_DIR
        if not self.exists() or not root.is_dir() or not any(root.iterdir()):
            return []
        with self.connect(purpose="finish interrupted publishes") as con:
            return self._prepare(con, strict=False)

    def commit(
        self,
        run_id: str,
        verdicts: list[FileVerdict],
        staging_dir: str,
        builds: Mapping[str, TableVersion] | None = None,
    ) -> CommitReport:
        """Record the judged files in the ledger (one transaction), then publish their
        staged Parquet and refresh the views (see the module docstring).

        ``builds`` (table -> a building version): the rows of those tables go into the
        version's folder and its files into its ledger (``version_files``) instead of the
        live table and ``processed_files``; the stable views do not change.
        """
        started = time.monotonic()
        report = CommitReport(verdicts=verdicts)
        staging = Path(staging_dir)
        builds = dict(builds or {})
        with self.connect(purpose="commit") as con:
            written = {SCAN_TABLES[v.task.scan_type].name for v in verdicts} - set(builds)
            self._prepare(con, strict={*written, DEAD_LETTER.name})
            folder = self.root / PUBLISHING_DIR / staging.name
            create_folder(folder, "publishing")
            manifest: dict[str, Any] = {
                "run_id": run_id,
                "ledger_keys": [v.task.file_key for v in verdicts],
                "units": [],
                "files": [],
            }
            self._transaction(con, run_id, verdicts, staging, folder, manifest, report, builds)
            complete = self._complete_tables(
                folder, manifest, {t.folder: t.spec for t in self._view_targets(con)}
            )
            _test_kill_point("after_commit")
            self._publish(folder, manifest)
            _test_kill_point("after_publish")
            # Killed before this, the folder is still there: the next opening publishes
            # (idempotent) and refreshes the views.
            changed = {t for t, _key in manifest["units"]}
            self._refresh_views(
                con, strict={*written, DEAD_LETTER.name}, force=changed, complete=complete
            )
            shutil.rmtree(folder, ignore_errors=True)
        get_logger("beam_launcher").info(
            "warehouse_committed",
            files=len(verdicts),
            rows_by_table=report.rows_by_table,
            seconds=round(time.monotonic() - started, 3),
        )
        return report

    @staticmethod
    def _complete_tables(
        folder: Path, manifest: Mapping[str, Any], specs: Mapping[str, TableSpec]
    ) -> set[str]:
        """Parquet folders that get at least one file in ``manifest``, each holding every
        column of the folder's view (``specs``; read from the files' footers)."""
        import pyarrow.parquet as pq

        verdict: dict[str, bool] = {}
        for name, dest in manifest["files"]:
            table = dest.split("/", 1)[0]
            names = set(pq.read_schema(folder / name).names)
            verdict[table] = verdict.get(table, True) and set(specs[table].column_names) <= names
        return {t for t, ok in verdict.items() if ok}

    def _transaction(
        self,
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        verdicts: list[FileVerdict],
        staging: Path,
        folder: Path,
        manifest: dict[str, Any],
        report: CommitReport,
        builds: Mapping[str, TableVersion] | None = None,
    ) -> None:
        builds = builds or {}
        live = self._live_folders(con)
        new_files: dict[str, list[Path]] = {}
        sat_sources: set[str] = set()  # a Satellite scan's rows are published per scan
        by_date: dict[str, dict[str, list[Path]]] = {}  # built files: file_key -> date -> files
        for v in verdicts:
            if v.status == "skipped":
                continue
            table = SCAN_TABLES[v.task.scan_type].name
            build = builds.get(table)
            dest = build.folder if build else live[table]
            dated = by_date.setdefault(v.task.file_key, {}) if build else None
            new_files.setdefault(DEAD_LETTER.name, []).extend(
                self._stage_for_publish(
                    staging,
                    folder,
                    DEAD_LETTER.name,
                    safe_key(v.task.file_key),
                    manifest,
                    live[DEAD_LETTER.name],
                )
            )
            if v.status == "ok" and v.task.scan_type != "satellite":
                new_files.setdefault(table, []).extend(
                    self._stage_for_publish(
                        staging, folder, table, safe_key(v.task.file_key), manifest, dest, dated
                    )
                )
            sat = v.task.scan_type == "satellite" and v.status == "ok"
            if sat and v.task.source not in sat_sources:
                # the scan's rows count for its first ok file in the version's ledger
                sat_sources.add(v.task.source)
                staged_key = safe_key(f"{v.task.source}/satellite")
                new_files.setdefault(table, []).extend(
                    self._stage_for_publish(
                        staging, folder, table, staged_key, manifest, dest, dated
                    )
                )
        manifest_tmp = folder / (MANIFEST_NAME + ".tmp")
        manifest_tmp.write_bytes(orjson.dumps(manifest))
        os.replace(manifest_tmp, folder / MANIFEST_NAME)
        for table in sorted(new_files):
            files = [str(f) for f in new_files[table]]
            if files:  # from the files' metadata: no row is read
                report.rows_by_table[table] = con.execute(
                    "SELECT count(*) FROM read_parquet(?)", [files]
                ).fetchone()[0]  # type: ignore[index]
        rows_by_date: dict[str, str] = {}
        for key, dates in by_date.items():
            counts: dict[str, int] = {}
            for d, fs in sorted(dates.items()):
                found = con.execute("SELECT count(*) FROM read_parquet(?)", [[str(f) for f in fs]])
                counts[d] = int((found.fetchone() or (0,))[0])
            rows_by_date[key] = orjson.dumps(counts).decode()
        now = dt.datetime.now(dt.UTC)
        con.execute("BEGIN")
        live_verdicts = [v for v in verdicts if SCAN_TABLES[v.task.scan_type].name not in builds]
        keys = [v.task.file_key for v in live_verdicts]
        con.execute(
            "DELETE FROM processed_files WHERE file_key IN (SELECT unnest(?::VARCHAR[]))",
            [keys],
        )
        built = [
            (builds[SCAN_TABLES[v.task.scan_type].name].name, v)
            for v in verdicts
            if SCAN_TABLES[v.task.scan_type].name in builds
        ]
        if built:
            for name in sorted({n for n, _v in built}):
                con.execute(
                    f"DELETE FROM {VERSION_FILES} WHERE table_version = ? "
                    "AND file_key IN (SELECT unnest(?::VARCHAR[]))",
                    [name, [v.task.file_key for n, v in built if n == name]],
                )
            names = ["table_version", *PROCESSED_FILES.column_names, "rows_by_date"]
            con.executemany(
                f"INSERT INTO {VERSION_FILES} ({', '.join(map(_ident, names))}) "
                f"VALUES ({', '.join('?' for _ in names)})",
                [
                    (n, *_ledger_row(v, run_id, now), rows_by_date.get(v.task.file_key))
                    for n, v in built
                ],
            )
        if live_verdicts:
            con.executemany(
                # by name: a column added by a migration (ALTER TABLE) comes last in the table
                f"INSERT INTO processed_files "
                f"({', '.join(map(_ident, PROCESSED_FILES.column_names))}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_ledger_row(v, run_id, now) for v in live_verdicts],
            )
        _test_kill_point("before_commit")
        con.execute("COMMIT")


def _ledger_row(v: FileVerdict, run_id: str, now: dt.datetime) -> tuple[Any, ...]:
    """The ``processed_files`` values of a judged file."""
    return (
        v.task.file_key,
        v.task.scan_type,
        v.task.source,
        v.task.url,
        v.task.size,
        v.task.version,
        v.task.pipeline_version,
        v.status,
        v.reason or None,
        v.stats.get("lines", 0),
        v.stats.get("rows", 0) if v.status == "ok" else 0,
        v.stats.get("dead_letters", 0),
        v.stats.get("cert_parse_errors", 0),
        run_id,
        now,
    )


def _table_kinds(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Each table of schema ``main`` with its kind: ``BASE TABLE`` or ``VIEW``."""
    return dict(
        con.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main'"
        ).fetchall()
    )


def _test_pause_point(point: str) -> None:
    """Tests only: ``CP_TEST_PAUSE_AT=<point>:<seconds>`` makes the process sleep here
    (holding no lock), so a test can watch the state at that point."""
    where, _, seconds = os.environ.get("CP_TEST_PAUSE_AT", "").partition(":")
    if where == point:
        time.sleep(float(seconds or 1))


def _test_kill_point(point: str) -> None:
    """Tests only: ``CP_TEST_KILL_AT=<point>`` makes the process SIGKILL itself here."""
    if os.environ.get("CP_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Claim:
    """Outcome of claiming leases: units this run holds, units another live run holds."""

    mine: list[str] = field(default_factory=list)
    others: dict[str, str] = field(default_factory=dict)  # unit -> holder (run id, where)


def holder_text(doc: Mapping[str, Any]) -> str:
    """Who holds a lease, for logs and summaries."""
    return f"run {doc.get('run_id')} (host {doc.get('host')}, pid {doc.get('pid')})"


class LocalLeases:
    """Per-file leases of a local warehouse: ``<warehouse>/leases/<unit>.lease``.

    A lease names its run and process (:func:`services.common.lifecycle.lease_doc`). It
    is taken under an exclusive ``flock`` of ``leases/.lock``, so two runs never both
    take one unit. A lease whose process is gone (same host: pid and start time; another
    host sharing the volume: older than ``max_age_s``) is taken over.
    """

    def __init__(self, root: Path, max_age_s: float = LEASE_MAX_AGE_S) -> None:
        self.dir = root / LEASE_DIR
        self.max_age_s = max_age_s

    def _path(self, unit: str) -> Path:
        return self.dir / (safe_key(unit) + lifecycle.LEASE_SUFFIX)

    def claim(self, units: Iterable[str], run_id: str) -> Claim:
        self.dir.mkdir(parents=True, exist_ok=True)
        claim = Claim()
        doc = {**lifecycle.lease_doc("beam_launcher"), "run_id": run_id}
        with lifecycle.flocked(self.dir / ".lock", True, "claim file leases", "beam_launcher"):
            self._sweep_dead()
            for unit in units:
                path = self._path(unit)
                held = lifecycle.read_lease(str(path)) if path.exists() else None
                if held is not None and held.get("run_id") != run_id:
                    state = lifecycle.lease_state(held, self.max_age_s)
                    if state != "dead":
                        claim.others[unit] = holder_text(held)
                        continue
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
                tmp.write_bytes(orjson.dumps({**doc, "unit": unit}))
                tmp.replace(path)  # one atomic step: a reader sees the old or the new lease
                claim.mine.append(unit)
        return claim

    def _sweep_dead(self) -> int:
        """Under the lock: remove dead runs' leases and half-written lease files.

        A killed run leaves its leases (and, killed between write and rename, a
        ``<lease>.<pid>.tmp``); both are written and renamed only under this lock, so a
        ``.tmp`` seen while holding it is always a leftover.
        """
        removed = 0
        for path in sorted(self.dir.iterdir()):
            if path.name.endswith(".tmp"):
                dead = True
            elif path.name.endswith(lifecycle.LEASE_SUFFIX):
                doc = lifecycle.read_lease(str(path))
                dead = lifecycle.lease_state(doc, self.max_age_s) == "dead"
            else:
                continue
            if dead:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            get_logger("leases").info("dead_leases_swept", leases=removed, dir=str(self.dir))
        return removed

    def release(self, units: Iterable[str], run_id: str) -> int:
        """Remove this run's leases of ``units``; returns how many."""
        n = 0
        with lifecycle.flocked(self.dir / ".lock", True, "release file leases", "beam_launcher"):
            for unit in units:
                path = self._path(unit)
                held = lifecycle.read_lease(str(path)) if path.exists() else None
                if held is not None and held.get("run_id") == run_id:
                    path.unlink(missing_ok=True)
                    n += 1
        return n


class LocalTarget(WarehouseTarget[LocalWarehouse]):
    """Adapter used by the run: local warehouse + Parquet staging under it."""

    def __init__(self, root: str) -> None:
        self.warehouse = LocalWarehouse(root)
        self.leases = LocalLeases(self.warehouse.root)
        self.name = f"local:{self.warehouse.db_path}"
        self.builds: dict[str, TableVersion] = {}  # this run's rebuild beside (--full)

    def staging_root(self) -> str:
        """Where runs stage (``<warehouse>/staging``; one folder and lease per run)."""
        return str(self.warehouse.root / "staging")

    def staging_dir(self, run_id: str) -> str:
        return str(self.warehouse.root / "staging" / run_id)

    def stats_dir(self, run_id: str) -> str:
        return str(Path(self.staging_dir(run_id)) / "_stats")

    def sink(self, run_id: str, tables: list[str]) -> object:
        from services.beam_launcher.hyperquack.pipeline import LocalStagingSink

        return LocalStagingSink(self.staging_dir(run_id))

    def commit(
        self, staging_id: str, verdicts: list[FileVerdict], tables: list[str], run_id: str
    ) -> dict[str, int]:
        staging = self.staging_dir(staging_id)
        return self.warehouse.commit(run_id, verdicts, staging, self.builds).rows_by_table

    def cleanup(self, run_id: str) -> None:
        shutil.rmtree(self.staging_dir(run_id), ignore_errors=True)

    def finish_publishes(self) -> list[str]:
        return self.warehouse.finish_publishes()

    def sweep_staging(self) -> None:
        """Staging of dead runs is folders under ``staging_root`` (swept by the run)."""

    def claim(self, units: list[str], run_id: str) -> Claim:
        return self.leases.claim(units, run_id)

    def release(self, units: list[str], run_id: str) -> int:
        return self.leases.release(units, run_id)

    def finish_rebuild(
        self, build: TableVersion, expected: Mapping[str, str | None], pipeline_version: str
    ) -> dict[str, Any]:
        return self.warehouse.finish_rebuild(build, expected, pipeline_version)
