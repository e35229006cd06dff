-- Dead letters: input the pipeline could not turn into rows, per scan type, stage and
-- reason, over the window (by the scan date the dead letter carries).
--
-- check: dead_letters
-- mode: check
SELECT
  IFNULL(scan_type, 'unknown') AS scan_type,
  stage,
  error_class,
  COUNT(*) AS dead_letters
FROM base.dead_letter
WHERE date BETWEEN @start_date AND @end_date
GROUP BY 1, 2, 3
