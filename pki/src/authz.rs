//! Post-handshake authorization on the daemon side: maps the (already
//! CA-verified) client certificate to a `PeerRole`.

use rustls_pki_types::{CertificateDer, ServerName};

use crate::{session_dns_name, PkiError, BRIDGE_IDENTITY};

/// Who is on the other end of a daemon connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The host bridge (or MCP server): certificate valid for `BRIDGE_IDENTITY`.
    Bridge,
    /// The daemon's own certificate, used by `sessionfsd --health`.
    HealthProbe,
}

/// Authorizes the peer of an accepted connection on the daemon of `own_session_id`.
pub fn authorize_peer(
    conn: &quinn::Connection,
    own_session_id: &str,
) -> Result<PeerRole, PkiError> {
    let chain = crate::peer_chain(conn).ok_or(PkiError::NoPeerCertificate)?;
    let result = authorize_peer_chain(&chain, own_session_id);
    match &result {
        Ok(role) => tracing::debug!(remote = %conn.remote_address(), ?role, "peer authorized"),
        Err(e) => tracing::warn!(remote = %conn.remote_address(), error = %e, "peer refused"),
    }
    result
}

/// Maps a peer certificate chain to its role. The chain must already have been
/// verified against the CA (the TLS layer does that); only names are checked here.
pub fn authorize_peer_chain(
    chain: &[CertificateDer<'_>],
    own_session_id: &str,
) -> Result<PeerRole, PkiError> {
    let leaf = chain.first().ok_or(PkiError::NoPeerCertificate)?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| PkiError::Unauthorized {
        presented: format!("unparseable certificate: {e}"),
    })?;
    let valid_for = |name: String| -> Result<bool, PkiError> {
        let name = ServerName::try_from(name)
            .map_err(|e| PkiError::Verifier(format!("invalid expected name: {e}")))?;
        Ok(cert.verify_is_valid_for_subject_name(&name).is_ok())
    };
    if valid_for(BRIDGE_IDENTITY.to_string())? {
        return Ok(PeerRole::Bridge);
    }
    if valid_for(session_dns_name(own_session_id))? {
        return Ok(PeerRole::HealthProbe);
    }
    // A host's certificates: `bridge.<host>.hosts.sessionfs` and
    // `<id>.session.<host>.hosts.sessionfs`, their host CA's name constraints already checked by
    // the TLS layer.
    let names: Vec<&str> = cert.valid_dns_names().collect();
    for name in &names {
        let parts: Vec<&str> = match name.strip_suffix(".hosts.sessionfs") {
            Some(rest) => rest.split('.').collect(),
            None => continue,
        };
        match parts[..] {
            ["bridge", host] if !host.is_empty() => return Ok(PeerRole::Bridge),
            [id, "session", host] if id == own_session_id && !host.is_empty() => {
                return Ok(PeerRole::HealthProbe)
            }
            _ => {}
        }
    }
    Err(PkiError::Unauthorized {
        presented: if names.is_empty() {
            "no DNS names".into()
        } else {
            names.join(", ")
        },
    })
}
