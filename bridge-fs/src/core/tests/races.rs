//! Races pinned deterministically. The daemon holds a reply while the test puts a change event, a
//! reset or the end of direct data between the request and its reply; then the test asserts the
//! invariant the race broke (ARCHITECTURE.md, "Invariants"). Each test names the code that keeps it.

use std::os::unix::fs::FileExt;

use super::*;

/// A lookup's reply that crossed a change event of the file is neither kept long by the kernel nor
/// remembered by the bridge: the next `getattr` asks the daemon (`Inner::keep_attrs` checks the
/// generation after recording; `Inner::ttl_for`).
#[test]
fn a_lookup_reply_that_crossed_a_change_is_not_remembered() {
    let b = Bridge::new();
    std::fs::write(b.daemon.path("f"), b"1").unwrap();
    let held = b.daemon.hold(|r| matches!(r, Request::Lookup { .. }));
    let (r, lookup) = reply();
    b.core.lookup(ROOT, INodeNo(b.root), OsStr::new("f"), r);
    held.reached();
    std::fs::write(b.daemon.path("f"), b"1234567890").unwrap();
    b.changes(vec![Daemon::data_change("f")]);
    held.release();
    let Answer::Entry { attr, ttl } = lookup.wait() else {
        panic!("lookup failed");
    };
    assert_eq!(attr.size, 1, "the daemon answered before the change");
    assert_eq!(
        ttl, b.ttl,
        "a reply that crossed a change is cached briefly"
    );
    assert_eq!(b.getattr(attr.ino.0).attr().size, 10);
    // And the kernel is told to drop what it took from the reply, once it has it.
    b.until("the inode is invalidated", |b| {
        lock(&b.notes.0).contains(&Inval::Inode(attr.ino.0))
    });
}

/// A truncation answered while the kernel wrote the file directly, then released it: its own reply
/// (size 0) is not remembered after those writes, which the bridge never saw. The start and the end
/// of writable direct data are changes through the mount (`Inner::direct_change` counts one as
/// started, so `Mutation::end` finds another change came between). Without that, `stat` showed 0
/// bytes and a read right after returned nothing.
#[test]
fn a_truncation_answered_before_direct_writes_is_not_remembered_after_them() {
    let b = Bridge::new();
    let created = b.create(b.root, "t", libc::O_RDWR | libc::O_EXCL);
    let ino = created.ino();
    b.close(created.fh());
    let opened = b.open(ino, libc::O_RDWR);
    let Answer::Opened {
        fh,
        direct: Some(file),
        ..
    } = opened
    else {
        panic!("expected direct data, got {opened:?}");
    };
    let held = b.daemon.hold(|r| matches!(r, Request::SetAttr { .. }));
    let truncated = b.truncate(ino, 0);
    held.reached();
    // The kernel writes directly, then the last direct handle goes.
    file.write_all_at(b"written directly", 0).unwrap();
    b.close(fh);
    held.release();
    assert_eq!(truncated.wait().attr().size, 0);
    assert_eq!(b.getattr(ino).attr().size, 16);
}

/// Small files fetched ahead for a walk while one of them was open with direct data are not served
/// after that file's direct writes: the end of writable direct data voids what was fetched before
/// (`Inner::direct_change` → `Inner::void_answers`). Without it, an open right after the writer's
/// close read the file's old bytes from the fetch.
#[test]
fn files_fetched_ahead_during_direct_writes_are_not_served_after_them() {
    let b = Bridge::new();
    std::fs::create_dir(b.daemon.path("w")).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(b.daemon.path(&format!("w/{name}")), format!("{name} old")).unwrap();
    }
    let dir = b.lookup(b.root, "w").ino();
    let inos: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|n| b.lookup(dir, n).ino())
        .collect();
    let Answer::Opened {
        fh: writer,
        direct: Some(file),
        ..
    } = b.open(inos[2], libc::O_RDWR)
    else {
        panic!("expected direct data");
    };
    // A walk reads `a` and `b`: the second open fetches the directory's small files, `c` included.
    for &ino in &inos[..2] {
        let fh = b.open(ino, libc::O_RDONLY).fh();
        b.close(fh);
    }
    assert!(
        b.daemon
            .seen()
            .iter()
            .any(|r| matches!(r, Request::ReadHeads { .. })),
        "the walk fetched nothing ahead"
    );
    file.write_all_at(b"c new", 0).unwrap();
    b.close(writer);
    let fh = b.open(inos[2], libc::O_RDONLY).fh();
    let Answer::Data(data) = b.read(fh, 0, 4096) else {
        panic!("read failed");
    };
    assert_eq!(data, b"c new");
}

/// A listing whose page crossed a reset (the change queue overflowed: anything may have changed)
/// answers no lookup from memory, and the kernel is told to drop the listing it cached from it
/// (`Inner::listed` checks the listing's generation; `Inner::reply_entries`).
#[test]
fn a_listing_that_crossed_a_reset_answers_no_lookup() {
    let b = Bridge::new();
    std::fs::create_dir(b.daemon.path("d")).unwrap();
    std::fs::write(b.daemon.path("d/old"), b"").unwrap();
    let dir = b.lookup(b.root, "d").ino();
    let held = b.daemon.hold(|r| matches!(r, Request::ReadDir { .. }));
    let (r, listing) = reply();
    b.core.readdirplus(ROOT, INodeNo(dir), 0, r);
    held.reached();
    std::fs::write(b.daemon.path("d/new"), b"").unwrap();
    b.frame(WatchFrame::Overflow);
    b.invalidations();
    held.release();
    let Answer::Entries(entries) = listing.wait() else {
        panic!("listing failed");
    };
    assert!(
        entries.iter().all(|e| e.name != b"new"),
        "the page predates the change"
    );
    b.until("the listing is invalidated", |b| {
        lock(&b.notes.0).contains(&Inval::Inode(dir))
    });
    assert_eq!(
        b.lookup(dir, "new").attr().size,
        0,
        "the name was answered missing"
    );
}

/// A change event that arrives while a listing is being read to its end voids the page kept for
/// the rest of it: a lookup after the event finds a name the page did not have.
#[test]
fn a_change_during_a_listing_voids_its_kept_page_for_lookups() {
    let b = Bridge::new();
    std::fs::create_dir(b.daemon.path("d")).unwrap();
    std::fs::write(b.daemon.path("d/x"), b"").unwrap();
    let dir = b.lookup(b.root, "d").ino();
    assert_eq!(b.list(dir).len(), 1);
    // The complete listing answers lookups of missing names without a round trip...
    let before = b.daemon.seen().len();
    assert!(matches!(b.lookup(dir, "y"), Answer::Missing { .. }));
    assert_eq!(b.daemon.seen().len(), before);
    // ...until a change in the directory arrives.
    std::fs::write(b.daemon.path("d/y"), b"yy").unwrap();
    b.changes(vec![b.daemon.entry_change("d/y")]);
    assert_eq!(b.lookup(dir, "y").attr().size, 2);
}

/// A create of an existing file whose inode has direct handles (the kernel asks `CREATE` when it
/// learned the name was missing and the file appeared behind the mount before the change event)
/// joins that direct data: the kernel refuses a handle of the other kind on the inode (`EIO`).
/// `create` calls `Inner::join_direct`.
#[test]
fn a_create_of_a_file_with_direct_handles_joins_them() {
    let b = Bridge::new();
    let created = b.create(b.root, "j", libc::O_RDWR | libc::O_EXCL);
    let ino = created.ino();
    b.close(created.fh());
    let Answer::Opened {
        fh: held_open,
        direct: Some(_),
        ..
    } = b.open(ino, libc::O_RDWR)
    else {
        panic!("expected direct data");
    };
    let again = b.create(b.root, "j", libc::O_WRONLY);
    let Answer::Created { fh, direct, .. } = again else {
        panic!("create failed: {again:?}");
    };
    assert_eq!(b.lookup(b.root, "j").ino(), ino);
    assert!(
        direct.is_some(),
        "a create of an inode with direct handles got a bridge handle"
    );
    b.close(fh);
    b.close(held_open);
}

/// A file renamed, then written, behind the mount, both events in one batch: the write's event
/// names the file by a name the bridge does not know it by, so the event of its old name
/// invalidates the node itself (`Inner::invalidate`, an entry that names another node now): a
/// handle held open on it reads the new bytes, not the kernel's pages of the old ones.
#[test]
fn a_node_renamed_behind_the_mount_is_invalidated_with_its_old_name() {
    let b = Bridge::new();
    std::fs::write(b.daemon.path("old"), b"1").unwrap();
    let ino = b.lookup(b.root, "old").ino();
    b.invalidations();
    std::fs::rename(b.daemon.path("old"), b.daemon.path("new")).unwrap();
    std::fs::write(b.daemon.path("new"), b"22").unwrap();
    b.changes(vec![
        b.daemon.entry_change("old"),
        b.daemon.entry_change("new"),
        Daemon::data_change("new"),
    ]);
    let invalidations = b.invalidations();
    assert!(
        invalidations.contains(&Inval::Inode(ino)),
        "{invalidations:?}"
    );
    assert!(invalidations.contains(&Inval::Entry(b.root, b"old".to_vec())));
}

/// A file rewritten behind the mount with the same size, its event not (or never) reaching its
/// inode: a lookup that shows its new times drops its page stamp, so the next open does not tell
/// the kernel to keep its pages of the old bytes (`Inner::content_seen`). The kernel keeps an
/// inode's pages across new attributes of the same size, so nothing else would drop them: this is
/// how entry invalidations without the lookup check made the MCP suite's atomic rewrites read the
/// previous version (the kernel looked the name up again and kept the inode it held).
#[test]
fn a_lookup_that_shows_new_content_drops_the_kept_pages() {
    let b = Bridge::new();
    std::fs::write(b.daemon.path("f"), b"aaaa").unwrap();
    let ino = b.lookup(b.root, "f").ino();
    let fh = b.open(ino, libc::O_RDONLY).fh();
    b.close(fh);
    let Answer::Opened { fh, flags, .. } = b.open(ino, libc::O_RDONLY) else {
        panic!("open failed");
    };
    assert!(
        flags.contains(FopenFlags::FOPEN_KEEP_CACHE),
        "the kernel's pages are current"
    );
    b.close(fh);
    std::fs::write(b.daemon.path("f"), b"bbbb").unwrap();
    assert_eq!(b.lookup(b.root, "f").ino(), ino);
    let Answer::Opened { fh, flags, .. } = b.open(ino, libc::O_RDONLY) else {
        panic!("open failed");
    };
    assert!(
        !flags.contains(FopenFlags::FOPEN_KEEP_CACHE),
        "old pages kept"
    );
    let Answer::Data(data) = b.read(fh, 0, 4096) else {
        panic!("read failed");
    };
    assert_eq!(data, b"bbbb");
}
