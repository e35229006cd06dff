"""Where archives come from: a storage prefix (``gs://`` or folder) or an HTTP(S) index page.

A source first names its candidate archives (cheap: one listing), then describes the
ones that survive the filters (size, MD5 when known, a version tag) and opens them
for streaming.

Example:
    >>> page = '<a href="CP_Quack-echo-2021-05-30-01-01-01.tar.gz">x</a><a href="/b.txt">'
    >>> [c.name for c in parse_index(page, "https://data.example/raw/")]
    ['CP_Quack-echo-2021-05-30-01-01-01.tar.gz']
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import IO, Protocol
from urllib.parse import unquote, urljoin, urlsplit

from services.common import storage
from services.common.httpfetch import Backoff, request
from services.common.logsetup import get_logger

ARCHIVE_SUFFIX = ".tar.gz"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An archive named by the source listing (not yet described)."""

    name: str  # file name, e.g. CP_Quack-echo-2021-05-30-01-01-01.tar.gz
    url: str
    entry: SourceEntry | None = None  # already known when the listing gave everything


@dataclass(frozen=True, slots=True)
class SourceEntry:
    name: str
    url: str
    size: int
    md5: str | None  # hex, when the source states it (GCS metadata, x-goog-hash, Content-MD5)
    etag: str | None  # the source's version tag (GCS generation, HTTP ETag, local size:mtime)


class Source(Protocol):
    location: str

    def candidates(self) -> Iterator[Candidate]: ...
    def describe(self, candidate: Candidate) -> SourceEntry: ...
    def open(self, entry: SourceEntry) -> IO[bytes]: ...
    def content_md5(self, entry: SourceEntry) -> str | None: ...


def is_archive_name(name: str) -> bool:
    return name.endswith(ARCHIVE_SUFFIX) and not name.startswith(".")


class StorageSource:
    """Archives anywhere under a ``gs://`` prefix or a local folder (listed recursively)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.storage = storage.storage_for(location)

    def candidates(self) -> Iterator[Candidate]:
        for info in self.storage.list(self.location):
            name = storage.basename(info.url)
            if is_archive_name(name):
                entry = SourceEntry(name, info.url, info.size, info.md5, info.version)
                yield Candidate(name, info.url, entry)

    def describe(self, candidate: Candidate) -> SourceEntry:
        if candidate.entry is not None:
            return candidate.entry
        info = self.storage.stat(candidate.url)
        if info is None:
            raise FileNotFoundError(candidate.url)
        return SourceEntry(candidate.name, info.url, info.size, info.md5, info.version)

    def open(self, entry: SourceEntry) -> IO[bytes]:
        return self.storage.open_read(entry.url)

    def content_md5(self, entry: SourceEntry) -> str | None:
        """The MD5 from metadata, else computed by reading (local folders)."""
        if entry.md5:
            return entry.md5
        digest = hashlib.md5()
        with self.open(entry) as fh:
            while chunk := fh.read(storage.COPY_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() != "a":
            return
        for key, value in attrs:
            if key.lower() == "href" and value:
                self.hrefs.append(value.strip())


def parse_index(
    html: str, base_url: str, allowed_hosts: tuple[str, ...] = (), foreign: list[str] | None = None
) -> list[Candidate]:
    """``.tar.gz`` links of an index page, resolved against ``base_url``.

    Only links to the index's own origin or to ``allowed_hosts`` (``https`` only) are
    taken; other archive links are appended to ``foreign`` (if given) for reporting.
    """
    parser = _LinkParser()
    parser.feed(html)
    parser.close()
    base = urlsplit(base_url)
    seen: dict[str, Candidate] = {}
    for href in parser.hrefs:
        url = urljoin(base_url, href).split("#", 1)[0]
        parts = urlsplit(url)
        name = unquote(posixpath.basename(parts.path))
        if not is_archive_name(name) or "/" in name or url in seen:
            continue
        same_origin = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
        allowed = parts.scheme == "https" and parts.hostname in allowed_hosts
        if not (same_origin or allowed):
            if foreign is not None:
                foreign.append(url)  # an index must not send us to any host it likes
            continue
        seen[url] = Candidate(name, url)
    return list(seen.values())


def md5_from_headers(headers: list[str], content_md5: str | None) -> str | None:
    """Hex MD5 from ``x-goog-hash: md5=<b64>`` values or ``Content-MD5: <b64>``."""
    values = [v.strip() for h in headers for v in h.split(",")]
    b64 = next((v[4:] for v in values if v.startswith("md5=")), None) or content_md5
    if not b64:
        return None
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


class HttpIndexSource:
    """Archives linked from an HTML index page; sizes (and MD5 if given) from HEAD."""

    def __init__(
        self,
        location: str,
        backoff: Backoff | None = None,
        timeout: float = 60.0,
        allowed_hosts: tuple[str, ...] = (),
    ):
        self.location = location if location.endswith("/") else location + "/"
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.allowed_hosts = allowed_hosts

    def candidates(self) -> Iterator[Candidate]:
        with request(self.location, backoff=self.backoff, timeout=self.timeout) as resp:
            charset = resp.headers.get_content_charset() or "utf-8"
            html = resp.read().decode(charset, errors="replace")
        foreign: list[str] = []
        found = parse_index(html, self.location, self.allowed_hosts, foreign)
        if foreign:
            get_logger("mirror").warning(
                "index_links_ignored",
                index=self.location,
                count=len(foreign),
                example=foreign[0],
                hint="links to other hosts are ignored unless listed with --allow-host",
            )
        yield from found

    def describe(self, candidate: Candidate) -> SourceEntry:
        with request(candidate.url, "HEAD", backoff=self.backoff, timeout=self.timeout) as resp:
            length = resp.header("Content-Length")
            if length is None or not length.isdigit():
                raise ValueError(f"no Content-Length for {candidate.url}")
            md5 = md5_from_headers(
                resp.headers.get_all("x-goog-hash") or [], resp.header("Content-MD5")
            )
            etag = resp.header("ETag") or resp.header("Last-Modified")
        return SourceEntry(candidate.name, candidate.url, int(length), md5, etag)

    def open(self, entry: SourceEntry) -> IO[bytes]:
        resp = request(entry.url, backoff=self.backoff, timeout=self.timeout)
        if resp.body is None:  # pragma: no cover - only a conditional GET answers 304
            raise ValueError(f"no body for {entry.url} (HTTP {resp.status})")
        return resp.body

    def content_md5(self, entry: SourceEntry) -> str | None:
        return entry.md5  # unknown unless the server states it (we do not download to check)


def open_source(
    location: str, backoff: Backoff | None = None, allowed_hosts: tuple[str, ...] = ()
) -> Source:
    """The source for a location: ``http(s)://`` index page, else a storage prefix."""
    if location.startswith(("http://", "https://")):
        return HttpIndexSource(location, backoff, allowed_hosts=allowed_hosts)
    return StorageSource(location)
