-- The LogRecord fields the first schema did not keep: where the answer came from (target_url and every
-- upstream attempt of a retried or fallback call), what a cache hit saved, and the inputs a named prompt
-- was rendered with.
--
-- One ALTER with every column: ClickHouse checks all of its clauses before changing anything, so the
-- file either adds them all or none (18.16 has no ADD COLUMN IF NOT EXISTS to make a rerun harmless).
-- Rows written before this migration read back the defaults: '' / 0 / empty arrays, i.e. "not recorded".
--
-- Lists are parallel arrays, as the properties are (Map is not on 18.16):
-- - attempt_*: one element per upstream try, in order; empty for a cache hit or a refused request.
-- - prompt_input_keys / prompt_input_values: sorted by key, like property_keys / property_values.
-- cost_saved_usd means something only when cost_saved_known = 1 (a cache hit whose first answer was
-- priced), as cost_usd does with priced = 1.
ALTER TABLE requests
    ADD COLUMN target_url String,
    ADD COLUMN cost_saved_usd Decimal64(12),
    ADD COLUMN cost_saved_known UInt8,
    ADD COLUMN attempt_target_urls Array(String),
    ADD COLUMN attempt_status_codes Array(Int32),
    ADD COLUMN attempt_errors Array(String),
    ADD COLUMN attempt_latencies_ms Array(Int64),
    ADD COLUMN prompt_input_keys Array(String),
    ADD COLUMN prompt_input_values Array(String);
