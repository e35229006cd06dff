-- Completeness: per scan type and scan date (the date in the scan's name), what the
-- ledger says was read and written against what the base tables hold.
--
-- check: completeness
-- mode: check
--
-- table_rows / ledger_rows should be 1 (below: rows lost; above: duplicated or stale
-- rows of a rejected file). accounted_lines / data_lines should be 1: every non-empty
-- raw line of a file that wrote rows became at least one row or a dead letter (tag and
-- page files of Satellite write no rows and are left out of that ratio).
-- Base rows are read from the window widened by the same margin the service uses to find
-- a scan's dates (2 days before, 7 after).
WITH
ledger AS (
  SELECT
    scan_type, source, file_key, status, lines, dead_letters, rows_written,
    SAFE_CAST(REGEXP_EXTRACT(source, r'(\d{4}-\d{2}-\d{2})-\d{2}-\d{2}-\d{2}$') AS DATE)
      AS scan_date
  FROM base.processed_files
),
in_window AS (
  SELECT * FROM ledger WHERE scan_date BETWEEN @start_date AND @end_date
),
base_rows AS (
  SELECT source, source_file, COUNT(*) AS row_count, COUNT(DISTINCT source_line) AS line_count
  FROM base.discard_scan
  WHERE date BETWEEN DATE_SUB(@start_date, INTERVAL 2 DAY) AND DATE_ADD(@end_date, INTERVAL 7 DAY)
  GROUP BY source, source_file
  UNION ALL
  SELECT source, source_file, COUNT(*) AS row_count, COUNT(DISTINCT source_line) AS line_count
  FROM base.echo_scan
  WHERE date BETWEEN DATE_SUB(@start_date, INTERVAL 2 DAY) AND DATE_ADD(@end_date, INTERVAL 7 DAY)
  GROUP BY source, source_file
  UNION ALL
  SELECT source, source_file, COUNT(*) AS row_count, COUNT(DISTINCT source_line) AS line_count
  FROM base.http_scan
  WHERE date BETWEEN DATE_SUB(@start_date, INTERVAL 2 DAY) AND DATE_ADD(@end_date, INTERVAL 7 DAY)
  GROUP BY source, source_file
  UNION ALL
  SELECT source, source_file, COUNT(*) AS row_count, COUNT(DISTINCT source_line) AS line_count
  FROM base.https_scan
  WHERE date BETWEEN DATE_SUB(@start_date, INTERVAL 2 DAY) AND DATE_ADD(@end_date, INTERVAL 7 DAY)
  GROUP BY source, source_file
  UNION ALL
  SELECT source, source_file, COUNT(*) AS row_count, COUNT(DISTINCT source_line) AS line_count
  FROM base.satellite_scan
  WHERE date BETWEEN DATE_SUB(@start_date, INTERVAL 2 DAY) AND DATE_ADD(@end_date, INTERVAL 7 DAY)
  GROUP BY source, source_file
),
per_file AS (
  SELECT
    l.scan_type, l.scan_date, l.status, l.lines, l.dead_letters, l.rows_written,
    IFNULL(b.row_count, 0) AS table_rows,
    IFNULL(b.line_count, 0) AS table_lines
  FROM in_window AS l
  LEFT JOIN base_rows AS b
    ON b.source = l.source AND CONCAT(b.source, '/', b.source_file) = l.file_key
)
SELECT
  scan_type,
  scan_date AS date,
  COUNTIF(status = 'ok') AS files_ok,
  COUNTIF(status = 'rejected') AS files_rejected,
  SUM(lines) AS ledger_lines,
  SUM(dead_letters) AS ledger_dead_letters,
  SUM(IF(status = 'ok', rows_written, 0)) AS ledger_rows,
  SUM(table_rows) AS table_rows,
  SUM(IF(status = 'ok' AND rows_written > 0, lines, 0)) AS data_lines,
  SUM(IF(status = 'ok' AND rows_written > 0, table_lines + dead_letters, 0)) AS accounted_lines
FROM per_file
GROUP BY scan_type, scan_date
