-- What the service consumed: per scan its ledger numbers then and the dates it had rows on.
SELECT source, scan_type, files, last_processed_at, date, row_count
FROM derived._query_sources
