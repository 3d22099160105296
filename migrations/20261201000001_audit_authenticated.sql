-- Whether the request of an audit event carried a valid token. The method, tool and server of an
-- unauthenticated request are whatever an anonymous client sent (mcp-authz bounds them to 64
-- characters); rows written before this column existed are marked by their missing user.
ALTER TABLE audit_events ADD COLUMN authenticated boolean NOT NULL DEFAULT true;
UPDATE audit_events SET authenticated = false WHERE user_oid IS NULL;
ALTER TABLE audit_events ALTER COLUMN authenticated DROP DEFAULT;
