-- Rows of the country_names table (rewritten when empty, e.g. after a manual truncate).
SELECT COUNT(*) AS row_count FROM derived.country_names
