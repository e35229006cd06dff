-- The dates each of the given scans (@sources, or every scan with @all_sources) has base
-- rows on. @start_date/@end_date bound the partitions read: the scans' name dates widened
-- by a margin (rows carry the prober's local date, and a scan runs for hours to days).
SELECT 'discard' AS scan_type, source, date, COUNT(*) AS row_count
FROM base.discard_scan
WHERE date BETWEEN @start_date AND @end_date AND (@all_sources OR source IN UNNEST(@sources))
GROUP BY source, date
UNION ALL
SELECT 'echo' AS scan_type, source, date, COUNT(*) AS row_count
FROM base.echo_scan
WHERE date BETWEEN @start_date AND @end_date AND (@all_sources OR source IN UNNEST(@sources))
GROUP BY source, date
UNION ALL
SELECT 'http' AS scan_type, source, date, COUNT(*) AS row_count
FROM base.http_scan
WHERE date BETWEEN @start_date AND @end_date AND (@all_sources OR source IN UNNEST(@sources))
GROUP BY source, date
UNION ALL
SELECT 'https' AS scan_type, source, date, COUNT(*) AS row_count
FROM base.https_scan
WHERE date BETWEEN @start_date AND @end_date AND (@all_sources OR source IN UNNEST(@sources))
GROUP BY source, date
UNION ALL
SELECT 'satellite' AS scan_type, source, date, COUNT(*) AS row_count
FROM base.satellite_scan
WHERE date BETWEEN @start_date AND @end_date AND (@all_sources OR source IN UNNEST(@sources))
GROUP BY source, date
