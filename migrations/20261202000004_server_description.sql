-- What a server is for, as the server catalog (GET on the MCP prefix) shows it to the callers
-- who may use it. Plain text: no control characters, at most 1024 characters.
ALTER TABLE mcp_servers
    ADD COLUMN description text
    CHECK (description IS NULL OR (length(description) BETWEEN 1 AND 1024 AND description !~ '[[:cntrl:]]'));
