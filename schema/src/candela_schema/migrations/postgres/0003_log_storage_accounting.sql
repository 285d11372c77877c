-- Log storage accounting (issue 4): what the writers enforce for organizations.max_stored_logs, and the
-- dead letters parked for an operator. Written by the ingest writers; read by AuthService / QueryService.

-- Whether the writers stored the request's row in ClickHouse (false: over the organization's
-- max_stored_logs when it was counted, or removed since by the retention job). A redelivered or
-- replayed log follows this decision, so the limit cannot be bypassed by a replay.
ALTER TABLE counted_requests ADD COLUMN stored boolean NOT NULL DEFAULT true;
CREATE INDEX counted_requests_organization_created ON counted_requests (organization_id, created_at);

-- Per-organization log storage counters, maintained exactly once in the writers' batch transaction.
-- What happens at the limit: a log counted while stored_logs >= organizations.max_stored_logs is still
-- counted in organization_usage_daily (the request happened and may have cost money) but is NOT stored:
-- no ClickHouse row, dropped_over_limit + 1. Nothing already stored is evicted. Retention frees room:
-- the rows it deletes move from stored_logs to expired_logs. A row appears here on an organization's
-- first log; no row means nothing was ever logged.
CREATE TABLE organization_log_counters (
    organization_id uuid PRIMARY KEY,
    -- Logs currently kept (rows in ClickHouse); compared with organizations.max_stored_logs.
    stored_logs bigint NOT NULL DEFAULT 0 CHECK (stored_logs >= 0),
    -- Logs counted in usage but not stored because max_stored_logs was reached.
    dropped_over_limit bigint NOT NULL DEFAULT 0,
    -- Logs deleted by the retention job (older than organizations.retention_days).
    expired_logs bigint NOT NULL DEFAULT 0,
    last_dropped_at timestamptz,
    last_retention_sweep_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Dead letters that kept failing after their bounded retries: kept for an operator, who replays them
-- with `python -m candela_ingest.replay parked` once the cause is fixed. The DLQ coordinates are unique,
-- so a redelivered dead letter is parked once.
CREATE TABLE parked_dead_letters (
    id bigserial PRIMARY KEY,
    dlq_topic text NOT NULL,
    dlq_partition integer NOT NULL,
    dlq_offset bigint NOT NULL,
    source_topic text NOT NULL,
    message_key bytea,
    message_value bytea,
    -- The letter's Kafka headers as [[name, hex value], ...] (trace context and candela-dlq-* ones).
    headers jsonb NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    -- Set when replayed to the log topic (the row is kept as a record of it).
    replayed_at timestamptz,
    UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX parked_dead_letters_pending ON parked_dead_letters (parked_at) WHERE replayed_at IS NULL;
