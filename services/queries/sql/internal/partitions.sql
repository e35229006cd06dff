-- The partitions of a derived table that hold rows, with the run that last built them.
SELECT date, row_count, run_id
FROM derived._query_partitions
WHERE target = @target AND row_count > 0
