"""Sync the pipeline's resource files into a dated, versioned location plus ``current/``.

Files: ``blockpage_signatures.json``, ``false_positive_signatures.json`` (JSON lines
``{"fingerprint", "pattern"}``) and ``domain_categories.csv`` (``domain,category``).

Source ``--url``: an ``http(s)://`` base URL (conditional GET with ``If-None-Match``;
the ETags are kept in ``DEST/.resources-state.json``) or a folder / ``gs://`` prefix
(the object version plays the ETag's part).

* Nothing changed (304 for all three): nothing is written.
* Something changed: the new files are validated first (signatures: JSON objects with
  non-empty string ``fingerprint`` and ``pattern``, patterns compile with Python
  ``re``; categories: CSV rows of exactly two non-empty fields; no file may be
  empty). Invalid ⇒ nothing is published and the ETags are not updated (the next run
  fetches again). Valid ⇒ the complete set (changed + unchanged files) is written to
  ``DEST/<YYYY-MM-DD>/`` (``DEST/<YYYY-MM-DD>.N/`` for a further change on the same
  day) with ``MANIFEST.json`` last, then copied to ``DEST/current/`` (again
  ``MANIFEST.json`` last), then the state is saved. The pipeline reads ``DEST/current``.

A crash part-way is repaired by the next run: the state still has the old ETags, so
the files are fetched again and published again.

Example:
    >>> validate_signatures('{"fingerprint": "a", "pattern": "x+"}\\n', "b.json")
    1
    >>> validate_categories("example.com,News Media\\n", "c.csv")
    1
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.common import storage
from services.common.httpfetch import Backoff, request
from services.common.logsetup import get_logger
from services.mirror.metrics import MirrorMetrics

BLOCKPAGE_FILE = "blockpage_signatures.json"
FALSE_POSITIVE_FILE = "false_positive_signatures.json"
CATEGORIES_FILE = "domain_categories.csv"
RESOURCE_FILES = (BLOCKPAGE_FILE, FALSE_POSITIVE_FILE, CATEGORIES_FILE)
STATE_NAME = ".resources-state.json"
CURRENT = "current"
MANIFEST = "MANIFEST.json"


class InvalidResource(ValueError):
    """A fetched resource file failed validation (nothing was published)."""


def _text(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidResource(f"{label}: not UTF-8 ({exc})") from None


def validate_signatures(text: str, label: str) -> int:
    """Number of signatures; raises InvalidResource naming the first bad line."""
    count = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidResource(f"{label}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InvalidResource(f"{label}:{lineno}: expected a JSON object")
        for key in ("fingerprint", "pattern"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise InvalidResource(f"{label}:{lineno}: missing or empty {key!r}")
        try:
            re.compile(obj["pattern"], re.DOTALL)
        except re.error as exc:
            raise InvalidResource(
                f"{label}:{lineno}: pattern of {obj['fingerprint']!r} does not compile ({exc})"
            ) from None
        count += 1
    if count == 0:
        raise InvalidResource(f"{label}: no signatures")
    return count


def validate_categories(text: str, label: str) -> int:
    """Number of ``domain,category`` rows; raises InvalidResource naming the first bad row."""
    count = 0
    reader = csv.reader(io.StringIO(text))
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != 2:
            raise InvalidResource(
                f"{label}:{reader.line_num}: expected 'domain,category', got {len(fields)} fields"
            )
        if not fields[0].strip() or not fields[1].strip():
            raise InvalidResource(f"{label}:{reader.line_num}: empty domain or category")
        count += 1
    if count == 0:
        raise InvalidResource(f"{label}: no rows")
    return count


def validate(name: str, data: bytes) -> int:
    text = _text(data, name)
    if name == CATEGORIES_FILE:
        return validate_categories(text, name)
    return validate_signatures(text, name)


@dataclass
class Fetched:
    """One file's conditional fetch: ``data`` is None when not modified."""

    name: str
    etag: str | None
    data: bytes | None


Fetcher = Callable[[str, str | None], Fetched]


def http_fetcher(base_url: str, backoff: Backoff | None = None) -> Fetcher:
    base = base_url if base_url.endswith("/") else base_url + "/"

    def fetch(name: str, etag: str | None) -> Fetched:
        headers = {"If-None-Match": etag} if etag else {}
        with request(base + name, headers=headers, backoff=backoff) as resp:
            if resp.status == 304:
                return Fetched(name, etag, None)
            return Fetched(name, resp.header("ETag"), resp.read())

    return fetch


def storage_fetcher(location: str) -> Fetcher:
    """A folder or ``gs://`` prefix as the source; the object version acts as the ETag."""

    def fetch(name: str, etag: str | None) -> Fetched:
        url = storage.join(location, name)
        st = storage.storage_for(url)
        info = st.stat(url)
        if info is None:
            raise FileNotFoundError(url)
        if etag is not None and info.version == etag:
            return Fetched(name, etag, None)
        return Fetched(name, info.version, st.read_bytes(url))

    return fetch


def fetcher_for(url: str, backoff: Backoff | None = None) -> Fetcher:
    if url.startswith(("http://", "https://")):
        return http_fetcher(url, backoff)
    return storage_fetcher(url)


@dataclass
class ResourceSyncResult:
    dest: str
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    published: str | None = None  # the dated folder written, if any
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "published": self.published,
            "current": storage.join(self.dest, CURRENT),
            "seconds": round(self.seconds, 3),
        }


def _load_state(dest: str) -> dict[str, Any]:
    url = storage.join(dest, STATE_NAME)
    try:
        state = json.loads(storage.storage_for(url).read_bytes(url))
    except (FileNotFoundError, ValueError):
        return {"files": {}}
    return state if isinstance(state, dict) and isinstance(state.get("files"), dict) else {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dated_folder(dest: str, today: dt.date) -> str:
    st = storage.storage_for(dest)
    base = today.isoformat()
    n = 0
    while True:
        name = base if n == 0 else f"{base}.{n}"
        if next(iter(st.list(storage.join(dest, name))), None) is None:
            return name
        n += 1


def _publish(dest: str, folder: str, files: dict[str, bytes], manifest: bytes) -> None:
    for name, data in files.items():
        url = storage.join(dest, folder, name)
        storage.storage_for(url).write_bytes(url, data)
    url = storage.join(dest, folder, MANIFEST)
    storage.storage_for(url).write_bytes(url, manifest)  # last: the set is complete


def sync_resources(
    url: str,
    dest: str,
    *,
    fetcher: Fetcher | None = None,
    today: dt.date | None = None,
    metrics: MirrorMetrics | None = None,
    backoff: Backoff | None = None,
) -> ResourceSyncResult:
    """Fetch the three files conditionally; publish a new validated set if any changed.

    Raises InvalidResource (nothing published) or the fetch error.
    """
    started = time.monotonic()
    metrics = metrics or MirrorMetrics()
    log: Any = get_logger("mirror.resources", url=url, dest=dest)
    fetch = fetcher or fetcher_for(url, backoff)
    result = ResourceSyncResult(dest=dest)
    state = _load_state(dest)
    known: dict[str, Any] = state.get("files", {})

    current: dict[str, bytes] = {}
    fetched: dict[str, Fetched] = {}
    for name in RESOURCE_FILES:
        cur_url = storage.join(dest, CURRENT, name)
        with contextlib.suppress(FileNotFoundError):
            current[name] = storage.storage_for(cur_url).read_bytes(cur_url)
        # Without a current copy a 304 would leave us nothing to publish: fetch in full.
        etag = known.get(name, {}).get("etag") if name in current else None
        try:
            fetched[name] = fetch(name, etag)
        except Exception:
            metrics.resource_files.labels(result="failed").inc()
            raise

    new_files: dict[str, bytes] = {}
    for name, got in fetched.items():
        if got.data is None or (name in current and got.data == current[name]):
            result.unchanged.append(name)
            continue
        try:
            validate(name, got.data)
        except InvalidResource:
            metrics.resource_files.labels(result="invalid").inc()
            raise
        new_files[name] = got.data
        result.updated.append(name)
    metrics.resource_files.labels(result="unchanged").inc(len(result.unchanged))

    new_state = {
        "files": {
            name: {
                "etag": fetched[name].etag,
                "sha256": _sha256(new_files.get(name, current.get(name, b""))),
            }
            for name in RESOURCE_FILES
        }
    }
    if new_files:
        files = {name: new_files.get(name, current.get(name, b"")) for name in RESOURCE_FILES}
        folder = _dated_folder(dest, today or dt.datetime.now(dt.UTC).date())
        manifest = json.dumps(
            {
                "source": url,
                "folder": folder,
                "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "files": {
                    n: {
                        "sha256": _sha256(d),
                        "bytes": len(d),
                        "etag": fetched[n].etag,
                        "records": validate(n, d),
                    }
                    for n, d in files.items()
                },
            },
            indent=1,
            sort_keys=True,
        ).encode()
        _publish(dest, folder, files, manifest)
        _publish(dest, CURRENT, files, manifest)
        result.published = storage.join(dest, folder)
        metrics.resource_files.labels(result="updated").inc(len(new_files))
        log.info("resources_published", folder=folder, updated=result.updated)
    if new_files or new_state != {"files": known}:
        state_url = storage.join(dest, STATE_NAME)
        storage.storage_for(state_url).write_bytes(
            state_url, json.dumps(new_state, indent=1, sort_keys=True).encode()
        )
    metrics.resources_last_success.set_to_current_time()
    result.seconds = time.monotonic() - started
    log.info("resources_done", **result.to_dict())
    return result
