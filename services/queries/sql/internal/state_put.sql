-- Set one key of the service's state.
DELETE FROM derived._query_state WHERE key = @key;

INSERT INTO derived._query_state (key, value, run_id, updated_at)
VALUES (@key, @value, @run_id, @now);
