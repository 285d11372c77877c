-- Request ids are chosen by clients (Candela-Request-Id), so two organizations may send the same one. The
-- writers' idempotency ledger was keyed by the request id alone: a second organization's log with an id
-- another organization had used was taken for a redelivery, so it was not counted in its usage, and it
-- inherited the first one's storage decision (not stored when the first was over its limit). Every
-- idempotency key is now (organization_id, request_id).
--
-- Existing rows keep their meaning: each was one organization's first log of that id, so the pairs are
-- unique already and the new key is built over the data as it is. (A log absorbed by another organization's
-- entry before this migration left no trace to recount; it stays as it was counted.)
ALTER TABLE counted_requests DROP CONSTRAINT counted_requests_pkey;
ALTER TABLE counted_requests ADD PRIMARY KEY (organization_id, request_id);
