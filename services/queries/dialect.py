"""BigQuery SQL → DuckDB SQL: sqlglot plus explicit fixes for the gaps it leaves.

The SQL files are written once, in BigQuery's dialect. For the local warehouse we
transpile them with sqlglot in ``RAISE`` mode (anything sqlglot cannot translate is an
error, never a silently wrong query) after rewriting, in the AST, the constructs that
sqlglot gets wrong or refuses (toolchain-notes §8):

* ``NET.REG_DOMAIN`` / ``NET.PUBLIC_SUFFIX`` / ``NET.HOST`` become calls of DuckDB
  functions ``net_reg_domain`` / ``net_public_suffix`` / ``net_host``, registered per
  connection by :func:`services.queries.netfuncs.install` (the Public Suffix List, ICANN
  section, as BigQuery). Any other ``NET.*`` function is refused with
  :class:`UnsupportedSql`.
* ``UNNEST(a) WITH OFFSET AS o`` becomes ``WITH ORDINALITY``, which counts from 1: every
  reference to ``o`` in that SELECT is rewritten to ``(o - 1)`` so that the offset stays
  0-based.
* ``ARRAY_AGG(x ORDER BY y LIMIT n)`` becomes ``list_slice(array_agg(x ORDER BY y), 1, n)``.
* ``DATE_TRUNC(d, part)`` (BigQuery: DATE in, DATE out) is cast back to DATE, because
  DuckDB returns a TIMESTAMP.

Example:
    >>> import sqlglot
    >>> tree = sqlglot.parse_one("SELECT NET.REG_DOMAIN(h) FROM t", read="bigquery")
    >>> to_duckdb(tree)
    'SELECT NET_REG_DOMAIN(h) FROM t'
    >>> to_duckdb(sqlglot.parse_one("SELECT DATE_TRUNC(d, MONTH)", read="bigquery"))
    "SELECT CAST(DATE_TRUNC('MONTH', d) AS DATE)"
"""

from __future__ import annotations

from typing import cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, UnsupportedError

__all__ = [
    "UnsupportedSql",
    "parse_bigquery",
    "to_bigquery",
    "to_duckdb",
]


class UnsupportedSql(ValueError):
    """The SQL uses a BigQuery feature the DuckDB backend cannot run faithfully."""


_NET_FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.RegDomain: "net_reg_domain",
    exp.Host: "net_host",
}


def parse_bigquery(sql: str) -> list[exp.Expression]:
    """Every statement of ``sql`` in BigQuery's dialect; ParseError on any problem."""
    parsed = sqlglot.parse(sql, read="bigquery", error_level=ErrorLevel.RAISE)
    return [cast(exp.Expression, e) for e in parsed if e is not None]


def to_bigquery(tree: exp.Expression) -> str:
    return tree.sql(dialect="bigquery", unsupported_level=ErrorLevel.RAISE, comments=False)


def _net_function(node: exp.Expression) -> exp.Expression:
    inner = node.this
    name = _NET_FUNCTIONS.get(type(inner))
    args: list[exp.Expression]
    if name is not None:
        args = [inner.this]
    elif isinstance(inner, exp.Anonymous) and str(inner.this).upper() == "PUBLIC_SUFFIX":
        name, args = "net_public_suffix", list(inner.expressions)
    else:
        fname = inner.sql_name() if not isinstance(inner, exp.Anonymous) else inner.name
        raise UnsupportedSql(
            f"NET.{fname.upper()} has no DuckDB equivalent here "
            "(supported: NET.REG_DOMAIN, NET.PUBLIC_SUFFIX, NET.HOST)"
        )
    return exp.Anonymous(this=name, expressions=[a.copy() for a in args])


def _fix_offsets(tree: exp.Expression) -> None:
    """``WITH OFFSET o`` is 0-based, DuckDB's ``WITH ORDINALITY`` 1-based: use ``o - 1``."""
    for unnest in list(tree.find_all(exp.Unnest)):
        offset = unnest.args.get("offset")
        if not isinstance(offset, exp.Identifier):
            continue
        select = unnest.find_ancestor(exp.Select)
        if select is None:
            continue
        name = offset.name
        for col in list(select.find_all(exp.Column)):
            if col.name != name or col.table or col.find_ancestor(exp.Select) is not select:
                continue
            zero_based: exp.Expression = exp.paren(
                exp.Sub(this=col.copy(), expression=exp.Literal.number(1))
            )
            if col.parent is select:  # a bare projection keeps its name
                zero_based = cast(exp.Expression, exp.alias_(zero_based, name))
            col.replace(zero_based)


def _fix_array_agg_limit(node: exp.Expression) -> exp.Expression:
    limit = node.this
    if not isinstance(limit, exp.Limit):
        return node
    inner = exp.ArrayAgg(this=limit.this.copy())
    return exp.Anonymous(
        this="list_slice",
        expressions=[inner, exp.Literal.number(1), limit.expression.copy()],
    )


def _rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.NetFunc):
        return _net_function(node)
    if isinstance(node, exp.ArrayAgg):
        return _fix_array_agg_limit(node)
    if isinstance(node, exp.DateTrunc) and not isinstance(node.parent, exp.Cast):
        return exp.cast(node.copy(), exp.DataType.build("DATE"))
    return node


def to_duckdb(tree: exp.Expression) -> str:
    """DuckDB SQL for a BigQuery AST (the input tree is not modified)."""
    work = tree.copy()
    _fix_offsets(work)
    work = work.transform(_rewrite, copy=False)
    try:
        sql = work.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE, comments=False)
    except UnsupportedError as exc:
        raise UnsupportedSql(str(exc)) from exc
    return sql
