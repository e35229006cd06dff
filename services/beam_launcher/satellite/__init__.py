"""Satellite (DNS): parsing, the per-scan join, post-processing, outcomes and the Beam graph.

* ``parse`` — v1/v2.1/v2.2 files → flattened rows and join values (pure functions)
* ``batch`` — observation lines → rows one batch at a time (C fast path + Python reference)
* ``post`` — confidence and verification of one (source, domain) group
* ``outcomes`` — outcome rules (``rules/satellite_outcomes.toml``)
* ``pipeline`` — the Beam graph of one Satellite scan
"""
