-- One wide row per logged request. Runs on ClickHouse 18.16 and modern ClickHouse: the brace placeholders
-- are version-gated snippets filled in by candela_stack.migrations.
--
-- ReplacingMergeTree keyed by (organization_id, created_at, request_id): a redelivered or replayed log
-- has the same key and collapses into one row; `version` (microseconds when written) makes the newest
-- write of a row win, which is how later updates land on the same row. Queries read with FINAL (or an
-- equivalent argMax) so duplicates not yet merged are never visible.
CREATE TABLE IF NOT EXISTS requests (
    organization_id UUID,
    request_id UUID,
    created_at DateTime('UTC'),
    -- Exact creation time in microseconds since the epoch (DateTime64 is not on 18.16).
    created_at_us UInt64,
    api_key_id String,
    provider {low_cardinality_string},
    model {low_cardinality_string},
    response_model {low_cardinality_string},
    path String,
    status_code Int32,
    error String,
    streamed UInt8,
    latency_ms UInt32,
    -- -1 when there was no first token (not streamed, or failed before any byte).
    time_to_first_token_ms Int32,
    prompt_tokens UInt32,
    completion_tokens UInt32,
    total_tokens UInt32,
    cache_read_tokens UInt32,
    cache_write_tokens UInt32,
    reasoning_tokens UInt32,
    audio_prompt_tokens UInt32,
    audio_completion_tokens UInt32,
    -- Exact cost in USD; meaningful only when priced = 1 (unpriced models are never counted as free).
    cost_usd Decimal64(12),
    priced UInt8,
    user_id String,
    session_id String,
    session_path String,
    session_name String,
    -- Custom properties as parallel arrays (Map is not on 18.16).
    property_keys Array(String),
    property_values Array(String),
    prompt_id String,
    prompt_version String,
    cache_hit UInt8,
    finish_reason {low_cardinality_string},
    request_body_omitted UInt8,
    response_body_omitted UInt8,
    request_body_key String,
    request_body_offset UInt64,
    request_body_length UInt64,
    response_body_key String,
    response_body_offset UInt64,
    response_body_length UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (organization_id, created_at, request_id)
