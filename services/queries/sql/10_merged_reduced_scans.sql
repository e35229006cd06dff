-- merged_reduced_scans: all scan types merged into daily counts per scan type, country,
-- network, domain, category and outcome (plus the resolver for DNS).
--
-- target: merged_reduced_scans
-- mode: partitions
--
-- Parameters: @start_date, @end_date (DATE, inclusive), the partitions being rebuilt.
-- Base tables are read only inside that window, except the Satellite answers that decide
-- which domains are HTTPS-capable: those are read up to 7 days around it, for the scans
-- that have rows in the window (a scan spans one or two days), so that a partition never
-- depends on where the window starts.
--
-- Rules (README.md, "merged_reduced_scans", has the reasons):
--   Hyperquack  rows whose controls worked (controls_failed = FALSE).
--   Satellite   the last attempt of each measurement (retry NULL or the highest retry),
--               domains that answered with a valid trusted certificate in the same scan,
--               domain controls worked (domain_controls_failed = FALSE), and resolvers
--               that are not bad (no profile rate above 0.75; an unknown rate is no
--               evidence of a bad resolver).
--   Outcomes    stored in the base tables (Hyperquack 'stage/outcome', Satellite
--               'stage.outcome'); here they get their class emoji:
--                 ✅ expected  ❗️ unexpected  ❓ unclear  ❔ no usable measurement
--               Hyperquack: ✅ expected/… (prefix dropped); ❔ setup/, unknown/, dial/,
--               read/system; ❗️ content/blockpage, read/, write/; ❓ all else.
--               DNS: ✅ ip.matchip, ip.matchasn, tls.validcert; ❔ setup.…,
--               dns.hostunreach; ❓ dns.timedout, dns.error:ServFail, tls.connerror:…;
--               ❗️ all else (other rcodes, refused, ip.empty, ip.invalid, bad
--               certificates, blockpages, unknown errors, dns.unknown, dns.no_answer).
--               Rows whose outcome is a setup failure ('setup/…', 'setup.…') or
--               'read/system' are left out: they say nothing about the network.
--   Groups      date, scan type, country, network, subnetwork, domain ('CONTROL' for
--               controls), category ('Uncategorized' when unknown), outcome, resolver
--               name and its registrable domain. Rows without a country are left out.
--   unexpected_count  0 for ✅, count for ❗️ and ❓, NULL for ❔ and for DNS timeouts
--               ('❓dns.timedout': a resolver that does not answer in time is no evidence
--               of interference; the seed meant to exclude them too but tested the
--               outcome's old name, so it counted them).
WITH
hyperquack AS (
  SELECT 'DISCARD' AS scan, date, domain, domain_is_control, domain_category,
    server_country AS country_code, server_asn AS asn, server_as_full_name AS as_full_name,
    server_organization AS organization, CAST(NULL AS STRING) AS hostname,
    outcome AS raw_outcome
  FROM base.discard_scan
  WHERE date BETWEEN @start_date AND @end_date AND controls_failed = FALSE
  UNION ALL
  SELECT 'ECHO' AS scan, date, domain, domain_is_control, domain_category,
    server_country AS country_code, server_asn AS asn, server_as_full_name AS as_full_name,
    server_organization AS organization, CAST(NULL AS STRING) AS hostname,
    outcome AS raw_outcome
  FROM base.echo_scan
  WHERE date BETWEEN @start_date AND @end_date AND controls_failed = FALSE
  UNION ALL
  SELECT 'HTTP' AS scan, date, domain, domain_is_control, domain_category,
    server_country AS country_code, server_asn AS asn, server_as_full_name AS as_full_name,
    server_organization AS organization, CAST(NULL AS STRING) AS hostname,
    outcome AS raw_outcome
  FROM base.http_scan
  WHERE date BETWEEN @start_date AND @end_date AND controls_failed = FALSE
  UNION ALL
  SELECT 'HTTPS' AS scan, date, domain, domain_is_control, domain_category,
    server_country AS country_code, server_asn AS asn, server_as_full_name AS as_full_name,
    server_organization AS organization, CAST(NULL AS STRING) AS hostname,
    outcome AS raw_outcome
  FROM base.https_scan
  WHERE date BETWEEN @start_date AND @end_date AND controls_failed = FALSE
),

satellite_window AS (
  SELECT source, date, measurement_id, retry, domain, domain_is_control, domain_category,
    resolver_country, resolver_asn, resolver_as_full_name, resolver_organization,
    resolver_name, outcome, domain_controls_failed, resolver_connect_error_rate,
    resolver_invalid_cert_rate, resolver_non_zero_rcode_rate,
    MAX(retry) OVER (PARTITION BY date, measurement_id) AS last_retry
  FROM base.satellite_scan
  WHERE date BETWEEN @start_date AND @end_date
),

-- (domain, scan) pairs where some resolver returned an IP that served a certificate valid
-- for the domain and signed by a trusted CA: only for those can DNS answers be verified.
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

satellite AS (
  SELECT 'DNS' AS scan, s.date, s.domain, s.domain_is_control, s.domain_category,
    s.resolver_country AS country_code, s.resolver_asn AS asn,
    s.resolver_as_full_name AS as_full_name, s.resolver_organization AS organization,
    s.resolver_name AS hostname, s.outcome AS raw_outcome
  FROM satellite_window AS s
  INNER JOIN https_capable_domains AS h ON h.domain = s.domain AND h.source = s.source
  WHERE (s.retry IS NULL OR s.retry = s.last_retry)
    AND s.domain_controls_failed = FALSE
    AND NOT COALESCE(
      s.resolver_connect_error_rate > 0.75
        OR s.resolver_invalid_cert_rate > 0.75
        OR s.resolver_non_zero_rcode_rate > 0.75,
      FALSE)
),

measured AS (
  SELECT * FROM hyperquack
  UNION ALL
  SELECT * FROM satellite
),

classified AS (
  SELECT
    date,
    scan,
    country_code,
    as_full_name AS network,
    CONCAT('AS', CAST(asn AS STRING), IF(organization IS NULL, '', CONCAT(' - ', organization)))
      AS subnetwork,
    IF(domain_is_control, 'CONTROL', domain) AS domain,
    IFNULL(domain_category, 'Uncategorized') AS category,
    hostname,
    IF(hostname IN ('control', 'special'), hostname, NET.REG_DOMAIN(hostname)) AS reg_hostname,
    CASE
      WHEN scan = 'DNS' THEN
        CASE
          WHEN raw_outcome IN ('ip.matchip', 'ip.matchasn', 'tls.validcert')
            THEN CONCAT('✅', raw_outcome)
          WHEN STARTS_WITH(raw_outcome, 'setup.') OR raw_outcome = 'dns.hostunreach'
            THEN CONCAT('❔', raw_outcome)
          WHEN raw_outcome IN ('dns.timedout', 'dns.error:ServFail')
            OR STARTS_WITH(raw_outcome, 'tls.connerror')
            THEN CONCAT('❓', raw_outcome)
          ELSE CONCAT('❗️', raw_outcome)
        END
      ELSE
        CASE
          WHEN STARTS_WITH(raw_outcome, 'expected/') THEN CONCAT('✅', SUBSTR(raw_outcome, 10))
          WHEN STARTS_WITH(raw_outcome, 'setup/')
            OR STARTS_WITH(raw_outcome, 'unknown/')
            OR STARTS_WITH(raw_outcome, 'dial/')
            OR STARTS_WITH(raw_outcome, 'read/system')
            THEN CONCAT('❔', raw_outcome)
          WHEN STARTS_WITH(raw_outcome, 'content/blockpage')
            OR STARTS_WITH(raw_outcome, 'read/')
            OR STARTS_WITH(raw_outcome, 'write/')
            THEN CONCAT('❗️', raw_outcome)
          ELSE CONCAT('❓', raw_outcome)
        END
    END AS outcome
  FROM measured
  WHERE country_code IS NOT NULL
    AND NOT (
      STARTS_WITH(IFNULL(raw_outcome, ''), 'setup/')
      OR STARTS_WITH(IFNULL(raw_outcome, ''), 'setup.')
      OR STARTS_WITH(IFNULL(raw_outcome, ''), 'read/system')
    )
),

grouped AS (
  SELECT date, scan, country_code, network, subnetwork, domain, category, hostname,
    reg_hostname, outcome, COUNT(*) AS row_count
  FROM classified
  GROUP BY date, scan, country_code, network, subnetwork, domain, category, hostname,
    reg_hostname, outcome
)

SELECT
  g.date,
  g.scan AS source,
  g.hostname,
  g.reg_hostname,
  g.network,
  g.subnetwork,
  g.domain,
  g.category,
  g.outcome,
  g.row_count AS count,
  IFNULL(c.country_name, g.country_code) AS country_name,
  CASE
    WHEN STARTS_WITH(g.outcome, '✅') THEN 0
    WHEN STARTS_WITH(g.outcome, '❗️') THEN g.row_count
    WHEN g.outcome = '❓dns.timedout' THEN NULL
    WHEN STARTS_WITH(g.outcome, '❓') THEN g.row_count
    ELSE NULL
  END AS unexpected_count
FROM grouped AS g
LEFT JOIN derived.country_names AS c ON c.country_code = g.country_code
