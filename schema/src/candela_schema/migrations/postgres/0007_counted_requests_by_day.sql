-- The writers' exactly-once ledger, bounded (issue 18): `counted_requests` becomes range-partitioned by the
-- UTC day of `created_at`, and the writers drop whole days once they are older than the ledger horizon
-- (CANDELA_LEDGER_HORIZON_DAYS; see candela_ingest.writer.ledger_horizon). Dropping a partition costs a
-- catalog change, where DELETE would leave a day's worth of dead tuples for vacuum each day.
--
-- Idempotency keys stay (organization_id, request_id). Postgres cannot enforce a unique key across
-- partitions unless it holds the partition key, so each day's partition has its own primary key on the pair:
-- a copy of a log (a redelivery, a replay: same creation time, so the same day) still conflicts with its
-- first counting. A reuse of a request id on another day is caught by the writers' own check of the
-- neighbouring days (candela_ingest.writer.postgres).

-- What the ledger can still answer for. Logs created before `oldest_day` (UTC) have had their entries
-- dropped: the writers refuse to count them (a late replay; see candela_ingest.writer.postgres). NULL: no
-- day was ever dropped. `legacy_until`: the ledger rows from before this migration stay as they were, as the
-- partition `counted_requests_legacy` of every time before that day, dropped whole once that day is past the
-- horizon; NULL when there was nothing to keep.
-- Writers read the row FOR SHARE in each counting transaction and the pruner moves `oldest_day` with an
-- UPDATE, so no counting transaction ever straddles a move of the horizon.
CREATE TABLE counted_requests_horizon (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    oldest_day date,
    legacy_until date,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per organization and UTC day of creation: how many of the logs of a dropped ledger day were still stored
-- when it was dropped. Retention expires these instead of ledger rows for days past the horizon, so
-- organization_log_counters.stored_logs stays exact after the rows that made it up are gone. Small:
-- organizations x days, deleted by retention.
CREATE TABLE organization_stored_log_days (
    organization_id uuid NOT NULL,
    day date NOT NULL,
    stored_logs bigint NOT NULL CHECK (stored_logs >= 0),
    PRIMARY KEY (organization_id, day)
);

-- The existing table is kept as it is (no copy of a possibly very large table): it becomes the legacy
-- partition. Attaching it scans it once to check that every row falls before `legacy_until`.
ALTER TABLE counted_requests RENAME TO counted_requests_legacy;
ALTER TABLE counted_requests_legacy RENAME CONSTRAINT counted_requests_pkey TO counted_requests_legacy_pkey;
ALTER INDEX counted_requests_organization_created RENAME TO counted_requests_legacy_organization_created;

CREATE TABLE counted_requests (
    request_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    -- As before (0003): whether the writers stored the request's row in ClickHouse.
    stored boolean NOT NULL DEFAULT true
) PARTITION BY RANGE (created_at);
-- Retention's scan of one organization's logs older than a cutoff.
CREATE INDEX counted_requests_organization_created ON counted_requests (organization_id, created_at);

DO $$
DECLARE
    until_day date;
BEGIN
    IF EXISTS (SELECT 1 FROM counted_requests_legacy) THEN
        -- Past the newest row and past today, so that no daily partition overlaps the legacy one.
        SELECT greatest(max((created_at AT TIME ZONE 'UTC')::date), (now() AT TIME ZONE 'UTC')::date) + 1
        INTO until_day FROM counted_requests_legacy;
        EXECUTE format(
            'ALTER TABLE counted_requests ATTACH PARTITION counted_requests_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
            until_day::timestamp AT TIME ZONE 'UTC'
        );
        INSERT INTO counted_requests_horizon (legacy_until) VALUES (until_day);
    ELSE
        DROP TABLE counted_requests_legacy;
        INSERT INTO counted_requests_horizon DEFAULT VALUES;
    END IF;
END
$$;

-- Creates the daily partitions of `days` that do not exist yet, each with its (organization_id,
-- request_id) key, except days before the horizon (their logs are refused) or inside the legacy partition.
-- Writers call it before counting a batch whose days they have not seen; the pruner, for the days ahead.
-- A partition is made as a table and then attached: ATTACH takes a lock on counted_requests that does not
-- stop writers counting meanwhile (CREATE TABLE ... PARTITION OF would).
CREATE FUNCTION candela_create_ledger_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    horizon counted_requests_horizon%ROWTYPE;
    partition_day date;
    partition_name text;
    created integer := 0;
BEGIN
    -- One creator at a time (two would both find a partition missing), and never while the pruner moves
    -- the horizon (it updates the row this reads FOR SHARE).
    PERFORM pg_advisory_xact_lock(hashtext('candela_create_ledger_partitions'));
    SELECT * INTO horizon FROM counted_requests_horizon FOR SHARE;
    FOREACH partition_day IN ARRAY days LOOP
        CONTINUE WHEN partition_day < horizon.oldest_day OR partition_day < horizon.legacy_until;
        partition_name := 'counted_requests_p' || to_char(partition_day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE counted_requests INCLUDING DEFAULTS)', partition_name);
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (organization_id, request_id)', partition_name);
        EXECUTE format(
            'ALTER TABLE counted_requests ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            partition_day::timestamp AT TIME ZONE 'UTC',
            (partition_day + 1)::timestamp AT TIME ZONE 'UTC'
        );
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Today and the next two days (logs may be stamped up to a day ahead: CANDELA_MAX_CLOCK_SKEW_S).
SELECT candela_create_ledger_partitions(ARRAY[
    (now() AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date + 1, (now() AT TIME ZONE 'UTC')::date + 2
]);
