-- The ledger per scan: its file rows and the newest commit time. A scan whose numbers
-- differ from what the service last consumed (derived._query_sources) has changed.
SELECT
  source,
  MIN(scan_type) AS scan_type,
  COUNT(*) AS files,
  MAX(processed_at) AS last_processed_at
FROM base.processed_files
GROUP BY source
