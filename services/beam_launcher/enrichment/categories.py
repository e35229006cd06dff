"""Domain categories: ``domain,category`` CSV rows looked up by a URL's exact host.

The rule follows the legacy pipeline: control measurements are ``"Control"``;
otherwise the host of ``urlparse("http://" + url)`` is looked up exactly (paths are
stripped, IP addresses work, there is no parent-domain fallback: ``www.`` variants
must be listed).  Two small improvements: hosts compare lowercase and ignore a port
or user info, and a URL that already carries a scheme (``https://host/``) is parsed
as is.  When the CSV lists a domain twice, the last row wins (as before); the
domains whose rows disagree are kept in ``conflicts``.

Example:
    >>> cats = load_domain_categories(["example.com,News Media", "1.1.1.1,Hosting"])
    >>> cats.category("Example.com/some/path", is_control=False)
    'News Media'
    >>> cats.category("www.example.com", is_control=False) is None
    True
    >>> cats.category("1.1.1.1", is_control=False), cats.category("x.org", is_control=True)
    ('Hosting', 'Control')
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlparse

CONTROL: Final = "Control"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_CACHE_LIMIT: Final = 100_000


class DomainCategories:
    """Exact-host domain → category lookups, cached per URL."""

    def __init__(
        self,
        categories: Mapping[str, str],
        *,
        rows: int | None = None,
        conflicts: Iterable[str] = (),
    ) -> None:
        self._categories = {domain.lower(): category for domain, category in categories.items()}
        #: Number of CSV rows read (duplicates included).
        self.rows = len(self._categories) if rows is None else rows
        #: Domains listed more than once with different categories (last row won).
        self.conflicts = tuple(conflicts)
        self._cache: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._categories)

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and domain.lower() in self._categories

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._categories, self.rows, self.conflicts))

    def category(self, url: str, is_control: bool) -> str | None:
        """``"Control"`` for controls, else the category of the URL's host, or None."""
        if is_control:
            return CONTROL
        try:
            return self._cache[url]
        except KeyError:
            pass
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        found = self._cache[url] = self._lookup(url)
        return found

    def _lookup(self, url: str) -> str | None:
        host = _host(url)
        return None if host is None else self._categories.get(host)


def _rebuild(categories: dict[str, str], rows: int, conflicts: tuple[str, ...]) -> DomainCategories:
    return DomainCategories(categories, rows=rows, conflicts=conflicts)


def _host(url: str) -> str | None:
    """Lowercase host of a bare ``host[:port]/path`` or a full URL; None if there is none."""
    target = url if _SCHEME.match(url) else "http://" + url
    try:
        host = urlparse(target).hostname
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 literal
        return None
    return host or None


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    it = iter(lines)
    first = next(it, None)
    if first is not None:
        yield first.removeprefix("\ufeff")
        yield from it


def load_domain_categories(
    lines: Iterable[str], label: str = "<domain_categories>"
) -> DomainCategories:
    """Read headerless ``domain,category`` CSV lines (BOM, blank lines tolerated).

    Raises ValueError naming ``label`` and the 1-based line for a row without
    exactly two fields or with an empty domain or category.
    """
    categories: dict[str, str] = {}
    conflicts: dict[str, None] = {}
    rows = 0
    reader = csv.reader(_without_bom(lines))
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != 2:
            raise ValueError(
                f"{label}:{reader.line_num}: expected 'domain,category', got {len(fields)} fields"
            )
        domain, category = (f.strip() for f in fields)
        if not domain or not category:
            raise ValueError(f"{label}:{reader.line_num}: empty domain or category")
        key = domain.lower()
        if categories.get(key, category) != category:
            conflicts[key] = None
        categories[key] = category
        rows += 1
    return DomainCategories(categories, rows=rows, conflicts=conflicts)
