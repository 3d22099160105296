"""How an upstream written with the Python SDK verifies mcp-authz's identity assertion
(x-mcp-identity-assertion): a JWS (ES256) checked with PyJWT against the gateway's JWKS, its
issuer, this server's name as audience, and its lifetime. Only then is the caller known; the
plain x-mcp-* headers are only as good as the network in front of the server.

Configured by MCP_IDENTITY_JWKS_URL (e.g. https://mcp.example.com/.well-known/mcp-authz/jwks.json)
and MCP_IDENTITY_ISSUER (mcp-authz's mcp.public_base_url).
"""

import os

import jwt

JWKS_URL = os.environ.get("MCP_IDENTITY_JWKS_URL")
ISSUER = os.environ.get("MCP_IDENTITY_ISSUER")
# PyJWKClient caches the keys and refetches on an unknown kid (a rotated key).
_keys = jwt.PyJWKClient(JWKS_URL, cache_keys=True, lifespan=60) if JWKS_URL else None


def verify_identity(headers, server):
    """"verified <oid>", "absent", or "invalid: <why>", for the request's headers and server."""
    token = headers.get("x-mcp-identity-assertion")
    if not token:
        return "absent"
    if _keys is None or not ISSUER:
        return "invalid: no verifier configured"
    try:
        key = _keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience=server,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        return f"verified {claims['oid']}"
    except jwt.PyJWTError as e:
        return f"invalid: {type(e).__name__}"
