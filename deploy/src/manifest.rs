//! What a migration's verification compares: a tree's [`Manifest`], every path's [`Node`] (kind,
//! permission bits, size, SHA-256, symlink target), read through a daemon
//! ([`crate::transfer::manifest`]), and [`compare`], which names the first difference.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Every path of a tree (relative to its root, the root itself excluded) and its node.
pub(crate) type Manifest = BTreeMap<PathBuf, Node>;

/// One node of a tree as the verification compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        sha256: String,
    },
    Symlink {
        target: PathBuf,
    },
    Other {
        kind: &'static str,
        mode: u32,
    },
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "a directory of mode {mode:o}"),
            Node::File { mode, size, sha256 } => {
                write!(f, "a file of mode {mode:o}, {size} bytes, sha256 {sha256}")
            }
            Node::Symlink { target } => write!(f, "a symlink to {}", target.display()),
            Node::Other { kind, mode } => write!(f, "a {kind} of mode {mode:o}"),
        }
    }
}

/// Lowercase hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first difference between two manifests, in words; `Ok` if they are equal.
pub(crate) fn compare(
    source: &Manifest,
    copy: &Manifest,
    source_name: &str,
    copy_name: &str,
) -> Result<(), String> {
    for (path, node) in source {
        match copy.get(path) {
            None => return Err(format!("{} is missing in {copy_name}", path.display())),
            Some(other) if other != node => {
                return Err(format!(
                    "{} is {node} in {source_name} but {other} in {copy_name}",
                    path.display()
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = copy.keys().find(|p| !source.contains_key(*p)) {
        return Err(format!(
            "{} is in {copy_name} but not in {source_name}",
            extra.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_difference_is_named() {
        let file = |sha: &str| Node::File {
            mode: 0o644,
            size: 1,
            sha256: sha.into(),
        };
        let a = Manifest::from([
            ("d".into(), Node::Dir { mode: 0o755 }),
            ("d/f".into(), file("1")),
        ]);
        assert_eq!(compare(&a, &a.clone(), "a", "b"), Ok(()));
        let mut changed = a.clone();
        changed.insert("d/f".into(), file("2"));
        let e = compare(&a, &changed, "the source", "the copy").unwrap_err();
        assert!(
            e.starts_with("d/f is a file of mode 644, 1 bytes, sha256 1 in the source"),
            "{e}"
        );
        let mut missing = a.clone();
        missing.remove(&PathBuf::from("d/f"));
        assert_eq!(
            compare(&a, &missing, "a", "b").unwrap_err(),
            "d/f is missing in b"
        );
        let mut extra = a.clone();
        extra.insert("x".into(), Node::Symlink { target: "d".into() });
        assert_eq!(
            compare(&a, &extra, "a", "b").unwrap_err(),
            "x is in b but not in a"
        );
    }
}
