"""BigQuery's ``NET.HOST``, ``NET.PUBLIC_SUFFIX`` and ``NET.REG_DOMAIN`` for DuckDB.

The public suffix comes from the Public Suffix List bundled with the ``publicsuffixlist``
package (no network at run time; its version names the list's date). As BigQuery does,
only the list's ICANN section counts: private entries such as ``github.io`` or
``blogspot.com`` are not suffixes, so ``NET.REG_DOMAIN('a.b.github.io')`` is
``github.io``. Wildcard and exception rules apply (``*.kawasaki.jp``, ``!city.kawasaki.jp``).

Inputs are URLs or host names. The host is what :func:`host` extracts; leading and
trailing dots are ignored; NULL comes back for no host, an IP address, dots in a row
inside the host, a host that ends in no known suffix, or (``REG_DOMAIN``) a host that is
only a suffix. Labels keep their case, as in BigQuery.

Example:
    >>> reg_domain("https://www.Example.Co.UK/path"), public_suffix("a.b.com.br")
    ('Example.Co.UK', 'com.br')
    >>> reg_domain("x.y.github.io"), reg_domain("co.uk"), reg_domain("control")
    ('github.io', None, None)
"""

from __future__ import annotations

import contextlib
import functools
import re

import duckdb
from duckdb.func import FunctionNullHandling
from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList(only_icann=True)
_HOST = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?(?://)?(?:[^@/]*@)?(\[[^\]]*\]|[^:/?#]*)")
_IPV4 = re.compile(r"^[0-9.]+$")
CACHE_SIZE = 65_536


def host(url: str | None) -> str | None:
    """The host part of a URL (or the host name itself); None when there is none.

    >>> host("//user:pw@a.b:80/path?q"), host("[::1]"), host("")
    ('a.b', '[::1]', None)
    """
    if url is None:
        return None
    match = _HOST.match(url.strip())
    return (match.group(1) if match else "") or None


def _labels(url: str | None) -> list[str] | None:
    name = host(url)
    if name is None:
        return None
    name = name.strip(".")
    if not name or ":" in name or ".." in name or _IPV4.match(name):
        return None
    return name.split(".")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _suffix_labels(url: str) -> tuple[list[str], int] | None:
    labels = _labels(url)
    if labels is None:
        return None
    suffix = _PSL.publicsuffix(".".join(labels).lower(), accept_unknown=False)
    if not isinstance(suffix, str):
        return None
    return labels, suffix.count(".") + 1


def public_suffix(url: str | None) -> str | None:
    """``NET.PUBLIC_SUFFIX``: the ICANN public suffix of the URL's host, or None."""
    got = None if url is None else _suffix_labels(url)
    if got is None:
        return None
    labels, n = got
    return ".".join(labels[-n:])


def reg_domain(url: str | None) -> str | None:
    """``NET.REG_DOMAIN``: the public suffix plus the label before it, or None."""
    got = None if url is None else _suffix_labels(url)
    if got is None:
        return None
    labels, n = got
    return ".".join(labels[-(n + 1) :]) if len(labels) > n else None


#: DuckDB function name → implementation (names used by :mod:`services.queries.dialect`).
FUNCTIONS = {"net_host": host, "net_public_suffix": public_suffix, "net_reg_domain": reg_domain}


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Register the NET functions on ``con`` (again on a connection that has them)."""
    for name, fn in FUNCTIONS.items():
        with contextlib.suppress(duckdb.InvalidInputException):  # not registered yet
            con.remove_function(name)
        # SPECIAL: the functions see NULL inputs and may return NULL themselves.
        con.create_function(
            name, fn, ["varchar"], "varchar", null_handling=FunctionNullHandling.SPECIAL
        )
