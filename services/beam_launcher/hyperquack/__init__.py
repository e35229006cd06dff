"""Hyperquack (echo, discard, http, https): parsing, outcomes and the Beam graph.

* ``parse`` — raw v1/v2 records → one flattened row per roundtrip (pure functions)
* ``certs`` — the leaf TLS certificate of an HTTPS roundtrip
* ``outcomes`` — outcome rules (``rules/hyperquack_outcomes.toml``) and the rule engine
* ``processing`` — lines → finished rows and dead letters (C fast path + Python reference)
* ``pipeline`` — the Beam graph: files/slices → rows → Parquet / dead letters / stats
"""
