//! Loading certificate chains, private keys and CA trust roots from PEM.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::files::{pem_and_key, read_text, warn_if_exposed};
use crate::PkiError;

/// A loaded certificate chain + private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads `dir/<stem>.pem` (chain) and `dir/<stem>.key` (private key).
    pub fn load(dir: &Path, stem: &str) -> Result<Self, PkiError> {
        let (pem_path, key_path) = pem_and_key(dir, stem);
        let cert_pem = read_text(&pem_path)?;
        let key_pem = read_text(&key_path)?;
        warn_if_exposed(&key_path);
        Ok(Self {
            chain: parse_chain(&cert_pem, &pem_path.display().to_string())?,
            key: parse_key(&key_pem, &key_path.display().to_string())?,
        })
    }

    /// Builds an identity from in-memory PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            chain: parse_chain(cert_pem, "certificate PEM")?,
            key: parse_key(key_pem, "private key PEM")?,
        })
    }
}

/// Parses every CERTIFICATE block of `pem`; at least one is required.
pub(crate) fn parse_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(what, e))?;
    if chain.is_empty() {
        return Err(bad_pem(what, "no CERTIFICATE block found"));
    }
    Ok(chain)
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad_pem(what, e))
}

pub(crate) fn bad_pem(what: &str, reason: impl std::fmt::Display) -> PkiError {
    PkiError::BadPem {
        path_or_what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Loads a trust store containing the CA certificate(s) in `ca_pem_path`.
pub fn load_ca_roots(ca_pem_path: &Path) -> Result<RootCertStore, PkiError> {
    roots(&read_text(ca_pem_path)?, &ca_pem_path.display().to_string())
}

/// Builds a trust store from CA certificate PEM text.
pub fn ca_roots_from_pem(pem: &str) -> Result<RootCertStore, PkiError> {
    roots(pem, "CA certificate PEM")
}

fn roots(pem: &str, what: &str) -> Result<RootCertStore, PkiError> {
    let mut store = RootCertStore::empty();
    for cert in parse_chain(pem, what)? {
        store.add(cert).map_err(|e| bad_pem(what, e))?;
    }
    Ok(store)
}
