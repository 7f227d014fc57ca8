//! sessionfs transport security: the per-installation CA, the certificates it
//! issues to session daemons and to the bridge, and the mutually authenticated
//! QUIC/TLS configurations built from them (always with the *ring* provider);
//! and the framed request/response exchange over those connections that both
//! the daemon and the bridge use ([`wire`], [`client`]), and the daemon's
//! health probe built on them ([`health`]).

mod authz;
mod ca;
pub mod client;
mod error;
mod files;
pub mod health;
mod identity;
mod revoked;
mod transport;
pub mod wire;

pub use authz::{authorize_peer, authorize_peer_chain, PeerRole};
pub use ca::{
    host_domain, CertificateAuthority, IssuedCert, HOST_CA_STEM, LEAF_LIFETIME, RENEW_BEFORE,
};
pub use error::PkiError;
pub use files::{
    CertFiles, BRIDGE_FILES, CA_FILES, CERT_MODE, KEY_MODE, SESSION_CERT_DIR, SESSION_FILES,
};
pub use identity::{ca_roots_from_pem, load_ca_roots, Identity};
pub use revoked::{peer_chain, Revoked, REVOKED_FILE};
pub use transport::{
    client_config, client_endpoint, endpoint, server_config, wide_area, TransportTuning,
};

/// DNS SAN carried by the bridge's (and MCP server's) client certificate.
pub const BRIDGE_IDENTITY: &str = "bridge.client.sessionfs";

/// ALPN protocol identifier spoken on every sessionfs QUIC connection.
pub const ALPN: &[u8] = b"sessionfs/1";

/// The pin of a certificate: the SHA-256 of its DER encoding, in lowercase hex. The registry keeps
/// each session's ([`client::connect`] checks it), so a session made again under an old id does not
/// accept its predecessor's key.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pin ([`fingerprint`]) of the first certificate in `pem`.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    let chain = identity::parse_chain(pem, "certificate")?;
    Ok(fingerprint(chain[0].as_ref()))
}

/// The first DNS name in the first certificate of `pem`.
pub fn pem_dns_name(pem: &str) -> Result<String, PkiError> {
    let chain = identity::parse_chain(pem, "certificate")?;
    let cert = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| identity::bad_pem("certificate", e))?;
    let name = cert.valid_dns_names().next().map(str::to_owned);
    name.ok_or_else(|| identity::bad_pem("certificate", "it names no DNS name"))
}

/// The DNS name a session daemon's certificate is issued for (and that the
/// bridge passes as server name when connecting). `session_id` must already be
/// a valid DNS label.
pub fn session_dns_name(session_id: &str) -> String {
    format!("{session_id}.session.sessionfs")
}
