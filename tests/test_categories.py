"""Domain category lookups: exact host of a URL, controls, and the real CSV."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from services.beam_launcher.enrichment.categories import (
    CONTROL,
    DomainCategories,
    load_domain_categories,
)

REAL_RESOURCES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "resources"
REAL_CSV = REAL_RESOURCES / "domain_categories.csv"

SAMPLE = [
    "example.com,News Media",
    "www.example.com,News Media",
    "shop.example.org,E-commerce",
    "1.1.1.1,Hosting and Blogging Platforms",
    "Mixed.Case.net,Gaming",
]


@pytest.fixture
def cats() -> DomainCategories:
    return load_domain_categories(SAMPLE)


@pytest.fixture(scope="module")
def real() -> DomainCategories:
    if not REAL_CSV.is_file():
        pytest.skip(f"real fixtures not found at {REAL_CSV}")
    with REAL_CSV.open(encoding="utf-8", newline="") as f:
        return load_domain_categories(f, label=REAL_CSV.name)


def test_exact_host_matches(cats: DomainCategories) -> None:
    assert cats.category("example.com", is_control=False) == "News Media"
    assert cats.category("shop.example.org", is_control=False) == "E-commerce"


def test_subdomain_and_parent_domain_do_not_match(cats: DomainCategories) -> None:
    assert cats.category("news.example.com", is_control=False) is None
    assert cats.category("example.org", is_control=False) is None  # parent of shop.example.org


def test_url_with_path_query_port_or_scheme_uses_the_host(cats: DomainCategories) -> None:
    assert cats.category("example.com/some/path?q=1", is_control=False) == "News Media"
    assert cats.category("example.com:8080/x", is_control=False) == "News Media"
    assert cats.category("https://www.example.com/", is_control=False) == "News Media"


def test_ip_url(cats: DomainCategories) -> None:
    assert cats.category("1.1.1.1", is_control=False) == "Hosting and Blogging Platforms"
    assert cats.category("1.1.1.1/dns-query", is_control=False) == "Hosting and Blogging Platforms"
    assert cats.category("1.1.1.2", is_control=False) is None


def test_case_insensitive(cats: DomainCategories) -> None:
    assert cats.category("EXAMPLE.COM", is_control=False) == "News Media"
    assert cats.category("mixed.case.NET", is_control=False) == "Gaming"


def test_control_wins_over_any_category(cats: DomainCategories) -> None:
    assert cats.category("example.com", is_control=True) == CONTROL == "Control"
    assert cats.category("unknown.test", is_control=True) == "Control"


@pytest.mark.parametrize("url", ["unknown.test", "", "[broken", "http://", "/just/a/path"])
def test_unknown_or_unparsable_is_none(cats: DomainCategories, url: str) -> None:
    assert cats.category(url, is_control=False) is None
    assert cats.category(url, is_control=False) is None  # cached answer is the same


def test_len_counts_distinct_domains_and_pickles(cats: DomainCategories) -> None:
    assert len(cats) == 5
    copy = pickle.loads(pickle.dumps(cats))
    assert len(copy) == 5
    assert copy.category("www.example.com", is_control=False) == "News Media"


def test_csv_tolerates_bom_blank_lines_and_line_endings() -> None:
    lines = ["\ufeffa.com,News Media\r\n", "\n", "   \n", "b.com,Gaming\n", "c.com,LGBT"]
    cats = load_domain_categories(lines)
    assert len(cats) == 3
    assert cats.category("a.com", is_control=False) == "News Media"
    assert cats.category("c.com", is_control=False) == "LGBT"


def test_quoted_category_with_comma() -> None:
    cats = load_domain_categories(['a.com,"History, arts and literature"'])
    assert cats.category("a.com", is_control=False) == "History, arts and literature"


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [("c.com", "1 fields"), ("c.com,News,Extra", "3 fields"), (",News", "empty domain")],
)
def test_malformed_row_names_the_line(bad_line: str, expected: str) -> None:
    lines = ["a.com,News Media", "", "b.com,Gaming", bad_line]
    with pytest.raises(ValueError, match=rf"^cats\.csv:4: .*{expected}"):
        load_domain_categories(lines, label="cats.csv")


def test_duplicate_domain_last_row_wins_and_conflict_is_reported() -> None:
    cats = load_domain_categories(["a.com,Culture", "a.com,Media sharing", "b.com,X", "b.com,X"])
    assert cats.category("a.com", is_control=False) == "Media sharing"
    assert cats.conflicts == ("a.com",)
    assert cats.rows == 4
    assert len(cats) == 2


def test_real_file_loads_every_row(real: DomainCategories) -> None:
    assert real.rows == 6870
    assert len(real) == 6854  # 16 domains are listed twice
    assert real.conflicts == ("mp3.com", "oca.org")


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("0123movies.com", "Illegal"),
        ("facebook.com", "Social Networking"),
        ("www.facebook.com", "Social Networking"),
        ("m.facebook.com", None),  # subdomains must be listed explicitly
        ("www.torproject.org/download/", "Anonymization and circumvention tools"),
        ("bridges.torproject.org", "Anonymization and circumvention tools"),
        ("1.1.1.1", "Hosting and Blogging Platforms"),
        ("1.0.0.1.", "Hosting and Blogging Platforms"),
        ("grindr.com", "LGBT"),
        ("harvard.edu", "Control content"),
        ("mp3.com", "Media sharing"),  # listed twice; the last row wins, as before
        ("not-in-the-list.example", None),
    ],
)
def test_real_file_known_examples(real: DomainCategories, url: str, category: str | None) -> None:
    assert real.category(url, is_control=False) == category


def test_real_file_control(real: DomainCategories) -> None:
    assert real.category("facebook.com", is_control=True) == "Control"
