"""The mirror's manifest at the destination root: ``<dest>/.mirror-manifest.json``.

It is a cache, never the truth: the archives themselves are.

* ``hashes``: MD5s computed by reading (local files have no stored checksum), keyed by
  URL and valid only while the object's version (``size:mtime_ns``) is unchanged.
* ``copies``: per archive, what was copied from where (source URL and version tag, size,
  MD5, destination version). For a source that states no checksum (an HTTP server
  without ``x-goog-hash``/``Content-MD5``), "same size and same source ETag as when we
  copied it" is how an archive is recognised as already present.

Losing it (or a corrupt file) costs re-hashing, never a wrong skip: a record only
counts while the destination object still has the recorded version. It is rewritten
atomically after every copy.

Example:
    >>> m = Manifest()
    >>> m.remember_md5("/d/a.tar.gz", "3:17", "abc")
    >>> m.cached_md5("/d/a.tar.gz", "3:17"), m.cached_md5("/d/a.tar.gz", "4:18")
    ('abc', None)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common import storage
from services.common.logsetup import get_logger

MANIFEST_NAME = ".mirror-manifest.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class CopyRecord:
    source: str
    source_etag: str | None
    size: int
    md5: str
    dest_version: str | None
    copied_at: str


@dataclass
class Manifest:
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    copies: dict[str, CopyRecord] = field(default_factory=dict)
    dirty: bool = False

    def cached_md5(self, url: str, version: str | None) -> str | None:
        hit = self.hashes.get(url)
        if hit is None or version is None or hit.get("version") != version:
            return None
        return hit.get("md5")

    def remember_md5(self, url: str, version: str | None, md5: str) -> None:
        if version is None:
            return
        entry = {"version": version, "md5": md5}
        if self.hashes.get(url) != entry:
            self.hashes[url] = entry
            self.dirty = True

    def record_copy(self, name: str, record: CopyRecord) -> None:
        self.copies[name] = record
        self.dirty = True

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "hashes": dict(sorted(self.hashes.items())),
            "copies": {k: asdict(v) for k, v in sorted(self.copies.items())},
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("unknown manifest format")
        copies = {name: CopyRecord(**rec) for name, rec in doc.get("copies", {}).items()}
        hashes = {
            url: {"version": str(h["version"]), "md5": str(h["md5"])}
            for url, h in doc.get("hashes", {}).items()
        }
        return cls(hashes=hashes, copies=copies)


def manifest_url(dest: str) -> str:
    return storage.join(dest, MANIFEST_NAME)


def load_manifest(dest: str) -> Manifest:
    """The manifest at ``dest``; an empty one if it is missing or unreadable (logged)."""
    url = manifest_url(dest)
    try:
        return Manifest.from_json(storage.storage_for(url).read_bytes(url))
    except FileNotFoundError:
        return Manifest()
    except (ValueError, TypeError, KeyError) as exc:
        get_logger("mirror").warning("manifest_unreadable", url=url, error=str(exc))
        return Manifest()


def save_manifest(dest: str, manifest: Manifest) -> None:
    if not manifest.dirty:
        return
    url = manifest_url(dest)
    storage.storage_for(url).write_bytes(url, manifest.to_json())
    manifest.dirty = False
