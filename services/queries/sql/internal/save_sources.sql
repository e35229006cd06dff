-- Record the ledger numbers and dates of the scans a run took into account.
DELETE FROM derived._query_sources
WHERE @all_sources OR source IN UNNEST(@sources);

INSERT INTO derived._query_sources (source, scan_type, files, last_processed_at, date, row_count)
SELECT r.source, r.scan_type, r.files, r.last_processed_at, r.date, r.row_count
FROM UNNEST(@source_rows) AS r;
