-- What the proxy changed so that a log can be kept rather than refused (LogRecord fields 31-33):
-- - usage_clamped: the provider reported a token count no log can hold (negative, fractional, or above the
--   UInt32 columns, alone or in the total); the counts are stored as 0 and the request left unpriced.
-- - request_body_over_limit / response_body_over_limit: that body was not stored because the log's bodies
--   together exceed what one stored log holds; its *_body_omitted flag is set too.
-- Rows written before this migration read back 0.
--
-- One ALTER with every column: ClickHouse checks all of its clauses before changing anything, so the
-- file either adds them all or none (18.16 has no ADD COLUMN IF NOT EXISTS to make a rerun harmless).
ALTER TABLE requests
    ADD COLUMN usage_clamped UInt8,
    ADD COLUMN request_body_over_limit UInt8,
    ADD COLUMN response_body_over_limit UInt8;
