-- On-behalf-of token forwarding: the upstream gets a token Entra minted for it (scope), never
-- the client's own token.
ALTER TABLE mcp_servers DROP CONSTRAINT mcp_servers_token_forwarding_check;
ALTER TABLE mcp_servers ADD COLUMN obo_scope text CHECK (obo_scope IS NULL OR (length(obo_scope) BETWEEN 1 AND 512 AND obo_scope !~ '[[:space:][:cntrl:]]'));
ALTER TABLE mcp_servers ADD CONSTRAINT mcp_servers_token_forwarding_check
    CHECK (token_forwarding IN ('none', 'passthrough', 'obo'));
ALTER TABLE mcp_servers ADD CONSTRAINT mcp_servers_obo_needs_scope
    CHECK ((token_forwarding = 'obo') = (obo_scope IS NOT NULL));
