"""The one retry policy (services/common/retry.py) and the HTTP client on it, against a
real HTTP server on 127.0.0.1 that answers from a script per path."""

from __future__ import annotations

import doctest
import email.utils
import gzip
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.common import httpfetch, retry
from services.common.httpfetch import FetchFailed, HttpError, is_transient, request
from services.common.retry import RetryPolicy

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Answer:
    """One scripted answer: a status, headers and a body (``cut``: send only that many
    bytes of it, then drop the connection; ``drop``: close without answering)."""

    status: int = 200
    body: bytes = b"hello"
    headers: dict[str, str] = field(default_factory=dict)
    cut: int | None = None
    drop: bool = False


@dataclass
class Script:
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # path → next answers
    seen: list[tuple[str, str, float]] = field(default_factory=list)  # method, path, time
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _m, p, _t in self.seen if p == path)

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [t for _m, p, t in self.seen if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        with self.script.lock:
            self.script.seen.append((self.command, self.path, time.monotonic()))
            queue = self.script.answers.get(self.path, [])
            answer = queue.pop(0) if len(queue) > 1 else (queue[0] if queue else None)
        if answer is None:
            answer = Answer(404, b"not here")
        if answer.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            body = answer.body if answer.cut is None else answer.body[: answer.cut]
            self.wfile.write(body)
        if answer.cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = _serve
    do_HEAD = _serve


class Server:
    def __init__(self) -> None:
        self.script = Script()
        handler = type("Handler", (_Handler,), {"script": self.script})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, *answers: Answer) -> str:
        """Script ``path`` (the last answer repeats) and return its URL."""
        self.script.answers[path] = list(answers)
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def recording(
    retries: int = 3, base: float = 0.1, cap: float = 30.0
) -> tuple[RetryPolicy, list[float]]:
    """A policy whose waits are recorded instead of slept."""
    waits: list[float] = []
    return RetryPolicy(retries=retries, base=base, cap=cap, sleep=waits.append), waits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------
# HTTP


def test_retry_after_is_honoured_in_seconds_and_as_a_date_and_capped(server: Server) -> None:
    url = server.answer("/a", Answer(503, headers={"Retry-After": "7"}), Answer(200, b"ok"))
    policy, waits = recording()
    with request(url, backoff=policy) as resp:
        assert (resp.status, resp.read(), resp.attempts) == (200, b"ok", 2)
    assert waits == [7.0]  # the server's wait, not the 0.1 s backoff

    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    url = server.answer("/b", Answer(429, headers={"Retry-After": future}), Answer(200))
    policy, waits = recording()
    assert request(url, backoff=policy).status == 200
    assert len(waits) == 1 and 15 <= waits[0] <= 21

    url = server.answer("/c", Answer(503, headers={"Retry-After": "3600"}), Answer(200))
    policy, waits = recording(cap=5.0)
    assert request(url, backoff=policy).status == 200
    assert waits == [5.0]  # at most the policy's cap

    url = server.answer("/d", Answer(503, headers={"Retry-After": "soon"}), Answer(200))
    policy, waits = recording(base=0.4)
    assert request(url, backoff=policy).status == 200
    assert len(waits) == 1 and 0.3 <= waits[0] <= 0.5  # unreadable: the usual backoff


def test_retry_after_really_delays_the_next_request(server: Server) -> None:
    url = server.answer("/slow", Answer(503, headers={"Retry-After": "1"}), Answer(200, b"x"))
    assert request(url, backoff=RetryPolicy(retries=2, base=0.0)).read() == b"x"
    first, second = server.script.times("/slow")
    assert second - first >= 0.95


def test_5xx_retried_with_growing_waits_then_success(server: Server) -> None:
    url = server.answer("/f", Answer(500), Answer(502), Answer(504), Answer(200, b"body"))
    policy, waits = recording(retries=3, base=1.0)
    events: list[tuple[str, int, float]] = []
    resp = request(url, backoff=policy, on_retry=lambda *e: events.append(e))
    assert (resp.status, resp.read(), resp.attempts) == (200, b"body", 4)
    assert server.script.count("/f") == 4
    assert [(what, n) for what, n, _ in events] == [
        ("HTTP 500", 1),
        ("HTTP 502", 2),
        ("HTTP 504", 3),
    ]
    assert [round(w, 6) for _, _, w in events] == [round(w, 6) for w in waits]
    # base·2^(n-1) ±25 %: 1, 2, 4 seconds
    assert 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5 and 3.0 <= waits[2] <= 5.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_4xx_is_not_retried(server: Server, status: int) -> None:
    url = server.answer("/gone", Answer(status, b"no"))
    policy, waits = recording(retries=5)
    with pytest.raises(HttpError) as err:
        request(url, backoff=policy)
    assert (err.value.status, err.value.attempts) == (status, 1)
    assert not is_transient(err.value)
    assert server.script.count("/gone") == 1 and waits == []


def test_connection_refused_is_retried_then_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/x"
    policy, waits = recording(retries=2)
    events: list[tuple[str, int, float]] = []
    with pytest.raises(FetchFailed) as err:
        request(url, backoff=policy, on_retry=lambda *e: events.append(e))
    assert err.value.attempts == 3 and len(waits) == 2
    assert "Connection refused" in str(err.value) and "(after 3 attempts)" in str(err.value)
    assert [n for _, n, _ in events] == [1, 2] and "NewConnectionError" in events[0][0]
    assert is_transient(err.value)  # a caller may try the whole operation again later


def test_a_bad_url_fails_at_once_and_is_not_transient() -> None:
    policy, waits = recording()
    for url in ("ftp://127.0.0.1/x", "http://127.0.0.1:99999/x"):
        with pytest.raises(FetchFailed) as err:
            request(url, backoff=policy)
        assert (err.value.attempts, err.value.transient, waits) == (1, False, [])
        assert not is_transient(err.value)


def test_dropped_connection_before_an_answer_is_retried(server: Server) -> None:
    url = server.answer("/drop", Answer(drop=True), Answer(200, b"fine"))
    policy, waits = recording()
    resp = request(url, backoff=policy)
    assert (resp.read(), resp.attempts, len(waits)) == (b"fine", 2, 1)


def test_attempts_exhausted_is_a_clear_error(server: Server) -> None:
    url = server.answer("/busy", Answer(503, b"busy"))
    policy, waits = recording(retries=2)
    with pytest.raises(HttpError) as err:
        request(url, backoff=policy)
    assert str(err.value) == f"HTTP 503 Service Unavailable for {url} (after 3 attempts)"
    assert (err.value.status, err.value.attempts) == (503, 3)
    assert server.script.count("/busy") == 3 and len(waits) == 2
    assert is_transient(err.value)

    url = server.answer("/once", Answer(503, b"busy"))
    with pytest.raises(HttpError, match=r"^HTTP 503 Service Unavailable for \S+/once$"):
        request(url, backoff=RetryPolicy(retries=0))  # no retries: no attempt count shown
    assert server.script.count("/once") == 1


def test_short_body_is_retried_inside_the_client_when_preloaded(server: Server) -> None:
    full = bytes(range(256)) * 40
    url = server.answer("/s", Answer(200, full, cut=1000), Answer(200, full))
    policy, waits = recording()
    resp = request(url, backoff=policy, preload=True)
    assert (resp.read(), resp.attempts, len(waits)) == (full, 2, 1)
    assert server.script.count("/s") == 2

    # Streamed (not preloaded), the cut surfaces while reading, as a transient error.
    server.answer("/s", Answer(200, full, cut=1000))
    resp = request(url, backoff=recording()[0])
    with pytest.raises(Exception) as err:
        while resp.body is not None and resp.body.read(4096):
            pass
    assert is_transient(err.value)


def test_redirects_are_followed_without_using_retries(server: Server) -> None:
    target = server.answer("/new", Answer(200, b"moved here"))
    url = server.answer("/old", Answer(301, b"", headers={"Location": target}))
    resp = request(url, backoff=RetryPolicy(retries=0))
    assert (resp.status, resp.read(), resp.attempts) == (200, b"moved here", 1)


def test_bodies_pass_as_sent_and_304_is_returned(server: Server) -> None:
    packed = gzip.compress(b"inner")
    url = server.answer("/z.gz", Answer(200, packed, headers={"Content-Encoding": "gzip"}))
    assert request(url, backoff=RetryPolicy(retries=0)).read() == packed  # not decoded
    url = server.answer("/etag", Answer(304, b""))
    resp = request(url, headers={"If-None-Match": '"v1"'}, backoff=RetryPolicy(retries=0))
    assert (resp.status, resp.body) == (304, None)


def test_a_retry_is_logged_by_default_once(server: Server) -> None:
    """Without a hook, each retry is one ``http_retry`` warning line (real process, stderr),
    and urllib3's own "Retrying" warning for it is not repeated."""
    url = server.answer("/log?token=secret", Answer(503), Answer(200, b"ok"))
    code = (
        "import sys; from services.common.logsetup import configure_logging;"
        "from services.common.httpfetch import request, Backoff, FetchFailed;"
        "configure_logging('INFO');"
        "print(request(sys.argv[1], backoff=Backoff(retries=2, base=0.0)).read().decode())\n"
        "try: request(sys.argv[2], backoff=Backoff(retries=1, base=0.0))\n"
        "except FetchFailed as exc: print(exc.attempts)"
    )
    refused = f"http://127.0.0.1:{free_port()}/r"
    proc = subprocess.run(
        [sys.executable, "-c", code, url, refused],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "2"]
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 2, proc.stderr  # one per retry, nothing else
    first, second = lines
    assert (first["message"], first["severity"], first["retry"], first["error"]) == (
        "http_retry",
        "WARNING",
        1,
        "HTTP 503",
    )
    assert first["url"].endswith("/log") and "secret" not in proc.stderr
    assert second["message"] == "http_retry" and "Connection refused" in second["error"]


# --------------------------------------------------------------------------------------
# Non-HTTP operations (tenacity) and the schedule


def test_call_retries_only_what_it_is_told_and_reraises_the_last_error() -> None:
    policy, waits = recording(retries=99, base=2.0, cap=5.0)
    tries: list[int] = []
    events: list[tuple[str, int, float]] = []

    def always_reset() -> None:
        tries.append(1)
        raise ConnectionResetError(f"reset #{len(tries)}")

    with pytest.raises(ConnectionResetError, match="reset #4"):
        policy.call(
            always_reset,
            attempts=4,
            retry_on=lambda e: isinstance(e, ConnectionError),
            on_retry=lambda *e: events.append(e),
        )
    assert len(tries) == 4
    assert [(m, n) for m, n, _ in events] == [("reset #1", 1), ("reset #2", 2), ("reset #3", 3)]
    assert [round(w, 6) for _, _, w in events] == [round(w, 6) for w in waits]
    # 2 s, 4 s, then 8 s capped at 5 (±25 % jitter, never above the cap)
    assert 1.5 <= waits[0] <= 2.5 and 3.0 <= waits[1] <= 5.0 and waits[2] == 5.0

    def broken() -> None:
        tries.append(1)
        raise ValueError("not transient")

    tries.clear()
    with pytest.raises(ValueError):
        policy.call(broken, attempts=5, retry_on=lambda e: isinstance(e, ConnectionError))
    assert len(tries) == 1


def test_module_examples() -> None:
    for module in (retry, httpfetch):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0
