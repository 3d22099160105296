"""An MCP client written with the official Python SDK (PyPI `mcp`), for mcp-authz's conformance
matrix: connects through the gateway with a bearer token, lists the tools (following nextCursor
page by page, counting the pages), calls echo, then tries
delete_repository, and prints what happened as one JSON object on stdout.

    python client.py <url> <token>
"""

import asyncio
import json
import sys

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PaginatedRequestParams

MAX_PAGES = 100


def text_of(result):
    for c in result.content or []:
        if getattr(c, "type", None) == "text":
            return c.text
    return None


async def run(url, token):
    out = {}
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    out["initialized"] = True
                    names, params, pages = [], None, 0
                    while pages < MAX_PAGES:
                        page = await session.list_tools(params=params)
                        pages += 1
                        names.extend(t.name for t in page.tools)
                        if page.next_cursor is None:
                            break
                        params = PaginatedRequestParams(cursor=page.next_cursor)
                    out["tools"] = sorted(names)
                    out["pages"] = pages
                    out["echo"] = text_of(await session.call_tool("echo", {"text": "hello from python"}))
                    try:
                        r = await session.call_tool("delete_repository", {"name": "x"})
                        out["delete"] = {"ok": not r.is_error, "text": text_of(r)}
                    except Exception as e:  # the gateway's JSON-RPC error arrives as an exception
                        out["delete"] = {"ok": False, "error": str(e)}
    except BaseException as e:  # noqa: BLE001 - reported to the test, never hidden
        out["error"] = repr(e)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2]))
