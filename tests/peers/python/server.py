"""An upstream MCP server written with the official Python SDK (PyPI `mcp`), for mcp-authz's
conformance matrix.

Every /mcp/<name> path is one MCP endpoint (Streamable HTTP, with sessions), served by the SDK's
own Starlette app. A prompt (review), a resource (file:///readme.md) and a resource template
(file:///repos/{name}). Tools: echo, whoami (the x-mcp-* headers the gateway set, and whether its
signed identity assertion verifies: identity.py), delete_repository
(the tool the test policy denies). GET /_log answers what reached this upstream and which tools
ran, so a test can prove that a denied tool never executed. MCP_JSON_RESPONSE=1 answers
application/json instead of event streams; MCP_PAGE_SIZE=N pages tools/list, N tools a page in
name order, with an opaque nextCursor. Listens on 127.0.0.1, on the port the
kernel picks, and prints "listening <port>" on stdout once it accepts connections.

    python server.py
"""

import json
import os
import re
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, ListToolsResult
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse

from identity import verify_identity

LOG_CAPACITY = 1000
log = {"received": [], "executed": []}
MCP_PATH = re.compile(r"^/mcp/[A-Za-z0-9._-]+/?$")

PAGE_SIZE = int(os.environ.get("MCP_PAGE_SIZE") or 0)


class PeerServer(MCPServer):
    """MCPServer lists every tool at once; the SDK pages only through the low-level server's
    on_list_tools handler (cursor in, next_cursor out), which this overrides when MCP_PAGE_SIZE
    is set."""

    async def _handle_list_tools(self, ctx, params):
        if PAGE_SIZE <= 0:
            return await super()._handle_list_tools(ctx, params)
        tools = sorted(await self.list_tools(), key=lambda t: t.name)
        cursor = params.cursor if params is not None else None
        start = 0
        if cursor is not None:
            if not cursor.isdigit() or int(cursor) >= len(tools):
                raise MCPError(INVALID_PARAMS, "unknown cursor")
            start = int(cursor)
        end = min(start + PAGE_SIZE, len(tools))
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)


mcp = PeerServer("python-peer")


@mcp.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    log["executed"].append("echo")
    return text


@mcp.tool()
def whoami(ctx: Context) -> str:
    """The identity headers the gateway set."""
    log["executed"].append("whoami")
    request = ctx.request_context.request
    headers = request.headers if request is not None else {}
    seen = {k: v for k, v in headers.items() if k.startswith("x-mcp-")}
    seen["authorization-present"] = str("authorization" in headers).lower()
    server = request.scope.get("state", {}).get("mcp_server", "") if request is not None else ""
    seen["identity-verified"] = verify_identity(headers, server)
    return json.dumps(seen)


@mcp.tool()
def delete_repository(name: str) -> str:
    """Delete a repository (the test policy denies it)."""
    log["executed"].append("delete_repository")
    return f"deleted {name}"


@mcp.prompt()
def review(code: str) -> str:
    """Ask for a code review."""
    return f"Review this code:\n{code}"


@mcp.resource("file:///readme.md")
def readme() -> str:
    """The project's README."""
    return "# README"


@mcp.resource("file:///repos/{name}")
def repo(name: str) -> str:
    """One repository."""
    return name


# Envoy forwards the upstream's name as Host: the SDK's localhost Host check stays off.
# MCP_JSON_RESPONSE=1: answers as application/json instead of an event stream.
inner = mcp.streamable_http_app(
    streamable_http_path="/mcp",
    json_response=os.environ.get("MCP_JSON_RESPONSE") == "1",
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)


async def app(scope, receive, send):
    if scope["type"] == "http":
        if scope["path"] == "/_log":
            await JSONResponse(log)(scope, receive, send)
            return
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        if len(log["received"]) >= LOG_CAPACITY:
            log["received"].pop(0)
        log["received"].append({"method": scope["method"], "path": scope["path"], "headers": headers})
        if MCP_PATH.match(scope["path"]):
            state = dict(scope.get("state") or {}, mcp_server=scope["path"].split("/")[2])
            scope = dict(scope, path="/mcp", raw_path=b"/mcp", state=state)
    await inner(scope, receive, send)


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        sys.stdout.write(f"listening {port}\n")
        sys.stdout.flush()

    server.startup = startup
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
