-- The W3C trace id of the request's trace when Candela traced it (LogRecord field 34), so a log links to its
-- trace. Rows written before this migration, and requests Candela did not trace, read back ''.
ALTER TABLE requests
    ADD COLUMN trace_id String;
