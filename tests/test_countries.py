"""services/common/countries.py: pycountry plus our short lists, in place of hand-kept tables.

The committed resources/country_names.csv must be exactly what the module generates (its
names reach the derived tables; its digest decides whether they are rebuilt). When the
module replaced the hand-kept Satellite table, a test compared both for every name (same
code everywhere; names only the new lookup knows were unmapped before); the names
geolocation data writes stay pinned in tests/test_satellite_parse.py.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pycountry
import pytest

from services.common import countries
from services.common.countries import country_code, country_names_csv, known_codes
from services.queries.countries import DEFAULT_COUNTRY_NAMES, parse_country_names

ROOT = Path(__file__).resolve().parents[1]


def test_committed_csv_is_the_generated_one() -> None:
    committed = DEFAULT_COUNTRY_NAMES.read_bytes()
    assert committed == country_names_csv(), (
        "resources/country_names.csv differs from the generated names: run "
        "`uv run python -m services.common.countries --output resources/country_names.csv` "
        "and review the diff (a changed name rebuilds every derived table)"
    )
    rows = parse_country_names(committed)  # the queries service accepts it
    assert len(rows) == 252
    assert sum(r["status"] == "official" for r in rows) == len(pycountry.countries) == 249


def test_generated_names_keep_the_iso_short_names_users_filter_on() -> None:
    rows = {r["country_code"]: r for r in countries.country_rows()}
    assert rows["US"]["country_name"] == "United States of America"
    assert rows["GB"]["country_name"] == "United Kingdom of Great Britain and Northern Ireland"
    assert rows["NL"]["country_name"] == "Netherlands, Kingdom of the"
    assert rows["CI"]["country_name"] == "Côte d'Ivoire"
    assert rows["TR"]["country_name"] == "Türkiye"
    assert rows["XK"] == {"country_code": "XK", "country_name": "Kosovo", "status": "user-assigned"}
    # Each override differs from pycountry's name (otherwise it is not needed).
    for code, name in countries.ISO_SHORT_NAMES.items():
        assert pycountry.countries.get(alpha_2=code).name != name, code


def test_every_table_name_and_pycountry_name_maps_to_its_code() -> None:
    for r in countries.country_rows():
        assert country_code(r["country_name"]) == (r["country_code"], True), r
        assert country_code(r["country_code"]) == (r["country_code"], True), r
    for c in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            if hasattr(c, attr):
                assert country_code(getattr(c, attr)) == (c.alpha_2, True), (c, attr)


def test_every_alias_is_needed_and_known() -> None:
    """An alias pycountry already covers (after normalisation) is dead weight."""
    from_pycountry = {
        countries._key(getattr(c, a))
        for c in pycountry.countries
        for a in ("name", "official_name", "common_name")
        if hasattr(c, a)
    }
    for code, names in countries.ALIASES.items():
        assert code in known_codes()
        for name in names:
            assert countries._key(name) not in from_pycountry, (code, name)
            assert country_code(name) == (code, True), name


def test_conflicting_alias_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(countries.ALIASES, "AT", ("Australia",))
    with pytest.raises(ValueError, match="maps to AU and AT"):
        countries._build()


def test_unknown_names_come_back_unchanged() -> None:
    assert country_code("Neverland") == ("Neverland", False)
    assert country_code("ZZ") == ("ZZ", False)
    assert country_code("fr") == ("fr", False)  # only upper-case codes are taken as codes
    assert country_code("") == ("", False)


def test_cli_writes_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "names.csv"
    done = subprocess.run(
        [sys.executable, "-m", "services.common.countries", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == country_names_csv()
    shown = subprocess.run(
        [sys.executable, "-m", "services.common.countries"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    assert shown.stdout == country_names_csv()
    assert next(csv.reader([shown.stdout.decode().splitlines()[0]])) == [
        "country_code",
        "country_name",
        "status",
    ]
