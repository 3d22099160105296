-- The groups each audited decision was made with, so past decisions can be replayed against a
-- candidate policy (`mcp-authz policy replay`). A user's groups change rarely, so each distinct
-- set is stored once (its id: the first 16 bytes of the SHA-256 of the sorted, comma-joined
-- object ids) and an event names it. last_seen is renewed at most daily; retention deletes the
-- sets no event still kept can name.
CREATE TABLE audit_group_sets (
    id        bytea PRIMARY KEY CHECK (length(id) = 16),
    groups    uuid[] NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now()
);
-- NULL: no valid token, or written before this column existed (not replayable).
ALTER TABLE audit_events ADD COLUMN group_set bytea;
