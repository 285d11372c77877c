-- Organizations, API keys (hashes only), prompts, and the writers' exactly-once usage accounting.

CREATE TABLE organizations (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name text NOT NULL,
    -- The first characters of the key, so a user can recognise it in a list.
    prefix text NOT NULL,
    -- SHA-256 of the key; the key itself is never stored (see candela_auth.keys).
    key_hash bytea NOT NULL UNIQUE,
    scopes smallint[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_organization_id ON api_keys (organization_id);

CREATE TABLE prompt_versions (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    prompt_id text NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    template text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, prompt_id, version)
);

-- One row per request the writers have counted: the idempotency record that keeps usage exact when
-- Kafka redelivers a batch.
CREATE TABLE counted_requests (
    request_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE organization_usage_daily (
    organization_id uuid NOT NULL,
    day date NOT NULL,
    request_count bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost_usd numeric(30, 12) NOT NULL DEFAULT 0,
    unpriced_count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, day)
);
