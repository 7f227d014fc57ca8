//! The certificate archive uploaded into a session container ([`certs_tar`]), and the
//! in-memory tar writer it and the image build context use ([`write_tar`]).

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::DockerError;
use crate::file_error::io_error;

/// A tar archive, to be unpacked at `/`, holding `run/sessionfs/` (0700) with `ca.pem`,
/// `session.pem` (0644) and `session.key` (0600), all owned by root.
pub fn certs_tar(cert_dir: &Path) -> Result<Vec<u8>, DockerError> {
    let mut entries = vec![
        TarEntry::dir("run/", 0o755),
        TarEntry::dir("run/sessionfs/", 0o700),
    ];
    for (name, mode) in sessionfs_pki::SESSION_CERT_DIR {
        let path = cert_dir.join(name);
        let data = fs::read(&path).map_err(io_error("read", &path))?;
        entries.push(TarEntry::file(&format!("run/sessionfs/{name}"), mode, data));
    }
    let revoked = cert_dir.join(sessionfs_pki::REVOKED_FILE);
    match fs::read(&revoked) {
        Ok(data) => entries.push(revoked_entry(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", &revoked)(e).into()),
    }
    Ok(write_tar(&entries).map_err(io_error("pack the certificates of", cert_dir))?)
}

/// A tar archive, to be unpacked at `/`, holding only the revocation list `text` (0644) in the
/// certificate directory (the directory is there since the container was made).
pub fn revoked_tar(text: &str) -> Result<Vec<u8>, DockerError> {
    Ok(write_tar(&[revoked_entry(text.as_bytes().to_vec())])
        .map_err(io_error("pack", Path::new(sessionfs_pki::REVOKED_FILE)))?)
}

fn revoked_entry(data: Vec<u8>) -> TarEntry {
    TarEntry::file(
        &format!("run/sessionfs/{}", sessionfs_pki::REVOKED_FILE),
        0o644,
        data,
    )
}

/// One member of an in-memory tar archive.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Relative path; directories end in `/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// File contents; `None` for a directory.
    pub data: Option<Vec<u8>>,
}

impl TarEntry {
    /// A directory entry.
    pub fn dir(path: &str, mode: u32) -> TarEntry {
        TarEntry {
            path: path.to_owned(),
            mode,
            data: None,
        }
    }

    /// A regular file entry.
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> TarEntry {
        TarEntry {
            path: path.to_owned(),
            mode,
            data: Some(data),
        }
    }
}

/// Packs `entries` (owned by root, modified now) into a tar archive in memory.
pub fn write_tar(entries: &[TarEntry]) -> std::io::Result<Vec<u8>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(now);
        match &entry.data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &entry.path, data.as_slice())?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, &entry.path, std::io::empty())?;
            }
        }
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfs_pki::{SESSION_CERT_DIR, SESSION_FILES};

    #[test]
    fn certificates_archive() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, _) in SESSION_CERT_DIR {
            fs::write(tmp.path().join(name), name).unwrap();
        }
        let bytes = certs_tar(tmp.path()).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            seen.push((
                entry.path().unwrap().display().to_string(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.entry_type().is_dir(),
            ));
        }
        let mut expected = vec![
            ("run/".to_owned(), 0o755, 0, true),
            ("run/sessionfs/".to_owned(), 0o700, 0, true),
        ];
        for (name, mode) in SESSION_CERT_DIR {
            expected.push((format!("run/sessionfs/{name}"), mode, 0, false));
        }
        assert_eq!(seen, expected);
        fs::remove_file(tmp.path().join(SESSION_FILES.key)).unwrap();
        let err = certs_tar(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(SESSION_FILES.key), "{err}");
    }
}
