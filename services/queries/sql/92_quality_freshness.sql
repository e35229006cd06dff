-- Freshness: per table, the newest date with rows and the newest complete date.
--
-- check: freshness
-- mode: check
--
-- A date of a base table is complete when a scan of that type that started on a later
-- date has been processed (a scan writes rows on its start date and the days after it,
-- never before, so once a later scan is in, nothing more arrives for the date).
-- merged_reduced_scans is complete up to the oldest complete date of the base tables that
-- have rows in the window. Only the window @start_date..@end_date is looked at.
WITH
newest_scan AS (
  SELECT
    scan_type,
    MAX(SAFE_CAST(REGEXP_EXTRACT(source, r'(\d{4}-\d{2}-\d{2})-\d{2}-\d{2}-\d{2}$') AS DATE))
      AS newest_scan_date
  FROM base.processed_files
  WHERE status = 'ok'
  GROUP BY scan_type
),
base_dates AS (
  SELECT 'discard' AS scan_type, 'discard_scan' AS table_name, date FROM base.discard_scan
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
  UNION ALL
  SELECT 'echo' AS scan_type, 'echo_scan' AS table_name, date FROM base.echo_scan
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
  UNION ALL
  SELECT 'http' AS scan_type, 'http_scan' AS table_name, date FROM base.http_scan
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
  UNION ALL
  SELECT 'https' AS scan_type, 'https_scan' AS table_name, date FROM base.https_scan
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
  UNION ALL
  SELECT 'satellite' AS scan_type, 'satellite_scan' AS table_name, date FROM base.satellite_scan
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
),
base_freshness AS (
  SELECT
    d.table_name,
    MAX(d.date) AS newest_date,
    MAX(IF(d.date < n.newest_scan_date, d.date, NULL)) AS newest_complete_date
  FROM base_dates AS d
  LEFT JOIN newest_scan AS n ON n.scan_type = d.scan_type
  GROUP BY d.table_name
),
derived_dates AS (
  SELECT date FROM derived.merged_reduced_scans
  WHERE date BETWEEN @start_date AND @end_date GROUP BY date
)
SELECT table_name, newest_date, newest_complete_date FROM base_freshness
UNION ALL
SELECT
  'merged_reduced_scans' AS table_name,
  (SELECT MAX(date) FROM derived_dates) AS newest_date,
  (SELECT MAX(date) FROM derived_dates
   WHERE date <= (SELECT MIN(IFNULL(newest_complete_date, DATE '0001-01-01'))
                  FROM base_freshness)) AS newest_complete_date
