-- Prompt management (issue 6): template formats, the variables each version uses, environment labels
-- that point at versions, and immutability of stored versions enforced by the database itself.

-- 1 = TEXT, 2 = CHAT (candela.prompts.v1.TemplateFormat). Earlier versions are plain text.
ALTER TABLE prompt_versions
    ADD COLUMN format smallint NOT NULL DEFAULT 1 CHECK (format IN (1, 2)),
    ADD COLUMN variables text[] NOT NULL DEFAULT '{}';

-- A version is never edited: a new template is a new version. Deleting (an organization going away)
-- stays possible.
CREATE FUNCTION prompt_versions_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'prompt versions are immutable: store a new version instead'
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER prompt_versions_immutable
    BEFORE UPDATE ON prompt_versions
    FOR EACH ROW EXECUTE FUNCTION prompt_versions_are_immutable();

-- "production", "staging", ...: each label of a prompt points at exactly one of its versions.
CREATE TABLE prompt_environments (
    organization_id uuid NOT NULL,
    prompt_id text NOT NULL,
    environment text NOT NULL,
    version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, prompt_id, environment),
    FOREIGN KEY (organization_id, prompt_id, version)
        REFERENCES prompt_versions (organization_id, prompt_id, version) ON DELETE CASCADE
);

-- ListApiKeys lists an organization's keys newest first.
CREATE INDEX api_keys_organization_created ON api_keys (organization_id, created_at DESC);
