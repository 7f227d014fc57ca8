//! Revoked issuing certificates: the host CAs of hosts removed from the installation
//! (`sessionfs host rm`). A daemon refuses every peer whose presented chain holds one, and ends
//! the connections of peers that held one when it was revoked.
//!
//! A daemon reads the list from [`REVOKED_FILE`] in its certificate directory, which its own host
//! writes (the host that holds the session's keys decides who may reach it): one fingerprint
//! ([`crate::fingerprint`]) per line, optionally followed by a note; `#` starts a comment line.

use std::collections::BTreeSet;
use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::files::io_err;
use crate::PkiError;

/// The file in a daemon's certificate directory listing the revoked certificates.
pub const REVOKED_FILE: &str = "revoked";

/// A set of revoked certificates, by fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revoked(BTreeSet<String>);

impl Revoked {
    /// The list in `text` (the format of [`REVOKED_FILE`]); an error names the first bad line.
    pub fn parse(text: &str) -> Result<Revoked, PkiError> {
        let mut set = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fingerprint = line.split_whitespace().next().unwrap_or_default();
            let valid = fingerprint.len() == 64
                && fingerprint
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid {
                return Err(PkiError::BadPem {
                    path_or_what: format!("the revocation list, line {}", n + 1),
                    reason: format!(
                        "{fingerprint:?} is not a SHA-256 fingerprint (64 lowercase hex digits)"
                    ),
                });
            }
            set.insert(fingerprint.to_owned());
        }
        Ok(Revoked(set))
    }

    /// The list in `path`; empty if there is no such file.
    pub fn load(path: &Path) -> Result<Revoked, PkiError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Revoked::parse(&text).map_err(|e| match e {
                PkiError::BadPem { reason, .. } => PkiError::BadPem {
                    path_or_what: path.display().to_string(),
                    reason,
                },
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revoked::default()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// The text of [`REVOKED_FILE`] for `entries` (fingerprint, note), in fingerprint order.
    pub fn render<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort();
        let mut text = String::from(
            "# Issuing certificates this daemon refuses in a peer's chain (sessionfs host rm).\n",
        );
        for (fingerprint, note) in entries {
            text.push_str(fingerprint);
            if !note.is_empty() {
                text.push(' ');
                text.push_str(&note.replace(['\n', '\r'], " "));
            }
            text.push('\n');
        }
        text
    }

    /// How many certificates are revoked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fingerprint of the first certificate of `chain` that is revoked, if any. Every
    /// presented certificate counts, not only the one after the leaf: the TLS layer builds its
    /// path from any of them, so a revoked issuer placed later in the chain is still caught.
    pub fn refused(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        chain
            .iter()
            .map(|cert| crate::fingerprint(cert.as_ref()))
            .find(|fingerprint| self.0.contains(fingerprint))
    }
}

/// The certificate chain the peer of `conn` presented.
pub fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_bad_lines_are_named() {
        let a = crate::fingerprint(b"a");
        let b = crate::fingerprint(b"b");
        let text = Revoked::render([(b.as_str(), "host\nc"), (a.as_str(), "")]);
        let parsed = Revoked::parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(text.contains(&format!("{b} host c\n")), "{text}");
        let chain = [
            CertificateDer::from(b"leaf".to_vec()),
            CertificateDer::from(b"b".to_vec()),
        ];
        assert_eq!(parsed.refused(&chain), Some(b.clone()));
        assert_eq!(parsed.refused(&chain[..1]), None);
        assert_eq!(Revoked::default().refused(&chain), None);

        let bad = Revoked::parse(&format!("{a}\nABC\n"))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("line 2") && bad.contains("\"ABC\""), "{bad}");
        let upper = Revoked::parse(&a.to_uppercase()).unwrap_err().to_string();
        assert!(upper.contains("line 1"), "{upper}");
    }

    #[test]
    fn a_missing_file_revokes_nothing_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REVOKED_FILE);
        assert!(Revoked::load(&path).unwrap().is_empty());
        std::fs::write(&path, "nonsense\n").unwrap();
        let e = Revoked::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
