"""HTTP GET/HEAD for routeviews files, on services.common.httpfetch (one retry policy).

Outcomes:

* ``ok``: 2xx and, when the server sent ``Content-Length``, exactly that many bytes.
* ``missing``: 404 or 410. Not retried: the file is not there.
* ``failed``: anything else after the retries are spent. Retried (by the shared client,
  under one budget of ``retries``): 5xx, 408, 425, 429, connection errors, timeouts and
  bodies cut short of their ``Content-Length`` (the body is read inside the retries).
  Other 4xx fail at once, and so does a body over ``max_bytes`` (by its
  ``Content-Length``, or once read). Retry ``n`` waits ``backoff``·2^(n-1), ±25 %
  jitter, at most ``max_backoff``; a ``Retry-After`` replaces that wait (also capped).

Only ``http`` and ``https`` URLs with a host are fetched. :class:`LocalFetcher` reads a
local folder laid out like CAIDA's site instead (``--base-url`` a path or ``file://`` URL):
a missing file is ``missing``, a folder URL (ending in ``/``) answers with an HTML index
of its files, like a web server's listing.

Example:
    >>> Fetcher(retries=0).get("file:///etc/passwd").outcome
    'failed'
    >>> is_local_base("file:///srv/caida"), is_local_base("var/caida")
    (True, True)
    >>> is_local_base("https://publicdata.caida.org/datasets")
    False
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from services.common.httpfetch import FetchFailed, HttpError, request
from services.common.retry import RetryPolicy

USER_AGENT = "cp-pipeline-routeviews-mirror/1 (+https://censoredplanet.org)"
MISSING_STATUSES = frozenset({404, 410})


@dataclass(slots=True)
class FetchResult:
    url: str
    outcome: str  # ok | missing | failed
    data: bytes = b""
    status: int | None = None  # last HTTP status seen
    attempts: int = 0
    error: str | None = None
    content_length: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Fetcher:
    """GET/HEAD over HTTP(S) with the shared retry policy built from these settings."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_bytes: int = 1 << 30,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.timeout = timeout
        self.policy = RetryPolicy(
            retries=max(0, retries), base=backoff, cap=max_backoff, sleep=sleep
        )
        self.max_bytes = max_bytes
        self.user_agent = user_agent

    def get(self, url: str) -> FetchResult:
        return self._request("GET", url)

    def head_size(self, url: str) -> int | None:
        """Content-Length from a HEAD request, or None (not ok, or no length given)."""
        res = self._request("HEAD", url)
        return res.content_length if res.ok else None

    def _request(self, method: str, url: str) -> FetchResult:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return FetchResult(url, "failed", error=f"not an http(s) URL with a host: {url}")
        try:
            resp = request(
                url,
                method,
                {"User-Agent": self.user_agent},
                backoff=self.policy,
                timeout=self.timeout,
                preload=method == "GET",
            )
        except HttpError as exc:
            outcome = "missing" if exc.status in MISSING_STATUSES else "failed"
            return FetchResult(
                url, outcome, status=exc.status, attempts=exc.attempts, error=f"HTTP {exc.status}"
            )
        except FetchFailed as exc:
            return FetchResult(url, "failed", attempts=exc.attempts, error=str(exc))
        with resp:
            result = FetchResult(url, "failed", status=resp.status, attempts=resp.attempts)
            header = resp.header("Content-Length")
            length = int(header) if header and header.strip().isdigit() else None
            data = resp.read()
        result.error = self._invalid(method, length, data)
        if result.error is None:
            result.outcome, result.data, result.content_length = "ok", data, length
        return result

    def _invalid(self, method: str, length: int | None, data: bytes) -> str | None:
        """Why a received answer is not usable, or None. The client already retried bodies
        cut short; this checks what it handed over."""
        if length is not None and length > self.max_bytes:
            return f"too large: {length} bytes > {self.max_bytes}"
        if len(data) > self.max_bytes:
            return f"too large: more than {self.max_bytes} bytes"
        if method == "GET" and length is not None and len(data) != length:
            return f"short body: {len(data)} of {length} bytes"
        return None


def is_local_base(base_url: str) -> bool:
    """True for a ``file://`` URL or a plain path (no URL scheme)."""
    scheme = urlsplit(base_url).scheme.lower()
    return scheme == "file" or (scheme == "" and "://" not in base_url)


def local_path(url: str) -> Path:
    """The file system path of a ``file://`` URL or a plain path."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host: {url}")
        return Path(unquote(parts.path))
    return Path(url)


class LocalFetcher(Fetcher):
    """Reads files from a local folder with CAIDA's layout (no network, no retries).

    ``get`` of a file → its bytes (``ok``) or ``missing``; of a folder URL ending in
    ``/`` → an HTML index linking its files, the listing a web server would serve.
    Read errors other than a missing path are ``failed``.
    """

    def __init__(self, *, max_bytes: int = 1 << 30) -> None:
        super().__init__(retries=0, max_bytes=max_bytes)

    def _request(self, method: str, url: str) -> FetchResult:
        try:
            path = local_path(url)
            if url.endswith("/"):
                if not path.is_dir():
                    return FetchResult(url, "missing", attempts=1, error="no such folder")
                names = sorted(p.name for p in path.iterdir() if p.is_file())
                links = "".join(
                    f'<a href="{html.escape(quote(n))}">{html.escape(n)}</a>\n' for n in names
                )
                data = f"<html><body>\n{links}</body></html>\n".encode()
            else:
                if not path.is_file():
                    return FetchResult(url, "missing", attempts=1, error="no such file")
                size = path.stat().st_size
                if size > self.max_bytes:
                    return FetchResult(url, "failed", attempts=1, error=f"too large: {size} bytes")
                data = b"" if method == "HEAD" else path.read_bytes()
                return FetchResult(url, "ok", data, attempts=1, content_length=size)
        except (OSError, ValueError) as exc:
            return FetchResult(url, "failed", attempts=1, error=f"{type(exc).__name__}: {exc}")
        return FetchResult(url, "ok", data, attempts=1, content_length=len(data))
