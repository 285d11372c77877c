-- Per-organization limits (Cloudflare AI Gateway's "account manager"): how many logs an organization
-- may keep and for how many days. NULL means unlimited. AuthService reads and updates them; the
-- writers enforce them.
ALTER TABLE organizations
    ADD COLUMN max_stored_logs bigint CHECK (max_stored_logs IS NULL OR max_stored_logs >= 0),
    ADD COLUMN retention_days integer CHECK (retention_days IS NULL OR retention_days > 0),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
