"""ISO 3166-1 country codes and names: pycountry's data plus the few names our data needs.

Two uses:

* :func:`country_code` maps a full country name to its alpha-2 code. Satellite v1
  ``tagged_resolvers.json`` tags each resolver with a name (``"Ireland"``) from a
  MaxMind-style geolocation step; the tables want the code.
* :func:`country_names_csv` writes ``resources/country_names.csv``, the default names of
  the queries' ``country_names`` table (``python -m services.common.countries --output
  resources/country_names.csv``; a test checks the committed file is exactly this output).

pycountry (Debian's iso-codes) knows every officially assigned code with its name,
official name and common name. On top of it, three short documented lists:

* :data:`EXTRA_CODES`: codes IP metadata uses that ISO 3166-1 does not assign (``XK``,
  ``EU``, ``AP``).
* :data:`ISO_SHORT_NAMES`: the ISO 3166-1 English short name where iso-codes words it
  differently (``"United States of America"`` vs ``"United States"``). The table kept
  these names before pycountry; keeping them keeps its rows (and the dashboards and
  researcher queries filtering on ``country_name``) unchanged.
* :data:`ALIASES`: names geolocation data writes that pycountry lacks: MaxMind/GeoNames
  short forms (``"Russia"``, ``"DR Congo"``), abbreviations (``"UAE"``), former names
  (``"Swaziland"``, ``"Burma"``) and the withdrawn ``AN``. Each was accepted by the
  hand-kept table this module replaces; dropping one would turn a mapped resolver country
  into an unmapped one.

Lookup ignores case, accents (``"Curacao"`` = ``"Curaçao"``), ``&`` vs ``and``,
``St``/``St.`` vs ``Saint``, a leading ``The`` and punctuation (``"Guinea Bissau"`` =
``"Guinea-Bissau"``). An upper-case known code is accepted as is.

pycountry is imported and the lookup table built on first use (60 ms or more, almost all
of it pycountry's own import), so a run that meets no country name does not pay for it.

Example:
    >>> country_code("DR Congo"), country_code("St Vincent and Grenadines")
    (('CD', True), ('VC', True))
    >>> country_code("Atlantis")
    ('Atlantis', False)
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import re
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pycountry.db import Country

#: Codes outside ISO 3166-1's assigned set that IP metadata uses: code → (name, status).
EXTRA_CODES: dict[str, tuple[str, str]] = {
    "AP": ("Asia/Pacific Region", "rir-region"),  # registries' pseudo-code (APNIC)
    "EU": ("European Union", "exceptionally-reserved"),
    "XK": ("Kosovo", "user-assigned"),
}

#: ISO 3166-1 English short names that pycountry (iso-codes) words differently.
ISO_SHORT_NAMES: dict[str, str] = {
    "BO": "Bolivia (Plurinational State of)",
    "CD": "Congo, Democratic Republic of the",
    "FM": "Micronesia (Federated States of)",
    "GB": "United Kingdom of Great Britain and Northern Ireland",
    "IR": "Iran (Islamic Republic of)",
    "KP": "Korea (Democratic People's Republic of)",
    "NL": "Netherlands, Kingdom of the",
    "US": "United States of America",
    "VA": "Holy See",
    "VE": "Venezuela (Bolivarian Republic of)",
    "VG": "Virgin Islands (British)",
    "VI": "Virgin Islands (U.S.)",
}

#: Other names for a code, as geolocation data writes them; pycountry has none of these.
ALIASES: dict[str, tuple[str, ...]] = {
    # MaxMind/GeoNames-style short names
    "AX": ("Åland",),
    "BA": ("Bosnia-Herzegovina", "Bosnia"),
    "BL": ("Saint Barths",),
    "BN": ("Brunei",),
    "BQ": ("Caribbean Netherlands", "Bonaire"),
    "CC": ("Cocos Islands", "Keeling Islands"),
    "CD": (
        "DR Congo",
        "Democratic Republic of the Congo",
        "Congo (Kinshasa)",
        "Congo-Kinshasa",
        "DRC",
        "Zaire",  # the name until 1997
    ),
    "CG": ("Republic of Congo", "Congo Republic", "Congo (Brazzaville)", "Congo-Brazzaville"),
    "CI": ("Ivory Coast",),
    "FK": ("Falkland Islands", "Malvinas"),
    "FM": ("Micronesia",),
    "FO": ("Faeroe Islands",),
    "GB": ("UK", "Great Britain", "Britain"),
    "GS": ("South Georgia and South Sandwich Islands",),
    "HK": ("Hong Kong SAR",),
    "HM": ("Heard and McDonald Islands",),
    "IE": ("Republic of Ireland",),
    "KR": ("Republic of Korea", "Korea"),
    "LA": ("Lao PDR",),
    "MF": ("Saint Martin",),
    "MO": ("Macau", "Macao SAR"),
    "NL": ("Holland",),
    "PN": ("Pitcairn Islands",),
    "PS": (
        "Palestine",
        "Palestinian Territory",
        "Palestinian Territories",
        "Palestinian Territory, Occupied",
    ),
    "RU": ("Russia",),
    "SH": ("Saint Helena",),
    "SJ": ("Svalbard",),
    "SX": ("Sint Maarten",),
    "TC": ("Turks and Caicos",),
    "TF": ("French Southern and Antarctic Lands",),
    "UM": ("U.S. Outlying Islands", "US Minor Outlying Islands"),
    "VA": ("Vatican City", "Vatican"),
    "VC": ("Saint Vincent and Grenadines",),
    "VI": ("U.S. Virgin Islands", "United States Virgin Islands"),
    # abbreviations
    "AE": ("UAE",),
    "KP": ("DPRK",),
    "US": ("USA", "U.S."),
    # former names (the code stayed)
    "CV": ("Cape Verde",),
    "LY": ("Libyan Arab Jamahiriya",),
    "MK": ("Macedonia", "FYROM", "Macedonia, the Former Yugoslav Republic of"),
    "MM": ("Burma", "Myanmar (Burma)"),
    "SZ": ("Swaziland",),
    "TL": ("East Timor",),
    "TR": ("Turkey",),
    # pseudo-codes and withdrawn codes old geolocation data still carries
    "EU": ("Europe",),
    "AN": ("Netherlands Antilles",),
}

_DROP = re.compile(r"[.'’`]")
_SPACE = re.compile(r"[\s,()\-/]+")


def _key(name: str) -> str:
    """Normalise a country name for lookup (case, accents, punctuation, Saint/St, The)."""
    decomposed = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    text = _DROP.sub("", text.replace("&", " and "))
    words = [w for w in _SPACE.split(text) if w]
    words = ["saint" if w in ("st", "ste") else w for w in words]
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return " ".join(words)


def _iso_countries() -> list[Country]:
    """pycountry's ISO 3166-1 countries (the officially assigned codes), by code."""
    import pycountry

    return sorted(pycountry.countries, key=lambda c: str(c.alpha_2))


def _names() -> Iterable[tuple[str, str]]:
    """Every (code, name) the lookup accepts."""
    for c in _iso_countries():
        for attr in ("name", "official_name", "common_name"):
            name = getattr(c, attr, None)
            if name:
                yield c.alpha_2, name
    for code, (name, _status) in EXTRA_CODES.items():
        yield code, name
    yield from ISO_SHORT_NAMES.items()
    for code, aliases in ALIASES.items():
        for name in aliases:
            yield code, name


def _build() -> tuple[dict[str, str], frozenset[str]]:
    by_key: dict[str, str] = {}
    for code, name in _names():
        key = _key(name)
        if by_key.setdefault(key, code) != code:
            raise ValueError(f"country name {name!r} maps to {by_key[key]} and {code}")
    codes = {c.alpha_2 for c in _iso_countries()} | set(EXTRA_CODES)
    codes |= set(ALIASES)  # AN
    return by_key, frozenset(codes)


@functools.cache
def _tables() -> tuple[dict[str, str], frozenset[str]]:
    """Normalised name → code, and every code the lookup knows (built once, on first use)."""
    return _build()


def known_codes() -> frozenset[str]:
    """Every code :func:`country_code` accepts as is: ISO 3166-1, EXTRA_CODES and AN."""
    return _tables()[1]


@functools.lru_cache(maxsize=1024)
def country_code(name: str) -> tuple[str, bool]:
    """``(ISO-2 code, True)`` for a known country name; ``(name unchanged, False)`` if not.

    >>> country_code("Ireland"), country_code("the bahamas"), country_code("IE")
    (('IE', True), ('BS', True), ('IE', True))
    """
    by_key, codes = _tables()
    stripped = name.strip()
    if len(stripped) == 2 and stripped.isupper() and stripped in codes:
        return stripped, True
    code = by_key.get(_key(stripped))
    if code is None:
        return name, False
    return code, True


def country_rows() -> list[dict[str, str]]:
    """Rows of the ``country_names`` table: assigned codes by code, then :data:`EXTRA_CODES`."""
    rows = [
        {
            "country_code": c.alpha_2,
            "country_name": ISO_SHORT_NAMES.get(c.alpha_2, c.name),
            "status": "official",
        }
        for c in _iso_countries()
    ]
    for code, (name, status) in sorted(EXTRA_CODES.items()):
        rows.append({"country_code": code, "country_name": name, "status": status})
    return rows


def country_names_csv() -> bytes:
    """``resources/country_names.csv`` as it should be: UTF-8, ``\\n`` line ends."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=["country_code", "country_name", "status"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(country_rows())
    return out.getvalue().encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    """Write the country names CSV to ``--output`` (default: stdout)."""
    p = argparse.ArgumentParser(
        prog="python -m services.common.countries",
        description="Write the country names CSV (resources/country_names.csv) from pycountry.",
    )
    p.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = p.parse_args(argv)
    data = country_names_csv()
    if args.output is None:
        sys.stdout.buffer.write(data)
    else:
        args.output.write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
