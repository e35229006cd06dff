"""Data both scan families share: the test domains (those of the sample category file,
unlisted ones and URLs with a path), the countries hosts are placed in, the US Eastern
offsets the scans start in, epoch arithmetic, filler text for page bodies, the stable
:func:`hash_text` and the scan names (:func:`source_name`, :func:`archive_name`)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

#: Mirrors ``resources/sample/domain_categories.csv`` (checked by the tests).
SAMPLE_DOMAIN_CATEGORIES: Final[tuple[tuple[str, str], ...]] = (
    ("www.bbc.co.uk", "News Media"),
    ("www.nytimes.com", "News Media"),
    ("www.rferl.org", "News Media"),
    ("www.dw.com", "News Media"),
    ("www.voanews.com", "News Media"),
    ("www.facebook.com", "Social Networking"),
    ("twitter.com", "Social Networking"),
    ("www.instagram.com", "Social Networking"),
    ("vk.com", "Social Networking"),
    ("www.hrw.org", "Human Rights Issues"),
    ("www.amnesty.org", "Human Rights Issues"),
    ("www.article19.org", "Human Rights Issues"),
    ("www.pokerstars.com", "Gambling"),
    ("www.bet365.com", "Gambling"),
    ("www.torproject.org", "Anonymization and circumvention tools"),
    ("psiphon.ca", "Anonymization and circumvention tools"),
    ("www.youtube.com", "Media sharing"),
    ("vimeo.com", "Media sharing"),
    ("telegram.org", "Communication Tools"),
    ("www.whatsapp.com", "Communication Tools"),
    ("www.grindr.com", "LGBT"),
    ("ilga.org", "LGBT"),
    ("www.who.int", "Public Health"),
    ("www.un.org", "Intergovernmental Organizations"),
    ("www.greenpeace.org", "Environment"),
    ("thepiratebay.org", "File-sharing"),
    ("www.bittorrent.com", "File-sharing"),
    ("www.tinder.com", "Online Dating"),
    ("www.jw.org", "Religion"),
    ("www.bahai.org", "Religion"),
    ("www.metasploit.com", "Hacking Tools"),
    ("www.erowid.org", "Alcohol & Drugs"),
    ("www.plannedparenthood.org", "Sex Education"),
    ("www.amazon.com", "E-commerce"),
    ("duckduckgo.com", "Search Engines"),
    ("wordpress.com", "Hosting and Blogging Platforms"),
    ("www.gov.uk", "Government"),
    ("www.imf.org", "Economics"),
    ("store.steampowered.com", "Gaming"),
    ("en.wikipedia.org", "Culture"),
    ("www.pornhub.com", "Pornography"),
    ("www.sample-opposition-news.example", "Political Criticism"),
)
#: Test domains that are deliberately missing from the category file.
UNLISTED_DOMAINS: Final = (
    "www.unlisted-forum.example",
    "news.sample-unknown.org",
    "mirror.sample-files.net",
    "blog.example-dissent.org",
)
#: Test URLs with a path (v1 echo/discard ``Sent`` shows the path/host swap bug for these).
URL_KEYWORDS: Final = (
    "www.hrw.org/world-report/2020/country-chapters",
    "www.rferl.org/a/article.html?id=31523",
    "www.unlisted-forum.example/thread/881?page=2",
)

COUNTRIES: Final = (
    ("United States", "US"),
    ("China", "CN"),
    ("Russia", "RU"),
    ("Iran", "IR"),
    ("Pakistan", "PK"),
    ("Turkey", "TR"),
    ("India", "IN"),
    ("Germany", "DE"),
    ("Brazil", "BR"),
    ("Indonesia", "ID"),
    ("Kazakhstan", "KZ"),
    ("Thailand", "TH"),
    ("United Kingdom", "GB"),
    ("Norway", "NO"),
    ("Colombia", "CO"),
    ("Egypt", "EG"),
    ("Saudi Arabia", "SA"),
    ("Canada", "CA"),
    ("Vietnam", "VN"),
    ("Belarus", "BY"),
)
CATEGORY_WORDS: Final = ("adult", "gambling", "proxy-avoidance", "news", "social-networking")
#: First octets never used for synthetic public addresses (private, loopback, CGN, TEST-NETs).
RESERVED_FIRST_OCTETS: Final = frozenset({0, 10, 100, 127, 169, 172, 192, 198, 203})
BODY_CAP: Final = 65536
NS: Final = 1_000_000_000
MS: Final = 1_000_000
EPOCH: Final = datetime(1970, 1, 1)

EST: Final = timezone(timedelta(hours=-5))
EDT: Final = timezone(timedelta(hours=-4))


def sample_keywords() -> tuple[str, ...]:
    """All test keywords: listed domains, unlisted domains and URLs with a path."""
    return tuple(d for d, _ in SAMPLE_DOMAIN_CATEGORIES) + UNLISTED_DOMAINS + URL_KEYWORDS


def epoch_ns(dt: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware ``dt`` (exact, no float)."""
    delta = dt.astimezone(UTC).replace(tzinfo=None) - EPOCH
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


_FILLER_WORDS: Final = (
    "news",
    "report",
    "press",
    "freedom",
    "election",
    "court",
    "rights",
    "media",
    "government",
    "police",
    "protest",
    "health",
    "economy",
    "market",
    "climate",
    "energy",
    "sport",
    "culture",
    "music",
    "film",
    "travel",
    "science",
    "education",
    "technology",
    "internet",
    "mobile",
    "world",
    "region",
    "city",
    "people",
)


def filler_text(rng: random.Random, min_chars: int) -> str:
    """Paragraphs of random filler words, at least ``min_chars`` characters long."""
    parts: list[str] = []
    size = 0
    while size < min_chars:
        sentence = " ".join(rng.choice(_FILLER_WORDS) for _ in range(rng.randint(6, 18)))
        chunk = f'<p class="c{rng.randint(1, 9)}">{sentence.capitalize()}.</p>\n'
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts)


SATELLITE: Final = "satellite"


def source_name(scan_type: str, start: datetime) -> str:
    """Scan id, e.g. ``CP_Quack-echo-2020-11-14-07-30-11`` or ``CP_Satellite-2021-10-20-14-00-01``
    (local start time)."""
    stamp = start.strftime("%Y-%m-%d-%H-%M-%S")
    if scan_type == SATELLITE:
        return f"CP_Satellite-{stamp}"
    return f"CP_Quack-{scan_type}-{stamp}"


def archive_name(scan_type: str, start: datetime) -> str:
    """Tarball name, e.g. ``CP_Quack-echo-2020-11-14-07-30-11.tar.gz``."""
    return source_name(scan_type, start) + ".tar.gz"


def hash_text(text: str) -> int:
    """Stable 32-bit FNV-1a hash (``hash()`` is salted per process)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h
