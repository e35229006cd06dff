-- country_names: ISO 3166-1 alpha-2 codes and names for the derived tables.
--
-- target: country_names
-- mode: replace
--
-- The rows come from resources/country_names.csv, which the service reads, validates and
-- passes as the parameter @country_rows (ARRAY<STRUCT<country_code, country_name,
-- status>>). The table is rewritten only when the file (or this query) changed.
SELECT
  r.country_code AS country_code,
  r.country_name AS country_name,
  r.status AS status
FROM UNNEST(@country_rows) AS r
