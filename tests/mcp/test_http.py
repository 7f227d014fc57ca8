"""`sessionfs mcp --http`: the same tools over streamable HTTP, every request with the bearer token (the
state directory's, or $SESSIONFS_MCP_TOKEN), Host and Origin checked, other paths 404, stopped by SIGTERM."""

import http.client
import os
import queue
import re
import signal
import subprocess
import threading

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import BIN, HOME, MOUNT, SESSIONS, on_mount

pytestmark = pytest.mark.anyio


class Server:
    """`sessionfs mcp --http ADDR` in the background; its stderr is drained by a thread."""

    def __init__(self, addr="0", token=None):
        env = dict(os.environ, SESSIONFS_HOME=HOME, SESSIONFS_LOG="warn")
        env.pop("SESSIONFS_MCP_TOKEN", None)
        if token:
            env["SESSIONFS_MCP_TOKEN"] = token
        self.proc = subprocess.Popen(
            [BIN, "mcp", "--mount", MOUNT, "--http", addr],
            env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def url(self):
        line = self.lines.get(timeout=20)
        m = re.search(r"serving MCP at (http://127\.0\.0\.1:(\d+)/mcp)", line or "")
        assert m, f"unexpected first line: {line!r}"
        self.port = int(m.group(2))
        return m.group(1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        assert code == 0, "".join(self.stderr)


def state_token():
    """The token `sessionfs mcp` keeps in the state directory."""
    with open(os.path.join(HOME, "mcp-token")) as f:
        return f.read().strip()


def post(port, path="/mcp", headers=None, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        base["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, body=body, headers={**base, **(headers or {})})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


async def test_streamable_http_serves_the_tools():
    server = Server()
    try:
        url = server.url()
        session = SESSIONS[0]
        import httpx2 as httpx  # the SDK's HTTP client

        token = state_token()
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=auth) as http_client, streamable_http_client(
            url, http_client=http_client
        ) as (read, write):
            async with ClientSession(read, write) as client:
                await client.initialize()
                names = {t.name for t in (await client.list_tools()).tools}
                assert "session_read_file" in names and len(names) == 12
                r = await client.call_tool(
                    "session_write_file",
                    {"sessionId": session["id"], "path": "http-test/over-http.txt", "content": "via http\n"},
                )
                assert not r.is_error, r.content
                with open(on_mount(session, "http-test", "over-http.txt")) as f:
                    assert f.read() == "via http\n"
                r = await client.call_tool(
                    "session_read_file", {"sessionId": session["id"], "path": "http-test/over-http.txt"}
                )
                assert r.structured_content["content"] == "via http\n"
                r = await client.call_tool("session_read_file", {"sessionId": session["id"], "path": "../x"})
                assert r.is_error
        # Only /mcp; a foreign Host (DNS rebinding) and any browser Origin are refused.
        assert post(server.port, "/other", token=token) == 404
        assert post(server.port, headers={"Host": "evil.example:80"}, token=token) == 403
        assert post(server.port, headers={"Origin": "http://evil.example"}, token=token) == 403
    finally:
        server.stop()


async def test_a_token_is_required_when_set():
    server = Server(token="s3cret")
    try:
        url = server.url()
        assert post(server.port) == 401
        assert post(server.port, headers={"Authorization": "Bearer wrong"}) == 401
        assert post(server.port, headers={"Authorization": "Bearer s3cret"}) != 401
        import httpx2 as httpx  # the SDK's HTTP client

        async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http_client:
            async with streamable_http_client(url, http_client=http_client) as (read, write):
                async with ClientSession(read, write) as client:
                    await client.initialize()
                    assert len((await client.list_tools()).tools) == 12
    finally:
        server.stop()


def test_every_request_needs_the_token_even_on_loopback():
    """Hardening finding 3: on loopback, the default, no token was asked, so any local user could read
    and write every session through the server. Without $SESSIONFS_MCP_TOKEN the server makes one in the
    state directory (mode 0600, this user's) and asks for it."""
    server = Server()
    try:
        server.url()
        token = state_token()
        st = os.stat(os.path.join(HOME, "mcp-token"))
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
        assert len(token) >= 32
        assert post(server.port) == 401
        assert post(server.port, token="x" * len(token)) == 401
        assert post(server.port, token=token) != 401
    finally:
        server.stop()
