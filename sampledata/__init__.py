"""Deterministic generator of the project's sample Censored Planet data: Hyperquack scans
(echo, discard, http, https; v1 and v2), Satellite v2.2 (DNS) scans, their ``.tar.gz``
archives and synthetic CAIDA IP-metadata files for the scans' hosts.

It is a development and test tool, not part of any service: it lives outside
``services/`` so that no image ships it. Run it with ``python -m sampledata`` or the
``cp-sample-scans`` command (``--help`` lists the flags).

Modules, by family and format:

* :mod:`sampledata.hyperquack`: Hyperquack v1/v2 records of every scan type;
* :mod:`sampledata.satellite`: Satellite v2.2 scans (``results.json`` and the other members);
* :mod:`sampledata.pages`: HTTP responses both families show (blockpages matching the
  sample signatures, ordinary pages);
* :mod:`sampledata.certs`: real DER certificate chains built with ``cryptography``;
* :mod:`sampledata.lines`: Go-style JSON lines and the malformed lines mixed in on request;
* :mod:`sampledata.common`: test domains, countries, time zones and other shared data;
* :mod:`sampledata.scans`: the scan sets (:data:`DEFAULT_SCANS`) and one scan's files;
* :mod:`sampledata.archives`: writing the archives and extracted files;
* :mod:`sampledata.caida`: the CAIDA-layout files;
* :mod:`sampledata.cli`: the command line.

Everything is derived from ``random.Random`` seeded with the caller's seed: no wall
clock, no ``uuid4``, no OS randomness. The same arguments give byte-identical files.
The names below are the package's API; import them from ``sampledata``.
"""

from sampledata.archives import GenerationSummary, generate, write_scan_archives
from sampledata.certs import certificate_chain
from sampledata.cli import main
from sampledata.common import (
    EDT,
    EST,
    SAMPLE_DOMAIN_CATEGORIES,
    SATELLITE,
    archive_name,
    hash_text,
    sample_keywords,
    source_name,
)
from sampledata.hyperquack import (
    ALT_PORTS,
    SCAN_TYPES,
    V1_CONTROL_DOMAINS,
    V1_KEYS,
    V2_KEYS,
    generate_hyperquack_records,
    iter_hyperquack_records,
)
from sampledata.lines import BAD_LINE_KINDS, go_json_line, render_results
from sampledata.pages import PAGE_TEMPLATES, PageTemplate
from sampledata.satellite import (
    LIVENESS_DOMAIN,
    PAGE_FETCH_KEYS,
    PROFILE_KEYS,
    SATELLITE_CONTROL_RESOLVERS,
    SATELLITE_FILES,
    SATELLITE_FORMAT,
    SATELLITE_RESULT_KEYS,
    SATELLITE_SCENARIOS,
    SatelliteScan,
    answer_networks,
    build_satellite_files,
    generate_satellite_scan,
    python_json_line,
    satellite_domains,
)
from sampledata.scans import (
    COMPANION_SCANS,
    DEFAULT_SCANS,
    DEFAULT_SIZE,
    HYPERQUACK_SCANS,
    REDUCED_MIN_SIZE,
    SATELLITE_SCANS,
    SampleHost,
    ScanSpec,
    build_scan_files,
    extracted_members,
    scan_hosts,
    scan_size,
)

__all__ = [
    "ALT_PORTS",
    "BAD_LINE_KINDS",
    "COMPANION_SCANS",
    "DEFAULT_SCANS",
    "DEFAULT_SIZE",
    "EDT",
    "EST",
    "HYPERQUACK_SCANS",
    "LIVENESS_DOMAIN",
    "PAGE_FETCH_KEYS",
    "PAGE_TEMPLATES",
    "PROFILE_KEYS",
    "REDUCED_MIN_SIZE",
    "SAMPLE_DOMAIN_CATEGORIES",
    "SATELLITE",
    "SATELLITE_CONTROL_RESOLVERS",
    "SATELLITE_FILES",
    "SATELLITE_FORMAT",
    "SATELLITE_RESULT_KEYS",
    "SATELLITE_SCANS",
    "SATELLITE_SCENARIOS",
    "SCAN_TYPES",
    "V1_CONTROL_DOMAINS",
    "V1_KEYS",
    "V2_KEYS",
    "GenerationSummary",
    "PageTemplate",
    "SampleHost",
    "SatelliteScan",
    "ScanSpec",
    "answer_networks",
    "archive_name",
    "build_satellite_files",
    "build_scan_files",
    "certificate_chain",
    "extracted_members",
    "generate",
    "generate_hyperquack_records",
    "generate_satellite_scan",
    "go_json_line",
    "hash_text",
    "iter_hyperquack_records",
    "main",
    "python_json_line",
    "render_results",
    "sample_keywords",
    "satellite_domains",
    "scan_hosts",
    "scan_size",
    "source_name",
    "write_scan_archives",
]
