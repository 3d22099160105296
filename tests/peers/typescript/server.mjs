// An upstream MCP server written with the official TypeScript SDK (@modelcontextprotocol/sdk),
// for mcp-authz's conformance matrix. Two ways of serving it, both as the SDK documents them:
//
//   node server.mjs node-http   StreamableHTTPServerTransport on node:http; the transport reads
//                               the body itself.
//   node server.mjs express     createMcpExpressApp(): express.json() parses the body (honouring
//                               the request's charset and content coding) and hands it to the
//                               transport.
//
// Every /mcp/<name> path is one MCP endpoint with sessions. Tools: echo, whoami (the x-mcp-*
// headers the gateway set, and whether its signed identity assertion verifies: identity.mjs),
// delete_repository (the tool the test policy denies). GET /_log
// answers what reached this upstream and which tools ran, so a test can prove that a denied
// tool never executed. MCP_JSON_RESPONSE=1 answers application/json instead of event streams;
// MCP_PAGE_SIZE=N pages tools/list, N tools a page in name order, with an opaque nextCursor.
// Listens on 127.0.0.1, on the port the kernel picks, and prints
// "listening <port>" on stdout once it accepts connections.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import { verifyIdentity } from './identity.mjs';
import { z } from 'zod';

const mode = process.argv[2] ?? 'node-http';
const log = { received: [], executed: [] };
const LOG_CAPACITY = 1000;

function record(req) {
  const headers = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase();
    (headers[name] ??= []).push(req.rawHeaders[i + 1]);
  }
  if (log.received.length >= LOG_CAPACITY) log.received.shift();
  log.received.push({ method: req.method, path: req.url.split('?')[0], headers });
}

function newServer(requestHeaders) {
  const server = new McpServer({ name: 'typescript-peer', version: '1.0.0' });
  const ran = (tool) => log.executed.push(tool);
  server.registerTool('echo', { description: 'Echo the text back', inputSchema: { text: z.string() } },
    async ({ text }) => { ran('echo'); return { content: [{ type: 'text', text }] }; });
  // A tool without an input schema gets the request's extra as its only argument.
  server.registerTool('whoami', { description: 'The identity headers the gateway set' },
    async (extra) => {
      ran('whoami');
      const h = extra.requestInfo?.headers ?? {};
      const seen = {};
      for (const [k, v] of Object.entries(h)) if (k.startsWith('x-mcp-')) seen[k] = String(v);
      seen['authorization-present'] = String('authorization' in h);
      const server = extra.requestInfo?.url?.pathname?.split('/')[2] ?? '';
      seen['identity-verified'] = await verifyIdentity(h, server);
      return { content: [{ type: 'text', text: JSON.stringify(seen) }] };
    });
  server.registerTool('delete_repository',
    { description: 'Delete a repository (the test policy denies it)', inputSchema: { name: z.string() } },
    async ({ name }) => { ran('delete_repository'); return { content: [{ type: 'text', text: `deleted ${name}` }] }; });
  if (PAGE_SIZE > 0) pageToolsList(server);
  return server;
}

const PAGE_SIZE = Number.parseInt(process.env.MCP_PAGE_SIZE ?? '', 10) || 0;

// McpServer answers tools/list with every tool at once and offers no paging of its own. The
// SDK's low-level Server does page (a handler reads params.cursor and returns nextCursor):
// McpServer's own handler is wrapped here so that its answer is cut into pages.
function pageToolsList(server) {
  const handlers = server.server._requestHandlers;
  const all = handlers.get('tools/list');
  handlers.set('tools/list', async (request, extra) => {
    const full = await all(request, extra);
    const tools = [...full.tools].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const cursor = request.params?.cursor;
    let start = 0;
    if (cursor !== undefined) {
      if (!/^[0-9]+$/.test(cursor) || Number(cursor) >= tools.length) {
        throw new McpError(ErrorCode.InvalidParams, 'unknown cursor');
      }
      start = Number(cursor);
    }
    const end = Math.min(start + PAGE_SIZE, tools.length);
    const page = { ...full, tools: tools.slice(start, end) };
    if (end < tools.length) page.nextCursor = String(end);
    return page;
  });
}

const transports = new Map();

async function handleMcp(req, res, parsedBody) {
  const sid = req.headers['mcp-session-id'];
  let transport = typeof sid === 'string' ? transports.get(sid) : undefined;
  if (sid !== undefined && transport === undefined) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null }));
    return;
  }
  if (transport === undefined) {
    // No session yet: the transport itself refuses anything but initialize.
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      // MCP_JSON_RESPONSE=1: answers as application/json instead of an event stream.
      enableJsonResponse: process.env.MCP_JSON_RESPONSE === '1',
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => { if (transport.sessionId) transports.delete(transport.sessionId); };
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, parsedBody);
}

function isMcpPath(url) {
  return /^\/mcp\/[A-Za-z0-9._-]+\/?(\?.*)?$/.test(url);
}

function answerLog(res) {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(log));
}

let listener;
if (mode === 'node-http') {
  listener = http.createServer((req, res) => {
    if (req.url === '/_log') return answerLog(res);
    record(req);
    if (!isMcpPath(req.url)) { res.writeHead(404).end(); return; }
    handleMcp(req, res).catch((e) => { console.error(e); if (!res.headersSent) res.writeHead(500).end(); });
  });
} else if (mode === 'express') {
  // host 0.0.0.0 keeps the SDK's localhost Host-header check off: Envoy forwards the
  // upstream's name as Host, not "localhost".
  const app = createMcpExpressApp({ host: '0.0.0.0' });
  app.get('/_log', (_req, res) => answerLog(res));
  app.use((req, _res, next) => { record(req); next(); });
  app.all(/^\/mcp\/[A-Za-z0-9._-]+\/?$/, (req, res) => {
    handleMcp(req, res, req.body).catch((e) => { console.error(e); if (!res.headersSent) res.status(500).end(); });
  });
  listener = http.createServer(app);
} else {
  console.error(`unknown mode ${mode}: node-http or express`);
  process.exit(64);
}
listener.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${listener.address().port}\n`);
});
