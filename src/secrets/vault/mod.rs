//! HashiCorp Vault / OpenBao KV v2 as a secret source: the HTTP client (the same
//! hyper-util + rustls stack as the upstreams), token and AppRole authentication with renewal,
//! and errors that name the vault path, never a value or a token.

pub mod answer;
mod error;
pub mod spec;

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use crate::secrets::{LoadFuture, Loaded, Secret, SecretSource};
use crate::upstream::{HttpClient, client_tls};
use answer::{Lease, Refusal};
pub use error::VaultError;
pub use spec::{Auth, Spec, VaultFile};

/// One KV v2 secret field, with the vault session used to read it.
pub struct VaultSource {
    spec: Spec,
    origin: [u8; 32],
    client: HttpClient,
    /// Held across a whole load, so logins and renewals are never done twice at once.
    session: tokio::sync::Mutex<Option<Session>>,
}

impl fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSource")
            .field("addr", &self.spec.addr())
            .field("path", &self.spec.data_path())
            .finish()
    }
}

/// A vault token in use.
struct Session {
    token: Secret,
    /// `None`: the token does not expire (or its expiry is unknown).
    expires: Option<Instant>,
    ttl: Duration,
    renewable: bool,
}

/// Why one vault call gave nothing.
enum Fault {
    Local(String),
    /// The configured token, or the secret_id, cannot be read.
    Credential(VaultError),
    Unreachable(String),
    Timeout(Duration),
    Refused(Refusal),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Local(msg) => f.write_str(msg),
            Fault::Credential(e) => e.fmt(f),
            Fault::Unreachable(msg) => write!(f, "cannot reach the vault: {msg}"),
            Fault::Timeout(t) => write!(f, "no answer within {}", humantime::format_duration(*t)),
            Fault::Refused(r) => r.fmt(f),
        }
    }
}

impl From<Refusal> for Fault {
    fn from(r: Refusal) -> Fault {
        Fault::Refused(r)
    }
}

impl VaultSource {
    /// Read the CA and build the client. `file` identifies the configuration: see `origin`.
    pub fn connect(spec: Spec, file: &VaultFile) -> Result<VaultSource, VaultError> {
        let ca_pem = match &spec.ca {
            Some(p) => Some(std::fs::read(p).map_err(|source| VaultError::Ca { path: p.clone(), source })?),
            None => None,
        };
        let tls = client_tls(spec.ca.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(spec.timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        // `Spec` allows http:// for loopback addresses only.
        let builder = if spec.scheme == http::uri::Scheme::HTTP {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .build(builder.enable_http1().wrap_connector(http));
        let origin = Sha256::new()
            .chain_update(format!("{file:?}"))
            .chain_update(ca_pem.unwrap_or_default())
            .finalize()
            .into();
        Ok(VaultSource { spec, origin, client, session: tokio::sync::Mutex::new(None) })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// A digest of the configuration table and the CA it names: a reload keeps the running
    /// source (and its session and counters) when this is unchanged.
    pub fn origin(&self) -> [u8; 32] {
        self.origin
    }

    async fn fetch(&self) -> Result<Loaded, VaultError> {
        let mut session = self.session.lock().await;
        let result = self.fetch_with(&mut session).await;
        result.map_err(|(doing, fault)| {
            // Belt and braces: vault's own messages are quoted, and must never echo the token.
            let scrub = |text: String| match session.as_ref() {
                Some(s) => text.replace(s.token.expose(), "***"),
                None => text,
            };
            VaultError::Load {
                addr: scrub(self.spec.addr()),
                doing: scrub(doing),
                why: scrub(fault.to_string()),
            }
        })
    }

    async fn fetch_with(&self, session: &mut Option<Session>) -> Result<Loaded, (String, Fault)> {
        let fresh = self.ensure_session(session).await?;
        let reading = || format!("reading {}", self.spec.data_path());
        let token = &session.as_ref().expect("ensure_session sets a session").token;
        match self.read(token).await {
            // The token was revoked or expired early: log in again once.
            Err(Fault::Refused(Refusal::Forbidden(_)))
                if !fresh && matches!(self.spec.auth, Auth::AppRole { .. }) =>
            {
                tracing::debug!(path = %self.spec.data_path(), "vault refused the token; logging in again");
                *session = None;
                self.ensure_session(session).await?;
                let token = &session.as_ref().expect("ensure_session sets a session").token;
                self.read(token).await.map_err(|f| (reading(), f))
            }
            r => r.map_err(|f| (reading(), f)),
        }
    }

    async fn read(&self, token: &Secret) -> Result<Loaded, Fault> {
        let (status, body) =
            self.call(Method::GET, &format!("v1/{}", self.spec.data_path()), Some(token), None).await?;
        match answer::kv_read(status, &body, &self.spec.field) {
            // A 404 from a KV v1 mount or another engine deserves its own message.
            Err(Refusal::NotFound) => Err(self.explain_not_found(token).await.into()),
            r => r.map_err(Fault::Refused),
        }
    }

    async fn explain_not_found(&self, token: &Secret) -> Refusal {
        let mount = &self.spec.mount;
        let probe = format!("v1/sys/internal/ui/mounts/{mount}/{}", self.spec.path);
        let Ok((status, body)) = self.call(Method::GET, &probe, Some(token), None).await else {
            return Refusal::NotFound;
        };
        match answer::mount(status, &body) {
            Some((kind, Some(1) | None)) if kind == "kv" => Refusal::Kv1Mount { mount: mount.clone() },
            Some((kind, _)) if kind != "kv" => Refusal::NotKvMount { mount: mount.clone(), kind },
            _ => Refusal::NotFound,
        }
    }

    /// Make sure `session` holds a token good for at least the next refresh interval.
    /// Returns whether it was just obtained (so a refusal is not worth a second login).
    async fn ensure_session(&self, session: &mut Option<Session>) -> Result<bool, (String, Fault)> {
        match &self.spec.auth {
            Auth::AppRole { mount, role_id, secret_id_file } => {
                if let Some(s) = session.as_mut() {
                    if !self.near_expiry(s) {
                        return Ok(false);
                    }
                    if s.renewable && self.renew(s).await.is_ok() && !self.near_expiry(s) {
                        return Ok(false);
                    }
                }
                let login = format!("logging in at auth/{mount}/login");
                let lease = self.login(mount, role_id, secret_id_file).await.map_err(|f| (login, f))?;
                tracing::debug!(path = %self.spec.data_path(), ttl = ?lease.ttl, "vault AppRole login");
                *session = Some(Session::from(lease));
                Ok(true)
            }
            Auth::TokenFile(_) | Auth::TokenEnv(_) => {
                // Read every time: an agent (vault agent, a CSI driver) may rotate it.
                let token = self
                    .configured_token()
                    .map_err(|e| ("reading the token".to_string(), Fault::Credential(e)))?;
                if let Some(s) = session.as_mut().filter(|s| s.token.expose() == token.expose()) {
                    if s.renewable && self.near_expiry(s) {
                        // A failed renewal is not fatal: the read says whether the token works.
                        let _ = self.renew(s).await;
                    }
                    return Ok(false);
                }
                // Best effort: a policy may forbid lookup-self; the read then tells.
                let (ttl, renewable) =
                    match self.call(Method::GET, "v1/auth/token/lookup-self", Some(&token), None).await {
                        Ok((status, body)) => answer::lookup(status, &body).unwrap_or((None, false)),
                        Err(_) => (None, false),
                    };
                *session = Some(Session::from(Lease { token, ttl, renewable }));
                Ok(true)
            }
        }
    }

    /// Renew when less than a third of the lease, or two refresh intervals, remain.
    fn near_expiry(&self, s: &Session) -> bool {
        let Some(expires) = s.expires else {
            return false;
        };
        let margin = self.spec.refresh.saturating_mul(2).max(s.ttl / 3);
        expires.saturating_duration_since(Instant::now()) < margin
    }

    async fn renew(&self, s: &mut Session) -> Result<(), Fault> {
        let started = Instant::now();
        let body = Bytes::from_static(b"{}");
        let (status, answer) =
            self.call(Method::POST, "v1/auth/token/renew-self", Some(&s.token), Some(body)).await?;
        let lease = answer::auth(status, &answer)?;
        tracing::debug!(path = %self.spec.data_path(), ttl = ?lease.ttl, "vault token renewed");
        // A renewal answers 0 once the token's max TTL is reached: it expires now.
        let ttl = lease.ttl.unwrap_or_default();
        s.expires = Some(started + ttl);
        s.ttl = ttl;
        s.renewable = lease.renewable;
        Ok(())
    }

    async fn login(&self, mount: &str, role_id: &str, secret_id_file: &Path) -> Result<Lease, Fault> {
        let secret_id = read_credential_file(secret_id_file, "secret_id_file").map_err(Fault::Credential)?;
        let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id.expose() }).to_string();
        let (status, answer) =
            self.call(Method::POST, &format!("v1/auth/{mount}/login"), None, Some(Bytes::from(body))).await?;
        // There is no session token to redact yet: the secret_id is what must not be echoed
        // if a vault (or a proxy before it) quotes the request in its error.
        let scrub = |m: String| m.replace(secret_id.expose(), "***");
        answer::auth(status, &answer).map_err(|r| match r {
            Refusal::Status(400, msg) => Fault::Local(format!(
                "AppRole login refused (400: {}): check role_id and the secret_id",
                scrub(msg)
            )),
            Refusal::Status(code, msg) => Fault::Refused(Refusal::Status(code, scrub(msg))),
            Refusal::Forbidden(msg) => Fault::Refused(Refusal::Forbidden(scrub(msg))),
            Refusal::Sealed(msg) => Fault::Refused(Refusal::Sealed(scrub(msg))),
            r => Fault::Refused(r),
        })
    }

    fn configured_token(&self) -> Result<Secret, VaultError> {
        match &self.spec.auth {
            Auth::TokenFile(path) => read_credential_file(path, "token_file"),
            Auth::TokenEnv(var) => match std::env::var(var) {
                Ok(v) if is_token(v.trim()) => Ok(Secret::new(v.trim().to_string())),
                Ok(_) => Err(VaultError::TokenEnvNotToken { var: crate::text::shown(var) }),
                Err(_) => Err(VaultError::TokenEnvUnset { var: crate::text::shown(var) }),
            },
            Auth::AppRole { .. } => Err(VaultError::NoConfiguredToken),
        }
    }

    /// One request to the vault, answer read whole (bounded), within `timeout`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), Fault> {
        let uri = format!("{}/{path}", self.spec.addr());
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            let mut v = HeaderValue::from_str(token.expose())
                .map_err(|_| Fault::Local("the vault token is not a valid header value".into()))?;
            v.set_sensitive(true);
            req = req.header("x-vault-token", v);
        }
        if let Some(ns) = &self.spec.namespace {
            req = req.header("x-vault-namespace", ns.clone());
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let body = Full::new(body.unwrap_or_default()).map_err(|e| match e {}).boxed();
        let req = req.body(body).map_err(|e| Fault::Local(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| Fault::Unreachable(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), answer::MAX_BODY).collect().await.map_err(|e| {
                Fault::Unreachable(format!("reading the answer: {}", error_chain(e.as_ref())))
            })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.spec.timeout, exchange)
            .await
            .map_err(|_| Fault::Timeout(self.spec.timeout))?
    }
}

impl From<Lease> for Session {
    fn from(l: Lease) -> Session {
        let now = Instant::now();
        Session {
            token: l.token,
            expires: l.ttl.map(|t| now + t),
            ttl: l.ttl.unwrap_or_default(),
            renewable: l.renewable,
        }
    }
}

impl SecretSource for VaultSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async { Ok(self.fetch().await?) })
    }
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())
}

/// A token or secret_id file: one line. Refused if anyone but owner and group may read it.
fn read_credential_file(path: &Path, key: &'static str) -> Result<Secret, VaultError> {
    let read = |source| VaultError::CredentialRead { key, path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(VaultError::CredentialReadable { key, path: path.to_path_buf() });
    }
    let text = Secret::new(std::fs::read_to_string(path).map_err(read)?);
    let value = text.expose().trim();
    if !is_token(value) {
        return Err(VaultError::NotACredential { key, path: path.to_path_buf() });
    }
    Ok(Secret::new(value.to_string()))
}

/// An error and its causes, one line: what hyper and rustls say (no header values in them).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    let mut out = parts.join(": ");
    out.truncate(out.floor_char_boundary(300));
    out
}
