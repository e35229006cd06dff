-- Rows left out of merged_reduced_scans: per scan type and date, how many base rows
-- reach the derived table (reason 'kept') and how many are left out, and why.
--
-- check: dropped_rows
-- mode: check
--
-- The rules are those of 10_merged_reduced_scans.sql. A row is counted once, under the
-- first rule it fails, in this order:
--   Hyperquack  controls_failed (controls failed, or not known to have worked),
--               setup_outcome ('setup/…', 'setup.…' or 'read/system'), no_country (no server country:
--               the launcher ran without --ip-metadata, or the IP is not in the tables).
--   Satellite   not_last_retry, domain_not_https_capable (no answer in the scan served a
--               valid trusted certificate for the domain), domain_controls_failed,
--               bad_resolver (a profile rate above 0.75), setup_outcome (as above),
--               no_country (no resolver country).
-- So per scan type and date the counts add up to the base table's rows, and 'kept'
-- equals SUM(count) of merged_reduced_scans.
WITH
hyperquack AS (
  SELECT 'discard' AS scan_type, date, controls_failed, outcome,
    server_country AS country_code
  FROM base.discard_scan WHERE date BETWEEN @start_date AND @end_date
  UNION ALL
  SELECT 'echo' AS scan_type, date, controls_failed, outcome,
    server_country AS country_code
  FROM base.echo_scan WHERE date BETWEEN @start_date AND @end_date
  UNION ALL
  SELECT 'http' AS scan_type, date, controls_failed, outcome,
    server_country AS country_code
  FROM base.http_scan WHERE date BETWEEN @start_date AND @end_date
  UNION ALL
  SELECT 'https' AS scan_type, date, controls_failed, outcome,
    server_country AS country_code
  FROM base.https_scan WHERE date BETWEEN @start_date AND @end_date
),

hyperquack_fates AS (
  SELECT scan_type, date,
    CASE
      WHEN controls_failed IS NULL OR controls_failed THEN 'controls_failed'
      WHEN STARTS_WITH(IFNULL(outcome, ''), 'setup/')
        OR STARTS_WITH(IFNULL(outcome, ''), 'setup.')
        OR STARTS_WITH(IFNULL(outcome, ''), 'read/system')
        THEN 'setup_outcome'
      WHEN country_code IS NULL THEN 'no_country'
      ELSE 'kept'
    END AS reason
  FROM hyperquack
),

satellite_window AS (
  SELECT source, date, measurement_id, retry, domain, domain_controls_failed, outcome,
    resolver_country, resolver_connect_error_rate, resolver_invalid_cert_rate,
    resolver_non_zero_rcode_rate,
    MAX(retry) OVER (PARTITION BY date, measurement_id) AS last_retry
  FROM base.satellite_scan
  WHERE date BETWEEN @start_date AND @end_date
),

https_capable_domains AS (
  SELECT DISTINCT s.domain, s.source
  FROM base.satellite_scan AS s
  WHERE s.date BETWEEN DATE_SUB(@start_date, INTERVAL 7 DAY)
      AND DATE_ADD(@end_date, INTERVAL 7 DAY)
    AND s.source IN (SELECT w.source FROM satellite_window AS w)
    AND EXISTS (
      SELECT 1 FROM UNNEST(s.answers) AS a
      WHERE a.https_tls_cert_matches_domain AND a.https_tls_cert_has_trusted_ca
    )
),

satellite_fates AS (
  SELECT 'satellite' AS scan_type, s.date,
    CASE
      WHEN NOT (s.retry IS NULL OR s.retry = s.last_retry) THEN 'not_last_retry'
      WHEN h.domain IS NULL THEN 'domain_not_https_capable'
      WHEN s.domain_controls_failed IS NULL OR s.domain_controls_failed
        THEN 'domain_controls_failed'
      WHEN COALESCE(
        s.resolver_connect_error_rate > 0.75
          OR s.resolver_invalid_cert_rate > 0.75
          OR s.resolver_non_zero_rcode_rate > 0.75,
        FALSE)
        THEN 'bad_resolver'
      WHEN STARTS_WITH(IFNULL(s.outcome, ''), 'setup/')
        OR STARTS_WITH(IFNULL(s.outcome, ''), 'setup.')
        OR STARTS_WITH(IFNULL(s.outcome, ''), 'read/system')
        THEN 'setup_outcome'
      WHEN s.resolver_country IS NULL THEN 'no_country'
      ELSE 'kept'
    END AS reason
  FROM satellite_window AS s
  LEFT JOIN https_capable_domains AS h ON h.domain = s.domain AND h.source = s.source
),

fates AS (
  SELECT * FROM hyperquack_fates
  UNION ALL
  SELECT * FROM satellite_fates
)

SELECT scan_type, date, reason, COUNT(*) AS row_count
FROM fates
GROUP BY scan_type, date, reason
