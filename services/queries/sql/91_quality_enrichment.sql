-- Enrichment coverage: per base table and date, the share of rows with an ASN and with a
-- country (server IP for Hyperquack, resolver IP for Satellite). Rows without a country
-- never reach merged_reduced_scans, so a drop here is a drop on the dashboard.
--
-- check: enrichment
-- mode: check
SELECT 'discard_scan' AS table_name, date, COUNT(*) AS row_count,
  COUNT(server_asn) AS with_asn, COUNT(server_country) AS with_country
FROM base.discard_scan WHERE date BETWEEN @start_date AND @end_date GROUP BY date
UNION ALL
SELECT 'echo_scan' AS table_name, date, COUNT(*) AS row_count,
  COUNT(server_asn) AS with_asn, COUNT(server_country) AS with_country
FROM base.echo_scan WHERE date BETWEEN @start_date AND @end_date GROUP BY date
UNION ALL
SELECT 'http_scan' AS table_name, date, COUNT(*) AS row_count,
  COUNT(server_asn) AS with_asn, COUNT(server_country) AS with_country
FROM base.http_scan WHERE date BETWEEN @start_date AND @end_date GROUP BY date
UNION ALL
SELECT 'https_scan' AS table_name, date, COUNT(*) AS row_count,
  COUNT(server_asn) AS with_asn, COUNT(server_country) AS with_country
FROM base.https_scan WHERE date BETWEEN @start_date AND @end_date GROUP BY date
UNION ALL
SELECT 'satellite_scan' AS table_name, date, COUNT(*) AS row_count,
  COUNT(resolver_asn) AS with_asn, COUNT(resolver_country) AS with_country
FROM base.satellite_scan WHERE date BETWEEN @start_date AND @end_date GROUP BY date
