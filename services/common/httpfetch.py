"""Small HTTP(S) client on urllib3: one retry policy, conditional GETs, streamed bodies.

Transient failures (connection errors, timeouts, dropped connections, HTTP
408/425/429/5xx) are retried by urllib3's ``Retry`` under the project's one
:class:`~services.common.retry.RetryPolicy` (exponential backoff with jitter,
``Retry-After`` honoured up to the policy's cap); other statuses raise
:class:`HttpError` at once. A 304 is returned, not raised, so callers can use
``If-None-Match``. When the retries are spent, the last transient status raises
:class:`HttpError` and the last connection-level error :class:`FetchFailed`; both say how
many attempts were made. Bodies are passed on as sent (no ``Content-Encoding`` decoding),
and proxies named by ``http_proxy``/``https_proxy`` (``no_proxy``) are used.

Example:
    >>> is_transient(HttpError("http://x/", 503))
    True
    >>> is_transient(HttpError("http://x/", 404))
    False
    >>> str(HttpError("http://x/a", 503, "Service Unavailable", attempts=3))
    'HTTP 503 Service Unavailable for http://x/a (after 3 attempts)'
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, cast
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationValueError, MaxRetryError, ProtocolError

from services.common.logsetup import get_logger
from services.common.retry import TRANSIENT_STATUSES, OnRetry, PolicyRetry, RetryPolicy

USER_AGENT = "cp-pipeline/1 (+https://censoredplanet.org)"

# The policy's name where callers configure HTTP retries (``--retries``/``--backoff``).
Backoff = RetryPolicy


def _after(attempts: int | None) -> str:
    return f" (after {attempts} attempts)" if attempts and attempts > 1 else ""


class HttpError(OSError):
    """An HTTP request failed with a status that is not 2xx/304."""

    def __init__(
        self,
        url: str,
        status: int,
        reason: str = "",
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        message = f"HTTP {status} {reason} for {url}".replace("  ", " ")
        super().__init__(message + _after(attempts))
        self.url = url
        self.status = status
        self.retry_after = retry_after  # seconds from the last answer's Retry-After
        self.attempts = attempts


class FetchFailed(OSError):
    """No usable answer: the connection failed, timed out or broke off, every attempt."""

    def __init__(
        self, url: str, cause: BaseException, attempts: int, transient: bool = True
    ) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}{_after(attempts)}")
        self.url = url
        self.cause = cause
        self.attempts = attempts
        self.transient = transient  # False: trying again later cannot help (a bad URL)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (network trouble, overload, server errors)."""
    if isinstance(exc, HttpError):
        return exc.status in TRANSIENT_STATUSES
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_STATUSES
    if isinstance(exc, FetchFailed):
        return exc.transient
    return isinstance(
        exc,
        ProtocolError  # a body cut short of its Content-Length, a dropped connection
        | urllib3.exceptions.TimeoutError
        | urllib3.exceptions.SSLError
        | urllib.error.URLError
        | http.client.HTTPException
        | ConnectionError
        | TimeoutError
        | socket.timeout,
    )


@dataclass
class Response:
    """Status, headers and (for GET) the body as a stream; close it when done.

    ``attempts`` counts the requests sent (1 + retries; redirects not counted).
    """

    url: str
    status: int
    headers: Message
    body: IO[bytes] | None
    attempts: int = 1

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


class _OwnRetriesLogged(logging.Filter):
    """Drops urllib3's own "Retrying (...)" warning for our requests: ``http_retry`` says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], PolicyRetry))


logging.getLogger("urllib3.connectionpool").addFilter(_OwnRetriesLogged())

_POOLS: dict[str | None, urllib3.PoolManager] = {}
_POOLS_LOCK = threading.Lock()


def _pool_for(url: str) -> urllib3.PoolManager:
    """The shared connection pool for ``url``: direct, or through the environment's proxy."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
        proxy = None
    with _POOLS_LOCK:
        pool = _POOLS.get(proxy)
        if pool is None:
            pool = urllib3.ProxyManager(proxy) if proxy else urllib3.PoolManager()
            _POOLS[proxy] = pool
        return pool


def _log_retry(url: str, method: str) -> OnRetry:
    """The default retry hook: an ``http_retry`` warning (the URL without its query)."""
    shown = urlsplit(url)._replace(query="", fragment="").geturl()

    def on_retry(error: str, retry: int, delay: float) -> None:
        get_logger("http").warning(
            "http_retry", url=shown, method=method, retry=retry, wait_s=round(delay, 3), error=error
        )

    return on_retry


def _headers(raw: urllib3.HTTPHeaderDict) -> Message:
    message = Message()
    for name, value in raw.iteritems():
        message[name] = value
    return message


def request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    *,
    backoff: RetryPolicy | None = None,
    timeout: float = 60.0,
    on_retry: OnRetry | None = None,
    preload: bool = False,
) -> Response:
    """Send a request, retrying transient failures; return 2xx and 304 responses.

    The caller owns the returned body (a streaming urllib3 response). ``preload=True``
    reads the whole body inside the retries, so a body cut short of its
    ``Content-Length`` is retried like any dropped connection; ``body`` then holds
    the bytes. ``on_retry`` (default: an ``http_retry`` log line) hears of each retry.
    """
    policy = backoff or RetryPolicy()
    retry = policy.http_retry(on_retry or _log_retry(url, method))
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    try:
        resp = _pool_for(url).urlopen(
            method,
            url,
            headers=all_headers,
            retries=retry,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            preload_content=preload,
            decode_content=False,
        )
    except MaxRetryError as exc:
        raise FetchFailed(url, exc.reason or exc, retry.done[0] + 1) from exc
    except (Urllib3Error, OSError) as exc:  # not retried by urllib3 (e.g. a bad URL)
        transient = not isinstance(exc, LocationValueError) and is_transient(exc)
        raise FetchFailed(url, exc, retry.done[0] + 1, transient) from exc
    attempts = retry.done[0] + 1
    if resp.status == 304 or 200 <= resp.status < 300:
        body: IO[bytes] | None = None
        if resp.status == 304:
            resp.drain_conn()
            resp.release_conn()
        else:
            body = io.BytesIO(resp.data) if preload else cast(IO[bytes], resp)
        return Response(url, resp.status, _headers(resp.headers), body, attempts)
    retry_after = None
    if resp.headers.get("Retry-After") is not None:
        try:
            retry_after = retry.parse_retry_after(resp.headers["Retry-After"])
        except urllib3.exceptions.InvalidHeader:
            retry_after = None
    resp.drain_conn()
    resp.release_conn()
    raise HttpError(url, resp.status, resp.reason or "", retry_after, attempts)
