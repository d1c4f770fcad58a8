//! Upstream APIs: TLS clients (one per egress address) and the header rewrite that swaps
//! the caller's token for the real secret.

mod dial;
mod error;
mod http2;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::time::Instant;

pub use error::UpstreamError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type HttpClient = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Body>;
type PooledClient = hyper_util::client::legacy::Client<HttpsConnector<dial::Dial>, Body>;

#[derive(Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    /// Hash of everything the clients were built from: equal means they can be reused.
    pub identity: [u8; 32],
    pub url: String,
    scheme: Scheme,
    authority: Authority,
    pub egress_ip: Option<IpAddr>,
    clients: foldhash::HashMap<Option<IpAddr>, Client>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.url).finish()
    }
}

impl Upstream {
    /// Parse `url` (https, no path) and build one pooled client per egress address in `egress`;
    /// `http2` (streams per service) also offers HTTP/2 by ALPN. `connect_to` is dialled
    /// instead of the URL's host.
    pub fn build(
        name: &str,
        url: &str,
        ca: Option<&Path>,
        egress: impl IntoIterator<Item = Option<IpAddr>>,
        dial: Dialling,
        http2: Option<usize>,
    ) -> Result<Upstream, UpstreamError> {
        let authority = check_url(url)?;
        let tls = client_tls(ca)?;
        let h2_tls = http2.map(|streams| {
            let mut tls = tls.clone();
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            (Arc::new(tls), streams)
        });
        let (host, port) = (authority.host(), authority.port_u16().unwrap_or(443));
        let clients = egress
            .into_iter()
            .map(|ip| {
                let h2 = match &h2_tls {
                    Some((tls, streams)) => {
                        let h2 = http2::H2::new(tls.clone(), host, port, ip, dial, *streams)?;
                        Some(Arc::new(h2))
                    }
                    None => None,
                };
                Ok((ip, Client { pooled: pooled(&tls, ip, dial), h2 }))
            })
            .collect::<Result<_, UpstreamError>>()?;
        Ok(Upstream {
            identity: [0; 32],
            name: name.into(),
            url: url.to_string(),
            scheme: Scheme::HTTPS,
            authority,
            egress_ip: None,
            clients,
        })
    }

    pub fn with_egress(mut self, ip: Option<IpAddr>) -> Self {
        self.egress_ip = ip;
        self
    }

    pub fn with_identity(mut self, identity: [u8; 32]) -> Self {
        self.identity = identity;
        self
    }

    /// The client bound to `egress` (built at compile time for every address in use).
    pub fn client(&self, egress: Option<IpAddr>) -> Option<&Client> {
        self.clients.get(&egress)
    }

    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = path_and_query.cloned();
        Uri::from_parts(parts).expect("scheme, authority and a path make a URI")
    }
}

/// An upstream URL as keyward takes it: `https://host[:port]`, no path, query or
/// credentials. Returns its authority; errors show the URL without credentials.
pub fn check_url(url: &str) -> Result<Authority, UpstreamError> {
    let url_shown = || crate::text::url_shown(url);
    let uri: Uri = url.parse().map_err(|source| UpstreamError::NotUrl { url: url_shown(), source })?;
    if uri.scheme() != Some(&Scheme::HTTPS) {
        return Err(UpstreamError::NotHttps { url: url_shown() });
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(UpstreamError::PathOrQuery { url: url_shown() });
    }
    let authority = uri.authority().cloned().ok_or_else(|| UpstreamError::NoHost { url: url_shown() })?;
    if authority.as_str().contains('@') {
        return Err(UpstreamError::Credentials { url: url_shown() });
    }
    Ok(authority)
}

/// The CA certificates of a PEM bundle, at least one; errors name the file.
pub fn roots_from(path: &Path) -> Result<rustls::RootCertStore, UpstreamError> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|source| UpstreamError::ReadCa { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(UpstreamError::NoCertificate { path: path.to_path_buf() });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|source| UpstreamError::BadCertificate { path: path.to_path_buf(), source })?;
    }
    Ok(roots)
}

pub(crate) fn client_tls(ca: Option<&Path>) -> Result<rustls::ClientConfig, UpstreamError> {
    let roots = match ca {
        // A configured CA replaces the public roots: the upstream is pinned to it.
        Some(path) => roots_from(path).map_err(|e| UpstreamError::Ca(Box::new(e)))?,
        None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    // hyper-rustls sets ALPN itself.
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// How one upstream is reached from one egress address: HTTP/2 when the upstream offers it
/// (`http2`, the default; see `http2.rs` for how services share its connections), else pooled
/// HTTP/1.1, where each call in flight has a connection of its own.
#[derive(Clone)]
pub struct Client {
    /// Pooled HTTP/1.1: with `http2 = false`, and for an upstream that does not offer `h2`.
    pooled: PooledClient,
    h2: Option<Arc<http2::H2>>,
}

impl Client {
    /// One call for `service` (whose share of HTTP/2 streams it takes); `deadline` bounds
    /// what the call may still do on the side once answered.
    pub async fn request(
        &self,
        req: Request<Body>,
        service: &Arc<str>,
        deadline: Instant,
    ) -> Result<Response<Answer>, BoxError> {
        if let Some(h2) = &self.h2
            && let Some(tx) = h2.sender(service).await?
        {
            return Ok(http2::send(tx, req, deadline).await?.map(Answer::H2));
        }
        Ok(self.pooled.request(req).await?.map(Answer::H1))
    }
}

/// An upstream answer's body, whichever protocol carried it.
pub enum Answer {
    H1(Incoming),
    H2(http2::RecvBody),
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            // Trailers are not forwarded, in either direction: they could carry what the
            // header filters keep from crossing.
            Answer::H1(b) => loop {
                match ready!(Pin::new(&mut *b).poll_frame(cx)) {
                    Some(Ok(f)) if f.is_trailers() => continue,
                    other => return Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
                }
            },
            Answer::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::H1(b) => b.is_end_stream(),
            Answer::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::H1(b) => b.size_hint(),
            Answer::H2(b) => b.size_hint(),
        }
    }
}

/// How an upstream is dialled: where to (`None`: where its host resolves) and how long a
/// connection may take.
#[derive(Debug, Clone, Copy)]
pub struct Dialling {
    pub connect_to: Option<std::net::SocketAddr>,
    pub connect_timeout: Duration,
}

fn pooled(tls: &rustls::ClientConfig, egress: Option<IpAddr>, dial: Dialling) -> PooledClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_local_address(egress);
    http.set_connect_timeout(Some(dial.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only()
        .enable_http1()
        .wrap_connector(dial::Dial { http, connect_to: dial.connect_to });
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// Connection-scoped headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a header must not cross keyward: hop-by-hop ones, those `Connection` names, and
/// in requests also credentials, keyward's own, and what would reveal internal addresses.
/// `headers` is the message's own map, `None` when it has no `Connection` header (the usual
/// case, told once per message rather than looked up per header).
fn dropped(name: &HeaderName, headers: Option<&HeaderMap>, request: bool) -> bool {
    if HOP_BY_HOP.contains(name) || headers.is_some_and(|h| named_in_connection(name, h)) {
        return true;
    }
    request
        && (name == header::AUTHORIZATION
            || name == header::PROXY_AUTHORIZATION
            || name == header::HOST
            || name == header::FORWARDED
            || name == header::ACCEPT_ENCODING
            || name.as_str().starts_with("keyward-")
            || name.as_str().starts_with("x-forwarded-"))
}

fn named_in_connection(name: &HeaderName, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(name.as_str())))
}

/// The headers sent upstream: the caller's, less what must not cross, plus the real secret,
/// and `Accept-Encoding: identity` in place of the caller's: the scrubber reads the answer's
/// bytes as they are, so the answer must come as it is (see [`encoded`]). Stripe's own headers
/// pass untouched; the client derives `Host` (HTTP/1.1) or `:authority` (HTTP/2) from the
/// upstream URI. `None`: the secret cannot be a header value.
pub fn request_headers(from: &HeaderMap, secret: &str) -> Option<HeaderMap> {
    let mut out = HeaderMap::with_capacity(from.len() + 1);
    let connection = from.contains_key(header::CONNECTION).then_some(from);
    for (name, value) in from {
        if !dropped(name, connection, true) {
            out.append(name.clone(), value.clone());
        }
    }
    let mut auth = HeaderValue::try_from(format!("Bearer {secret}")).ok()?;
    auth.set_sensitive(true);
    out.insert(header::AUTHORIZATION, auth);
    out.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    Some(out)
}

/// Whether an answer's body is encoded anyway (`Content-Encoding` other than `identity`, or a
/// transfer coding other than `chunked`), though keyward asked for `identity`: such a body is
/// never passed on, since no scrubber reads a compressed echo of the secret. Fail closed: an
/// unknown or unparseable coding counts as encoded; no decoder sits on the answer path.
pub fn encoded(headers: &HeaderMap) -> bool {
    let codings = |name, plain: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().map_or(true, |v| v.split(',').any(|c| !c.trim().eq_ignore_ascii_case(plain))))
    };
    codings(header::CONTENT_ENCODING, "identity") || codings(header::TRANSFER_ENCODING, "chunked")
}

/// An error and its causes, outermost first (`client error (Connect): tcp connect error:
/// Connection refused`): what went wrong upstream, for the log. Never text the upstream chose:
/// an HTTP/2 GOAWAY's debug data (which an upstream echoing `Authorization` fills with the
/// secret) is left out, and anything credential-looking or a control character that is left
/// is shown redacted and escaped (see `text`).
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    const MAX: usize = 512;
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = match cause.downcast_ref::<h2::Error>() {
            Some(h2) => h2_shown(h2),
            None => cause.to_string(),
        };
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    let mut out = crate::text::shown(&out);
    if out.len() > MAX {
        let cut = (0..=MAX).rev().find(|&i| out.is_char_boundary(i)).unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// An HTTP/2 error as `h2` shows it, without a GOAWAY's debug data: its reason and who sent it.
fn h2_shown(e: &h2::Error) -> String {
    let Some(reason) = e.reason() else { return e.to_string() };
    let by = if e.is_remote() { "received" } else { "detected" };
    let kind = if e.is_go_away() {
        "connection"
    } else if e.is_reset() {
        "stream"
    } else {
        "protocol"
    };
    format!("{kind} error {by}: {reason}")
}

/// The upstream's response headers as the caller gets them.
/// An HTTP/1.1 upstream's own reason phrase (`HTTP/1.1 200 Whatever`), which hyper would pass
/// on to an HTTP/1.1 caller: dropped, so that callers get the standard phrase. It is text the
/// upstream chose, which no scrubber reads (an echo of the secret there went out whole).
pub fn strip_reason_phrase(extensions: &mut http::Extensions) {
    extensions.remove::<hyper::ext::ReasonPhrase>();
}

pub fn strip_response_headers(headers: &mut HeaderMap) {
    let connection = headers.contains_key(header::CONNECTION).then_some(&*headers);
    let names: Vec<HeaderName> = headers.keys().filter(|n| dropped(n, connection, false)).cloned().collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_credentials_and_strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer kw_token"),
            ("proxy-authorization", "Basic xyz"),
            ("host", "keyward.internal"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("keyward-debug", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("stripe-version", "2026-07-29"),
            ("stripe-account", "acct_1"),
            ("idempotency-key", "abc"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept-encoding", "gzip, br"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let out = request_headers(&h, "sk_test_real").unwrap();
        assert_eq!(out["accept-encoding"], "identity", "answers come as they are, for the scrubber");
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-type",
                "idempotency-key",
                "stripe-account",
                "stripe-version"
            ]
        );
        assert_eq!(out["authorization"], "Bearer sk_test_real");
        assert!(out["authorization"].is_sensitive());
        assert!(request_headers(&h, "bad\nsecret").is_none());
    }

    #[test]
    fn refuses_non_https_and_paths() {
        let t = Dialling { connect_to: None, connect_timeout: Duration::from_secs(1) };
        for url in
            ["http://api.stripe.com", "https://api.stripe.com/v1", "https://u:p@api.stripe.com", "nope"]
        {
            assert!(Upstream::build("api", url, None, [None], t, None).is_err(), "{url}");
        }
    }
}
