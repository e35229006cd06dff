-- Key/value state of the service.
SELECT key, value FROM derived._query_state
