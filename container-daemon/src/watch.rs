//! The workspace watcher: inotify on the whole root (through `notify`), turned into protocol
//! [`Change`]s, batched, and fanned out to every connection that subscribed with `Request::Watch`.
//!
//! Invariants:
//! - **A lost event is never silent.** When inotify's queue overflows, the raw event channel is full, or
//!   a subscriber falls behind the broadcast, the subscriber gets [`WatchFrame::Overflow`] (the bridge then
//!   forgets everything it cached for the session). When the watch cannot be set up at all, or inotify
//!   runs out of watches later (a new directory goes unwatched), subscribers get
//!   [`WatchFrame::Unavailable`], the stream ends, and the bridge keeps short cache lifetimes for the
//!   session; a watcher that ran out stays unavailable until the daemon restarts.
//! - **Symlinks are not followed**: only the workspace itself is watched.
//! - Batches are sent at most [`BATCH_WINDOW`] after their first change, so a change reaches the bridge
//!   within a few milliseconds.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{Config, Event, RecommendedWatcher, RecursiveMode, Watcher as _};
use sessionfs_proto::{errno, Change, EntryNow, NodeId, WatchFrame, WirePath, MAX_WATCH_BATCH};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use crate::idle::Activity;
use crate::workspace::Workspace;

/// How long a batch collects changes after its first one.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Raw events buffered between inotify's thread and the batcher; beyond this, an overflow.
const RAW_CAPACITY: usize = 16 * 1024;
/// Frames buffered per subscriber; a subscriber further behind gets an overflow. The buffer keeps the
/// last frames until they are overwritten, so it is small: it is memory held while idle.
const FRAME_CAPACITY: usize = 64;

/// The watcher of one workspace, shared by every connection.
pub struct WorkspaceWatcher {
    frames: broadcast::Sender<Arc<WatchFrame>>,
    unavailable: Arc<Mutex<Option<String>>>,
    /// Keeps inotify alive.
    _watcher: Option<RecommendedWatcher>,
}

/// One connection's subscription.
pub enum Subscription {
    Live(broadcast::Receiver<Arc<WatchFrame>>),
    Unavailable(String),
}

impl WorkspaceWatcher {
    /// Starts watching `root` (recursively). Never fails: a watch that cannot be set up is reported to
    /// subscribers as unavailable. Must run inside a tokio runtime. `workspace` (the same root), if
    /// given, is where each entry change's name is looked up when its batch is sent (see
    /// [`EntryNow`]): the bridge then needs no round trip to know whether its entry still holds.
    /// Each batch of events counts as `activity` (see [`crate::idle`]).
    pub fn start(
        root: &Path,
        workspace: Option<Arc<Workspace>>,
        activity: Arc<Activity>,
    ) -> Arc<WorkspaceWatcher> {
        let (frames, _) = broadcast::channel(FRAME_CAPACITY);
        let (raw_tx, raw_rx) = mpsc::channel::<Raw>(RAW_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let unavailable = Arc::new(Mutex::new(None::<String>));
        let degraded = Arc::new(AtomicBool::new(false));
        let (out_of_watches, ran_out) = (unavailable.clone(), degraded.clone());
        let handler = move |event: notify::Result<Event>| {
            let raw = match event {
                Ok(event) if event.need_rescan() => Raw::Overflow,
                Ok(event) => Raw::Event(event),
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    // A directory goes unwatched from now on: the stream cannot be trusted.
                    warn!("workspace watcher: out of inotify watches ({e}); the bridge will cache briefly");
                    *out_of_watches.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "out of inotify watches (fs.inotify.max_user_watches): {e}"
                    ));
                    ran_out.store(true, Ordering::Release);
                    Raw::Overflow
                }
                Err(e) => {
                    warn!("workspace watcher: {e}");
                    Raw::Overflow
                }
            };
            if raw_tx.try_send(raw).is_err() {
                flag.store(true, Ordering::Release);
            }
        };
        let config = Config::default().with_follow_symlinks(false);
        let watcher = RecommendedWatcher::new(handler, config).and_then(|mut w| {
            w.watch(root, RecursiveMode::Recursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(root = %root.display(), "cannot watch the workspace; the bridge will cache briefly: {e}");
                *unavailable.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot watch the workspace: {e}"));
                None
            }
        };
        let this = Arc::new(WorkspaceWatcher {
            frames: frames.clone(),
            unavailable: unavailable.clone(),
            _watcher: watcher,
        });
        tokio::spawn(batch(
            Batcher {
                root: root.to_path_buf(),
                workspace,
                overflowed,
                degraded,
                unavailable,
                frames,
                activity,
            },
            raw_rx,
        ));
        this
    }

    /// Subscribes to the changes from now on.
    pub fn subscribe(&self) -> Subscription {
        // Under the lock the batcher also sends `Unavailable` under: a subscriber is told either way.
        let unavailable = self.unavailable.lock().unwrap_or_else(|p| p.into_inner());
        match &*unavailable {
            Some(reason) => Subscription::Unavailable(reason.clone()),
            None => Subscription::Live(self.frames.subscribe()),
        }
    }
}

enum Raw {
    Event(Event),
    Overflow,
}

/// What the batcher works with.
struct Batcher {
    root: PathBuf,
    workspace: Option<Arc<Workspace>>,
    /// Set when the raw channel was full (an event was lost).
    overflowed: Arc<AtomicBool>,
    /// Set when inotify ran out of watches; the reason is in `unavailable`.
    degraded: Arc<AtomicBool>,
    unavailable: Arc<Mutex<Option<String>>>,
    frames: broadcast::Sender<Arc<WatchFrame>>,
    activity: Arc<Activity>,
}

/// Collects raw events into batches of [`Change`]s and broadcasts them.
async fn batch(b: Batcher, mut raw: mpsc::Receiver<Raw>) {
    let Batcher {
        root,
        workspace,
        overflowed,
        degraded,
        unavailable,
        frames,
        activity,
    } = b;
    let mut pending: Vec<Change> = Vec::new();
    let mut seen: HashSet<Change> = HashSet::new();
    loop {
        let Some(first) = raw.recv().await else { break };
        activity.note();
        let mut overflow = matches!(first, Raw::Overflow);
        if let Raw::Event(event) = first {
            add_changes(&root, &event, &mut pending, &mut seen);
        }
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                next = raw.recv() => match next {
                    Some(Raw::Event(event)) => add_changes(&root, &event, &mut pending, &mut seen),
                    Some(Raw::Overflow) => overflow = true,
                    None => break,
                },
                () = &mut window => break,
            }
            if pending.len() >= MAX_WATCH_BATCH {
                break;
            }
        }
        if overflowed.swap(false, Ordering::AcqRel) {
            overflow = true;
        }
        if degraded.swap(false, Ordering::AcqRel) {
            pending.clear();
            seen.clear();
            let reason = unavailable.lock().unwrap_or_else(|p| p.into_inner());
            let frame = WatchFrame::Unavailable {
                reason: reason.clone().unwrap_or_default(),
            };
            let _ = frames.send(Arc::new(frame));
            drop(reason);
            continue;
        }
        if overflow {
            debug!("workspace watcher overflowed");
            pending.clear();
            seen.clear();
            let _ = frames.send(Arc::new(WatchFrame::Overflow));
            continue;
        }
        if !pending.is_empty() {
            seen.clear();
            let mut batch = std::mem::take(&mut pending);
            if let Some(ws) = &workspace {
                look_at_entries(ws, &mut batch);
            }
            // No subscriber is fine: nobody caches anything then.
            let _ = frames.send(Arc::new(WatchFrame::Changes(batch)));
        }
    }
}

/// Fills in what each entry change's name names now, and a changed directory's attributes now (a
/// lookup beneath the root, as `Lookup` does).
fn look_at_entries(ws: &Workspace, batch: &mut [Change]) {
    for change in batch {
        match change {
            Change::Entry { dir, name, now } => {
                let Ok(path) = dir.join(name) else { continue };
                *now = match ws.lookup(&path) {
                    Ok(attr) => EntryNow::Node(NodeId::of(&attr)),
                    Err(e) if e.errno == errno::ENOENT => EntryNow::Missing,
                    Err(_) => EntryNow::Unchecked,
                };
            }
            Change::Node { path, now } => {
                *now = ws
                    .lookup(path)
                    .ok()
                    .filter(|a| a.file_type() == sessionfs_proto::S_IFDIR);
            }
            Change::Data { .. } => {}
        }
    }
}

/// At most this many names are reported from the directories a new directory holds when its
/// creation is seen (see [`add_changes`]).
const NEW_DIR_SCAN_MAX: usize = 4096;

/// Reports every name below directory `dir` (at `wire`) as an entry change, depth first, at most
/// `budget` names.
fn names_below(dir: &Path, wire: &WirePath, budget: &mut usize, push: &mut impl FnMut(Change)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let name = entry.file_name();
        push(Change::Entry {
            dir: wire.clone(),
            name: name.as_bytes().to_vec(),
            now: EntryNow::Unchecked,
        });
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Ok(below)) = (is_dir, wire.join(name.as_bytes())) {
            names_below(&entry.path(), &below, budget, push);
        }
    }
}

/// The changes one inotify event stands for.
fn add_changes(root: &Path, event: &Event, out: &mut Vec<Change>, seen: &mut HashSet<Change>) {
    // (entry: a name in its directory changed; data: only the file's content changed; node: the
    // node itself changed)
    let (entry, data, node) = match event.kind {
        // Writes (IN_MODIFY) and the close after them; attribute and xattr changes are IN_ATTRIB.
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Data(_)) => (false, true, false),
        // Opening and reading change nothing cached.
        EventKind::Access(_) => return,
        // A node just made has nothing cached of its own: its name's entry covers it (a hard link,
        // which changes an existing node's link count, comes with an IN_ATTRIB of that node). Not
        // reporting it keeps what the bridge learned from its own create (see
        // `bridge-fs/src/known.rs`).
        EventKind::Create(_) => (true, false, false),
        // A removed or moved node's link count or change time moved.
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => (true, false, true),
        EventKind::Modify(_) | EventKind::Any | EventKind::Other => (false, false, true),
    };
    for path in &event.paths {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Ok(wire) = WirePath::new(rel.as_os_str().as_bytes().to_vec()) else {
            continue;
        };
        let mut push = |c: Change| {
            if seen.insert(c.clone()) {
                out.push(c);
            }
        };
        if entry {
            if let Some((dir, name)) = wire.split_last() {
                let dir = WirePath::new(dir.to_vec()).unwrap_or_default();
                push(Change::Entry {
                    dir: dir.clone(),
                    name: name.to_vec(),
                    now: EntryNow::Unchecked,
                });
                // The directory's size, times and listing changed with it.
                push(Change::Node {
                    path: dir,
                    now: None,
                });
            }
        }
        // A new directory is watched only once its creation has been seen: names made in it before
        // that (a tree extracted or copied in at once) have no event of their own. They are
        // reported now, from what it holds (the watch exists by the time the event is delivered).
        if matches!(event.kind, EventKind::Create(CreateKind::Folder)) {
            let mut budget = NEW_DIR_SCAN_MAX;
            names_below(path, &wire, &mut budget, &mut push);
        }
        if data {
            push(Change::Data { path: wire });
        } else if node {
            push(Change::Node {
                path: wire,
                now: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RenameMode};

    #[test]
    fn a_new_directory_reports_the_names_it_already_holds() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("new/sub")).expect("dirs");
        std::fs::write(root.path().join("new/f"), b"x").expect("f");
        std::fs::write(root.path().join("new/sub/g"), b"y").expect("g");
        let event =
            Event::new(EventKind::Create(CreateKind::Folder)).add_path(root.path().join("new"));
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        add_changes(root.path(), &event, &mut out, &mut seen);
        for (dir, name) in [("", "new"), ("new", "f"), ("new", "sub"), ("new/sub", "g")] {
            assert!(
                out.contains(&entry(dir, name)),
                "{dir}/{name} missing from {out:?}"
            );
        }
    }

    fn changes(kind: EventKind, paths: &[&str]) -> Vec<Change> {
        let mut event = Event::new(kind);
        for p in paths {
            event = event.add_path(PathBuf::from(p));
        }
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        add_changes(Path::new("/ws"), &event, &mut out, &mut seen);
        out
    }

    fn node(p: &str) -> Change {
        Change::Node {
            path: WirePath::new(p.as_bytes().to_vec()).unwrap(),
            now: None,
        }
    }

    fn data(p: &str) -> Change {
        Change::Data {
            path: WirePath::new(p.as_bytes().to_vec()).unwrap(),
        }
    }

    fn entry(dir: &str, name: &str) -> Change {
        Change::Entry {
            dir: WirePath::new(dir.as_bytes().to_vec()).unwrap(),
            name: name.as_bytes().to_vec(),
            now: EntryNow::Unchecked,
        }
    }

    #[test]
    fn entry_changes_say_what_their_name_names_when_sent() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::fs::write(dir.path().join("d/f"), b"x").expect("write");
        let ws = Workspace::open(dir.path(), None).expect("workspace");
        let mut batch = vec![entry("d", "f"), entry("d", "gone"), node("d")];
        look_at_entries(&ws, &mut batch);
        let meta = std::fs::symlink_metadata(dir.path().join("d/f")).expect("stat");
        match &batch[0] {
            Change::Entry {
                now: EntryNow::Node(id),
                ..
            } => {
                use std::os::unix::fs::MetadataExt;
                assert_eq!((id.dev, id.ino), (meta.dev(), meta.ino()));
                assert_eq!(id.file_type, sessionfs_proto::S_IFREG);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &batch[1],
            Change::Entry {
                now: EntryNow::Missing,
                ..
            }
        ));
        // A directory's attributes come along.
        match &batch[2] {
            Change::Node {
                now: Some(attr), ..
            } => {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::symlink_metadata(dir.path().join("d")).expect("stat d");
                assert_eq!((attr.ino, attr.mtime.secs), (meta.ino(), meta.mtime()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_map_to_changes() {
        assert_eq!(
            changes(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/ws/a/f"]
            ),
            vec![data("a/f")]
        );
        assert_eq!(
            changes(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/ws/a/f"]
            ),
            vec![data("a/f")]
        );
        assert_eq!(
            changes(
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                &["/ws/a/f"]
            ),
            vec![node("a/f")]
        );
        assert_eq!(
            changes(EventKind::Create(CreateKind::File), &["/ws/a/f"]),
            vec![entry("a", "f"), node("a")]
        );
        assert_eq!(
            changes(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/ws/x", "/ws/d/y"]
            ),
            vec![
                entry("", "x"),
                node(""),
                node("x"),
                entry("d", "y"),
                node("d"),
                node("d/y")
            ]
        );
        assert!(changes(EventKind::Access(AccessKind::Read), &["/ws/f"]).is_empty());
        // Paths outside the root (never sent by inotify for this watch) are dropped.
        assert!(changes(EventKind::Any, &["/elsewhere/f"]).is_empty());
    }
}
