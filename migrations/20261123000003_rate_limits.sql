-- Rate limits. Per tenant: a cap (rate_limit_per_minute, from the first migration), a fairness
-- weight (its share of the global budget when that runs out) and a burst factor. Globally: the
-- gateway's budget and the default per-user limit. Per tool: stricter per-user limits.
-- numeric(5,2) keeps burst factors exact, so export/import round-trips them.
ALTER TABLE tenants ADD COLUMN burst_factor numeric(5,2) NOT NULL DEFAULT 1.5 CHECK (burst_factor > 0);
ALTER TABLE tenants ADD CONSTRAINT tenants_fairness_weight_max CHECK (fairness_weight <= 1000);

ALTER TABLE policy_settings
    ADD COLUMN global_rate_limit_per_minute integer CHECK (global_rate_limit_per_minute > 0),
    ADD COLUMN global_burst_factor numeric(5,2) NOT NULL DEFAULT 1.5 CHECK (global_burst_factor > 0),
    ADD COLUMN user_rate_limit_per_minute integer CHECK (user_rate_limit_per_minute > 0),
    ADD COLUMN user_burst_factor numeric(5,2) NOT NULL DEFAULT 1.5 CHECK (user_burst_factor > 0);

CREATE TABLE tool_limits (
    id              bigserial PRIMARY KEY,
    server          text NOT NULL REFERENCES mcp_servers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    tool_pattern    text NOT NULL CHECK (length(tool_pattern) BETWEEN 1 AND 256 AND tool_pattern !~ '[[:space:][:cntrl:]]'),
    user_per_minute integer NOT NULL CHECK (user_per_minute > 0),
    burst_factor    numeric(5,2) NOT NULL DEFAULT 1.5 CHECK (burst_factor > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (server, tool_pattern)
);
CREATE TRIGGER tool_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tool_limits
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_authz_policy_changed();
