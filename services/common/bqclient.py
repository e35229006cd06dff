"""BigQuery API clients, pointed at another endpoint when ``$BIGQUERY_EMULATOR_HOST`` is set.

Production leaves the variable unset: clients use Google's endpoint and the default
credentials. Set to a URL such as ``http://127.0.0.1:9050`` (a local BigQuery API server,
e.g. the emulator the tests start), clients use that endpoint with anonymous credentials;
google-cloud-bigquery reads the same variable for its default endpoint.

Example:
    >>> emulator_host({"BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050/"})
    'http://127.0.0.1:9050'
    >>> emulator_host({}) is None
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

EMULATOR_HOST_ENV = "BIGQUERY_EMULATOR_HOST"


def emulator_host(environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint from ``$BIGQUERY_EMULATOR_HOST`` (no trailing slash), or None."""
    value = (os.environ if environ is None else environ).get(EMULATOR_HOST_ENV, "").strip()
    return value.rstrip("/") or None


def bigquery_client(project: str, location: str | None = None) -> Any:
    """A google-cloud-bigquery client for ``project`` (endpoint as described above)."""
    from google.cloud import bigquery

    host = emulator_host()
    if host is None:
        return bigquery.Client(project=project, location=location)
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project,
        location=location,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": host},
    )
