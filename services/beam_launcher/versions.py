"""Pipeline versions in the ledger: ``--reprocess-pipeline-older-than VERSION``.

Versions are ordered as PEP 440 says (``packaging.version``): ``1.10 > 1.9``,
``1.1rc1 < 1.1``, ``1.1 == 1.1.0``. A ledger row whose ``pipeline_version`` does not
parse (e.g. a hand-set ``CP_PIPELINE_VERSION=dev``) counts as older than any version, so
a backfill replaces it; each such value is logged once per run
(``pipeline_version_unparsable``).

Example:
    >>> older = OlderThan("1.1")
    >>> older("1.0"), older("1.1.0"), older("1.10"), older("1.1rc1")
    (True, False, False, True)
"""

from __future__ import annotations

import argparse

from packaging.version import InvalidVersion, Version

from services.common.logsetup import get_logger


def parse_version(text: str | None) -> Version | None:
    """``text`` as a PEP 440 version, or None when it is not one.

    >>> parse_version("v1.2"), parse_version("dev-abc")
    (<Version('1.2')>, None)
    """
    if text is None:
        return None
    try:
        return Version(text.strip())
    except InvalidVersion:
        return None


def version_arg(text: str) -> str:
    """argparse type of ``--reprocess-pipeline-older-than``: a PEP 440 version."""
    if parse_version(text) is None:
        raise argparse.ArgumentTypeError(
            f"not a version (PEP 440, e.g. 1.2 or 0.3.1): {text!r}"
        ) from None
    return text.strip()


class OlderThan:
    """Predicate: was a ledger row written by a pipeline version older than ``version``?"""

    def __init__(self, version: str) -> None:
        parsed = parse_version(version)
        if parsed is None:
            raise ValueError(f"not a version (PEP 440): {version!r}")
        self.version = version
        self._threshold = parsed
        self._unparsable: set[str] = set()

    def __call__(self, pipeline_version: str | None) -> bool:
        parsed = parse_version(pipeline_version)
        if parsed is None:
            text = str(pipeline_version)
            if text not in self._unparsable:
                self._unparsable.add(text)
                get_logger("beam_launcher").warning(
                    "pipeline_version_unparsable",
                    pipeline_version=pipeline_version,
                    treated_as=f"older than {self.version}",
                )
            return True
        return parsed < self._threshold


def newer_than_code(version: str, code_version: str) -> str | None:
    """Why ``--reprocess-pipeline-older-than version`` cannot run with this code, or None.

    Rows reprocessed now get ``code_version``; if that is itself older than ``version``
    (or not a version), every rerun would select the same files again and never finish.

    >>> newer_than_code("1.1", "1.1"), newer_than_code("1.0", "1.1")
    (None, None)
    >>> newer_than_code("1.2", "1.1")  # doctest: +ELLIPSIS
    "... is newer than this pipeline's version '1.1': ..."
    """
    code = parse_version(code_version)
    wanted = parse_version(version)
    if code is None:
        return (
            f"this pipeline's version {code_version!r} (CP_PIPELINE_VERSION or the package "
            "version) is not a PEP 440 version, so no file it writes can be told newer"
        )
    if wanted is not None and code < wanted:
        return (
            f"--reprocess-pipeline-older-than {version} is newer than this pipeline's version "
            f"{code_version!r}: the reprocessed rows would still be older, and every rerun "
            "would select them again"
        )
    return None
