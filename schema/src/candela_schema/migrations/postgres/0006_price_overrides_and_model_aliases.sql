-- Per-organization pricing (AuthService.SetPriceOverride / SetModelAlias): an organization's own price
-- for a (provider, model), and model names priced as a (provider, model) genai-prices knows. The proxy
-- applies alias, then override, then genai-prices. Prices are exact: US dollars per million tokens as
-- numeric, never floats; NULL cache prices mean "the input price".
CREATE TABLE price_overrides (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider text NOT NULL,
    model text NOT NULL,
    input_price_per_mtok numeric NOT NULL CHECK (input_price_per_mtok >= 0),
    output_price_per_mtok numeric NOT NULL CHECK (output_price_per_mtok >= 0),
    cached_input_price_per_mtok numeric CHECK (cached_input_price_per_mtok >= 0),
    cache_write_price_per_mtok numeric CHECK (cache_write_price_per_mtok >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, provider, model)
);

CREATE TABLE model_aliases (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    model text NOT NULL,
    target_provider text NOT NULL,
    target_model text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, model)
);
