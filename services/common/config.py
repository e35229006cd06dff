"""Settings shared by the services, from flags with environment fallbacks.

Nothing project-specific is hard-coded: project ids, datasets and buckets come from
flags, ``CP_*`` environment variables or Helm values.

Example:
    >>> env_or("CP_DOES_NOT_EXIST", "fallback")
    'fallback'
"""

from __future__ import annotations

import os
from importlib import metadata

PIPELINE_VERSION_ENV = "CP_PIPELINE_VERSION"


def env_or(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def pipeline_version() -> str:
    """The version stamped on every row: $CP_PIPELINE_VERSION or the package version."""
    explicit = env_or(PIPELINE_VERSION_ENV)
    if explicit:
        return explicit
    try:
        return metadata.version("cp-pipeline")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        with pyproject.open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
