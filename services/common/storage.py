"""One storage interface over local folders and Google Cloud Storage (``gs://``).

Writes are atomic: data goes to a temporary name and is moved into place, so no reader
ever sees a half-written object under its final name.

Example:
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> st = storage_for(root)
    >>> st.write_bytes(os.path.join(root, "a", "x.txt"), b"hi")
    >>> [o.size for o in st.list(root)]
    [2]
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object: its URL (or local path), size and a content version string."""

    url: str
    size: int
    version: str | None


class Storage(Protocol):
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def stat(self, url: str) -> ObjectInfo | None: ...
    def open_read(self, url: str) -> IO[bytes]: ...
    def read_bytes(self, url: str) -> bytes: ...
    def write_bytes(self, url: str, data: bytes) -> None: ...
    def delete(self, url: str) -> None: ...


def is_gcs(url: str) -> bool:
    return url.startswith("gs://")


def join(base: str, *parts: str) -> str:
    """Join path parts for either kind of location."""
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def parent_name(url: str) -> str:
    """Name of the folder holding the object (the scan name in our layouts)."""
    parts = url.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else ""


class LocalStorage:
    """Local filesystem; versions are ``size:mtime_ns`` (cheap, no full read)."""

    @staticmethod
    def _path(url: str) -> Path:
        return Path(url[7:] if url.startswith("file://") else url)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        root = self._path(prefix)
        if root.is_file():
            yield self._info(root)
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_file() and not name.startswith(".tmp-"):
                    yield self._info(p)

    @staticmethod
    def _info(p: Path) -> ObjectInfo:
        st = p.stat()
        return ObjectInfo(str(p), st.st_size, f"{st.st_size}:{st.st_mtime_ns}")

    def stat(self, url: str) -> ObjectInfo | None:
        p = self._path(url)
        return self._info(p) if p.is_file() else None

    def open_read(self, url: str) -> IO[bytes]:
        return self._path(url).open("rb")

    def read_bytes(self, url: str) -> bytes:
        return self._path(url).read_bytes()

    def write_bytes(self, url: str, data: bytes) -> None:
        target = self._path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, url: str) -> None:
        p = self._path(url)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class GcsStorage:
    """Google Cloud Storage via google-cloud-storage; honours $STORAGE_EMULATOR_HOST."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage as gcs  # type: ignore[attr-defined]

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                self._client = gcs.Client(
                    project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local-test"),
                    credentials=AnonymousCredentials(),
                )
            else:
                self._client = gcs.Client()
        return self._client

    @staticmethod
    def split(url: str) -> tuple[str, str]:
        if not is_gcs(url):
            raise ValueError(f"not a gs:// URL: {url}")
        bucket, _, key = url[5:].partition("/")
        return bucket, key

    @staticmethod
    def _version(blob: Any) -> str:
        return f"gen:{blob.generation}:md5:{blob.md5_hash}"

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Like LocalStorage: the object named by the URL, or everything in that folder, but
        # not siblings sharing the string prefix ("scans" must not list "scans-old/...").
        bucket, key = self.split(prefix)
        folder = key.rstrip("/") + "/" if key else ""
        for blob in self.client.list_blobs(bucket, prefix=key):
            if blob.name.endswith("/"):
                continue
            if key and blob.name != key and not blob.name.startswith(folder):
                continue
            yield ObjectInfo(f"gs://{bucket}/{blob.name}", int(blob.size or 0), self._version(blob))

    def stat(self, url: str) -> ObjectInfo | None:
        bucket, key = self.split(url)
        blob = self.client.bucket(bucket).get_blob(key)
        if blob is None:
            return None
        return ObjectInfo(url, int(blob.size or 0), self._version(blob))

    def open_read(self, url: str) -> IO[bytes]:
        # Bytes as stored (raw_download): an object uploaded with Content-Encoding: gzip
        # would otherwise be gunzipped by the client (then our *.gz decoding fails) and its
        # ranged reads break mid-stream. get_blob pins the reader to the live generation:
        # if the object is rewritten mid-read the next range fails (404) instead of
        # splicing two versions together.
        bucket, key = self.split(url)
        blob = self.client.bucket(bucket).get_blob(key)
        if blob is None:
            raise FileNotFoundError(url)
        return blob.open("rb", chunk_size=8 * 1024 * 1024, raw_download=True)

    def read_bytes(self, url: str) -> bytes:
        from google.api_core.exceptions import NotFound

        bucket, key = self.split(url)
        try:
            return self.client.bucket(bucket).blob(key).download_as_bytes(raw_download=True)
        except NotFound:
            raise FileNotFoundError(url) from None

    def write_bytes(self, url: str, data: bytes) -> None:
        # A single-request upload is atomic in GCS: the object appears whole or not at all.
        bucket, key = self.split(url)
        self.client.bucket(bucket).blob(key).upload_from_file(io.BytesIO(data), size=len(data))

    def delete(self, url: str) -> None:
        bucket, key = self.split(url)
        for blob in self.client.list_blobs(bucket, prefix=key):
            if blob.name == key or blob.name.startswith(key.rstrip("/") + "/"):
                blob.delete()


_LOCAL = LocalStorage()


def storage_for(url: str) -> Storage:
    """The storage implementation for a URL (``gs://`` or a local path)."""
    return GcsStorage() if is_gcs(url) else _LOCAL


def open_text_lines(url: str) -> IO[bytes]:
    """Open an input file for reading bytes, transparently gunzipping ``*.gz``."""
    raw = storage_for(url).open_read(url)
    if url.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def read_text(url: str) -> str:
    data = storage_for(url).read_bytes(url)
    if url.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8-sig")
