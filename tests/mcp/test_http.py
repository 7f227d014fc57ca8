"""`sessionfs mcp --http`: the same tools over streamable HTTP, bound to loopback, stopped by SIGTERM."""

import os
import re
import signal
import subprocess

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import BIN, HOME, MOUNT, SESSIONS, on_mount

pytestmark = pytest.mark.anyio


async def test_streamable_http_serves_the_tools():
    server = subprocess.Popen(
        [BIN, "mcp", "--mount", MOUNT, "--http", "0"],
        env=dict(os.environ, SESSIONFS_HOME=HOME, SESSIONFS_LOG="warn"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        m = re.search(r"serving MCP at (http://127\.0\.0\.1:(\d+)/mcp)", line)
        assert m, f"unexpected first line: {line!r}"
        url = m.group(1)
        session = SESSIONS[0]
        async with streamable_http_client(url) as (read, write):
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
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    assert code == 0, server.stderr.read()
