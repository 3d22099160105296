-- Shadow (dry-run) mode: a server row in shadow has its policy denials audited and counted as
-- 'would_deny' but allowed, for rolling a policy out. A sensitive server is never shadowed:
-- the constraint refuses the pair, and policy_settings.shadow_all_servers skips it.
ALTER TABLE mcp_servers
    ADD COLUMN shadow boolean NOT NULL DEFAULT false,
    ADD COLUMN sensitive boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT mcp_servers_sensitive_never_shadowed CHECK (NOT (shadow AND sensitive));
ALTER TABLE policy_settings ADD COLUMN shadow_all_servers boolean NOT NULL DEFAULT false;
-- What an audited decision was: the policy's would-be denial under shadow mode is kept apart.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_result_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_result_check
    CHECK (result IN ('allow', 'deny', 'would_deny'));
