-- The login facade's state shared by every replica (oauth.state_store: postgres).
--
-- oauth_transient: what is taken at most once. `kind` is pending (a sign-in between the consent
-- and Entra's callback), code (the gateway's authorization code) or used_refresh (a refresh
-- token already exchanged). `key` is the SHA-256 of the state, code or refresh id, never the
-- value itself; `value` is sealed with oauth.seal_keys (AES-256-GCM), since it holds Entra's
-- tokens: a reader of this table can neither redeem a code nor read a token.
CREATE TABLE oauth_transient (
    kind text NOT NULL CHECK (kind IN ('pending', 'code', 'used_refresh')),
    key text NOT NULL CHECK (length(key) BETWEEN 16 AND 128),
    value text NOT NULL CHECK (length(value) <= 65536),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX oauth_transient_expiry ON oauth_transient (expires_at);

-- oauth_clients: dynamic registrations (RFC 7591), kept until unused for
-- oauth.registration.lifetime_days. `client` is the registration as the gateway checked it
-- (redirect URIs, type, method, the secret's SHA-256, never the secret).
CREATE TABLE oauth_clients (
    client_id text PRIMARY KEY CHECK (length(client_id) BETWEEN 1 AND 256),
    client jsonb NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_clients_last_used ON oauth_clients (last_used_at);
