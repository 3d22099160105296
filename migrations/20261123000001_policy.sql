-- Policy tables: operators grant and revoke access by editing these rows. Every change bumps
-- policy_version and sends NOTIFY mcp_authz_policy, and every mcp-authz replica rebuilds its
-- in-memory snapshot from them. Constraints make impossible rows impossible; what SQL cannot
-- check (e.g. glob syntax) the server checks, rejects with a logged reason, and keeps serving
-- the last good snapshot.

CREATE TABLE tenants (
    name                  text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,128}$' AND name NOT IN ('.', '..')),
    enabled               boolean NOT NULL DEFAULT true,
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    fairness_weight       integer NOT NULL DEFAULT 1 CHECK (fairness_weight > 0),
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mcp_servers (
    name             text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,128}$' AND name NOT IN ('.', '..')),
    -- What Envoy sends as the mcp_server context extension (or the /mcp/<segment>).
    route_key        text NOT NULL UNIQUE CHECK (route_key ~ '^[A-Za-z0-9._-]{1,128}$' AND route_key NOT IN ('.', '..')),
    enabled          boolean NOT NULL DEFAULT true,
    token_forwarding text NOT NULL DEFAULT 'none' CHECK (token_forwarding IN ('none', 'passthrough')),
    tools_default    text NOT NULL DEFAULT 'allow' CHECK (tools_default IN ('allow', 'deny')),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_servers (
    tenant text NOT NULL REFERENCES tenants (name) ON UPDATE CASCADE ON DELETE CASCADE,
    server text NOT NULL REFERENCES mcp_servers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    PRIMARY KEY (tenant, server)
);
CREATE INDEX tenant_servers_server ON tenant_servers (server);

-- Entra group object ids, never display names.
CREATE TABLE group_tenants (
    id             bigserial PRIMARY KEY,
    entra_group_id uuid NOT NULL,
    tenant         text NOT NULL REFERENCES tenants (name) ON UPDATE CASCADE ON DELETE CASCADE,
    access_level   text NOT NULL CHECK (access_level IN ('read', 'write', 'admin')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (entra_group_id, tenant)
);
CREATE INDEX group_tenants_tenant ON group_tenants (tenant);

-- Direct grants, matched on user_oid (and directory_tid when set). upn is a label; a row with
-- only a upn is honoured only when policy_settings.allow_upn_grants is true.
CREATE TABLE user_tenants (
    id            bigserial PRIMARY KEY,
    user_oid      uuid,
    directory_tid uuid,
    upn           text CHECK (upn IS NULL OR length(upn) BETWEEN 1 AND 256),
    tenant        text NOT NULL REFERENCES tenants (name) ON UPDATE CASCADE ON DELETE CASCADE,
    access_level  text NOT NULL CHECK (access_level IN ('read', 'write', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (user_oid IS NOT NULL OR upn IS NOT NULL),
    UNIQUE NULLS NOT DISTINCT (user_oid, directory_tid, upn, tenant)
);
CREATE INDEX user_tenants_tenant ON user_tenants (tenant);

CREATE TABLE tool_rules (
    id               bigserial PRIMARY KEY,
    server           text NOT NULL REFERENCES mcp_servers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    tenant           text REFERENCES tenants (name) ON UPDATE CASCADE ON DELETE CASCADE,
    tool_pattern     text NOT NULL CHECK (length(tool_pattern) BETWEEN 1 AND 256 AND tool_pattern !~ '[[:space:][:cntrl:]]'),
    effect           text NOT NULL CHECK (effect IN ('allow', 'deny')),
    min_access_level text NOT NULL DEFAULT 'read' CHECK (min_access_level IN ('read', 'write', 'admin')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (server, tenant, tool_pattern, effect)
);

-- Admins may use every enabled server. kind 'group' names an Entra group, 'user' a user oid.
CREATE TABLE admins (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('group', 'user')),
    entra_id      uuid NOT NULL,
    directory_tid uuid CHECK (kind = 'user' OR directory_tid IS NULL),
    label         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (kind, entra_id, directory_tid)
);

CREATE TABLE policy_settings (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    allow_upn_grants boolean NOT NULL DEFAULT false
);
INSERT INTO policy_settings DEFAULT VALUES;

-- One row; bumped by every change to the tables above. Replicas compare it periodically, so a
-- lost notification costs at most one poll interval.
CREATE TABLE policy_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL DEFAULT 1,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO policy_version DEFAULT VALUES;

CREATE FUNCTION mcp_authz_policy_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE policy_version SET version = version + 1, changed_at = now() RETURNING version INTO v;
    -- Delivered at commit, once per distinct payload per transaction.
    PERFORM pg_notify('mcp_authz_policy', v::text);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'mcp_servers', 'tenant_servers', 'group_tenants',
                             'user_tenants', 'tool_rules', 'admins', 'policy_settings'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION mcp_authz_policy_changed()',
                       t || '_changed', t);
    END LOOP;
END;
$$;

-- One event per decision. Append-only; time and user are the usual questions.
CREATE TABLE audit_events (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL,
    decision_id    uuid NOT NULL,
    user_oid       uuid,
    upn            text,
    directory_tid  uuid,
    tenant         text,
    server         text,
    method         text,
    tool           text,
    result         text NOT NULL CHECK (result IN ('allow', 'deny')),
    reason         text NOT NULL,
    policy_version text,
    trace_id       text
);
CREATE INDEX audit_events_at ON audit_events USING brin (at);
CREATE INDEX audit_events_user_at ON audit_events (user_oid, at);
CREATE INDEX audit_events_decision ON audit_events (decision_id);
