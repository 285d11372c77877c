-- Indexes for the query service: where a session's requests, and one request, are in time.
-- The requests table is ordered by (organization_id, created_at, request_id), so finding one session's
-- requests would scan the organization's whole history. This view keeps (organization, session, time)
-- ordered by session; GetSession first reads the session's first and last time here (an index lookup),
-- then reads requests only in that time range. Duplicates from redelivered logs do not matter: only
-- min() and max() are read. POPULATE backfills rows already stored when the view is created; rows
-- inserted while the backfill runs may be missed, so apply it before traffic (as the stack does). A
-- session absent from the index is still found: the query service then scans the requests table.
CREATE MATERIALIZED VIEW IF NOT EXISTS request_sessions
ENGINE = MergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY (organization_id, session_id, created_at)
POPULATE
AS SELECT organization_id, session_id, created_at
FROM requests
WHERE session_id != '';

-- Request id index for GetRequest: the same idea for one request (its id is not in the sort key).
CREATE MATERIALIZED VIEW IF NOT EXISTS request_times
ENGINE = MergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY (organization_id, request_id)
POPULATE
AS SELECT organization_id, request_id, created_at
FROM requests;
