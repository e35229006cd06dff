"""Where rows are written and what the tables are.

* ``rows`` — the row definitions of every table (the schema source of truth)
* ``schemas`` — generated docs and BigQuery JSON schemas (``python -m …warehouse.schemas``)
* ``local`` — the embedded warehouse: Parquet per table and date, DuckDB views, the ledger
* ``bigquery`` — the production warehouse on BigQuery
* ``schema_versions`` — schema versions and migrations
* ``rebuild`` — what both warehouses' run adapters share: the ledger and schema calls,
  table versions and the rebuild beside (``--full``)
"""
