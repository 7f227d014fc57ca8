//! [`WirePath`]: a path relative to a session's workspace root, valid by construction.
//!
//! A `WirePath` is a sequence of `/`-separated components, each a non-empty file name with no NUL byte
//! that is neither `.` nor `..`. The empty path is the root itself. Absolute paths cannot be expressed.
//! Deserialization validates, so a malformed path in a frame is a decode error and never reaches the
//! file system. (The daemon resolves paths beneath its root as well; this check is the first of two.)

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// The longest component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Why bytes are not a valid [`WirePath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is absolute")]
    Absolute,
    #[error("path has an empty component")]
    EmptyComponent,
    #[error("path has a `.` or `..` component")]
    DotComponent,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("a path component is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
}

impl PathError {
    /// The errno a file system reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            PathError::TooLong | PathError::NameTooLong => crate::errno::ENAMETOOLONG,
            _ => crate::errno::EINVAL,
        }
    }
}

/// A validated path relative to a workspace root.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct WirePath(Vec<u8>);

impl WirePath {
    /// The workspace root.
    pub fn root() -> Self {
        WirePath(Vec::new())
    }

    /// Validates `bytes` as a relative path.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PathError> {
        if bytes.is_empty() {
            return Ok(WirePath(bytes));
        }
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute);
        }
        for component in bytes.split(|&b| b == b'/') {
            check_name(component)?;
        }
        Ok(WirePath(bytes))
    }

    /// The path of `name` inside this directory. `name` must be one valid component.
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        check_name(name)?;
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        Ok(WirePath(bytes))
    }

    /// True for the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes, `/`-separated.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The directory this path is in; `None` for the root. (A prefix of a valid path is valid.)
    pub fn parent(&self) -> Option<WirePath> {
        self.split_last().map(|(dir, _)| WirePath(dir.to_vec()))
    }

    /// Splits into the parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(&[u8], &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((&self.0[..i], &self.0[i + 1..])),
            None => Some((&[], &self.0[..])),
        }
    }
}

/// Checks that `name` is a single valid path component.
pub fn check_name(name: &[u8]) -> Result<(), PathError> {
    match name {
        [] => Err(PathError::EmptyComponent),
        b"." | b".." => Err(PathError::DotComponent),
        _ if name.len() > MAX_NAME_LEN => Err(PathError::NameTooLong),
        _ if name.contains(&0) => Err(PathError::Nul),
        _ if name.contains(&b'/') => Err(PathError::EmptyComponent),
        _ => Ok(()),
    }
}

impl std::fmt::Debug for WirePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for WirePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        WirePath::new(bytes.into_vec()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_relative_paths() {
        for ok in [
            &b""[..],
            b"a",
            b"a/b/c",
            b"...",
            b".hidden",
            b"a b/\xff\xfe",
        ] {
            assert!(
                WirePath::new(ok.to_vec()).is_ok(),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn refuses_escapes_and_garbage() {
        let cases: [(&[u8], PathError); 8] = [
            (b"/etc/passwd", PathError::Absolute),
            (b"..", PathError::DotComponent),
            (b"a/../../b", PathError::DotComponent),
            (b"./a", PathError::DotComponent),
            (b"a//b", PathError::EmptyComponent),
            (b"a/", PathError::EmptyComponent),
            (b"a\0b", PathError::Nul),
            (&[b'x'; 256], PathError::NameTooLong),
        ];
        for (bytes, want) in cases {
            assert_eq!(WirePath::new(bytes.to_vec()), Err(want));
        }
        assert_eq!(WirePath::new(vec![b'a'; 5000]), Err(PathError::TooLong));
    }

    #[test]
    fn join_and_split() {
        let p = WirePath::root().join(b"a").unwrap().join(b"b").unwrap();
        assert_eq!(p.as_bytes(), b"a/b");
        assert_eq!(p.split_last(), Some((&b"a"[..], &b"b"[..])));
        assert_eq!(WirePath::root().split_last(), None);
        assert_eq!(p.parent(), Some(WirePath::root().join(b"a").unwrap()));
        assert_eq!(p.parent().and_then(|a| a.parent()), Some(WirePath::root()));
        assert_eq!(WirePath::root().parent(), None);
        assert!(p.join(b"..").is_err());
        assert!(p.join(b"x/y").is_err());
    }
}
