"""Latency of the MCP session tools next to `docker exec … cat`, measured in one run on the same file.

For a 10 KB text file in a Docker session's workspace it times, per call, client-side round trips:
  - session_read_file and session_write_file through `sessionfs mcp` (official MCP Python SDK, stdio);
  - `docker exec <container> cat <file>` and `docker exec -i <container> sh -c 'cat > <file>'` (what
    agent runtimes do today);
  - a plain open/read/close of the file through the mount (what editors and tools get).
Writes JSON and a Markdown table (median, p90, p99) to the output directory.

Run it through scripts/bench-mcp.sh, which prepares the session, the image and the mount.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

FILE = "bench-mcp/file-10k.txt"


def content_10k():
    line = "The quick brown fox jumps over the lazy dog, 0123456789.\n"  # 58 bytes
    text = line * (10240 // len(line))
    return text + "x" * (10240 - len(text) - 1) + "\n"


def summary(samples):
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {
        "n": len(s),
        "median_ms": statistics.median(s) * 1e3,
        "p90_ms": q(0.90) * 1e3,
        "p99_ms": q(0.99) * 1e3,
        "min_ms": s[0] * 1e3,
    }


async def mcp_samples(args, content, runs):
    params = StdioServerParameters(
        command=args.bin,
        args=["mcp", "--mount", args.mount],
        env=dict(os.environ, SESSIONFS_HOME=args.home, SESSIONFS_LOG="warn"),
    )
    reads, writes = [], []
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            read_args = {"sessionId": args.session, "path": FILE}
            write_args = {"sessionId": args.session, "path": FILE, "content": content}
            for _ in range(args.warmup):
                await s.call_tool("session_write_file", write_args)
                await s.call_tool("session_read_file", read_args)
            for _ in range(runs):
                t = time.perf_counter()
                res = await s.call_tool("session_read_file", read_args)
                reads.append(time.perf_counter() - t)
                assert not res.is_error and res.structured_content["content"] == content
                t = time.perf_counter()
                res = await s.call_tool("session_write_file", write_args)
                writes.append(time.perf_counter() - t)
                assert not res.is_error and res.structured_content["bytesWritten"] == len(content)
    return reads, writes


def exec_samples(args, content, runs):
    inside = f"{args.container_workspace}/{FILE}"
    reads, writes = [], []
    for _ in range(args.warmup):
        subprocess.run(["docker", "exec", args.container, "cat", inside], check=True, capture_output=True)
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(["docker", "exec", args.container, "cat", inside], check=True, capture_output=True)
        reads.append(time.perf_counter() - t)
        assert out.stdout.decode() == content
        t = time.perf_counter()
        subprocess.run(
            ["docker", "exec", "-i", args.container, "sh", "-c", f"cat > {inside}"],
            input=content.encode(), check=True, capture_output=True,
        )
        writes.append(time.perf_counter() - t)
    return reads, writes


def mount_samples(args, content, runs):
    path = os.path.join(args.mount, args.session, FILE)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        samples.append(time.perf_counter() - t)
        assert data == content.encode()
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--home", required=True)
    ap.add_argument("--mount", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--container", required=True)
    ap.add_argument("--container-workspace", default="/workspace")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    content = content_10k()
    os.makedirs(os.path.join(args.mount, args.session, os.path.dirname(FILE)), exist_ok=True)
    with open(os.path.join(args.mount, args.session, FILE), "w") as f:
        f.write(content)
    mcp_read, mcp_write = asyncio.run(mcp_samples(args, content, args.runs))
    exec_read, exec_write = exec_samples(args, content, args.runs)
    mount_read = mount_samples(args, content, args.runs)
    rows = {
        "session_read_file (sessionfs mcp, stdio)": summary(mcp_read),
        "docker exec cat": summary(exec_read),
        "open+read through the mount": summary(mount_read),
        "session_write_file (sessionfs mcp, stdio)": summary(mcp_write),
        "docker exec -i sh -c 'cat > file'": summary(exec_write),
    }
    report = {
        "benchmark": "mcp-latency",
        "file_bytes": len(content.encode()),
        "session": args.session,
        "container": args.container,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
        "read_speedup_vs_docker_exec": rows["docker exec cat"]["median_ms"]
        / rows["session_read_file (sessionfs mcp, stdio)"]["median_ms"],
        "write_speedup_vs_docker_exec": rows["docker exec -i sh -c 'cat > file'"]["median_ms"]
        / rows["session_write_file (sessionfs mcp, stdio)"]["median_ms"],
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mcp-latency.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"# MCP tool latency, {len(content.encode())}-byte file, Docker session ({report['time']})",
        "",
        "| operation | n | median ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} |")
    lines += [
        "",
        f"Median read: `session_read_file` is {report['read_speedup_vs_docker_exec']:.1f}× faster than "
        f"`docker exec cat`; median write: `session_write_file` is "
        f"{report['write_speedup_vs_docker_exec']:.1f}× faster than `docker exec sh -c 'cat > file'`.",
        "",
        "Reproduce: `scripts/bench-mcp.sh`",
    ]
    with open(os.path.join(args.out, "mcp-latency.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
