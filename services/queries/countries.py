"""The country names file (default ``resources/country_names.csv``, or ``--country-names``).

CSV, UTF-8, header ``country_code,country_name,status``: the 249 officially assigned
ISO 3166-1 alpha-2 codes with their English short names (status ``official``), plus the
few other codes that IP metadata uses (``XK`` user-assigned, ``EU`` exceptionally
reserved, ``AP`` the registries' Asia/Pacific region). The default file is generated from
pycountry by ``python -m services.common.countries`` (see there); this module only reads
a file, so the queries service does not need pycountry. The loader validates it strictly:
a broken file fails the run before anything is written.

Example:
    >>> rows, digest = load_country_names()
    >>> [r["country_name"] for r in rows if r["country_code"] in ("DE", "TH")]
    ['Germany', 'Thailand']
    >>> sum(r["status"] == "official" for r in rows)
    249
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

DEFAULT_COUNTRY_NAMES = Path(__file__).resolve().parents[2] / "resources" / "country_names.csv"
HEADER = ["country_code", "country_name", "status"]
STATUSES = ("official", "user-assigned", "exceptionally-reserved", "rir-region")
_CODE = re.compile(r"^[A-Z]{2}$")


class CountryNamesError(ValueError):
    """The country names file is malformed."""


def parse_country_names(data: bytes, where: str = "country_names.csv") -> list[dict[str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CountryNamesError(f"{where}: not UTF-8: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != HEADER:
        raise CountryNamesError(f"{where}: header must be {','.join(HEADER)}, got {header}")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for n, rec in enumerate(reader, start=2):
        if not rec:
            continue
        if len(rec) != len(HEADER):
            raise CountryNamesError(f"{where}:{n}: expected {len(HEADER)} fields, got {len(rec)}")
        code, name, status = (v.strip() for v in rec)
        if not _CODE.match(code):
            raise CountryNamesError(f"{where}:{n}: bad code {code!r}")
        if code in seen:
            raise CountryNamesError(f"{where}:{n}: duplicate code {code}")
        if not name:
            raise CountryNamesError(f"{where}:{n}: empty name for {code}")
        if status not in STATUSES:
            raise CountryNamesError(f"{where}:{n}: status {status!r} not one of {STATUSES}")
        seen.add(code)
        rows.append({"country_code": code, "country_name": name, "status": status})
    if not rows:
        raise CountryNamesError(f"{where}: no rows")
    return rows


def load_country_names(path: str | Path | None = None) -> tuple[list[dict[str, str]], str]:
    """The validated rows and the SHA-256 of the file (local path or gs://)."""
    from services.common import storage

    url = str(path or DEFAULT_COUNTRY_NAMES)
    data = storage.storage_for(url).read_bytes(url)
    return parse_country_names(data, url), hashlib.sha256(data).hexdigest()
