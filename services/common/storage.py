"""One storage interface over local folders and Google Cloud Storage (``gs://``).

Writes are atomic: data goes to a temporary name and is moved into place, so no reader
ever sees a half-written object under its final name.

Streaming writes use :meth:`StreamStorage.open_write`, a context manager that publishes
the object when the ``with`` block ends without an error and discards it otherwise
(``if_absent=True``: publish only if nothing exists under that name yet, else
:class:`ObjectExists`). The writer counts bytes and computes the MD5 as it goes, so a
caller can check both *before* the object is published. :func:`copy_stream` builds a
verified streaming copy on it.

* Local folders: a ``.tmp-*`` file in the target folder, fsync, ``os.replace`` (or
  ``os.link`` for ``if_absent``), fsync of the folder. A process killed mid-write
  leaves only the hidden ``.tmp-*`` file (``list`` skips it, and the stages' ``.lease-*``
  files; ``remove_stale_temps`` deletes old ones).
* GCS: up to ``chunk_size`` bytes are sent in one multipart request (atomic; the MD5 is
  sent along, so the server refuses corrupted bodies); larger objects use a resumable
  upload session, whose object only appears when the session is finalized at the end
  of the block; an error cancels the session. ``if_absent`` is the
  ``ifGenerationMatch=0`` precondition.

Example:
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> st = storage_for(root)
    >>> st.write_bytes(os.path.join(root, "a", "x.txt"), b"hi")
    >>> [o.size for o in st.list(root)]
    [2]
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

TMP_PREFIX = ".tmp-"
LEASE_PREFIX = ".lease-"  # a running stage's lease (services/common/lifecycle.py), not data
COPY_CHUNK = 1024 * 1024
GCS_CHUNK = 8 * 1024 * 1024  # resumable-upload chunk (a multiple of 256 KiB)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object: its URL (or local path), size and a content version string."""

    url: str
    size: int
    version: str | None
    md5: str | None = None  # hex MD5 of the content when the backend knows it (GCS), else None


class ObjectExists(FileExistsError):
    """``if_absent`` was asked for and an object already exists under that name."""


class ChecksumMismatch(ValueError):
    """Copied bytes do not have the expected size or MD5 (nothing was published)."""


class Storage(Protocol):
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def stat(self, url: str) -> ObjectInfo | None: ...
    def open_read(self, url: str) -> IO[bytes]: ...
    def read_bytes(self, url: str) -> bytes: ...
    def write_bytes(self, url: str, data: bytes) -> None: ...
    def delete(self, url: str) -> None: ...


class StreamStorage(Storage, Protocol):
    """Storage with streaming atomic writes (both backends implement it)."""

    def open_write(
        self, url: str, *, if_absent: bool = False
    ) -> contextlib.AbstractContextManager[AtomicWriter]: ...
    def remove_stale_temps(self, prefix: str, older_than_s: float) -> int: ...


class AtomicWriter(abc.ABC):
    """A write handle from ``open_write``: counts bytes and hashes them (MD5) as they pass.

    Usable as the ``fileobj`` of ``gzip.GzipFile``. ``info`` is set once published.
    """

    def __init__(self, url: str, if_absent: bool = False) -> None:
        self.url = url
        self.if_absent = if_absent
        self.size = 0
        self.info: ObjectInfo | None = None
        self._md5 = hashlib.md5()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError(f"write to a finished writer: {self.url}")
        n = len(data)
        if n:
            self._md5.update(data)
            self._sink(data)
            self.size += n
        return n

    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    def md5_digest(self) -> bytes:
        return self._md5.digest()

    def flush(self) -> None:
        """No-op: data is published on commit, never partially."""
        return None

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    # Backend hooks (each backend's writer implements all three).
    @abc.abstractmethod
    def _sink(self, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def _commit(self) -> ObjectInfo: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> ObjectInfo:
        """Publish (``open_write`` calls it when the block ends without an error)."""
        self.closed = True
        try:
            self.info = self._commit()
        except BaseException:
            self._abort()
            raise
        return self.info

    def abort(self) -> None:
        self.closed = True
        self._abort()


@contextlib.contextmanager
def _atomic(writer: AtomicWriter) -> Iterator[AtomicWriter]:
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


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
                if p.is_file() and not name.startswith((TMP_PREFIX, LEASE_PREFIX)):
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

    def open_write(
        self, url: str, *, if_absent: bool = False
    ) -> contextlib.AbstractContextManager[AtomicWriter]:
        """Stream into ``.tmp-*`` next to the target; publish by rename on success."""
        return _atomic(_LocalWriter(url, self._path(url), if_absent))

    def remove_stale_temps(self, prefix: str, older_than_s: float) -> int:
        """Delete ``.tmp-*`` files under ``prefix`` older than ``older_than_s`` seconds."""
        root = self._path(prefix)
        if not root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                if not name.startswith(TMP_PREFIX):
                    continue
                p = Path(dirpath) / name
                try:
                    if p.stat().st_mtime <= cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _LocalWriter(AtomicWriter):
    def __init__(self, url: str, target: Path, if_absent: bool) -> None:
        super().__init__(url, if_absent)
        self._target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
        self._tmp = Path(tmp)
        self._fh: IO[bytes] = os.fdopen(fd, "wb")

    def _sink(self, data: bytes | bytearray | memoryview) -> None:
        self._fh.write(data)

    def _commit(self) -> ObjectInfo:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.if_absent:
            try:
                os.link(self._tmp, self._target)  # atomic create-only
            except FileExistsError:
                raise ObjectExists(self.url) from None
            except OSError as exc:  # a filesystem without hard links: check, then rename
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                    raise
                if self._target.exists():
                    raise ObjectExists(self.url) from None
                os.replace(self._tmp, self._target)
            else:
                self._tmp.unlink()
        else:
            os.replace(self._tmp, self._target)
        _fsync_dir(self._target.parent)
        st = self._target.stat()
        return ObjectInfo(self.url, st.st_size, f"{st.st_size}:{st.st_mtime_ns}", self.md5_hex())

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class GcsStorage:
    """Google Cloud Storage via google-cloud-storage; honours $STORAGE_EMULATOR_HOST."""

    def __init__(self, client: Any = None, chunk_size: int = GCS_CHUNK) -> None:
        self._client = client
        self.chunk_size = chunk_size

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage as gcs  # type: ignore[attr-defined,unused-ignore]

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

    @classmethod
    def _info(cls, url: str, blob: Any) -> ObjectInfo:
        return ObjectInfo(url, int(blob.size or 0), cls._version(blob), md5_hex_of(blob.md5_hash))

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
            yield self._info(f"gs://{bucket}/{blob.name}", blob)

    def stat(self, url: str) -> ObjectInfo | None:
        bucket, key = self.split(url)
        blob = self.client.bucket(bucket).get_blob(key)
        if blob is None:
            return None
        return self._info(url, blob)

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

    def open_write(
        self, url: str, *, if_absent: bool = False
    ) -> contextlib.AbstractContextManager[AtomicWriter]:
        """Stream to the object; it becomes visible only when the block ends without error."""
        bucket, key = self.split(url)
        if not key or key.endswith("/"):
            raise ValueError(f"not an object URL: {url}")
        return _atomic(_GcsWriter(url, self, self.client.bucket(bucket).blob(key), if_absent))

    def remove_stale_temps(self, prefix: str, older_than_s: float) -> int:
        """Nothing to do: an unfinished upload session is never visible (it expires)."""
        return 0


def md5_hex_of(b64: str | None) -> str | None:
    """Hex form of a base64 MD5 as GCS reports it (``md5_hash``); None stays None."""
    if not b64:
        return None
    try:
        return base64.b64decode(b64, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def _http_status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


class _GcsWriter(AtomicWriter):
    """Buffers up to one chunk; a small object is one multipart request, a big one a session."""

    def __init__(self, url: str, owner: GcsStorage, blob: Any, if_absent: bool) -> None:
        super().__init__(url, if_absent)
        self._owner = owner
        self._blob = blob
        self._chunk = owner.chunk_size
        self._buf = bytearray()
        self._session: Any = None

    def _start_session(self) -> Any:
        if self.if_absent and self._owner.stat(self.url) is not None:  # fail early
            raise ObjectExists(self.url)
        from google.cloud.storage.retry import DEFAULT_RETRY

        # The precondition travels with the session; GCS checks it when it finalizes.
        # Chunks of a session are safe to resend (the session knows its offset), so
        # transient errors are retried even without a precondition. checksum="md5": the
        # client compares its MD5 with the one in GCS's final response.
        kwargs: dict[str, Any] = {"if_generation_match": 0} if self.if_absent else {}
        return self._blob.open(
            "wb",
            chunk_size=self._chunk,
            ignore_flush=True,
            retry=DEFAULT_RETRY,
            checksum="md5",
            **kwargs,
        )

    def _sink(self, data: bytes | bytearray | memoryview) -> None:
        if self._session is not None:
            self._session.write(data)
            return
        self._buf += data
        if len(self._buf) > self._chunk:
            session = self._session = self._start_session()
            buf, self._buf = self._buf, bytearray()
            session.write(bytes(buf))

    def _commit(self) -> ObjectInfo:
        try:
            if self._session is None:
                # One request: atomic, and GCS checks the MD5 before it stores anything.
                self._blob.md5_hash = base64.b64encode(self.md5_digest()).decode()
                kwargs: dict[str, Any] = {"if_generation_match": 0} if self.if_absent else {}
                self._blob.upload_from_file(
                    io.BytesIO(bytes(self._buf)),
                    size=len(self._buf),
                    content_type="application/octet-stream",
                    **kwargs,
                )  # sets the blob's properties from the response
            else:
                session, self._session = self._session, None
                try:
                    session.close()
                except Exception as exc:
                    self._delete_corrupt(exc)
                    raise
                self._blob.reload()
        except Exception as exc:
            if self.if_absent and _http_status(exc) == 412:
                raise ObjectExists(self.url) from None
            raise
        finally:
            self._buf = bytearray()
        return GcsStorage._info(self.url, self._blob)

    def _delete_corrupt(self, exc: Exception) -> None:
        """A finalized upload whose MD5 differs from ours: delete exactly that generation."""
        if type(exc).__name__ != "DataCorruption":
            return
        try:
            generation = int(exc.response.json()["generation"])  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - GCS always returns the object resource
            return
        from google.api_core.exceptions import GoogleAPICallError

        with contextlib.suppress(GoogleAPICallError):
            self._blob.delete(if_generation_match=generation)
        raise ChecksumMismatch(f"{self.url}: {exc}") from exc

    def _abort(self) -> None:
        self._buf = bytearray()
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.terminate()  # cancels the upload session: nothing is published


_LOCAL = LocalStorage()


def storage_for(url: str) -> StreamStorage:
    """The storage implementation for a URL (``gs://`` or a local path)."""
    return GcsStorage() if is_gcs(url) else _LOCAL


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What :func:`copy_stream` published."""

    url: str
    size: int
    md5: str
    info: ObjectInfo | None


def copy_stream(
    src: IO[bytes],
    url: str,
    *,
    storage: StreamStorage | None = None,
    if_absent: bool = False,
    expected_size: int | None = None,
    expected_md5: str | None = None,
    chunk_size: int = COPY_CHUNK,
) -> CopyResult:
    """Stream ``src`` to ``url`` atomically; verify size and MD5 before publishing.

    Memory use is one chunk. A reader that raises, or bytes that do not match
    ``expected_size``/``expected_md5`` (hex), leave nothing under ``url``
    (:class:`ChecksumMismatch` for a mismatch).
    """
    st = storage if storage is not None else storage_for(url)
    with st.open_write(url, if_absent=if_absent) as out:
        while True:
            chunk = src.read(chunk_size)
            if not chunk:
                break
            out.write(chunk)
            if expected_size is not None and out.size > expected_size:
                raise ChecksumMismatch(f"{url}: source is longer than {expected_size} bytes")
        if expected_size is not None and out.size != expected_size:
            raise ChecksumMismatch(f"{url}: got {out.size} bytes, expected {expected_size}")
        if expected_md5 is not None and out.md5_hex() != expected_md5.lower():
            raise ChecksumMismatch(f"{url}: MD5 {out.md5_hex()} differs from {expected_md5}")
    return CopyResult(url, out.size, out.md5_hex(), out.info)


def md5_of(url: str, storage: Storage | None = None, chunk_size: int = COPY_CHUNK) -> str:
    """Hex MD5 of an object: from the backend's metadata when it has it, else by reading."""
    st = storage if storage is not None else storage_for(url)
    info = st.stat(url)
    if info is None:
        raise FileNotFoundError(url)
    if info.md5:
        return info.md5
    digest = hashlib.md5()
    with st.open_read(url) as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def open_text_lines(url: str) -> IO[bytes]:
    """Open an input file for reading bytes, transparently gunzipping ``*.gz``.

    Gunzips with ISA-L (``isal.igzip``, a ``gzip.GzipFile`` subclass): 0.41 s of CPU
    instead of 0.95 s for a 259 MB scan. Same lines; a corrupt or truncated file raises
    as with ``gzip`` (the error may come some lines earlier, a few messages differ).
    """
    raw = storage_for(url).open_read(url)
    if url.endswith(".gz"):
        from isal import igzip  # here, not at import: --help stays light

        return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def read_text(url: str) -> str:
    data = storage_for(url).read_bytes(url)
    if url.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8-sig")
