"""Small HTTP(S) client on the standard library: retries with backoff, conditional GETs.

Transient failures (connection errors, timeouts, HTTP 408/425/429/5xx) are retried with
exponential backoff and jitter (``Retry-After`` is honoured up to the backoff cap);
other statuses raise :class:`HttpError` at once. A 304 is returned, not raised, so
callers can use ``If-None-Match``.

Example:
    >>> is_transient(HttpError("http://x/", 503))
    True
    >>> is_transient(HttpError("http://x/", 404))
    False
"""

from __future__ import annotations

import http.client
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Any

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "cp-pipeline/1 (+https://censoredplanet.org)"


class HttpError(OSError):
    """An HTTP request failed with a status that is not 2xx/304."""

    def __init__(
        self, url: str, status: int, reason: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {reason} for {url}".replace("  ", " "))
        self.url = url
        self.status = status
        self.retry_after = retry_after  # seconds from a numeric Retry-After header


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (network trouble, overload, server errors)."""
    if isinstance(exc, HttpError):
        return exc.status in TRANSIENT_STATUSES
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_STATUSES
    return isinstance(
        exc,
        urllib.error.URLError
        | http.client.HTTPException
        | ConnectionError
        | TimeoutError
        | socket.timeout,
    )


@dataclass
class Backoff:
    """Exponential backoff: ``base * 2**attempt`` (capped), with full jitter."""

    retries: int = 4
    base: float = 0.5
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass
class Response:
    """Status, headers and (for GET) the body as a stream; close it when done."""

    url: str
    status: int
    headers: Message
    body: IO[bytes] | None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def read(self) -> bytes:
        return b"" if self.body is None else self.body.read()

    def close(self) -> None:
        if self.body is not None:
            self.body.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    *,
    backoff: Backoff | None = None,
    timeout: float = 60.0,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> Response:
    """Send a request, retrying transient failures; return 2xx and 304 responses.

    The caller owns the returned body (a streaming ``http.client.HTTPResponse``).
    """
    policy = backoff or Backoff()
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    attempt = 0
    while True:
        req = urllib.request.Request(url, method=method, headers=all_headers)
        retry_after: float | None = None
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
            return Response(url, resp.status, resp.headers, resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return Response(url, 304, exc.headers, None)
            retry_after = _retry_after(exc.headers)
            error: BaseException = HttpError(url, exc.code, str(exc.reason), retry_after)
            exc.close()
        except Exception as exc:
            error = exc
        if attempt >= policy.retries or not is_transient(error):
            raise error
        delay = policy.delay(attempt, retry_after)
        if on_retry is not None:
            on_retry(error, attempt + 1, delay)
        policy.sleep(delay)
        attempt += 1
