// How an upstream written with the TypeScript SDK verifies mcp-authz's identity assertion
// (x-mcp-identity-assertion): a JWS (ES256) checked with `jose` against the gateway's JWKS,
// its issuer, this server's name as audience, and its lifetime. Only then is the caller known;
// the plain x-mcp-* headers are only as good as the network in front of the server.
//
// Configured by MCP_IDENTITY_JWKS_URL (e.g. https://mcp.example.com/.well-known/mcp-authz/jwks.json)
// and MCP_IDENTITY_ISSUER (mcp-authz's mcp.public_base_url).
import { createRemoteJWKSet, jwtVerify } from 'jose';

const jwksUrl = process.env.MCP_IDENTITY_JWKS_URL;
const issuer = process.env.MCP_IDENTITY_ISSUER;
const jwks = jwksUrl ? createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 1000 }) : null;

/** "verified <oid>", "absent", or "invalid: <why>", for the request's headers and server. */
export async function verifyIdentity(headers, server) {
  const token = headers['x-mcp-identity-assertion'];
  if (!token) return 'absent';
  if (!jwks || !issuer) return 'invalid: no verifier configured';
  try {
    const { payload } = await jwtVerify(String(token), jwks, {
      issuer,
      audience: server,
      algorithms: ['ES256'],
      maxTokenAge: '5m',
    });
    return `verified ${payload.oid}`;
  } catch (e) {
    return `invalid: ${e.code ?? e.message}`;
  }
}
