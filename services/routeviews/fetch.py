"""HTTP GET/HEAD with retries and backoff for routeviews files (on services.common.httpfetch).

Outcomes:

* ``ok``: 2xx and, when the server sent ``Content-Length``, exactly that many bytes.
* ``missing``: 404 or 410. Not retried: the file is not there.
* ``failed``: anything else after the retries are spent. Retried: 5xx, 408, 429,
  connection errors, timeouts and short bodies (fewer bytes than ``Content-Length``).
  Other 4xx and bodies over ``max_bytes`` fail at once. A numeric ``Retry-After`` is
  honoured up to ``max_backoff``.

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
import http.client
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from services.common.httpfetch import Backoff, HttpError, is_transient, request

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


class _Fail(Exception):
    """A permanent failure (not retried)."""


class _Retry(Exception):
    def __init__(self, message: str, status: int | None = None, wait: float | None = None):
        super().__init__(message)
        self.status = status
        self.wait = wait


class Fetcher:
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
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_bytes = max_bytes
        self.sleep = sleep
        self.user_agent = user_agent

    def get(self, url: str) -> FetchResult:
        return self._request("GET", url)

    def head_size(self, url: str) -> int | None:
        """Content-Length from a HEAD request, or None (not ok, or no length given)."""
        res = self._request("HEAD", url)
        return res.content_length if res.ok else None

    def delay(self, attempt: int, wait: float | None = None) -> float:
        """Seconds before retry number ``attempt`` (1-based): backoff·2^(n-1), jittered."""
        if wait is not None:
            return min(max(wait, 0.0), self.max_backoff)
        base = min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)
        return base * (0.75 + random.random() / 2)

    def _request(self, method: str, url: str) -> FetchResult:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return FetchResult(url, "failed", error=f"not an http(s) URL with a host: {url}")
        result = FetchResult(url, "failed")
        for attempt in range(1, self.retries + 2):
            result.attempts = attempt
            try:
                status, length, data = self._once(method, url)
            except _Retry as exc:
                result.status, result.error = exc.status, str(exc)
                if attempt > self.retries:
                    break
                self.sleep(self.delay(attempt, exc.wait))
                continue
            except HttpError as exc:
                result.status, result.error = exc.status, f"HTTP {exc.status}"
                result.outcome = "missing" if exc.status in MISSING_STATUSES else "failed"
                return result
            except (_Fail, ValueError) as exc:  # too large, malformed URL
                result.error = str(exc)
                return result
            result.outcome, result.status, result.data = "ok", status, data
            result.content_length, result.error = length, None
            return result
        result.outcome = "failed"
        return result

    def _once(self, method: str, url: str) -> tuple[int, int | None, bytes]:
        """One attempt through the shared client (its own retries off: this loop retries)."""
        try:
            resp = request(
                url,
                method,
                {"User-Agent": self.user_agent},
                backoff=Backoff(retries=0),
                timeout=self.timeout,
            )
        except HttpError as exc:
            if is_transient(exc):
                raise _Retry(f"HTTP {exc.status}", exc.status, exc.retry_after) from None
            raise
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, OSError):
                raise
            reason = getattr(exc, "reason", None) or exc
            raise _Retry(f"{type(exc).__name__}: {reason}") from None
        with resp:
            header = resp.header("Content-Length")
            length = int(header) if header and header.strip().isdigit() else None
            if length is not None and length > self.max_bytes:
                raise _Fail(f"too large: {length} bytes > {self.max_bytes}")
            if method == "HEAD":
                return resp.status, length, b""
            assert resp.body is not None
            chunks: list[bytes] = []
            total = 0
            try:
                while chunk := resp.body.read(1 << 20):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise _Fail(f"too large: more than {self.max_bytes} bytes")
                    chunks.append(chunk)
            except (OSError, ValueError, http.client.HTTPException) as exc:  # dropped mid-body
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            data = b"".join(chunks)
            if length is not None and len(data) != length:
                raise _Retry(f"short body: {len(data)} of {length} bytes")
            return resp.status, length, data


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
