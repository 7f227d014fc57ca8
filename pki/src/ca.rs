//! The per-installation certificate authority: creating/loading `ca.pem` +
//! `ca.key`, and issuing session (server+client) and bridge (client) certificates.
//!
//! An installation of several hosts keeps its root key on one host only: every host issues with
//! its own *host CA* (`host-ca.pem` + `host-ca.key`), signed by the root and constrained (X.509
//! name constraints, checked at every handshake) to the names `*.<host>.hosts.sessionfs`. A host
//! CA's certificates carry it as their chain's second element, so peers need trust only the root.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::files::{
    ensure_private_dir, exists, pem_and_key, read_text, warn_if_exposed, write_atomic, CA_FILES,
    CERT_MODE, KEY_MODE,
};
use crate::identity::{bad_pem, parse_chain};
use crate::{session_dns_name, PkiError};

const CA_STEM: &str = CA_FILES.stem;
/// File stem of a host's issuing certificate and key (`host-ca.pem`, `host-ca.key`).
pub const HOST_CA_STEM: &str = "host-ca";
/// How long a host CA lasts.
const HOST_CA_LIFETIME: Duration = Duration::from_secs(10 * 366 * DAY);
const CA_COMMON_NAME: &str = "sessionfs installation CA";
const DAY: u64 = 86_400;
const CA_LIFETIME: Duration = Duration::from_secs(30 * 366 * DAY);
/// How long a session or bridge certificate lasts: a leaked key stops working within this, and
/// certificates are issued again before they expire ([`RENEW_BEFORE`]).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(397 * DAY);
/// How long before its expiry a certificate is issued again (at `session start`, `mount`).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY);
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The installation CA (certificate + signing key), or a host's CA under it.
pub struct CertificateAuthority {
    /// Re-created issuer certificate (same subject and key as the stored one), used for signing.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// This CA's own certificate.
    cert_pem: String,
    /// The installation's root certificate (the same as `cert_pem` for the root).
    root_pem: String,
    /// The host whose CA this is; `None` for the root.
    host: Option<String>,
}

/// A freshly issued certificate with its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `dir/<stem>.pem` (0644) and `dir/<stem>.key` (0600) atomically;
    /// `dir` is created 0700 if missing.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        ensure_private_dir(dir)?;
        let (pem_path, key_path) = pem_and_key(dir, stem);
        write_atomic(&key_path, self.key_pem.as_bytes(), KEY_MODE)?;
        write_atomic(&pem_path, self.cert_pem.as_bytes(), CERT_MODE)
    }
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(CLOCK_SKEW);
    params.not_after = epoch + since_epoch + lifetime;
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Parameters of the CA certificate. The subject is fixed, so the issuer can be
/// re-created from the key alone when loading (rcgen cannot parse certificates here).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    // One level of host CAs below (webpki does not read a trust anchor's own constraints, so
    // roots made with 0 before hosts existed work as well).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_LIFETIME);
    params
}

/// The DNS subtree host `host`'s CA may issue names in.
pub fn host_domain(host: &str) -> String {
    format!("{host}.hosts.sessionfs")
}

/// Parameters of host `host`'s CA certificate (fixed subject, so it can be re-created from its key).
fn host_ca_params(host: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("sessionfs host {host}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // DNS names under its domain only, and no IP address at all.
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(host_domain(host))],
        excluded_subtrees: vec![
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([0; 4], [0; 4])),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, HOST_CA_LIFETIME);
    params
}

/// Loads the certificate and key `dir/<stem>.pem` + `.key` of an issuer whose certificate is made
/// from `params`: checks that they match and that the stored subject is the one `params` gives
/// (else `wrong`), and re-creates the issuer from the key (rcgen cannot parse certificates here).
fn load_issuer(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    wrong: &str,
) -> Result<(rcgen::Certificate, KeyPair, String), PkiError> {
    let (pem_path, key_path) = pem_and_key(dir, stem);
    let cert_pem = read_text(&pem_path)?;
    let key_pem = read_text(&key_path)?;
    warn_if_exposed(&key_path);
    let pem_what = pem_path.display().to_string();
    let key =
        KeyPair::from_pem(&key_pem).map_err(|e| bad_pem(&key_path.display().to_string(), e))?;
    let stored_der = parse_chain(&cert_pem, &pem_what)?.swap_remove(0);
    let stored = webpki::EndEntityCert::try_from(&stored_der).map_err(|e| bad_pem(&pem_what, e))?;
    if stored.subject_public_key_info().as_ref() != key.public_key_der().as_slice() {
        return Err(bad_pem(
            &pem_what,
            format!("certificate does not match {}", key_path.display()),
        ));
    }
    let issuer = params.self_signed(&key)?;
    let rebuilt = webpki::EndEntityCert::try_from(issuer.der())
        .map_err(|e| bad_pem("re-created issuer", e))?;
    if stored.subject() != rebuilt.subject() {
        return Err(bad_pem(&pem_what, wrong));
    }
    Ok((issuer, key, cert_pem))
}

impl CertificateAuthority {
    /// Loads `dir/ca.pem` + `dir/ca.key`, or creates both if both are absent
    /// (`dir` 0700, key 0600, each written atomically). Exactly one present is
    /// `PkiError::Incomplete`. Creation is not locked: callers must not race
    /// it, though a torn result is caught by `load`'s cert/key match check.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let (pem_path, key_path) = pem_and_key(dir, CA_STEM);
        match (exists(&pem_path)?, exists(&key_path)?) {
            (true, true) => Self::load(dir),
            (false, false) => Self::create(dir),
            (true, false) => Err(PkiError::Incomplete {
                present: pem_path,
                missing: key_path,
            }),
            (false, true) => Err(PkiError::Incomplete {
                present: key_path,
                missing: pem_path,
            }),
        }
    }

    fn create(dir: &Path) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let issuer = ca_params().self_signed(&key)?;
        let ca = Self {
            cert_pem: issuer.pem(),
            root_pem: issuer.pem(),
            issuer,
            key,
            host: None,
        };
        IssuedCert {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key.serialize_pem(),
        }
        .write(dir, CA_STEM)?;
        tracing::info!(dir = %dir.display(), "created sessionfs CA");
        Ok(ca)
    }

    /// Loads an existing CA; a missing file is `PkiError::NotFound(path)`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (issuer, key, cert_pem) = load_issuer(
            dir,
            CA_STEM,
            ca_params(),
            "not a sessionfs CA certificate (unexpected subject)",
        )?;
        Ok(Self {
            issuer,
            key,
            root_pem: cert_pem.clone(),
            cert_pem,
            host: None,
        })
    }

    /// Loads host `host`'s CA from `dir/host-ca.pem` + `dir/host-ca.key`, under the root
    /// certificate `dir/ca.pem` (whose key is not needed here). Refused unless the root signed it.
    pub fn load_host(dir: &Path, host: &str) -> Result<Self, PkiError> {
        let (issuer, key, cert_pem) = load_issuer(
            dir,
            HOST_CA_STEM,
            host_ca_params(host),
            &format!("not the CA of host `{host}` (unexpected subject)"),
        )?;
        let (root_path, _) = pem_and_key(dir, CA_STEM);
        let root_pem = read_text(&root_path)?;
        let root_der = parse_chain(&root_pem, &root_path.display().to_string())?.swap_remove(0);
        let pem_what = pem_and_key(dir, HOST_CA_STEM).0.display().to_string();
        let ca = Self {
            issuer,
            key,
            cert_pem,
            root_pem,
            host: Some(host.to_owned()),
        };
        // A leaf of it must chain to the root: a host CA the root did not sign is refused here,
        // not at the first handshake.
        let probe = ca.issue_bridge()?;
        if !ca.verifies(&probe.cert_pem, SystemTime::now(), &root_der) {
            return Err(bad_pem(
                &pem_what,
                format!(
                    "not signed by the installation root {}",
                    root_path.display()
                ),
            ));
        }
        Ok(ca)
    }

    /// Issues the CA of host `host` under this root: its certificate (constrained to
    /// [`host_domain`]) and key. Only the root issues host CAs.
    pub fn issue_host_ca(&self, host: &str) -> Result<IssuedCert, PkiError> {
        // One DNS label: `session.h` would get the names of host h's sessions.
        let label = !host.is_empty()
            && host.len() <= 63
            && !host.starts_with('-')
            && !host.ends_with('-')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label {
            return Err(PkiError::Verifier(format!(
                "invalid host name {host:?}: one DNS label (a-z, 0-9, '-')"
            )));
        }
        if let Some(own) = &self.host {
            return Err(PkiError::Verifier(format!(
                "host `{own}` cannot add hosts: only the host keeping the installation's root key can"
            )));
        }
        let key = KeyPair::generate()?;
        let cert = host_ca_params(host).signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The host whose CA this is (`None`: the installation's root).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The DNS name session `id`'s certificate is issued for: [`session_dns_name`] under the
    /// root, `<id>.session.<host>.hosts.sessionfs` under a host CA (never a bridge's name,
    /// whatever the id).
    pub fn session_name(&self, id: &str) -> String {
        match &self.host {
            None => session_dns_name(id),
            Some(host) => format!("{id}.session.{}", host_domain(host)),
        }
    }

    /// The DNS name of this CA's bridge certificate: [`crate::BRIDGE_IDENTITY`] under the root,
    /// `bridge.<host>.hosts.sessionfs` under a host CA.
    pub fn bridge_name(&self) -> String {
        match &self.host {
            None => crate::BRIDGE_IDENTITY.to_owned(),
            Some(host) => format!("bridge.{}", host_domain(host)),
        }
    }

    /// Issues the bridge's client certificate ([`Self::bridge_name`]).
    pub fn issue_bridge(&self) -> Result<IssuedCert, PkiError> {
        self.issue_client(&self.bridge_name())
    }

    /// Whether the certificate in `cert_pem` is one of this CA's, valid at `at` (checked as a peer
    /// checks it: its chain to this CA and its validity period). `false` for anything unreadable.
    /// Under a host CA, "this CA's" means issued by this host CA.
    pub fn still_valid_at(&self, cert_pem: &str, at: SystemTime) -> bool {
        let (Ok(chain), Ok(own), Ok(root)) = (
            parse_chain(cert_pem, "certificate"),
            parse_chain(&self.cert_pem, "CA certificate"),
            parse_chain(&self.root_pem, "root certificate"),
        ) else {
            return false;
        };
        if self.host.is_some() && chain.get(1) != Some(&own[0]) {
            return false;
        }
        self.verifies(cert_pem, at, &root[0])
    }

    /// Whether the chain in `cert_pem` verifies against `root` at `at`, as a peer checks it.
    fn verifies(
        &self,
        cert_pem: &str,
        at: SystemTime,
        root: &rustls_pki_types::CertificateDer<'_>,
    ) -> bool {
        let Ok(chain) = parse_chain(cert_pem, "certificate") else {
            return false;
        };
        let (Ok(cert), Ok(anchor)) = (
            webpki::EndEntityCert::try_from(&chain[0]),
            webpki::anchor_from_trusted_cert(root),
        ) else {
            return false;
        };
        let Ok(since_epoch) = at.duration_since(UNIX_EPOCH) else {
            return false;
        };
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &chain[1..],
            rustls_pki_types::UnixTime::since_unix_epoch(since_epoch),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }

    /// Whether the certificate in `cert_pem` is due to be issued again: not this CA's, expired, or
    /// expiring within [`RENEW_BEFORE`].
    pub fn due_for_renewal(&self, cert_pem: &str) -> bool {
        !self.still_valid_at(cert_pem, SystemTime::now() + RENEW_BEFORE)
    }

    /// The installation's root certificate, PEM (exactly as stored in `ca.pem`): what peers
    /// trust, whichever CA issues.
    pub fn cert_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// Issues a session daemon certificate: SAN [`Self::session_name`], EKU
    /// serverAuth + clientAuth (the latter for the in-container health probe).
    pub fn issue_session(&self, session_id: &str) -> Result<IssuedCert, PkiError> {
        self.issue(
            &self.session_name(session_id),
            &format!("sessionfs session {session_id}"),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Issues a client certificate with DNS SAN `name` (normally `BRIDGE_IDENTITY`).
    pub fn issue_client(&self, name: &str) -> Result<IssuedCert, PkiError> {
        self.issue(
            name,
            &format!("sessionfs client {name}"),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn issue(
        &self,
        dns_name: &str,
        cn: &str,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(vec![dns_name.to_string()])?;
        params.distinguished_name = common_name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_LIFETIME);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        tracing::debug!(dns_name, "issued certificate");
        // A host CA's certificates carry it, so peers trusting only the root can build the path.
        let cert_pem = match self.host {
            None => cert.pem(),
            Some(_) => format!("{}{}", cert.pem(), self.cert_pem),
        };
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Hardening finding 10: leaf certificates lasted 10 years. They last 397 days now and are
    /// due to be issued again 30 days before they expire.
    #[test]
    fn leaves_expire_within_a_year_and_a_month_and_are_renewed_before() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let now = SystemTime::now();
        for cert in [
            ca.issue_session("a").unwrap(),
            ca.issue_client(crate::BRIDGE_IDENTITY).unwrap(),
        ] {
            assert!(ca.still_valid_at(&cert.cert_pem, now));
            assert!(ca.still_valid_at(&cert.cert_pem, now + 396 * Duration::from_secs(DAY)));
            assert!(!ca.still_valid_at(&cert.cert_pem, now + 398 * Duration::from_secs(DAY)));
            assert!(!ca.due_for_renewal(&cert.cert_pem));
            // From 30 days before its end, it is due.
            assert!(!ca.still_valid_at(
                &cert.cert_pem,
                now + LEAF_LIFETIME + Duration::from_secs(60)
            ));
        }
        // Another CA's certificate, and garbage, are due at once.
        let other = tempfile::tempdir().unwrap();
        let foreign = CertificateAuthority::load_or_create(other.path()).unwrap();
        assert!(ca.due_for_renewal(&foreign.issue_session("a").unwrap().cert_pem));
        assert!(ca.due_for_renewal("not a certificate"));
    }

    /// Clock skew: a certificate is valid from an hour before it was issued, so a peer whose clock
    /// is up to an hour behind the issuer's accepts it; further behind, it is refused (as not yet
    /// valid), never silently.
    #[test]
    fn certificates_tolerate_an_hour_of_clock_skew() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let cert = ca.issue_session("a").unwrap().cert_pem;
        let now = SystemTime::now();
        assert!(ca.still_valid_at(&cert, now - Duration::from_secs(59 * 60)));
        assert!(!ca.still_valid_at(&cert, now - Duration::from_secs(61 * 60)));
    }

    #[test]
    fn create_then_load_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/pki");
        let ca = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_FILES.key)), 0o600);
        assert!(dir.join(CA_FILES.cert).is_file());
        let again = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        assert_eq!(
            CertificateAuthority::load(&dir).unwrap().cert_pem(),
            ca.cert_pem()
        );

        // Certificates issued by the reloaded CA chain to the stored ca.pem.
        let issued = again.issue_session("a").unwrap();
        issued.write(&dir, "session-a").unwrap();
        assert_eq!(mode(&dir.join("session-a.key")), 0o600);
        let id = crate::Identity::load(&dir, "session-a").unwrap();
        let roots = crate::load_ca_roots(&dir.join(CA_FILES.cert)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&id.chain[0], &[], rustls_pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn missing_and_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            matches!(CertificateAuthority::load(tmp.path()), Err(PkiError::NotFound(p)) if p.ends_with(CA_FILES.cert))
        );
        std::fs::write(tmp.path().join(CA_FILES.cert), "x").unwrap();
        match CertificateAuthority::load_or_create(tmp.path()) {
            Err(PkiError::Incomplete { present, missing }) => {
                assert!(present.ends_with(CA_FILES.cert) && missing.ends_with(CA_FILES.key));
            }
            other => panic!("expected Incomplete, got {:?}", other.err()),
        }
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        CertificateAuthority::load_or_create(a.path()).unwrap();
        CertificateAuthority::load_or_create(b.path()).unwrap();
        std::fs::copy(b.path().join(CA_FILES.key), a.path().join(CA_FILES.key)).unwrap();
        let err = CertificateAuthority::load(a.path()).err().unwrap();
        assert!(matches!(err, PkiError::BadPem { .. }), "{err}");
    }
}
