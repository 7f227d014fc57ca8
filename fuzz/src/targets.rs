//! The fuzz targets and their seeds.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sessionfs_daemon::{dispatch, Handles, Workspace};
use sessionfs_mcp::{merge_edit, normalize_path, search_replace, Budget, EditError, IdScanner};
use sessionfs_proto::path::{MAX_NAME_LEN, MAX_PATH_LEN};
use sessionfs_proto::{
    decode, encode_frame, frame_body_len, BatchedChange, BatchedWrite, Caller, Hello, HelloReply,
    NodeKind, Request, RequestFrame, ResponseFrame, SetAttrs, WatchFrame, WirePath,
    FRAME_HEADER_LEN, MAX_FRAME_LEN,
};

/// The targets, by name.
pub const TARGETS: [&str; 5] = ["frame", "dispatch", "jsonrpc", "edit", "path"];

/// A fuzz target: runs one input, panicking when an invariant breaks.
pub trait Target {
    /// Runs `input`.
    fn run(&mut self, input: &[u8]);
    /// Final checks once a run is over.
    fn finish(&mut self) {}
}

/// The target named `name`.
pub fn target(name: &str) -> anyhow::Result<Box<dyn Target>> {
    Ok(match name {
        "frame" => Box::new(Frame),
        "dispatch" => Box::new(Dispatch::new()?),
        "jsonrpc" => Box::new(JsonRpc),
        "edit" => Box::new(Edit),
        "path" => Box::new(PathTarget),
        other => anyhow::bail!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    })
}

// ---------- frame ----------

struct Frame;

/// Decodes `body` as `T`; what decodes must encode back to the same body's meaning.
fn round_trip<T>(body: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(msg) = decode::<T>(body) {
        let mut framed = Vec::new();
        encode_frame(&msg, &mut framed).expect("a decoded message encodes");
        let again: T = decode(&framed[FRAME_HEADER_LEN..]).expect("an encoded message decodes");
        assert_eq!(again, msg, "a message changed through encode and decode");
    }
}

impl Target for Frame {
    fn run(&mut self, input: &[u8]) {
        if let Some(header) = input.get(..FRAME_HEADER_LEN) {
            let header: [u8; FRAME_HEADER_LEN] = header.try_into().expect("four bytes");
            if let Ok(len) = frame_body_len(header) {
                assert!(len <= MAX_FRAME_LEN, "a frame header allowed {len} bytes");
            }
        }
        round_trip::<RequestFrame>(input);
        round_trip::<ResponseFrame>(input);
        round_trip::<WatchFrame>(input);
        round_trip::<Hello>(input);
        round_trip::<HelloReply>(input);
    }
}

// ---------- dispatch ----------

/// The daemon's request handling on a temporary workspace, with a sentinel file beside it.
struct Dispatch {
    dir: tempfile::TempDir,
    ws: Workspace,
    handles: Handles,
    runs: u64,
}

const SENTINEL: &[u8] = b"outside the workspace";
/// Runs between resets of the workspace (open handles and files do not pile up).
const RESET_EVERY: u64 = 500;

impl Dispatch {
    fn new() -> anyhow::Result<Dispatch> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("outside"), SENTINEL)?;
        let ws = Self::fresh(dir.path())?;
        Ok(Dispatch {
            dir,
            ws,
            handles: Handles::default(),
            runs: 0,
        })
    }

    /// An empty workspace `root` with a few nodes the seeds name.
    fn fresh(base: &Path) -> anyhow::Result<Workspace> {
        let root = base.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(root.join("dir/sub"))?;
        std::fs::write(root.join("a"), b"hello")?;
        std::fs::write(root.join("dir/b"), vec![7u8; 5000])?;
        std::os::unix::fs::symlink("a", root.join("link"))?;
        std::os::unix::fs::symlink("../outside", root.join("out"))?;
        Ok(Workspace::open(&root, None)?)
    }

    /// Nothing beside the workspace changed.
    fn check_outside(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("the fuzz directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "root"],
            "something was made outside the workspace"
        );
        let sentinel = std::fs::read(self.dir.path().join("outside")).expect("the sentinel");
        assert_eq!(sentinel, SENTINEL, "the file outside the workspace changed");
    }
}

/// Whether `request` would make a device node (the fuzzer runs as root; none is wanted in /tmp).
fn makes_a_device(request: &Request) -> bool {
    match request {
        Request::Mknod { kind, .. } => {
            matches!(
                kind,
                NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }
            )
        }
        Request::Batch {
            then: Some(then), ..
        } => makes_a_device(then),
        _ => false,
    }
}

impl Target for Dispatch {
    fn run(&mut self, input: &[u8]) {
        let Ok(frame) = decode::<RequestFrame>(input) else {
            return;
        };
        if makes_a_device(&frame.request) || matches!(frame.request, Request::Watch) {
            return;
        }
        let _ = dispatch(&self.ws, &self.handles, frame.caller, frame.request);
        self.runs += 1;
        if self.runs.is_multiple_of(RESET_EVERY) {
            self.check_outside();
            self.handles = Handles::default();
            self.ws = Self::fresh(self.dir.path()).expect("a fresh workspace");
        }
    }

    fn finish(&mut self) {
        self.check_outside();
    }
}

// ---------- jsonrpc ----------

struct JsonRpc;

impl Target for JsonRpc {
    fn run(&mut self, input: &[u8]) {
        let mut whole = IdScanner::default();
        whole.feed(input);
        // The same answer in pieces, split where the input says.
        let mut pieces = IdScanner::default();
        let step = 1 + input.first().copied().unwrap_or(0) as usize % 7;
        for piece in input.chunks(step) {
            pieces.feed(piece);
        }
        assert_eq!(
            whole.id(),
            pieces.id(),
            "the id depends on how the line was split"
        );
        // Against serde_json, on the message written canonically (no duplicate keys).
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(input) else {
            return;
        };
        let canonical = serde_json::to_vec(&Value::Object(object)).expect("serializes");
        let mut scanner = IdScanner::default();
        scanner.feed(&canonical);
        // Read back from the same text the scanner read (a float need not survive a round trip).
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&canonical) else {
            panic!("serde_json cannot read what it wrote");
        };
        let expected = object.get("id").filter(|id| {
            matches!(id, Value::Number(_) | Value::String(_))
                && serde_json::to_string(id).is_ok_and(|raw| raw.len() <= IdScanner::MAX_ID)
        });
        assert_eq!(
            scanner.id().as_ref(),
            expected,
            "the scanner's id differs from serde_json's"
        );
    }
}

// ---------- edit ----------

struct Edit;

/// Splits `input` at NUL bytes into UTF-8 strings (lossily).
fn parts(input: &[u8]) -> Vec<String> {
    input
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

impl Target for Edit {
    fn run(&mut self, input: &[u8]) {
        let parts = parts(input);
        let get = |i: usize| parts.get(i).map(String::as_str).unwrap_or("");
        let (original, edit, search, replace) = (get(0), get(1), get(2), get(3));
        let budget = Budget::new(Duration::from_secs(5));
        match merge_edit(original, edit, &budget) {
            Ok(merged) => assert!(merged.len() <= sessionfs_mcp::MAX_RESULT),
            Err(EditError::NoMarkers) => assert!(!sessionfs_mcp::has_markers(edit)),
            Err(EditError::TimedOut { .. }) => panic!("a merge of {} bytes ran 5 s", input.len()),
            Err(_) => {}
        }
        let all = input.len().is_multiple_of(2);
        let result = search_replace(original, search, replace, all);
        // Without the CRLF translation, search-replace is `str::replace`.
        let translated =
            original.contains("\r\n") && search.contains('\n') && !search.contains('\r');
        if translated || search.is_empty() {
            return;
        }
        let count = original.matches(search).count();
        match result {
            Ok((out, n)) => {
                assert_eq!(n, count);
                assert!(all || n == 1);
                let expected = if all {
                    original.replace(search, replace)
                } else {
                    original.replacen(search, replace, 1)
                };
                assert_eq!(out, expected);
            }
            Err(EditError::SearchNotFound { .. }) => assert_eq!(count, 0),
            Err(EditError::AmbiguousSearch { count: c, lines }) => {
                assert!(!all && c == count && c >= 2);
                assert_eq!(lines.len(), c.min(21));
                assert!(lines.windows(2).all(|w| w[0] <= w[1]), "lines out of order");
            }
            Err(EditError::TooLarge { size, .. }) => {
                assert!(size as usize > sessionfs_mcp::MAX_RESULT)
            }
            Err(e) => panic!("unexpected search-replace error: {e}"),
        }
    }
}

// ---------- path ----------

struct PathTarget;

const SESSION_ROOT: &str = "/sessions/s";

impl Target for PathTarget {
    fn run(&mut self, input: &[u8]) {
        if let Ok(path) = WirePath::new(input.to_vec()) {
            let bytes = path.as_bytes();
            assert!(bytes.len() <= MAX_PATH_LEN);
            assert!(!bytes.contains(&0) && !bytes.starts_with(b"/"));
            if !path.is_root() {
                for name in bytes.split(|&b| b == b'/') {
                    assert!(
                        !name.is_empty() && name != b"." && name != b"..",
                        "{path:?}"
                    );
                    assert!(name.len() <= MAX_NAME_LEN);
                }
            }
            assert_eq!(WirePath::new(bytes.to_vec()).as_ref(), Ok(&path));
        }
        let text = String::from_utf8_lossy(input);
        match normalize_path(Path::new(SESSION_ROOT), &text) {
            Ok(rel) => {
                assert!(
                    rel.components().all(|c| matches!(c, Component::Normal(_))),
                    "{text:?} normalized to {rel:?}"
                );
                // Joined to the session's directory, it stays inside.
                let joined: PathBuf = Path::new(SESSION_ROOT).join(&rel);
                assert!(joined.starts_with(SESSION_ROOT));
            }
            Err(_) => {
                // Refused only for a NUL, an absolute path elsewhere, or a climb above the root.
                let plain = !text.contains('\0')
                    && !text.starts_with('/')
                    && !Path::new(text.as_ref())
                        .components()
                        .any(|c| c == Component::ParentDir);
                assert!(!plain, "a plain relative path {text:?} was refused");
            }
        }
    }
}

// ---------- seeds ----------

fn wire(p: &str) -> WirePath {
    WirePath::new(p.as_bytes().to_vec()).expect("a seed path")
}

/// One request of every kind, on the nodes [`Dispatch`] makes.
fn requests() -> Vec<Request> {
    let attrs = SetAttrs {
        mode: Some(0o640),
        uid: None,
        gid: None,
        size: Some(3),
        atime: None,
        mtime: None,
    };
    vec![
        Request::Ping,
        Request::Lookup { path: wire("a") },
        Request::GetAttr {
            path: wire("dir/b"),
            fh: None,
        },
        Request::SetAttr {
            path: wire("a"),
            fh: None,
            attrs,
        },
        Request::ReadDir {
            path: wire("dir"),
            offset: 0,
            limit: 100,
        },
        Request::Open {
            path: wire("a"),
            flags: 2,
            head: 4096,
            expect: None,
        },
        Request::Create {
            path: wire("dir/new"),
            mode: 0o644,
            flags: 0o101,
        },
        Request::Read {
            fh: 1,
            offset: 0,
            size: 4096,
        },
        Request::Write {
            fh: 1,
            offset: 2,
            data: b"xyz".to_vec(),
        },
        Request::Flush { fh: 1 },
        Request::Fsync {
            fh: 1,
            datasync: true,
        },
        Request::Release { fh: 1 },
        Request::FsyncDir {
            path: wire("dir"),
            datasync: false,
        },
        Request::Mkdir {
            path: wire("dir/sub/deeper"),
            mode: 0o755,
        },
        Request::Mknod {
            path: wire("fifo"),
            kind: NodeKind::Fifo,
            mode: 0o600,
        },
        Request::Unlink { path: wire("link") },
        Request::Rmdir {
            path: wire("dir/sub"),
        },
        Request::Rename {
            from: wire("a"),
            to: wire("dir/a2"),
            flags: 0,
        },
        Request::Symlink {
            path: wire("l2"),
            target: b"../../etc/passwd".to_vec(),
        },
        Request::Readlink { path: wire("out") },
        Request::Link {
            from: wire("dir/b"),
            to: wire("b2"),
        },
        Request::StatFs,
        Request::GetXattr {
            path: wire("a"),
            name: b"user.k".to_vec(),
            size: 64,
        },
        Request::SetXattr {
            path: wire("a"),
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            flags: 0,
        },
        Request::ListXattr {
            path: wire("a"),
            size: 256,
        },
        Request::RemoveXattr {
            path: wire("a"),
            name: b"user.k".to_vec(),
        },
        Request::ReadHeads {
            path: wire("dir"),
            max_each: 4096,
        },
        Request::Batch {
            changes: vec![BatchedChange::Write(BatchedWrite {
                fh: 1,
                offset: 0,
                data: b"ab".to_vec(),
            })],
            then: Some(Box::new(Request::Lookup {
                path: wire("dir/b"),
            })),
        },
    ]
}

fn body<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut framed = Vec::new();
    encode_frame(msg, &mut framed).expect("a seed encodes");
    framed.split_off(FRAME_HEADER_LEN)
}

/// The seed corpus of `target`: valid inputs of every kind the target reads.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame" | "dispatch" => {
            let caller = Caller { uid: 1000, gid: 1000 };
            let mut out: Vec<Vec<u8>> = requests()
                .into_iter()
                .map(|request| body(&RequestFrame { caller, request }))
                .collect();
            if target == "frame" {
                out.push(body(&Hello::current()));
                let mut framed = Vec::new();
                encode_frame(&Hello::current(), &mut framed).expect("hello");
                out.push(framed);
            }
            out
        }
        "jsonrpc" => [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"session_read_file","arguments":{"sessionId":"a","path":"x"}},"id":"req-7"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"id":[1],"params":{"id":2,"s":"\"id\":3"},"id":4}"#,
            r#"{ "id" : -12.5e3 , "x": null }"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "edit" => [
            "fn a() {\n    one();\n}\n\nfn b() {\n    two();\n}\n\0// ... existing code ...\nfn b() {\n    zero();\n    two();\n// ... existing code ...\n\0two\0three",
            "a\nb\nc\nb\n\0# ... existing code ...\nb\nB\n# ... existing code ...\n\0b\0x\n",
            "one\r\ntwo\r\nthree\r\n\0<!-- ... existing code ... -->\ntwo\r\n\0one\ntwo\n\x001\n2\n",
            "}\n}\n}\n\0// … existing code …\n}\n\0}\0",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "path" => ["a/b", "", "..", "a/../../b", "/sessions/s/x/./y", "/etc/passwd", "dir//x/", "a\0b"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        _ => Vec::new(),
    }
}
