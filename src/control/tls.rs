//! Listener TLS: load the certificate and key, and make development certificates on request.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::upstream::UpstreamError;

/// Why the listener's TLS, or a development certificate, cannot be had. Never quotes key
/// material: the key's parse error does not.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The client CA bundle (`server.client_ca`).
    #[error(transparent)]
    ClientCa(#[from] UpstreamError),
    #[error("{}: {source}", ca.display())]
    ClientVerifier { ca: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error("{}: {source}", path.display())]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("{} and {}: {source}", cert.display(), key.display())]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("cannot make a development forward CA: {0}")]
    DevForwardCa(rcgen::Error),
    #[error("cannot make development certificates: {0}")]
    DevCerts(rcgen::Error),
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{} exists but {} does not: development certificates are made only where neither exists, \
         so that no real certificate or key is overwritten",
        there.display(),
        missing.display()
    )]
    OnlyOne { there: PathBuf, missing: PathBuf },
}

/// How callers' client certificates are asked for: verified against a CA bundle, and either
/// optional or required. `None` in a config: not asked for.
pub type ClientAuth = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The verifier of callers' certificates: chains to a CA of the bundle at `ca`, valid now,
/// for client authentication. With `required` false a caller may send none; one that sends a
/// certificate that does not verify is refused in the handshake either way.
pub fn client_auth(ca: &Path, required: bool) -> Result<ClientAuth, TlsError> {
    let roots = crate::upstream::roots_from(ca)?;
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()));
    let builder = if required { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|source| TlsError::ClientVerifier { ca: ca.to_path_buf(), source })
}

/// The identities a verified client certificate carries: each URI SAN (a SPIFFE ID), and each
/// DNS SAN as `dns:NAME`. (Only ever called on a certificate rustls has verified.)
pub fn client_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    let mut ids: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            GeneralName::DNSName(d) => Some(format!("dns:{d}")),
            _ => None,
        })
        .collect();
    // URIs (SPIFFE IDs) first: the record shows the first.
    ids.sort_by_key(|id| id.starts_with("dns:"));
    ids
}

/// The listener's rustls config: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN; callers'
/// certificates asked for if `client` says so.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client: Option<ClientAuth>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|source| TlsError::Pem { path: cert.to_path_buf(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    // The key's parse error never quotes key material.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Pem { path: key.to_path_buf(), source })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?;
    let builder = match client {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key_der).map_err(|source| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// rustls' defaults, with AES-128-GCM first. Both are strong; AES-128 is cheaper per byte,
/// and its SHA-256 key schedule runs on the CPU's SHA extensions where SHA-384 does not.
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    p
}

/// A development CA and a leaf for the names keyward answers locally.
pub struct DevPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn dev_pki(names: &[&str]) -> Result<DevPki, rcgen::Error> {
    let (ca_pem, issuer) = dev_ca("keyward development CA")?;

    let mut leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("keyward"));
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(DevPki { ca_pem, cert_pem: leaf_cert.pem(), key_pem: leaf_key.serialize_pem() })
}

/// A self-signed CA named `name`: its certificate (PEM) and its issuer (params and key).
pub fn dev_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    Ok((ca_cert.pem(), Issuer::new(ca, ca_key)))
}

/// Write a development forward-mode CA (certificate and key) unless both files exist.
pub fn ensure_dev_forward_ca(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if !both_or_neither(cert, key)? {
        return Ok(false);
    }
    let (ca_pem, issuer) = dev_ca("keyward development forward CA").map_err(TlsError::DevForwardCa)?;
    for dir in [cert, key].iter().filter_map(|p| p.parent()).filter(|d| !d.as_os_str().is_empty()) {
        create_dir_all(dir)?;
    }
    write_file(cert, &ca_pem, 0o644)?;
    write_file(key, &issuer.key().serialize_pem(), 0o600)?;
    Ok(true)
}

pub const DEV_NAMES: [&str; 4] = ["localhost", "keyward.internal", "127.0.0.1", "::1"];

/// Write development certificates (and `ca.crt` beside them) unless both files exist.
/// Returns whether it wrote them.
pub fn ensure_dev_certs(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if !both_or_neither(cert, key)? {
        return Ok(false);
    }
    let pki = dev_pki(&DEV_NAMES).map_err(TlsError::DevCerts)?;
    let dir = cert.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_dir_all(dir)?;
    write_file(&dir.join("ca.crt"), &pki.ca_pem, 0o644)?;
    write_file(cert, &pki.cert_pem, 0o644)?;
    write_file(key, &pki.key_pem, 0o600)?;
    Ok(true)
}

/// Whether development files should be made: neither exists (`true`) or both do (`false`).
/// One without the other is an error: never overwrite a file that may be a real certificate
/// or key.
fn both_or_neither(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (false, false) => Ok(true),
        (true, true) => Ok(false),
        (has_cert, _) => {
            let (there, missing) = if has_cert { (cert, key) } else { (key, cert) };
            Err(TlsError::OnlyOne { there: there.to_path_buf(), missing: missing.to_path_buf() })
        }
    }
}

fn create_dir_all(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
}
