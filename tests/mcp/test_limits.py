"""Hardening finding 3 (resource limits) and 7 (every request gets an answer): `sessionfs mcp` bounds what
one client can make it hold, and answers a request it refuses instead of dropping it."""

import http.client
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

from conftest import BIN, MOUNT, server_env
from test_http import Server, state_token

MAX_MESSAGE = 24 << 20
MAX_SESSIONS = 128


class StdioServer:
    """`sessionfs mcp` on pipes, spoken to in raw JSON-RPC lines."""

    def __init__(self):
        env = dict(server_env(), SESSIONFS_LOG="warn")
        self.proc = subprocess.Popen(
            [BIN, "mcp", "--mount", MOUNT], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, message: bytes):
        self.proc.stdin.write(message + b"\n")
        self.proc.stdin.flush()

    def answer(self, id, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert msg is not None, "the server closed stdout"
            if msg.get("id") == id:
                return msg

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=20) == 0


def test_an_oversized_stdio_message_is_answered_and_the_server_goes_on():
    """A message over the limit used to be dropped without a reply, leaving the client waiting forever.
    Its id is found even when it comes after the huge parameters."""
    server = StdioServer()
    try:
        server.send(json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "limits", "version": "1"}},
        }).encode())
        assert "result" in server.answer(1)
        server.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        big = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"session_write_file","arguments":{"content":"' \
            + b"x" * (MAX_MESSAGE + 1024) + b'"}},"id":7}'
        server.send(big)
        refused = server.answer(7)
        assert refused["error"]["code"] == -32600, refused
        assert str(len(big) + 1) in refused["error"]["message"], refused
        server.send(b'{"jsonrpc":"2.0","id":8,"method":"ping"}')
        assert server.answer(8).get("result") == {}
    finally:
        server.close()


def initialize(port, token):
    """Opens one MCP session over HTTP with a raw request; returns the HTTP status."""
    body = json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "limits", "version": "1"}},
    }).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nConnection: close\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        return int(s.recv(64).split(b" ")[1])


def test_http_sessions_are_limited():
    """3,000 sessions used to cost 160 MB in 3 s; now the server holds at most 128 and says so."""
    server = Server()
    try:
        server.url()
        token = state_token()
        statuses = [initialize(server.port, token) for _ in range(MAX_SESSIONS)]
        assert statuses == [200] * MAX_SESSIONS, statuses
        assert initialize(server.port, token) == 503
    finally:
        server.stop()


def test_a_slow_body_is_cut_off_and_others_are_served_meanwhile():
    """64 connections sending their bodies slowly used to hold every slot for as long as they liked."""
    server = Server()
    try:
        server.url()
        token = state_token()
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        slow.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"jsonrpc"'
        )
        assert initialize(server.port, token) == 200
        # Only the server's body timeout (30 s) answers 408; the socket's own timeout would raise.
        answer = slow.recv(200)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        slow.close()
    finally:
        server.stop()


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.socket_path)
        self.sock = s


INITIALIZE = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "limits", "version": "1"}},
})

OTHER_USER_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])
body = sys.argv[2].encode()
# The server closes a refused connection at once: the send may already fail, or the read.
try:
    s.sendall(b"POST /mcp HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Type: application/json\\r\\n"
              b"Accept: application/json, text/event-stream\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    data = s.recv(100)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("refused" if not data else repr(data))
"""


def test_a_unix_socket_serves_this_user_only():
    """Finding 3, the option it offers: `--socket PATH` serves MCP on a 0600 Unix socket, to processes
    of this user only (peer credentials), without a token; a loopback port can be reached (and its
    connection slots held) by every local user."""
    base = tempfile.mkdtemp(prefix="sfs-mcp-sock-")
    os.chmod(base, 0o755)
    path = os.path.join(base, "mcp.sock")
    env = dict(server_env(), SESSIONFS_LOG="warn")
    env.pop("SESSIONFS_MCP_TOKEN", None)
    proc = subprocess.Popen(
        [BIN, "mcp", "--mount", MOUNT, "--socket", path],
        env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=20)
        assert f"serving MCP at unix:{path}" in first, first
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o600
        conn = UnixHTTPConnection(path)
        conn.request("POST", "/mcp", body=INITIALIZE, headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200, resp.status
        # Another user is refused even where the file's mode would let them connect.
        os.chmod(path, 0o666)
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", "-c", OTHER_USER_CLIENT, path, INITIALIZE],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "refused", out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
