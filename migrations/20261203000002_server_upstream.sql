-- A server's upstream, for the routes and clusters mcp-authz serves Envoy over xDS. NULL
-- endpoints: no route is served for the server (an Envoy with static routes reaches it its
-- own way), and every other upstream column must be NULL (upstream_enabled true) too. The server checks what SQL
-- cannot (one scheme and one path across endpoints, TLS fields only with https://) and keeps
-- serving the last good policy when a row fails.

-- Each endpoint: host:port, http://host[:port][/path] or https://host[:port][/path]; 1 to 16 of
-- them. The characters allowed never need quoting in PostgreSQL's array text.
CREATE FUNCTION mcp_authz_upstream_endpoints_valid(e text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT cardinality(e) BETWEEN 1 AND 16
       AND array_ndims(e) = 1
       AND coalesce(bool_and(x IS NOT NULL AND length(x) <= 300 AND x ~
           '^((https?://)([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?|([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})$'),
           false)
      FROM unnest(e) AS x
$$;

ALTER TABLE mcp_servers
    ADD COLUMN upstream_endpoints text[]
        CHECK (upstream_endpoints IS NULL OR mcp_authz_upstream_endpoints_valid(upstream_endpoints)),
    ADD COLUMN upstream_path text
        CHECK (upstream_path ~ '^/[A-Za-z0-9._~/-]{0,255}$'),
    ADD COLUMN upstream_host text
        CHECK (upstream_host ~ '^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$'),
    ADD COLUMN upstream_sni text
        CHECK (upstream_sni ~ '^[A-Za-z0-9.-]{1,253}$'),
    ADD COLUMN upstream_ca_file text
        CHECK (upstream_ca_file ~ '^/' AND length(upstream_ca_file) <= 1024 AND upstream_ca_file !~ '[[:cntrl:]]'),
    ADD COLUMN upstream_client_cert_file text
        CHECK (upstream_client_cert_file ~ '^/' AND length(upstream_client_cert_file) <= 1024 AND upstream_client_cert_file !~ '[[:cntrl:]]'),
    ADD COLUMN upstream_client_key_file text
        CHECK (upstream_client_key_file ~ '^/' AND length(upstream_client_key_file) <= 1024 AND upstream_client_key_file !~ '[[:cntrl:]]'),
    ADD COLUMN upstream_connect_timeout_ms integer
        CHECK (upstream_connect_timeout_ms BETWEEN 1 AND 60000),
    ADD COLUMN upstream_idle_timeout_seconds integer
        CHECK (upstream_idle_timeout_seconds BETWEEN 1 AND 86400),
    -- false: the route and cluster are taken out of Envoy, the server stays in the policy.
    ADD COLUMN upstream_enabled boolean NOT NULL DEFAULT true,
    ADD CONSTRAINT mcp_servers_upstream_client_cert_pair
        CHECK ((upstream_client_cert_file IS NULL) = (upstream_client_key_file IS NULL)),
    ADD CONSTRAINT mcp_servers_upstream_fields_need_endpoints
        CHECK (upstream_endpoints IS NOT NULL OR (upstream_enabled AND num_nonnulls(
            upstream_path, upstream_host, upstream_sni, upstream_ca_file,
            upstream_client_cert_file, upstream_client_key_file,
            upstream_connect_timeout_ms, upstream_idle_timeout_seconds) = 0));
