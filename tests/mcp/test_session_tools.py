"""`sessionfs mcp` driven by the official MCP Python SDK over stdio: tool listing with schemas, every tool's
happy path, the error cases, escape attempts, and files crossing between MCP and the mount both ways.
Runs against every session in SESSIONFS_MCP_SESSIONS (a local one and a Docker one in CI)."""

import os
import subprocess
import threading
import time

import anyio

import pytest

from conftest import BIN, HOME, MOUNT, OUTSIDE, SESSIONS, connect, on_mount

pytestmark = pytest.mark.anyio

TOOLS = {
    "session_list",
    "session_read_file",
    "session_write_file",
    "session_edit_file",
    "session_search_replace",
    "session_list_directory",
    "session_file_exists",
    "session_delete_file",
    "session_create_directory",
    "session_move_file",
    "session_rename_file",
    "session_grep_search",
}


def read_mount(session, *parts):
    with open(on_mount(session, *parts), "rb") as f:
        return f.read()


def write_mount(session, data, *parts):
    with open(on_mount(session, *parts), "wb") as f:
        f.write(data)


# --- listing ---------------------------------------------------------------------------------------


async def test_tools_are_listed_with_schemas_and_defaults(client):
    tools = {t.name: t for t in (await client.session.list_tools()).tools}
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.description, name
        schema = tool.input_schema
        assert schema["type"] == "object", name
        if name != "session_list":
            assert "sessionId" in schema["properties"], name
            assert "sessionId" in schema.get("required", []), name
        assert tool.output_schema is not None, name
    props = lambda n: tools[n].input_schema["properties"]  # noqa: E731
    required = lambda n: set(tools[n].input_schema.get("required", []))  # noqa: E731
    assert props("session_write_file")["createDirs"]["default"] is True
    assert props("session_edit_file")["fullReplace"]["default"] is False
    assert props("session_edit_file")["dryRun"]["default"] is False
    assert props("session_search_replace")["replace_all"]["default"] is False
    assert props("session_list_directory")["path"]["default"] == "."
    assert props("session_list_directory")["showHidden"]["default"] is False
    assert props("session_create_directory")["recursive"]["default"] is True
    assert props("session_move_file")["overwrite"]["default"] is False
    assert props("session_move_file")["createDirs"]["default"] is True
    assert props("session_rename_file")["overwrite"]["default"] is False
    grep = props("session_grep_search")
    assert grep["limit"]["default"] == 50
    assert grep["case_sensitive"]["default"] is False
    assert grep["files_only"]["default"] is False
    read = props("session_read_file")
    for p in ("start_line_one_indexed", "end_line_one_indexed_inclusive", "should_read_entire_file"):
        assert p in read
    assert required("session_read_file") == {"sessionId", "path"}
    assert required("session_move_file") == {"sessionId", "sourcePath", "targetPath"}
    assert required("session_rename_file") == {"sessionId", "path", "newName"}
    assert required("session_grep_search") == {"sessionId", "query"}
    assert tools["session_read_file"].annotations.read_only_hint is True


async def test_session_list_shows_backend_and_health(client):
    listed = await client.call("session_list")
    assert listed["mount"] == MOUNT
    by_id = {s["id"]: s for s in listed["sessions"]}
    for s in SESSIONS:
        got = by_id[s["id"]]
        assert got["backend"] == s["backend"]
        assert got["state"] == "running"
        # A new container's first health check may not have run yet.
        assert got["health"] in ("healthy", "running", "starting"), got
        assert got["mounted"] is True
        assert got["path"] == os.path.join(MOUNT, s["id"])


# --- write and read ----------------------------------------------------------------------------------


async def test_write_then_read_through_the_mount_and_back(client, session, base):
    sid = session["id"]
    r = await client.call(
        "session_write_file", sessionId=sid, path=f"{base}/deep/er/a.txt", content="héllo\nworld\n"
    )
    assert r == {
        "success": True,
        "session": sid,
        "path": f"{base}/deep/er/a.txt",
        "bytesWritten": len("héllo\nworld\n".encode()),
        "created": True,
    }
    assert read_mount(session, base, "deep/er/a.txt") == "héllo\nworld\n".encode()
    r = await client.call("session_write_file", sessionId=sid, path=f"{base}/deep/er/a.txt", content="x")
    assert r["created"] is False and r["bytesWritten"] == 1
    assert read_mount(session, base, "deep/er/a.txt") == b"x"
    # Written through the mount, read through MCP.
    write_mount(session, b"from the mount\nline 2\n", base, "m.txt")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/m.txt")
    assert r["content"] == "from the mount\nline 2\n"
    assert r["totalLines"] == 2 and r["isText"] is True
    assert "omittedContent" not in r


async def test_write_without_create_dirs_needs_the_parent(client, session, base):
    err = await client.fail(
        "session_write_file", sessionId=session["id"], path=f"{base}/no/such/f", content="x", createDirs=False
    )
    assert "does not exist" in err
    assert not os.path.exists(on_mount(session, base, "no"))


async def test_write_keeps_the_mode_of_an_existing_file(client, session, base):
    write_mount(session, b"#!/bin/sh\n", base, "run.sh")
    os.chmod(on_mount(session, base, "run.sh"), 0o751)
    await client.call("session_write_file", sessionId=session["id"], path=f"{base}/run.sh", content="#!/bin/sh\nexit 0\n")
    assert os.stat(on_mount(session, base, "run.sh")).st_mode & 0o7777 == 0o751
    # No temporary file is left behind.
    assert os.listdir(on_mount(session, base)) == ["run.sh"]


@pytest.mark.parametrize("size", [512 * 1024, 8 * 1024])
async def test_write_is_atomic_for_readers(client, session, base, size):
    """A reader through the mount sees the old or the new content, never a mix, a short file or an
    error (as on a local file system: the file is replaced by a rename). A large file is read through
    the daemon's handle; a small one whole with its open."""
    contents = ["a" * size, "b" * size]
    await client.call("session_write_file", sessionId=session["id"], path=f"{base}/big", content=contents[0])
    stop = threading.Event()
    bad = []
    errors = []
    reads = [0]

    def reader():
        while not stop.is_set():
            try:
                f = open(on_mount(session, base, "big"), "rb")
            except OSError as e:
                errors.append("open " + repr(e))
                continue
            try:
                data = f.read()
            except OSError as e:
                errors.append("read " + repr(e))
                continue
            finally:
                f.close()
            reads[0] += 1
            if data not in (contents[0].encode(), contents[1].encode()):
                bad.append((len(data), data[:1], data[-1:]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(12):
            await client.call(
                "session_write_file", sessionId=session["id"], path=f"{base}/big", content=contents[i % 2]
            )
    finally:
        stop.set()
        t.join()
    print(f"{session['backend']} {size}: {reads[0]} reads, {len(errors)} errors")
    assert reads[0] > 0
    assert errors == [], f"{len(errors)} failed reads: {errors[:3]}"
    assert bad == [], f"torn reads: {bad[:3]}"


async def test_read_ranges_and_summaries(client, session, base):
    sid = session["id"]
    text = "".join(f"line {i}\n" for i in range(1, 301))
    write_mount(session, text.encode(), base, "long.txt")
    r = await client.call(
        "session_read_file", sessionId=sid, path=f"{base}/long.txt", start_line_one_indexed=10,
        end_line_one_indexed_inclusive=12,
    )
    assert r["content"] == "line 10\nline 11\nline 12\n"
    assert r["totalLines"] == 300
    assert r["linesShown"] == "10-12"
    assert r["linesRead"] == {"start": 10, "end": 12}
    assert r["omittedContent"]["summary"].startswith("Lines 1-9 and 13-300 of 300 are not shown")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/long.txt", start_line_one_indexed=299)
    assert r["content"] == "line 299\nline 300\n" and r["linesShown"] == "299-300"
    r = await client.call(
        "session_read_file", sessionId=sid, path=f"{base}/long.txt", start_line_one_indexed=5,
        end_line_one_indexed_inclusive=6, should_read_entire_file=True,
    )
    assert r["content"] == text and "omittedContent" not in r
    r = await client.call(
        "session_read_file", sessionId=sid, path=f"{base}/long.txt", end_line_one_indexed_inclusive=1
    )
    assert r["content"] == "line 1\n" and r["linesShown"] == "1"
    err = await client.fail(
        "session_read_file", sessionId=sid, path=f"{base}/long.txt", start_line_one_indexed=301
    )
    assert "past the end of the file (300 lines)" in err
    err = await client.fail(
        "session_read_file", sessionId=sid, path=f"{base}/long.txt", start_line_one_indexed=0
    )
    assert "1-based" in err
    # A long file read without a range: the first 2000 lines, the rest summarized.
    write_mount(session, "".join(f"{i}\n" for i in range(1, 2502)).encode(), base, "huge.txt")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/huge.txt")
    assert r["linesShown"] == "1-2000" and r["totalLines"] == 2501
    assert "2001-2501" in r["omittedContent"]["summary"]
    write_mount(session, b"", base, "empty")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/empty")
    assert r["content"] == "" and r["totalLines"] == 0 and r["size"] == 0


async def test_binary_and_non_utf8_files_are_described_not_dumped(client, session, base):
    sid = session["id"]
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    write_mount(session, png, base, "pic.png")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/pic.png")
    assert r["isText"] is False and r["content"] == ""
    assert r["size"] == len(png)
    assert r["fileType"] == "image/png (png)"
    write_mount(session, b"caf\xe9\n", base, "latin1.txt")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/latin1.txt")
    assert r["isText"] is False and r["fileType"] == "non-UTF-8 text"
    write_mount(session, b"\x00\x01\x02", base, "blob")
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/blob")
    assert r["fileType"] == "binary data"
    err = await client.fail("session_edit_file", sessionId=sid, path=f"{base}/pic.png", content="x", fullReplace=True)
    assert "not UTF-8 text" in err
    assert read_mount(session, base, "pic.png") == png


# --- edits ---------------------------------------------------------------------------------------------

SOURCE = """fn alpha() -> u32 {
    1
}

fn beta() -> u32 {
    2
}

fn gamma() -> u32 {
    3
}
"""


async def test_edit_with_markers_then_read_through_the_mount(client, session, base):
    sid = session["id"]
    write_mount(session, SOURCE.encode(), base, "lib.rs")
    edit = """// ... existing code ...
fn beta() -> u32 {
    20
}
// ... existing code ...
"""
    r = await client.call("session_edit_file", sessionId=sid, path=f"{base}/lib.rs", content=edit, dryRun=True)
    assert r["dryRun"] is True and r["edited"] is True and r["created"] is False
    assert "-    2\n+    20\n" in r["diff"]
    assert r["proposedContent"] == SOURCE.replace("    2\n", "    20\n")
    assert read_mount(session, base, "lib.rs") == SOURCE.encode(), "dryRun wrote"
    r = await client.call("session_edit_file", sessionId=sid, path=f"{base}/lib.rs", content=edit)
    assert r["edited"] is True and "proposedContent" not in r
    assert r["diffSummary"] == {"linesAdded": 1, "linesRemoved": 1, "totalLines": 11}
    assert read_mount(session, base, "lib.rs").decode() == SOURCE.replace("    2\n", "    20\n")


async def test_edit_refusals_leave_the_file_unchanged(client, session, base):
    sid = session["id"]
    write_mount(session, SOURCE.encode(), base, "lib.rs")
    # Without markers an existing file needs fullReplace.
    err = await client.fail("session_edit_file", sessionId=sid, path=f"{base}/lib.rs", content="fn x() {}\n")
    assert "fullReplace" in err
    # An anchor that does not occur.
    err = await client.fail(
        "session_edit_file", sessionId=sid, path=f"{base}/lib.rs",
        content="// ... existing code ...\nfn delta() -> u32 {\n    4\n}\n// ... existing code ...\n",
    )
    assert "does not occur in the file" in err
    # An anchor that occurs several times.
    err = await client.fail(
        "session_edit_file", sessionId=sid, path=f"{base}/lib.rs",
        content="// ... existing code ...\n}\n\nfn inserted() {}\n// ... existing code ...\n",
    )
    assert "ambiguous" in err
    assert read_mount(session, base, "lib.rs") == SOURCE.encode()
    # fullReplace replaces; markers in a new file are refused.
    await client.call("session_edit_file", sessionId=sid, path=f"{base}/lib.rs", content="new\n", fullReplace=True)
    assert read_mount(session, base, "lib.rs") == b"new\n"
    err = await client.fail(
        "session_edit_file", sessionId=sid, path=f"{base}/fresh.rs", content="// ... existing code ...\nx\n"
    )
    assert "does not exist" in err
    assert not os.path.exists(on_mount(session, base, "fresh.rs"))
    r = await client.call("session_edit_file", sessionId=sid, path=f"{base}/new/fresh.rs", content="fresh\n")
    assert r["created"] is True and r["diff"].startswith("--- /dev/null")
    assert read_mount(session, base, "new/fresh.rs") == b"fresh\n"


async def test_edit_resolves_a_repeated_closing_line(client, session, base):
    """A segment that shows one function unchanged and rewrites the next ends at the next one's `}`."""
    sid = session["id"]
    original = (
        "fn a() {\n    a1();\n    a2();\n}\n\nfn b() {\n    one();\n    two();\n}\n\nfn c() {\n    three();\n}\n"
    )
    write_mount(session, original.encode(), base, "m.rs")
    edit = (
        "// ... existing code ...\nfn a() {\n    a1();\n    a2();\n}\n\nfn b() {\n    TWO();\n    THREE();\n}\n"
        "// ... existing code ...\n"
    )
    await client.call("session_edit_file", sessionId=sid, path=f"{base}/m.rs", content=edit)
    assert read_mount(session, base, "m.rs").decode() == original.replace(
        "    one();\n    two();", "    TWO();\n    THREE();"
    )
    # A new line equal to a unique line further down must not swallow the code in between: refused.
    write_mount(session, b"fn a() {\n    x();\n}\n\nmod m {\n    use std::io;\n}\n", base, "n.rs")
    err = await client.fail(
        "session_edit_file", sessionId=sid, path=f"{base}/n.rs",
        content="// ... existing code ...\nfn a() {\n    use std::io;\n    x();\n}\n// ... existing code ...\n",
    )
    assert "ambiguous" in err
    assert read_mount(session, base, "n.rs") == b"fn a() {\n    x();\n}\n\nmod m {\n    use std::io;\n}\n"


async def test_search_replace(client, session, base):
    sid = session["id"]
    write_mount(session, b"one two one\nthree\n", base, "s.txt")
    err = await client.fail("session_search_replace", sessionId=sid, path=f"{base}/s.txt", search="one", replace="1")
    assert "occurs 2 times" in err
    assert read_mount(session, base, "s.txt") == b"one two one\nthree\n"
    r = await client.call(
        "session_search_replace", sessionId=sid, path=f"{base}/s.txt", search="one", replace="$1", replace_all=True
    )
    assert r["replacementCount"] == 2 and r["edited"] is True
    assert read_mount(session, base, "s.txt") == b"$1 two $1\nthree\n"
    r = await client.call("session_search_replace", sessionId=sid, path=f"{base}/s.txt", search="three", replace="3")
    assert r["replacementCount"] == 1 and "-three\n+3\n" in r["diff"]
    err = await client.fail("session_search_replace", sessionId=sid, path=f"{base}/s.txt", search="", replace="x")
    assert "empty" in err
    err = await client.fail("session_search_replace", sessionId=sid, path=f"{base}/s.txt", search="zzz", replace="x")
    assert "not found" in err
    # Claude Code's names are accepted too.
    r = await client.call(
        "session_search_replace", sessionId=sid, path=f"{base}/s.txt", old_string="two", new_string="2"
    )
    assert read_mount(session, base, "s.txt") == b"$1 2 $1\n3\n"


# --- directories and files --------------------------------------------------------------------------------


async def test_list_directory_and_exists(client, session, base):
    sid = session["id"]
    os.makedirs(on_mount(session, base, "sub"))
    write_mount(session, b"12345", base, "f.txt")
    write_mount(session, b"", base, ".hidden")
    os.symlink("f.txt", on_mount(session, base, "link"))
    r = await client.call("session_list_directory", sessionId=sid, path=base)
    assert r["directories"] == ["sub"]
    assert r["files"] == ["f.txt", "link"]
    assert r["totalEntries"] == 3
    kinds = {e["name"]: (e["type"], e["size"]) for e in r["entries"]}
    assert kinds["f.txt"] == ("file", 5) and kinds["link"][0] == "symlink" and kinds["sub"][0] == "directory"
    r = await client.call("session_list_directory", sessionId=sid, path=base, showHidden=True)
    assert r["files"] == [".hidden", "f.txt", "link"]
    r = await client.call("session_list_directory", sessionId=sid)
    assert base in r["directories"] and r["path"] == "."
    err = await client.fail("session_list_directory", sessionId=sid, path=f"{base}/f.txt")
    assert "not a directory" in err

    r = await client.call("session_file_exists", sessionId=sid, path=f"{base}/f.txt")
    assert (r["exists"], r["isFile"], r["isDirectory"], r["size"]) == (True, True, False, 5)
    r = await client.call("session_file_exists", sessionId=sid, path=f"{base}/sub")
    assert (r["exists"], r["isFile"], r["isDirectory"]) == (True, False, True)
    r = await client.call("session_file_exists", sessionId=sid, path=f"{base}/link")
    assert (r["exists"], r["isFile"], r["isSymlink"]) == (True, True, True)
    r = await client.call("session_file_exists", sessionId=sid, path=f"{base}/nope")
    assert (r["exists"], r["isFile"], r["isDirectory"]) == (False, False, False)


async def test_delete_create_move_rename(client, session, base):
    sid = session["id"]
    write_mount(session, b"x", base, "f")
    r = await client.call("session_delete_file", sessionId=sid, path=f"{base}/f")
    assert r["deleted"] is True and not os.path.exists(on_mount(session, base, "f"))
    err = await client.fail("session_delete_file", sessionId=sid, path=f"{base}/f")
    assert "does not exist" in err
    os.mkdir(on_mount(session, base, "d"))
    err = await client.fail("session_delete_file", sessionId=sid, path=f"{base}/d")
    assert "is a directory" in err and os.path.isdir(on_mount(session, base, "d"))

    r = await client.call("session_create_directory", sessionId=sid, path=f"{base}/a/b/c")
    assert r["created"] is True and os.path.isdir(on_mount(session, base, "a/b/c"))
    r = await client.call("session_create_directory", sessionId=sid, path=f"{base}/a/b/c")
    assert r["created"] is False
    err = await client.fail("session_create_directory", sessionId=sid, path=f"{base}/x/y", recursive=False)
    assert "does not exist" in err
    err = await client.fail("session_create_directory", sessionId=sid, path=f"{base}/a", recursive=False)
    assert "already exists" in err

    write_mount(session, b"src", base, "src.txt")
    write_mount(session, b"dst", base, "dst.txt")
    err = await client.fail("session_move_file", sessionId=sid, sourcePath=f"{base}/src.txt", targetPath=f"{base}/dst.txt")
    assert "already exists" in err
    assert read_mount(session, base, "dst.txt") == b"dst" and read_mount(session, base, "src.txt") == b"src"
    r = await client.call(
        "session_move_file", sessionId=sid, sourcePath=f"{base}/src.txt", targetPath=f"{base}/dst.txt", overwrite=True
    )
    assert r["moved"] is True and r["overwritten"] is True
    assert read_mount(session, base, "dst.txt") == b"src" and not os.path.exists(on_mount(session, base, "src.txt"))
    r = await client.call(
        "session_move_file", sessionId=sid, sourcePath=f"{base}/dst.txt", targetPath=f"{base}/new/dir/moved.txt"
    )
    assert r["path"] == f"{base}/new/dir/moved.txt" and r["overwritten"] is False
    assert read_mount(session, base, "new/dir/moved.txt") == b"src"
    err = await client.fail(
        "session_move_file", sessionId=sid, sourcePath=f"{base}/new/dir/moved.txt", targetPath=f"{base}/q/r.txt",
        createDirs=False,
    )
    assert "does not exist" in err
    err = await client.fail("session_move_file", sessionId=sid, sourcePath=f"{base}/ghost", targetPath=f"{base}/g2")
    assert "ghost does not exist" in err

    r = await client.call("session_rename_file", sessionId=sid, path=f"{base}/new/dir/moved.txt", newName="renamed.txt")
    assert r["newPath"] == f"{base}/new/dir/renamed.txt" and r["renamed"] is True
    assert read_mount(session, base, "new/dir/renamed.txt") == b"src"
    err = await client.fail("session_rename_file", sessionId=sid, path=f"{base}/new/dir/renamed.txt", newName="../x")
    assert "plain file name" in err
    write_mount(session, b"other", base, "new/dir/other.txt")
    err = await client.fail("session_rename_file", sessionId=sid, path=f"{base}/new/dir/renamed.txt", newName="other.txt")
    assert "already exists" in err
    r = await client.call(
        "session_rename_file", sessionId=sid, path=f"{base}/new/dir/renamed.txt", newName="other.txt", overwrite=True
    )
    assert r["overwritten"] is True and read_mount(session, base, "new/dir/other.txt") == b"src"


async def test_git_metadata_is_never_changed(client, session, base):
    """Hardening finding 5: through the tools an agent could write `.git/config` with `core.fsmonitor`,
    and the host user's next `git status` in the mount ran that command. Nothing named `.git` or inside
    a `.git` directory is created, changed, moved or deleted by the tools, also through a symlink; it
    can still be read."""
    sid = session["id"]
    os.makedirs(on_mount(session, base, "repo", ".git", "hooks"))
    write_mount(session, b"[core]\n", base, "repo", ".git", "config")
    write_mount(session, b"ref: refs/heads/main\n", base, "repo", ".git", "HEAD")
    os.symlink(".git", on_mount(session, base, "repo", "meta"))
    config = "[core]\n\tfsmonitor = touch /tmp/pwned\n"
    refusals = [
        ("session_write_file", dict(path=f"{base}/repo/.git/config", content=config)),
        ("session_write_file", dict(path=f"{base}/repo/meta/config", content=config)),
        ("session_write_file", dict(path=f"{base}/repo/.git/hooks/pre-commit", content="#!/bin/sh\n")),
        ("session_write_file", dict(path=f"{base}/other/.git/config", content=config, createDirs=True)),
        ("session_write_file", dict(path=f"{base}/wt/.git", content="gitdir: /elsewhere\n", createDirs=True)),
        ("session_edit_file", dict(path=f"{base}/repo/.git/config", content=config, fullReplace=True)),
        ("session_search_replace", dict(path=f"{base}/repo/.git/config", search="[core]", replace=config)),
        ("session_delete_file", dict(path=f"{base}/repo/.git/HEAD")),
        ("session_create_directory", dict(path=f"{base}/repo/.git/hooks2")),
        ("session_move_file", dict(sourcePath=f"{base}/repo/.git", targetPath=f"{base}/moved")),
        ("session_rename_file", dict(path=f"{base}/repo/.git/HEAD", newName="HEAD2")),
    ]
    for tool, args in refusals:
        err = await client.fail(tool, sessionId=sid, **args)
        assert "git's own data" in err, (tool, args, err)
    assert read_mount(session, base, "repo", ".git", "config") == b"[core]\n"
    assert read_mount(session, base, "repo", ".git", "HEAD") == b"ref: refs/heads/main\n"
    assert not os.path.exists(on_mount(session, base, "other"))
    assert not os.path.exists(on_mount(session, base, "wt", ".git"))
    assert sorted(os.listdir(on_mount(session, base, "repo", ".git"))) == ["HEAD", "config", "hooks"]
    r = await client.call("session_read_file", sessionId=sid, path=f"{base}/repo/.git/HEAD")
    assert r["content"] == "ref: refs/heads/main\n"
    # A directory that only contains a repository moves whole.
    r = await client.call("session_move_file", sessionId=sid, sourcePath=f"{base}/repo", targetPath=f"{base}/repo2")
    assert r["moved"] is True


# --- grep ------------------------------------------------------------------------------------------------


async def test_grep_search(client, session, base):
    sid = session["id"]
    os.makedirs(on_mount(session, base, "src"))
    tag = base  # every line searched for carries the test's own tag, so other tests' files never match
    write_mount(session, f"fn main() {{\n    println!(\"Needle {tag}\");\n}}\n".encode(), base, "src/main.rs")
    write_mount(session, f"needle {tag} in toml\n".encode(), base, "Cargo.toml")
    write_mount(session, f"needle {tag} ignored\n".encode(), base, "skip.log")
    write_mount(session, f"needle {tag} hidden\n".encode(), base, ".hidden.txt")
    write_mount(session, b"*.log\n", base, ".gitignore")
    write_mount(session, f"needle {tag}\x00binary".encode(), base, "bin.dat")
    write_mount(session, "".join(f"needle {tag} {i}\n" for i in range(30)).encode(), base, "many.txt")
    q = dict(sessionId=sid, query=f"need.e {tag}")
    r = await client.call("session_grep_search", **q)
    paths = {m["path"] for m in r["matches"]}
    # .gitignore'd, hidden and binary files are skipped, as ripgrep does.
    assert paths == {f"{base}/src/main.rs", f"{base}/Cargo.toml", f"{base}/many.txt"}, paths
    assert r["truncated"] is False and r["matchCount"] == 32
    main = [m for m in r["matches"] if m["path"].endswith("main.rs")]
    assert main == [{"path": f"{base}/src/main.rs", "line": 2, "text": f'    println!("Needle {tag}");'}]
    assert f"File: {base}/src/main.rs\nLine 2:" in r["results"]
    r = await client.call("session_grep_search", **q, case_sensitive=True)
    assert not any(m["path"].endswith("main.rs") for m in r["matches"])
    r = await client.call("session_grep_search", **q, limit=5)
    assert r["truncated"] is True and r["matchCount"] == 5 and "limit of 5" in r["truncatedReason"]
    r = await client.call("session_grep_search", **q, files_only=True)
    assert sorted(r["files"]) == sorted([f"{base}/src/main.rs", f"{base}/Cargo.toml", f"{base}/many.txt"])
    r = await client.call("session_grep_search", **q, include_pattern="*.rs")
    assert {m["path"] for m in r["matches"]} == {f"{base}/src/main.rs"}
    r = await client.call("session_grep_search", **q, include_pattern=f"{base}/src/**")
    assert {m["path"] for m in r["matches"]} == {f"{base}/src/main.rs"}
    r = await client.call("session_grep_search", **q, exclude_pattern="*.txt,src")
    assert {m["path"] for m in r["matches"]} == {f"{base}/Cargo.toml"}
    r = await client.call("session_grep_search", sessionId=sid, query="no-such-thing-anywhere-xyz")
    assert r["matches"] == [] and r["results"] == "No matches found."
    err = await client.fail("session_grep_search", sessionId=sid, query="(unclosed")
    assert "invalid regular expression" in err
    err = await client.fail("session_grep_search", sessionId=sid, query="x", limit=0)
    assert "limit" in err


# --- errors and confinement ----------------------------------------------------------------------------------


async def test_errors_name_the_problem(client, session, base):
    sid = session["id"]
    err = await client.fail("session_read_file", sessionId="no-such-session", path="x")
    assert "unknown session" in err and "session_list" in err
    err = await client.fail("session_read_file", sessionId="../etc", path="x")
    assert "invalid sessionId" in err
    err = await client.fail("session_read_file", sessionId=sid, path=f"{base}/missing.txt")
    assert f"{base}/missing.txt does not exist" in err
    err = await client.fail("session_read_file", sessionId=sid, path=base)
    assert "is a directory, not a file" in err
    err = await client.fail("session_write_file", sessionId=sid, path=base, content="x")
    assert "is a directory" in err
    os.mkfifo(on_mount(session, base, "fifo"))
    err = await client.fail("session_read_file", sessionId=sid, path=f"{base}/fifo")
    assert "not a regular file" in err
    # A missing parameter is an error for the client, not a crash of the server.
    result = await client.raw("session_read_file", sessionId=sid)
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error and "path" in text, text
    # The server still answers.
    await client.call("session_list")


ESCAPES = [
    "../outside.txt",
    "a/../../outside.txt",
    "/etc/passwd",
    MOUNT,
    MOUNT + "/",
    os.path.join(MOUNT, "another-session", "f.txt"),
]


async def test_escapes_are_refused(client, session, base):
    sid = session["id"]
    for path in ESCAPES:
        err = await client.fail("session_read_file", sessionId=sid, path=path)
        assert "refused" in err, (path, err)
        err = await client.fail("session_write_file", sessionId=sid, path=path, content="pwned")
        assert "refused" in err, (path, err)
    # Symlinks inside the workspace that lead out: absolute, relative with .., and a directory link.
    sentinel = os.path.join(OUTSIDE, "secret.txt")
    with open(sentinel, "w") as f:
        f.write("host secret\n")
    os.symlink(sentinel, on_mount(session, base, "abs-link"))
    os.symlink(OUTSIDE, on_mount(session, base, "dir-link"))
    os.symlink("../" * 12 + OUTSIDE.lstrip("/"), on_mount(session, base, "rel-link"))
    os.symlink("/", on_mount(session, base, "root-link"))
    before = sorted(os.listdir(OUTSIDE))
    calls = [
        ("session_read_file", dict(path=f"{base}/abs-link")),
        ("session_read_file", dict(path=f"{base}/dir-link/secret.txt")),
        ("session_read_file", dict(path=f"{base}/rel-link/secret.txt")),
        ("session_read_file", dict(path=f"{base}/root-link/etc/passwd")),
        ("session_write_file", dict(path=f"{base}/dir-link/new.txt", content="pwned")),
        ("session_write_file", dict(path=f"{base}/abs-link", content="pwned")),
        ("session_edit_file", dict(path=f"{base}/abs-link", content="pwned", fullReplace=True)),
        ("session_search_replace", dict(path=f"{base}/dir-link/secret.txt", search="host", replace="x")),
        ("session_list_directory", dict(path=f"{base}/dir-link")),
        ("session_file_exists", dict(path=f"{base}/dir-link/secret.txt")),
        ("session_delete_file", dict(path=f"{base}/dir-link/secret.txt")),
        ("session_create_directory", dict(path=f"{base}/dir-link/made")),
        ("session_move_file", dict(sourcePath=f"{base}/dir-link/secret.txt", targetPath=f"{base}/stolen.txt")),
        ("session_move_file", dict(sourcePath=f"{base}/abs-link", targetPath="../moved-out")),
        ("session_rename_file", dict(path=f"{base}/dir-link/secret.txt", newName="renamed.txt")),
    ]
    for name, args in calls:
        err = await client.fail(name, sessionId=sid, **args)
        assert "refused" in err and "outside" in err, (name, args, err)
    # Nothing outside was read into a result, written, created, moved or deleted.
    assert sorted(os.listdir(OUTSIDE)) == before
    with open(sentinel) as f:
        assert f.read() == "host secret\n"
    assert not os.path.exists(on_mount(session, base, "stolen.txt"))
    # A workspace absolute path (under the session's mount directory) is fine, as is a symlink inside.
    write_mount(session, b"inside\n", base, "target.txt")
    os.symlink("target.txt", on_mount(session, base, "ok-link"))
    r = await client.call("session_read_file", sessionId=sid, path=on_mount(session, base, "ok-link"))
    assert r["content"] == "inside\n"
    # Writing through an inside symlink writes its target and keeps the link.
    await client.call("session_write_file", sessionId=sid, path=f"{base}/ok-link", content="via link\n")
    assert os.path.islink(on_mount(session, base, "ok-link"))
    assert read_mount(session, base, "target.txt") == b"via link\n"
    # Grep does not follow symlinks out of the workspace, and names nothing outside in its errors.
    r = await client.call("session_grep_search", sessionId=sid, query="host secret")
    assert r["matches"] == []
    assert not any(OUTSIDE in e or "secret" in e for e in r.get("errors", [])), r.get("errors")


async def test_grep_reads_no_ignore_rules_from_outside_and_never_blocks(client, session, base):
    """Ignore files are read beneath the root only, if regular: a `.gitignore` symlinked to a host file, a
    `.git` file pointing at a host git directory, or a FIFO named `.gitignore` change nothing and hang nothing."""
    sid = session["id"]
    rules = os.path.join(OUTSIDE, f"rules-{base}")
    with open(rules, "w") as f:
        f.write("*.txt\n")
    gitdir = os.path.join(OUTSIDE, f"gitdir-{base}")
    os.makedirs(os.path.join(gitdir, "info"))
    with open(os.path.join(gitdir, "info", "exclude"), "w") as f:
        f.write("*.txt\n")
    for sub in ("linked", "gitfile", "fifo"):
        os.makedirs(on_mount(session, base, sub))
        write_mount(session, f"marker {base} {sub}\n".encode(), base, sub, "found.txt")
    os.symlink(rules, on_mount(session, base, "linked", ".gitignore"))
    write_mount(session, f"gitdir: {gitdir}\n".encode(), base, "gitfile", ".git")
    os.mkfifo(on_mount(session, base, "fifo", ".gitignore"))
    with anyio.fail_after(30):
        r = await client.call("session_grep_search", sessionId=sid, query=f"marker {base}")
    assert sorted(m["path"] for m in r["matches"]) == [
        f"{base}/fifo/found.txt", f"{base}/gitfile/found.txt", f"{base}/linked/found.txt",
    ]


async def test_a_stopped_session_is_reported_and_recovers(session, base):
    sid = session["id"]
    env = dict(os.environ, SESSIONFS_HOME=HOME)
    async with connect() as client:
        write_mount(session, b"persist\n", base, "p.txt")
        subprocess.run([BIN, "session", "stop", sid], check=True, env=env, capture_output=True, timeout=60)
        try:
            err = await client.fail("session_read_file", sessionId=sid, path=f"{base}/p.txt")
            assert f'session "{sid}" is unavailable' in err and "not running" in err, err
            assert f"sessionfs session start {sid}" in err
            listed = await client.call("session_list")
            got = {s["id"]: s for s in listed["sessions"]}[sid]
            assert got["state"] == "stopped" and got["health"] != "healthy", got
        finally:
            subprocess.run([BIN, "session", "start", sid], check=True, env=env, capture_output=True, timeout=60)
        # The mount follows the restarted daemon (new port) once the registry says so: poll, bounded.
        deadline = time.monotonic() + 20
        while True:
            result = await client.raw("session_read_file", sessionId=sid, path=f"{base}/p.txt")
            if not result.is_error or time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        assert not result.is_error, result.content
        assert result.structured_content["content"] == "persist\n"


async def test_no_mount_is_a_clear_startup_error():
    empty = os.path.join(OUTSIDE, "not-a-mount")
    os.makedirs(empty, exist_ok=True)
    out = subprocess.run(
        [BIN, "mcp", "--mount", empty], env=dict(os.environ, SESSIONFS_HOME=HOME), capture_output=True,
        text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert out.returncode != 0
    assert f"no sessionfs mount at {empty}: nothing is mounted there" in out.stderr, out.stderr
    assert "sessionfs mount" in out.stderr
