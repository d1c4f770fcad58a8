//! Forward mode's interception CA: a leaf certificate for exactly each intercepted host
//! (ECDSA P-256, a fresh key and random serial each, `SAN` = the host), made when the
//! configuration is compiled and made again once two thirds of its lifetime have passed; and
//! the TLS configuration a tunnel's handshake uses. No other host ever gets a leaf.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SerialNumber};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use zeroize::Zeroizing;

use super::tls::ClientAuth;

/// Why the interception CA cannot be used, or a leaf made. Never quotes key material: errors
/// about the key say which check failed, not what the parser saw.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("the secret is not base64 (of the CA key's PEM file or DER)")]
    SecretNotBase64,
    #[error("the decoded PEM is not text")]
    PemNotText,
    #[error("the decoded secret is neither a PEM file nor a PKCS#8 DER private key")]
    SecretNotAKey,
    #[error("the CA key is not a PEM private key")]
    KeyNotPem,
    #[error("the CA certificate cannot be read: {0}")]
    CaCert(rcgen::Error),
    #[error("the CA certificate cannot be read: {0}")]
    CaPem(rustls::pki_types::pem::Error),
    #[error("cannot make a leaf certificate for {host}: {source}")]
    Leaf { host: String, source: rcgen::Error },
    /// The leaf's key in the form rustls takes (rustls' own words).
    #[error("{0}")]
    LeafKey(&'static str),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("the CA certificate: {0}")]
    CaRoot(rustls::Error),
    #[error(transparent)]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error(transparent)]
    HostName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error(
        "a leaf it signs does not verify against the CA certificate ({0}): is the key that certificate's?"
    )]
    NotVerified(rustls::Error),
}

pub struct Intercept {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, to check each leaf against before it is used.
    ca: CertificateDer<'static>,
    lifetime: Duration,
    /// Callers' certificates, asked for in the tunnel's handshake as on the listener.
    client: Option<ClientAuth>,
    /// By host (the `CONNECT` target's host).
    leaves: HashMap<String, ArcSwap<Leaf>>,
    renewing: Mutex<()>,
    /// The CA certificate's notAfter (Unix seconds): rotate it before then.
    pub ca_expires: i64,
}

/// The CA key as a `[secret.NAME]` holds it: secrets are one-line values (they are made to go
/// into a header), so the key is base64 of its PEM file (`base64 -w0 forward-ca.key`) or of
/// its PKCS#8 DER. Returns the PEM text. Errors never quote the value.
pub fn key_from_secret(value: &str) -> Result<Zeroizing<String>, InterceptError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| InterceptError::SecretNotBase64)?,
    );
    if bytes.starts_with(b"-----BEGIN ") {
        let pem = std::str::from_utf8(&bytes).map_err(|_| InterceptError::PemNotText)?;
        return Ok(Zeroizing::new(pem.to_string()));
    }
    let key = KeyPair::try_from(bytes.as_slice()).map_err(|_| InterceptError::SecretNotAKey)?;
    Ok(Zeroizing::new(key.serialize_pem()))
}

struct Leaf {
    tls: Arc<rustls::ServerConfig>,
    renew_after: SystemTime,
    /// Its notAfter: past it the leaf is never served.
    expires: SystemTime,
}

/// After a renewal failed, how long until the next try.
const RETRY: Duration = Duration::from_secs(60);

impl fmt::Debug for Intercept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&String> = self.leaves.keys().collect();
        f.debug_struct("Intercept").field("hosts", &hosts).field("lifetime", &self.lifetime).finish()
    }
}

impl Intercept {
    /// The CA from its certificate and key (PEM), and a first leaf for each of `hosts`. Errors
    /// never quote key material.
    pub fn new<'h>(
        ca_pem: &str,
        key_pem: &str,
        hosts: impl IntoIterator<Item = &'h str>,
        lifetime: Duration,
        client: Option<ClientAuth>,
    ) -> Result<Intercept, InterceptError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| InterceptError::KeyNotPem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(InterceptError::CaCert)?;
        let ca: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
                .map_err(InterceptError::CaPem)?;
        let ca_expires = x509_parser::parse_x509_certificate(&ca)
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| InterceptError::CaCert(rcgen::Error::X509(e.to_string())))?;
        let mut intercept = Intercept {
            issuer,
            ca,
            lifetime,
            client,
            leaves: HashMap::new(),
            renewing: Mutex::new(()),
            ca_expires,
        };
        for host in hosts {
            let leaf = intercept.leaf(host)?;
            intercept.leaves.insert(host.to_string(), ArcSwap::from_pointee(leaf));
        }
        Ok(intercept)
    }

    /// The TLS configuration for a tunnel to `host`; `None` for a host not intercepted, or
    /// whose leaf has expired because renewals failed (fail closed). A leaf due for renewal is
    /// made again here, by one caller at a time (the others go on with the current one); a
    /// failed renewal is tried again after a minute.
    pub fn tls(&self, host: &str) -> Option<Arc<rustls::ServerConfig>> {
        let slot = self.leaves.get(host)?;
        let leaf = slot.load();
        let now = SystemTime::now();
        if now >= leaf.renew_after
            && let Ok(_one) = self.renewing.try_lock()
        {
            match self.leaf(host) {
                Ok(new) => {
                    let tls = new.tls.clone();
                    slot.store(Arc::new(new));
                    return Some(tls);
                }
                Err(e) => {
                    tracing::error!(host, error = %e, "cannot renew the forward-mode leaf certificate");
                    let retry =
                        Leaf { tls: leaf.tls.clone(), renew_after: now + RETRY, expires: leaf.expires };
                    slot.store(Arc::new(retry));
                }
            }
        }
        (now < leaf.expires).then(|| leaf.tls.clone())
    }

    fn leaf(&self, host: &str) -> Result<Leaf, InterceptError> {
        let fail = |source| InterceptError::Leaf { host: host.to_string(), source };
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).expect("the OS has randomness");
        serial[0] &= 0x7f; // a positive integer
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = SystemTime::now();
        // A little before now, for callers whose clocks are behind.
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + self.lifetime).into();
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        let der = cert.der().clone();
        self.check(&der, host)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(InterceptError::LeafKey)?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(super::tls::provider()))
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut tls = builder.with_single_cert(vec![der], key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls.ignore_client_order = true;
        Ok(Leaf {
            tls: Arc::new(tls),
            renew_after: now + self.lifetime * 2 / 3,
            expires: now + self.lifetime,
        })
    }

    /// The leaf verifies for `host` against the CA certificate, as a client would check it: a
    /// key that is not the certificate's, or a certificate that is no CA, fails here.
    fn check(&self, leaf: &CertificateDer<'_>, host: &str) -> Result<(), InterceptError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(InterceptError::CaRoot)?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(super::tls::provider()),
        )
        .build()?;
        let name = ServerName::try_from(host.to_string())?;
        verifier
            .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(InterceptError::NotVerified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_secret_is_base64_of_pem_or_der_and_errors_quote_nothing() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let key = KeyPair::generate().unwrap();
        let pem = key.serialize_pem();
        assert_eq!(*key_from_secret(&b64(pem.as_bytes())).unwrap(), pem);
        let from_der = key_from_secret(&b64(&key.serialize_der())).unwrap();
        assert_eq!(KeyPair::from_pem(&from_der).unwrap().public_key_pem(), key.public_key_pem());
        for bad in [pem.clone(), "not base64 CANARY".into(), b64(b"CANARY garbage"), b64(b"-----BEGIN \xff")]
        {
            let e = key_from_secret(&bad).unwrap_err().to_string();
            assert!(!e.contains("CANARY") && !e.contains("BEGIN"), "{e}");
        }
    }

    #[test]
    fn leaves_renew_in_place_for_their_host_only() {
        let (ca_pem, issuer) = crate::control::tls::dev_ca("test CA").unwrap();
        let key = issuer.key().serialize_pem();
        let i = Intercept::new(&ca_pem, &key, ["api.stripe.com"], Duration::from_secs(3600), None).unwrap();
        assert!(i.tls("files.stripe.com").is_none());
        let first = i.tls("api.stripe.com").unwrap();
        // Due for renewal: the next caller makes a new leaf.
        let slot = &i.leaves["api.stripe.com"];
        let due = Leaf {
            tls: first.clone(),
            renew_after: SystemTime::now() - Duration::from_secs(1),
            expires: SystemTime::now() + Duration::from_secs(60),
        };
        slot.store(Arc::new(due));
        let renewed = i.tls("api.stripe.com").unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(Arc::ptr_eq(&renewed, &i.tls("api.stripe.com").unwrap()), "renewed once");
        assert!(!format!("{i:?}").contains("PRIVATE"));
        // Expired (renewals failed, none due yet): never served.
        let expired = Leaf {
            tls: renewed,
            renew_after: SystemTime::now() + Duration::from_secs(60),
            expires: SystemTime::now() - Duration::from_secs(1),
        };
        slot.store(Arc::new(expired));
        assert!(i.tls("api.stripe.com").is_none());
    }
}
