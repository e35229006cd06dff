"""Signatures and domain categories, loaded from a configured location (folder or gs://).

Nothing is compiled into the code: the location holds ``blockpage_signatures.json``,
``false_positive_signatures.json`` and ``domain_categories.csv``.

Example:
    >>> res = load_resources(str(SAMPLE_RESOURCES))
    >>> len(res.categories) > 0
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from services.beam_launcher.enrichment.categories import DomainCategories, load_domain_categories
from services.beam_launcher.enrichment.signatures import SignatureMatcher, load_signatures
from services.common import storage

BLOCKPAGE_FILE = "blockpage_signatures.json"
FALSE_POSITIVE_FILE = "false_positive_signatures.json"
CATEGORIES_FILE = "domain_categories.csv"
SAMPLE_RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "sample"


class ResourceError(RuntimeError):
    """A resource file is missing or malformed."""


@dataclass
class Resources:
    matcher: SignatureMatcher
    categories: DomainCategories
    location: str
    digest: str  # sha256 prefix over the three files: which resources a run used
    n_blockpage: int
    n_false_positive: int


def _read(location: str, name: str) -> str:
    url = storage.join(location, name)
    try:
        return storage.read_text(url)
    except FileNotFoundError:
        raise ResourceError(f"resource file not found: {url}") from None
    except Exception as exc:  # storage backends raise their own not-found types
        raise ResourceError(f"cannot read resource file {url}: {exc}") from exc


def load_resources(location: str) -> Resources:
    """Load and compile the three resource files from ``location``."""
    texts = {n: _read(location, n) for n in (BLOCKPAGE_FILE, FALSE_POSITIVE_FILE, CATEGORIES_FILE)}
    try:
        blockpages = load_signatures(
            texts[BLOCKPAGE_FILE].splitlines(), "blockpage", BLOCKPAGE_FILE
        )
        false_pos = load_signatures(
            texts[FALSE_POSITIVE_FILE].splitlines(), "false_positive", FALSE_POSITIVE_FILE
        )
        categories = load_domain_categories(texts[CATEGORIES_FILE].splitlines(), CATEGORIES_FILE)
    except ValueError as exc:
        raise ResourceError(str(exc)) from exc
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    return Resources(
        matcher=SignatureMatcher(false_pos, blockpages),
        categories=categories,
        location=location,
        digest=digest.hexdigest()[:16],
        n_blockpage=len(blockpages),
        n_false_positive=len(false_pos),
    )
