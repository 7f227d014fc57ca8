"""Fixtures for driving `sessionfs mcp` with the official MCP Python SDK (the `mcp` package).

The Rust test `tests/tests/e2e/mcp.rs` prepares a real installation (sessions, mounted bridge) and runs
pytest with:
  SESSIONFS_BIN       the `sessionfs` binary
  SESSIONFS_HOME      its state directory
  SESSIONFS_MOUNT     where the bridge is mounted
  SESSIONFS_MCP_SESSIONS  JSON list of {"id", "backend", ...} for the sessions to test against
  SESSIONFS_OUTSIDE   a host directory outside every workspace (target of escape attempts)
"""

import contextlib
import json
import os
import uuid

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BIN = os.environ["SESSIONFS_BIN"]
HOME = os.environ["SESSIONFS_HOME"]
MOUNT = os.environ["SESSIONFS_MOUNT"]
SESSIONS = json.loads(os.environ["SESSIONFS_MCP_SESSIONS"])
OUTSIDE = os.environ["SESSIONFS_OUTSIDE"]


class ToolError(Exception):
    """A tool answered with isError: true."""


class Client:
    """A connected MCP client session with helpers for the session tools."""

    def __init__(self, session: ClientSession):
        self.session = session

    async def raw(self, name, **args):
        return await self.session.call_tool(name, args)

    async def call(self, name, **args):
        """Calls a tool that must succeed; returns its structured result."""
        result = await self.raw(name, **args)
        text = "".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            raise ToolError(f"{name}({args}) failed: {text}")
        assert result.structured_content is not None, f"{name}: no structured content: {text}"
        # The text content carries the same JSON for clients that ignore structured content.
        assert json.loads(text) == result.structured_content
        return result.structured_content

    async def fail(self, name, **args):
        """Calls a tool that must fail with a tool error; returns the error text."""
        result = await self.raw(name, **args)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert result.is_error, f"{name}({args}) should have failed, got: {text}"
        return text


def server_env():
    env = dict(os.environ)
    env["SESSIONFS_HOME"] = HOME
    return env


@contextlib.asynccontextmanager
async def connect(*extra_args):
    params = StdioServerParameters(
        command=BIN, args=["mcp", "--mount", MOUNT, *extra_args], env=server_env()
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield Client(session)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def client():
    async with connect() as c:
        yield c


@pytest.fixture(params=SESSIONS, ids=[s["backend"] for s in SESSIONS])
def session(request):
    return request.param


@pytest.fixture
def base(session):
    """A fresh directory in the session's workspace (made through the mount); returns its name."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    os.mkdir(os.path.join(MOUNT, session["id"], name))
    return name


def on_mount(session, *parts):
    """The host path of a workspace path, through the mount."""
    return os.path.join(MOUNT, session["id"], *parts)
