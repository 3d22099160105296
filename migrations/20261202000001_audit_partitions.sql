-- audit_events partitioned by calendar month (UTC) of `at`, so retention is a partition drop
-- (instant, no vacuum debt) instead of a DELETE over millions of rows. Partitions are named
-- audit_events_YYYY_MM. mcp-authz creates the current and the next month's at start and every
-- hour (audit_partition_ensure), and the month of any row that finds none before retrying it;
-- `mcp-authz audit prune` (or audit.retention_days in serve) drops the months past retention.
--
-- The existing rows are copied into their months once, here: this migration takes time in
-- proportion to the rows already stored, and holds the table while it runs.

ALTER TABLE audit_events RENAME TO audit_events_unpartitioned;
ALTER INDEX audit_events_at RENAME TO audit_events_unpartitioned_at;
ALTER INDEX audit_events_user_at RENAME TO audit_events_unpartitioned_user_at;
ALTER INDEX audit_events_decision RENAME TO audit_events_unpartitioned_decision;
ALTER SEQUENCE audit_events_id_seq OWNED BY NONE;

CREATE TABLE audit_events (
    id             bigint NOT NULL DEFAULT nextval('audit_events_id_seq'),
    at             timestamptz NOT NULL,
    decision_id    uuid NOT NULL,
    user_oid       uuid,
    upn            text,
    directory_tid  uuid,
    tenant         text,
    server         text,
    method         text,
    tool           text,
    result         text NOT NULL CONSTRAINT audit_events_result_check CHECK (result IN ('allow', 'deny')),
    reason         text NOT NULL,
    policy_version text,
    trace_id       text,
    authenticated  boolean NOT NULL,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id;
CREATE INDEX audit_events_at ON audit_events USING brin (at);
CREATE INDEX audit_events_user_at ON audit_events (user_oid, at);
CREATE INDEX audit_events_decision ON audit_events (decision_id);

-- The partition holding instant `at` (created when missing); its name. Serialised by an
-- advisory lock, so replicas creating the same month at once do not collide.
CREATE FUNCTION audit_partition_ensure(at timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    name text := 'audit_events_' || to_char(lo, 'YYYY_MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('mcp_authz.audit_partitions'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                       name, lo AT TIME ZONE 'UTC', (lo + interval '1 month') AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END $$;

-- Drops month partition `name` (retention); refuses any other table.
CREATE FUNCTION audit_partition_drop(name text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF name !~ '^audit_events_[0-9]{4}_[0-9]{2}$' OR NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass AND c.relname = name) THEN
        RAISE EXCEPTION 'audit_partition_drop: % is not a month partition of audit_events', name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('mcp_authz.audit_partitions'));
    EXECUTE format('DROP TABLE %I', name);
END $$;

SELECT audit_partition_ensure(m)
FROM (SELECT DISTINCT date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m
      FROM audit_events_unpartitioned
      UNION SELECT now() UNION SELECT now() + interval '1 month') AS months;

INSERT INTO audit_events (id, at, decision_id, user_oid, upn, directory_tid, tenant, server,
                          method, tool, result, reason, policy_version, trace_id, authenticated)
SELECT id, at, decision_id, user_oid, upn, directory_tid, tenant, server,
       method, tool, result, reason, policy_version, trace_id, authenticated
FROM audit_events_unpartitioned;

DROP TABLE audit_events_unpartitioned;
