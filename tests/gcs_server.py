"""A real GCS JSON-API server for tests: gcp-storage-emulator on 127.0.0.1, in-process.

Fixtures (load with ``pytest_plugins = ["tests.gcs_server"]``):

* ``gcs_server`` (session): one in-memory emulator listening on a kernel-chosen free port of
  127.0.0.1, served from a daemon thread and shut down at the end of the session.
* ``gcs_env``: points the code under test at that server for one test —
  ``STORAGE_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT``, ``NO_GCE_CHECK=true``, Beam's GCP
  credentials forced to anonymous (toolchain-notes §4: otherwise Beam spends ~17 s retrying
  ``google.auth.default()``), and a socket guard that refuses any connection that is not
  loopback, so a test fails rather than silently reaching a real Google endpoint.
* ``gcs_bucket``: ``gcs_env`` plus a freshly created bucket with a unique name.

The server is the emulator's own request handler, with two download behaviours of the real
GCS that the emulator lacks (both matter to our reader, see ``_GcsDownloadsHandler``).

Example (in a test)::

    def test_x(gcs_bucket):
        gcs_bucket.put("a/x.json", b"{}")
        assert storage.read_text(gcs_bucket.url("a/x.json")) == "{}"
"""

from __future__ import annotations

import http.server
import ipaddress
import re
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs  # type: ignore[attr-defined]

HOST = "127.0.0.1"
PROJECT = "local-test"

_MEDIA_PATH = re.compile(
    r"^(?P<download>/download)?/storage/v1/b/(?P<bucket>[-.\w]+)/o/(?P<object>.*[^/])$"
)


class _GcsDownloadsHandler(RequestHandler):
    """The emulator's handler, with two behaviours of real GCS media downloads added.

    * ``?generation=N`` of an object whose live generation is not N answers 404 (a bucket
      without versioning keeps only the live generation). The emulator ignores the
      parameter, so a reader pinned to a generation would read the new content unnoticed.
    * An object stored with ``Content-Encoding: gzip`` is served to a client sending
      ``Accept-Encoding: gzip`` (google-cloud-storage always does) with
      ``Content-Encoding: gzip``, so the client gunzips it unless it asked for a raw
      download. (Real GCS also transcodes for clients that do not accept gzip; not modelled.)
    """

    _extra_headers: tuple[tuple[str, str], ...] = ()

    def do_GET(self) -> None:
        self._extra_headers = ()
        url = urlparse(self.path)
        query = parse_qs(url.query)
        m = _MEDIA_PATH.fullmatch(url.path)
        if m and (m["download"] or query.get("alt") == ["media"]):
            try:
                meta = self.storage.get_file_obj(m["bucket"], unquote(m["object"]))
            except NotFound:
                meta = None
            wanted = query.get("generation", [None])[0]
            if meta is not None and wanted is not None and wanted != str(meta["generation"]):
                body = b'{"error": {"code": 404, "message": "No such object generation."}}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
            if meta is not None and meta.get("contentEncoding") == "gzip" and accepts_gzip:
                self._extra_headers = (
                    ("Content-Encoding", "gzip"),
                    ("x-goog-stored-content-encoding", "gzip"),
                )
        super().do_GET()

    def end_headers(self) -> None:
        for name, value in self._extra_headers:
            self.send_header(name, value)
        super().end_headers()


class _HttpServer(http.server.HTTPServer):
    # One request at a time (the emulator's store is not thread-safe), but a deep accept
    # queue so concurrent Beam workers wait instead of hitting SYN retries.
    request_queue_size = 128


@dataclass
class GcsServer:
    """A running emulator: its endpoint (``http://127.0.0.1:PORT``) and a client factory."""

    endpoint: str

    def client(self) -> gcs.Client:
        return gcs.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )


@dataclass
class GcsBucket:
    """A fresh bucket on the test server, with upload helpers that set no Content-Encoding."""

    name: str
    client: gcs.Client

    def url(self, key: str = "") -> str:
        return f"gs://{self.name}/{key}" if key else f"gs://{self.name}"

    def blob(self, key: str) -> Any:
        return self.client.bucket(self.name).blob(key)

    def put(self, key: str, data: bytes, **properties: Any) -> Any:
        """Upload ``data`` as-is (``properties`` e.g. content_encoding="gzip"); return the blob."""
        blob = self.blob(key)
        for name, value in properties.items():
            setattr(blob, name, value)
        blob.upload_from_string(data, content_type="application/octet-stream")
        return blob

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(self.name, prefix=prefix or None))


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    with tempfile.TemporaryDirectory(prefix="gcs-emulator-") as data_dir:
        store = Storage(use_memory_fs=True, data_dir=data_dir)
        httpd = _HttpServer(
            (HOST, 0), lambda *args: _GcsDownloadsHandler(store, *args)
        )  # port 0: bound now, no race
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield GcsServer(endpoint=f"http://{HOST}:{httpd.server_address[1]}")
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


def _loopback_only(address: Any) -> None:
    if isinstance(address, tuple):
        host = address[0]
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            if host == "localhost":
                return
        raise ConnectionRefusedError(f"test network guard: refusing connection to {address!r}")


@pytest.fixture
def gcs_env(gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsServer]:
    """Point storage clients (ours and Beam's) at the test server; forbid external sockets."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    try:
        from apache_beam.internal.gcp import auth as beam_auth
    except ImportError:  # pragma: no cover - Beam without the gcp extra
        pass
    else:
        monkeypatch.setattr(beam_auth._Credentials, "_credentials_init", True)
        monkeypatch.setattr(beam_auth._Credentials, "_credentials", None)

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock: socket.socket, address: Any) -> None:
        _loopback_only(address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        _loopback_only(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield gcs_server


@pytest.fixture
def gcs_bucket(gcs_env: GcsServer) -> Iterator[GcsBucket]:
    """A new, empty bucket (unique name) on the test server; emptied and deleted afterwards."""
    client = gcs_env.client()
    name = f"test-{secrets.token_hex(6)}"
    client.create_bucket(name)
    yield GcsBucket(name=name, client=client)
    bucket = client.bucket(name)
    for blob in client.list_blobs(name):
        blob.delete()
    bucket.delete()
