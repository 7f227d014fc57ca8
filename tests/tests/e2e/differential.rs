//! The differential suite: the scenario of [`sessionfs_tests::scenario()`] — file operations through
//! std::fs and real tools — run on a plain local directory and on `/<mount>/<id>/`; the observations —
//! bytes, metadata and errors — must be identical.

#![forbid(unsafe_code)]

use std::fs;

use sessionfs_tests::Harness;
use sessionfs_tests::{assert_same, scenario};

#[test]
fn local_directory_and_mount_agree() -> anyhow::Result<()> {
    let mut h = Harness::new()?;
    h.create_session("diff")?;
    h.mount()?;
    let local = h.dir.path().join("local");
    fs::create_dir(&local)?;
    let expected = scenario(&local);
    let seen = scenario(&h.path("diff", ""));
    assert_same(&expected, &seen, "the mount");
    h.unmount()?;
    Ok(())
}
