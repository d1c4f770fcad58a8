//! Why an upstream's client cannot be built: its URL, its CA bundle, or its host name.

use std::path::PathBuf;

/// `url` fields hold the URL as errors show it (`text::url_shown`: no credentials).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("url `{url}` is not a URL: {source}")]
    NotUrl { url: String, source: http::uri::InvalidUri },
    #[error("url `{url}` must start with https://")]
    NotHttps { url: String },
    #[error("url `{url}` must have no path or query")]
    PathOrQuery { url: String },
    #[error("url `{url}` has no host")]
    NoHost { url: String },
    #[error("url `{url}` must not carry credentials")]
    Credentials { url: String },
    #[error("{}: {source}", path.display())]
    ReadCa { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {source}", path.display())]
    BadCertificate { path: PathBuf, source: rustls::Error },
    /// An upstream's (or a vault's) `ca`: the bundle's error, said to be the `ca`'s.
    #[error("ca {0}")]
    Ca(Box<UpstreamError>),
    /// The host is not a name TLS can verify (HTTP/2's connector names it in its ClientHello).
    #[error("host `{host}`: {source}")]
    ServerName { host: String, source: rustls::pki_types::InvalidDnsNameError },
}
