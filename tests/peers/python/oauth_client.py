"""An MCP client that signs in with the official Python SDK's OAuth client (`OAuthClientProvider`),
for mcp-authz's login tests: it holds nothing but the MCP server's URL behind the gateway. The SDK
discovers (401 -> resource metadata -> authorization server metadata), registers (RFC 7591, or a
Client ID Metadata Document when a URL is given and the server supports it), and sends the user to
the authorization URL; the test's "user" (`drive_browser`) answers the gateway's consent page and
follows Entra's (the stand-in's) redirects back to the redirect URI. Then it calls tools, forces a
refresh, checks that the used refresh token is refused, and prints one JSON report on stdout.

    python oauth_client.py <mcp-url> <decision: approve|deny> [client-metadata-url]
"""

import asyncio
import json
import sys
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

REDIRECT_URI = "http://127.0.0.1:33418/callback"


class MemoryStorage:
    def __init__(self):
        self.tokens = None
        self.client_info = None
        self.history = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class ConsentForm(HTMLParser):
    """The consent page's form: its action and hidden fields."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a.get("name")] = a.get("value")


def keep_cookies(jar, response):
    for value in response.headers.get_list("set-cookie"):
        first = value.split(";", 1)[0]
        name, _, v = first.partition("=")
        if v and "max-age=0" not in value.lower():
            jar[name.strip()] = v
        else:
            jar.pop(name.strip(), None)


async def drive_browser(authorization_url, decision, report):
    """What the user does in the browser: answer the consent page, then follow the redirects
    (Entra's sign-in, the gateway's callback) until the redirect URI. Returns its query."""
    jar = {}
    async with httpx2.AsyncClient(follow_redirects=False, timeout=10) as http:

        async def get(url):
            r = await http.get(url, headers={"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())})
            keep_cookies(jar, r)
            return r

        r = await get(authorization_url)
        if r.status_code == 200:
            form = ConsentForm()
            form.feed(r.text)
            report["consent_page"] = True
            r = await http.post(
                form.action,
                data={**form.fields, "decision": decision},
                headers={"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())},
            )
            keep_cookies(jar, r)
        for _ in range(10):
            if r.status_code not in (301, 302, 303, 307, 308):
                raise RuntimeError(f"the sign-in stopped at HTTP {r.status_code}: {r.text[:200]}")
            location = r.headers["location"]
            if location.startswith(REDIRECT_URI):
                return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}
            r = await get(location)
        raise RuntimeError("too many redirects")


def text_of(result):
    for c in result.content or []:
        if getattr(c, "type", None) == "text":
            return c.text
    return None


async def run(url, decision, metadata_url):
    out = {}
    storage = MemoryStorage()
    landed = {}

    async def redirect_handler(authorization_url):
        q = parse_qs(urlparse(authorization_url).query)
        out["authorize_params"] = sorted(q)
        out["client_id"] = q.get("client_id", [None])[0]
        landed.update(await drive_browser(authorization_url, decision, out))

    async def callback_handler():
        if "error" in landed:
            out["oauth_error"] = landed["error"]
            raise RuntimeError(f"authorization refused: {landed['error']}")
        return AuthorizationCodeResult(code=landed["code"], state=landed.get("state"), iss=landed.get("iss"))

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK login test",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=metadata_url,
    )
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=10) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    out["initialized"] = True
                    out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                    out["echo"] = text_of(await session.call_tool("echo", {"text": "hello from python"}))
                    if "whoami" in out["tools"]:
                        # The identity the gateway told the upstream: the signed-in user's.
                        out["whoami"] = text_of(await session.call_tool("whoami", {}))
                    try:
                        r = await session.call_tool("delete_repository", {"name": "x"})
                        out["delete"] = {"ok": not r.is_error, "text": text_of(r)}
                    except Exception as e:  # the gateway's JSON-RPC error arrives as an exception
                        out["delete"] = {"ok": False, "error": str(e)}
                    # The access token "expires": the SDK refreshes before the next request.
                    first = storage.tokens
                    provider.context.token_expiry_time = time.time() - 1
                    out["tools_after_refresh"] = sorted(t.name for t in (await session.list_tools()).tools)
                    out["refreshed"] = storage.tokens is not first and (
                        storage.tokens.refresh_token != first.refresh_token
                    )
                    out["registered_by"] = "cimd" if metadata_url and out.get("client_id") == metadata_url else "dcr"
        # The refresh token the SDK used and replaced is refused when presented again.
        token_endpoint = str(provider.context.oauth_metadata.token_endpoint)
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(
                token_endpoint,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": storage.history[0].refresh_token,
                    "client_id": storage.client_info.client_id,
                },
            )
            out["replayed_refresh"] = {"status": r.status_code, "error": r.json().get("error")}
    except BaseException as e:  # noqa: BLE001 - reported to the test, never hidden
        out["error"] = repr(e)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
