// An MCP client that signs in with the official TypeScript SDK's OAuth client (`auth()` behind
// StreamableHTTPClientTransport's authProvider, the code MCP Inspector uses), for mcp-authz's
// login tests: it holds nothing but the MCP server's URL behind the gateway. The SDK discovers
// (401 -> resource metadata -> authorization server metadata), registers (RFC 7591, or a Client ID
// Metadata Document when a URL is given and the server supports it) and sends the user to the
// authorization URL; the test's "user" (driveBrowser) answers the gateway's consent page and
// follows Entra's (the stand-in's) redirects back to the redirect URI. The transport finishes
// the sign-in with the code, then the client calls tools, refreshes, checks that the used refresh
// token is refused, and prints one JSON report on stdout.
//
//   node oauth_client.mjs <mcp-url> <approve|deny> [client-metadata-url]
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [url, decision, metadataUrl] = process.argv.slice(2);
const REDIRECT_URI = 'http://127.0.0.1:33419/callback';
const out = {};

// What the user does in the browser: answer the consent page, then follow the redirects until
// the redirect URI. Returns its query parameters.
async function driveBrowser(authorizationUrl) {
  const jar = new Map();
  const cookie = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (r) => {
    for (const c of r.headers.getSetCookie()) {
      const [first] = c.split(';');
      const at = first.indexOf('=');
      const name = first.slice(0, at).trim();
      const value = first.slice(at + 1);
      if (!value || /max-age=0/i.test(c)) jar.delete(name);
      else jar.set(name, value);
    }
  };
  const get = async (u) => {
    const r = await fetch(u, { redirect: 'manual', headers: { cookie: cookie() } });
    keep(r);
    return r;
  };
  let r = await get(authorizationUrl);
  if (r.status === 200) {
    const html = await r.text();
    const attr = (anchor, name) => {
      const rest = html.slice(html.indexOf(anchor));
      const m = rest.match(new RegExp(`${name}="([^"]*)"`));
      return m ? m[1].replaceAll('&#x2f;', '/').replaceAll('&amp;', '&') : undefined;
    };
    out.consent_page = true;
    const body = new URLSearchParams({
      request: attr('name="request"', 'value'),
      csrf: attr('name="csrf"', 'value'),
      decision,
    });
    r = await fetch(attr('<form', 'action'), {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie: cookie(), 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
    keep(r);
  }
  for (let i = 0; i < 10; i += 1) {
    if (r.status < 300 || r.status >= 400) {
      throw new Error(`the sign-in stopped at HTTP ${r.status}: ${(await r.text()).slice(0, 200)}`);
    }
    const location = r.headers.get('location');
    if (location.startsWith(REDIRECT_URI)) return Object.fromEntries(new URL(location).searchParams);
    r = await get(location);
  }
  throw new Error('too many redirects');
}

class MemoryProvider {
  constructor() {
    this.saved = {};
    this.tokenHistory = [];
    this.landed = undefined;
  }
  get redirectUrl() {
    return REDIRECT_URI;
  }
  get clientMetadata() {
    return {
      client_name: 'TypeScript SDK login test',
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  get clientMetadataUrl() {
    return metadataUrl;
  }
  clientInformation() {
    return this.saved.client;
  }
  saveClientInformation(info) {
    this.saved.client = info;
  }
  tokens() {
    return this.saved.tokens;
  }
  saveTokens(tokens) {
    this.saved.tokens = tokens;
    this.tokenHistory.push(tokens);
  }
  async redirectToAuthorization(authorizationUrl) {
    out.authorize_params = [...new Set(authorizationUrl.searchParams.keys())].sort();
    out.client_id = authorizationUrl.searchParams.get('client_id');
    this.landed = await driveBrowser(authorizationUrl.href);
  }
  saveCodeVerifier(v) {
    this.saved.verifier = v;
  }
  codeVerifier() {
    return this.saved.verifier;
  }
  state() {
    this.saved.state = crypto.randomUUID();
    return this.saved.state;
  }
}

function textOf(result) {
  return result.content?.find((c) => c.type === 'text')?.text ?? null;
}

const provider = new MemoryProvider();
try {
  let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  let client = new Client({ name: 'typescript-oauth-client', version: '1.0.0' });
  try {
    await client.connect(transport);
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    const landed = provider.landed;
    if (!landed || landed.error) {
      out.oauth_error = landed?.error ?? 'no redirect';
      throw new Error(`authorization refused: ${out.oauth_error}`);
    }
    if (landed.state !== provider.saved.state) throw new Error(`state mismatch: ${landed.state}`);
    out.iss = landed.iss;
    await transport.finishAuth(landed.code);
    transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    client = new Client({ name: 'typescript-oauth-client', version: '1.0.0' });
    await client.connect(transport);
  }
  out.initialized = true;
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  out.echo = textOf(await client.callTool({ name: 'echo', arguments: { text: 'hello from typescript' } }));
  try {
    const del = await client.callTool({ name: 'delete_repository', arguments: { name: 'x' } });
    out.delete = { ok: !del.isError, text: textOf(del) };
  } catch (e) {
    out.delete = { ok: false, error: String(e?.message ?? e) };
  }
  // A refresh, as the SDK does it when its token is refused: auth() with the stored refresh token.
  const first = provider.saved.tokens;
  out.refresh_result = await auth(provider, { serverUrl: url });
  out.refreshed = provider.saved.tokens.refresh_token !== first.refresh_token;
  await transport.terminateSession().catch(() => {});
  await client.close();
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  client = new Client({ name: 'typescript-oauth-client', version: '1.0.0' });
  await client.connect(transport);
  out.tools_after_refresh = (await client.listTools()).tools.map((t) => t.name).sort();
  await client.close();
  out.registered_by = metadataUrl && out.client_id === metadataUrl ? 'cimd' : 'dcr';
  // The refresh token the SDK used and replaced is refused when presented again.
  const meta = await (await fetch(new URL('/.well-known/oauth-authorization-server', url))).json();
  const r = await fetch(meta.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'refresh_token',
      refresh_token: provider.tokenHistory[0].refresh_token,
      client_id: provider.saved.client.client_id,
    }),
  });
  out.replayed_refresh = { status: r.status, error: (await r.json()).error };
} catch (e) {
  out.error = String(e?.stack ?? e?.message ?? e);
}
process.stdout.write(JSON.stringify(out) + '\n');
