//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while managing certificates or building
/// and authorizing TLS/QUIC connections.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} not found", .0.display())]
    NotFound(PathBuf),
    #[error("incomplete certificate material: {} exists but {} is missing", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("invalid PEM in {path_or_what}: {reason}")]
    BadPem {
        path_or_what: String,
        reason: String,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate verifier error: {0}")]
    Verifier(String),
    #[error("QUIC configuration error: {0}")]
    Quic(String),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error(
        "client certificate is not valid for the bridge or this session (presented: {presented})"
    )]
    Unauthorized { presented: String },
}
