//! The core's operations against the daemon, one at a time: what a user of the mount sees.

use super::*;

#[test]
fn a_file_created_written_and_read_back_through_the_core_is_in_the_workspace() {
    let b = Bridge::new();
    let created = b.create(b.root, "a.txt", libc::O_RDWR | libc::O_EXCL);
    let (ino, fh) = (created.ino(), created.fh());
    assert!(matches!(b.write(ino, fh, 0, b"hello"), Answer::Written(5)));
    b.close(fh);
    assert_eq!(std::fs::read(b.daemon.path("a.txt")).unwrap(), b"hello");
    let opened = b.open(ino, libc::O_RDONLY);
    let Answer::Data(data) = b.read(opened.fh(), 0, 4096) else {
        panic!("read failed");
    };
    assert_eq!(data, b"hello");
    assert_eq!(b.getattr(ino).attr().size, 5);
}

#[test]
fn a_missing_name_of_a_watched_session_is_a_negative_entry_for_the_long_ttl() {
    let b = Bridge::new();
    match b.lookup(b.root, "nothing") {
        Answer::Missing { ttl } => assert_eq!(ttl, b.watched_ttl),
        other => panic!("expected a negative entry, got {other:?}"),
    }
}

#[test]
fn a_name_made_behind_the_mount_is_found_once_its_change_arrives() {
    let b = Bridge::new();
    assert!(matches!(b.lookup(b.root, "late"), Answer::Missing { .. }));
    b.invalidations();
    std::fs::write(b.daemon.path("late"), b"x").unwrap();
    b.changes(vec![b.daemon.entry_change("late")]);
    // The kernel is told to drop its negative entry, and the next lookup asks the daemon.
    assert!(b
        .invalidations()
        .contains(&Inval::Entry(b.root, b"late".to_vec())));
    assert_eq!(b.lookup(b.root, "late").attr().size, 1);
}

#[test]
fn a_listing_shows_every_name_with_its_attributes() {
    let b = Bridge::new();
    for name in ["x", "y", "z"] {
        std::fs::write(b.daemon.path(name), name).unwrap();
    }
    std::fs::create_dir(b.daemon.path("d")).unwrap();
    let mut names: Vec<_> = b.list(b.root).into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![b"d".to_vec(), b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]
    );
}

#[test]
fn attributes_remembered_from_a_lookup_answer_getattr_without_a_round_trip() {
    let b = Bridge::new();
    std::fs::write(b.daemon.path("f"), b"abc").unwrap();
    let ino = b.lookup(b.root, "f").ino();
    let before = b.daemon.seen().len();
    assert_eq!(b.getattr(ino).attr().size, 3);
    assert_eq!(b.daemon.seen().len(), before, "getattr went to the daemon");
    // A change of the file voids them: the next getattr asks.
    std::fs::write(b.daemon.path("f"), b"abcdef").unwrap();
    b.changes(vec![Daemon::data_change("f")]);
    assert_eq!(b.getattr(ino).attr().size, 6);
}
