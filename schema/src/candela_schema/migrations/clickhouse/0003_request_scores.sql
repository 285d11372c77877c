-- Scores and feedback that arrive after a log (IngestService.UpdateLogs -> LogMessage.update).
--
-- Kept beside the requests table rather than merged into its row: on 18.16 there is no cheap in-place
-- update, so merging would make the writer read the current row back (a FINAL point query per update)
-- and would break when a score arrives before its log (still in Kafka) or when a replay rewrites the log.
-- Here one row per (organization, request, score name) is a ReplacingMergeTree keyed like the log: a
-- redelivered update collapses, the newest updated_at wins whatever the arrival order, and a query
-- joins the scores to their request by (organization_id, request_id), reading with FINAL or argMax.
CREATE TABLE IF NOT EXISTS request_scores (
    organization_id UUID,
    request_id UUID,
    name String,
    value Float64,
    updated_at DateTime('UTC'),
    -- Microseconds of updated_at: the newest update of a score wins.
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(updated_at)
ORDER BY (organization_id, request_id, name)
