"""Organisation per IP from an MMDB file (DB-IP ISP, MaxMind ISP or ASN databases).

Used as the optional ``OrgSource`` of :class:`services.common.ipmeta.Enricher`: the
organisation is kept only when the database's ASN agrees with CAIDA's for that IP.
Absent by default; configured with ``--ip-org-mmdb`` (a local path or ``gs://`` URL).

Example:
    >>> MmdbOrgSource.file_id_for("gs://b/dbip/dbip-isp-2025-02.mmdb")
    'dbip-isp-2025-02'
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import maxminddb

from services.common import storage


class MmdbOrgSource:
    """``lookup(ip) -> (asn, organization)`` from an MMDB; never raises for bad IPs."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.file_id = self.file_id_for(location)
        path = location
        if storage.is_gcs(location):  # the reader needs a local file
            data = storage.storage_for(location).read_bytes(location)
            fd, path = tempfile.mkstemp(suffix=".mmdb")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        self._reader: Any = maxminddb.open_database(path, maxminddb.MODE_MEMORY)
        if path != location:
            os.unlink(path)

    @staticmethod
    def file_id_for(location: str) -> str:
        name = storage.basename(location)
        return name[: -len(".mmdb")] if name.endswith(".mmdb") else name

    def lookup(self, ip: str) -> tuple[int | None, str | None] | None:
        try:
            record = self._reader.get(ip)
        except (ValueError, TypeError):
            return None
        if not isinstance(record, dict):
            return None
        asn = record.get("autonomous_system_number", record.get("asn"))
        org = (
            record.get("organization")
            or record.get("isp")
            or record.get("autonomous_system_organization")
        )
        return (int(asn) if isinstance(asn, int) else None, org if isinstance(org, str) else None)
