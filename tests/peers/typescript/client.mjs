// An MCP client written with the official TypeScript SDK, for mcp-authz's conformance matrix:
// connects through the gateway with a bearer token, lists the tools (following nextCursor page by
// page, counting the pages), calls echo, then tries
// delete_repository, and prints what happened as one JSON object on stdout.
//
//   node client.mjs <url> <token>
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, token] = process.argv.slice(2);
const out = {};
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: 'typescript-peer-client', version: '1.0.0' });
try {
  await client.connect(transport);
  out.initialized = true;
  const names = [];
  let cursor;
  let pages = 0;
  do {
    const page = await client.listTools(cursor === undefined ? undefined : { cursor });
    pages += 1;
    names.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor !== undefined && pages < 100);
  out.tools = names.sort();
  out.pages = pages;
  const echo = await client.callTool({ name: 'echo', arguments: { text: 'hello from typescript' } });
  out.echo = echo.content?.[0]?.text ?? null;
  try {
    const del = await client.callTool({ name: 'delete_repository', arguments: { name: 'x' } });
    out.delete = { ok: !del.isError, text: del.content?.[0]?.text ?? null };
  } catch (e) {
    out.delete = { ok: false, error: String(e?.message ?? e) };
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
} catch (e) {
  out.error = String(e?.message ?? e);
}
process.stdout.write(JSON.stringify(out) + '\n');
