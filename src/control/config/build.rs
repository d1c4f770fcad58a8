//! The I/O half of compiling a configuration: read the tables it names, then build what the
//! plan asks for: secrets (loaded concurrently), upstream clients, the listener's TLS.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::errors::Errors;
use super::file::{ClientCert, FileConfig, SecretFile};
use super::validate::{Plan, Table};
use super::{ConfigError, Options, Source};
use crate::control::intercept::Intercept;
use crate::control::limits::{self, RateLimits};
use crate::control::snapshot::Snapshot;
use crate::control::tls::ClientAuth;
use crate::policy::catalog::STRIPE_CATALOG;
use crate::policy::expand::STRIPE_EXPANSIONS;
use crate::secrets::vault::{Spec, VaultFile, VaultSource};
use crate::secrets::{EnvSource, FileSource, Loaded, Refresh, Secret, SecretCell, SecretError, SecretSource};
use crate::upstream::{Dialling, Upstream};

/// Why a file the build reads itself (`forward.ca_key`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// `mode`: the file's permission bits (`& 0o777`).
    #[error("{} may be read by others or by a group not keyward's own (mode {mode:o}): chmod 600 it", path.display())]
    Loose { path: PathBuf, mode: u32 },
}

/// The catalog and expansion table `file` names, or the built-in ones.
pub fn tables(src: &Source, file: &FileConfig) -> Result<(Table, Table), Vec<ConfigError>> {
    let read = |path: &Path, key: &str| {
        std::fs::read_to_string(path)
            .map(|text| Table { name: path.display().to_string(), text })
            .map_err(|e| ConfigError::new(&src.name, None, key, format!("{}: {e}", path.display())))
    };
    let builtin = |name: &str, text: &str| Table { name: name.into(), text: text.into() };
    let catalog = match &file.catalog.path {
        Some(p) => read(p, "catalog.path"),
        None => Ok(builtin("<built-in Stripe catalog>", STRIPE_CATALOG)),
    };
    let expansions = match (&file.catalog.expansions, &file.catalog.path) {
        (Some(p), _) => read(p, "catalog.expansions"),
        // The built-in table names Stripe's permissions: it goes with the built-in catalog only.
        (None, None) => Ok(builtin("<built-in Stripe expansions>", STRIPE_EXPANSIONS)),
        (None, Some(_)) => Ok(builtin("<no expansions>", "")),
    };
    match (catalog, expansions) {
        (Ok(c), Ok(e)) => Ok((c, e)),
        (c, e) => Err(c.err().into_iter().chain(e.err()).collect()),
    }
}

/// Build the snapshot a plan describes, adding to `errors` (the plan's own) what goes wrong.
/// `previous` lends what can be kept across a reload: upstream clients built the same way
/// (their warm connections) and vault cells whose configuration is unchanged (refreshed now,
/// so a vault outage does not block a reload).
pub async fn build(
    src: &Source,
    plan: Plan,
    errors: Vec<ConfigError>,
    opts: Options,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errs = Errors { src, list: errors };
    let upstreams = build_upstreams(&plan.file, opts, previous, &mut errs);
    let secrets = load_secrets(&plan, opts, previous, &mut errs).await;
    let client = if opts.tls { load_client_auth(&plan.file, &mut errs) } else { None };
    let tls = if opts.tls { load_tls(&plan.file, client.clone(), &mut errs) } else { None };
    let intercept = if opts.tls { load_intercept(&plan, &secrets, client, &mut errs) } else { None };
    check_livemode(&plan, &secrets, &mut errs);
    let signer = load_audit_signer(&plan, &secrets, &mut errs);
    let ratelimits = build_ratelimits(&plan, &secrets, opts, previous, &mut errs).await;
    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    let forward_tls = proxy_port_tls(&plan, tls.as_ref());
    let mut warnings = spend_warnings(&plan);
    warnings.extend(placeholder_warnings(&plan, &secrets));
    Ok(Snapshot {
        warnings,
        version: plan.version,
        listen: plan.file.server.listen,
        admin_listen: plan.file.server.admin_listen,
        admin_hosts: plan.file.server.admin_hosts.clone(),
        admin: plan.admin.clone(),
        tls,
        limits: plan.limits,
        timeouts: plan.timeouts,
        audit: crate::audit::Settings { signer, ..plan.audit },
        forward_tls,
        ratelimits,
        // The day's spend outlives any configuration: a changed cap applies to it.
        spend: previous.map(|p| p.spend.clone()).unwrap_or_default(),
        otlp_endpoint: plan.otlp_endpoint.clone(),
        forward: plan.forward,
        intercept,
        files: plan.files,
        policy: plan.policy,
        upstreams,
        secrets,
    })
}

/// Spend caps that do not hold as written: per replica without Redis (with it, every replica
/// spends one budget), none at all on a catalog without the `money=` column.
fn spend_warnings(plan: &Plan) -> Vec<String> {
    let capped: Vec<&str> =
        plan.policy.services.iter().filter(|s| !s.spend.is_empty()).map(|s| &*s.name).collect();
    let mut out = Vec::new();
    if capped.is_empty() {
        return out;
    }
    if plan.file.ratelimit.redis.is_none() {
        out.push(format!(
            "spend caps are set ({}) without [ratelimit] redis: each replica counts only its own calls, \
             so N replicas may together move N times a cap",
            capped.join(", ")
        ));
    }
    if plan.file.catalog.path.is_some() && plan.policy.catalog.entries.iter().all(|e| e.money.is_none()) {
        out.push(
            "spend caps are set, but catalog.path has no money= column: no call is counted against them"
                .into(),
        );
    }
    out
}

/// Values left as the examples ship them: a token hash of all zeros, a secret whose value says
/// it is to be replaced. Named by where they are, never shown.
fn placeholder_warnings(plan: &Plan, secrets: &[Arc<SecretCell>]) -> Vec<String> {
    let mut out = Vec::new();
    for s in &plan.file.service {
        for t in &s.token {
            if t.sha256.get_ref().bytes().all(|b| b == b'0') {
                out.push(format!(
                    "service {} token {}: its sha256 is the all-zero placeholder, which no token hashes to: \
                     put the hash of a real token there (`keyward token new`)",
                    s.name.get_ref(),
                    t.id.get_ref()
                ));
            }
        }
    }
    for (name, cell) in plan.secrets.iter().zip(secrets) {
        let Some(loaded) = cell.serving() else { continue };
        let v = loaded.value.expose().to_ascii_lowercase();
        if ["replace_me", "replace-me", "changeme", "placeholder"].iter().any(|p| v.contains(p)) {
            out.push(format!(
                "secret {name} holds a placeholder value, not a key: the payments API will refuse every call"
            ));
        }
    }
    out
}

/// Upstreams and their pooled clients, in the order of `policy.upstreams`. A reload keeps an
/// upstream whose clients would be built the same (same URL, CA file content, egress
/// addresses, connect timeout), so its warm connections survive the swap.
fn build_upstreams(
    file: &FileConfig,
    opts: Options,
    previous: Option<&Snapshot>,
    errs: &mut Errors,
) -> Vec<Upstream> {
    // `explain` and `check --offline` build no client: they read no CA file.
    if !opts.clients {
        return Vec::new();
    }
    let service_egress: HashSet<Option<IpAddr>> =
        file.service.iter().filter_map(|s| s.egress_ip).map(Some).collect();
    let mut out = Vec::new();
    // An upstream whose URL the plan refused has said why already.
    for (name, u) in file.upstream.iter().filter(|(_, u)| crate::upstream::check_url(u.url.get_ref()).is_ok())
    {
        let mut egress = service_egress.clone();
        egress.insert(u.egress_ip);
        let dial = Dialling { connect_to: u.connect_to, connect_timeout: file.timeouts.upstream_connect };
        let streams = u.streams_per_service.unwrap_or(DEFAULT_STREAMS_PER_SERVICE);
        if !(1..=10_000).contains(&streams) {
            errs.at(
                Some(u.url.span()),
                format!("upstream.{name}.streams_per_service"),
                "must be between 1 and 10000",
            );
            continue;
        }
        let http2 = u.http2.then_some(streams as usize);
        let identity = upstream_identity(u.url.get_ref(), u.ca.as_deref(), &egress, dial, http2);
        let kept =
            previous.and_then(|p| p.upstreams.iter().find(|o| *o.name == **name && o.identity == identity));
        if let Some(old) = kept {
            out.push(old.clone().with_egress(u.egress_ip));
            continue;
        }
        match Upstream::build(name, u.url.get_ref(), u.ca.as_deref(), egress, dial, http2) {
            Ok(up) => out.push(up.with_egress(u.egress_ip).with_identity(identity)),
            Err(msg) => errs.at(Some(u.url.span()), format!("upstream.{name}"), msg),
        }
    }
    out
}

/// A service's HTTP/2 streams in flight per upstream and egress address: as many as one
/// connection carries, so that one service fills at most one connection's worth.
const DEFAULT_STREAMS_PER_SERVICE: u32 = 100;

fn upstream_identity(
    url: &str,
    ca: Option<&Path>,
    egress: &HashSet<Option<IpAddr>>,
    dial: Dialling,
    http2: Option<usize>,
) -> [u8; 32] {
    let mut egress: Vec<String> = egress.iter().map(|e| format!("{e:?}")).collect();
    egress.sort();
    let ca_bytes = ca.map(|p| std::fs::read(p).unwrap_or_default()).unwrap_or_default();
    Sha256::new()
        .chain_update(url)
        .chain_update([0])
        .chain_update(&ca_bytes)
        .chain_update(egress.join(","))
        .chain_update(dial.connect_timeout.as_millis().to_le_bytes())
        .chain_update(format!("{:?}", dial.connect_to))
        .chain_update(format!("{http2:?}"))
        .finalize()
        .into()
}

/// The plan's secrets, in its order, all loaded at once: a slow vault holds up only itself.
async fn load_secrets(
    plan: &Plan,
    opts: Options,
    previous: Option<&Snapshot>,
    errs: &mut Errors<'_>,
) -> Vec<Arc<SecretCell>> {
    let loads = plan.secrets.iter().map(|name| async move {
        let def = &plan.file.secret[name];
        (name, load_secret(name, def, opts, previous).await)
    });
    // A vault spec the plan refused has said why already.
    let mut cells = Vec::new();
    for (name, loaded) in futures_util::future::join_all(loads).await {
        match loaded {
            Ok(cell) => cells.push(cell),
            Err(msg) => errs.at(None, format!("secret.{name}"), msg),
        }
    }
    cells
}

async fn load_secret(
    name: &str,
    def: &SecretFile,
    opts: Options,
    previous: Option<&Snapshot>,
) -> Result<Arc<SecretCell>, SecretError> {
    if !opts.secrets {
        return Ok(placeholder(name));
    }
    let cell = |l| Arc::new(SecretCell::new(name, l, None));
    match def {
        SecretFile::File { path, key } => {
            (FileSource { path: path.clone(), key: key.clone() }).load().await.map(cell)
        }
        SecretFile::Env { var } => (EnvSource { var: var.clone() }).load().await.map(cell),
        SecretFile::Vault(v) => {
            let Ok(spec) = Spec::parse(v) else { return Ok(placeholder(name)) };
            vault_cell(name, spec, v, previous).await
        }
    }
}

fn placeholder(name: &str) -> Arc<SecretCell> {
    Arc::new(SecretCell::new(name, Loaded { value: Secret::new(String::new()), version: None }, None))
}

/// The running cell if its configuration is unchanged (refreshed now: a failure keeps the
/// last good value), else a new source loaded for the first time (a failure is an error).
async fn vault_cell(
    name: &str,
    spec: Spec,
    file: &VaultFile,
    previous: Option<&Snapshot>,
) -> Result<Arc<SecretCell>, SecretError> {
    let source = VaultSource::connect(spec, file)?;
    let kept = previous
        .and_then(|p| p.secrets.iter().find(|c| &*c.name == name))
        .filter(|c| c.refresh_plan().is_some_and(|r| r.origin == source.origin()));
    if let Some(cell) = kept {
        cell.refresh().await;
        return Ok(cell.clone());
    }
    let loaded = source.load().await?;
    let s = source.spec();
    let (every, max_staleness, on_stale, origin) = (s.refresh, s.max_staleness, s.on_stale, source.origin());
    let refresh = Refresh::new(Box::new(source), every, max_staleness, on_stale, origin);
    Ok(Arc::new(SecretCell::new(name, loaded, Some(refresh))))
}

/// `server.client_ca`: the verifier of callers' certificates, re-read on every reload.
fn load_client_auth(file: &FileConfig, errs: &mut Errors) -> Option<ClientAuth> {
    let ca = file.server.client_ca.as_ref()?;
    let required = file.server.client_cert == ClientCert::Required;
    crate::control::tls::client_auth(ca, required).map_err(|msg| errs.at(None, "server.client_ca", msg)).ok()
}

fn load_tls(
    file: &FileConfig,
    client: Option<ClientAuth>,
    errs: &mut Errors,
) -> Option<Arc<rustls::ServerConfig>> {
    let (cert, key) = (&file.server.tls_cert, &file.server.tls_key);
    if file.server.dev_certs {
        match crate::control::tls::ensure_dev_certs(cert, key) {
            Ok(true) => {
                tracing::warn!(cert = %cert.display(), "made development certificates; do not use them in production")
            }
            Ok(false) => {}
            Err(msg) => errs.at(None, "server.dev_certs", msg),
        }
    }
    match crate::control::tls::server_config(cert, key, client) {
        Ok(cfg) => Some(Arc::new(cfg)),
        Err(msg) => {
            errs.at(None, "server.tls_cert", msg);
            None
        }
    }
}

/// Forward mode's CA, from its files (or its key from a secret), and the leaves for the
/// intercepted hosts. `dev_certs` makes a development CA where the files are missing.
fn load_intercept(
    plan: &Plan,
    secrets: &[Arc<SecretCell>],
    client: Option<ClientAuth>,
    errs: &mut Errors,
) -> Option<Arc<Intercept>> {
    let f = plan.file.forward.as_ref()?;
    if plan.file.server.dev_certs
        && let Some(key) = &f.ca_key
    {
        match crate::control::tls::ensure_dev_forward_ca(&f.ca_cert, key) {
            Ok(true) => tracing::warn!(cert = %f.ca_cert.display(),
                "made a development forward CA; do not use it in production"),
            Ok(false) => {}
            Err(msg) => errs.at(None, "server.dev_certs", msg),
        }
    }
    let cert = std::fs::read_to_string(&f.ca_cert)
        .map_err(|e| errs.at(None, "forward.ca_cert", format!("{}: {e}", f.ca_cert.display())))
        .ok()?;
    let key = match (&f.ca_key, plan.forward_ca_secret) {
        (Some(path), _) => read_private(path).map_err(|msg| errs.at(None, "forward.ca_key", msg)).ok()?,
        (None, Some(i)) => {
            let Some(loaded) = secrets.get(i).and_then(|c| c.serving()) else {
                errs.at(
                    None,
                    "forward.ca_key_secret",
                    "the secret is not available (stale past max_staleness?)",
                );
                return None;
            };
            crate::control::intercept::key_from_secret(loaded.value.expose())
                .map_err(|msg| errs.at(None, "forward.ca_key_secret", msg))
                .ok()?
        }
        (None, None) => return None,
    };
    let hosts = plan.policy.hosts.iter().flatten().map(|t| t.rsplit_once(':').map_or(t.as_str(), |(h, _)| h));
    match Intercept::new(&cert, &key, hosts, f.leaf_lifetime, client) {
        Ok(i) => Some(Arc::new(i)),
        Err(msg) => {
            errs.at(None, "forward.ca_cert", msg);
            None
        }
    }
}

/// The key checkpoints are signed with, from `audit.signing_key_secret`.
fn load_audit_signer(
    plan: &Plan,
    secrets: &[Arc<SecretCell>],
    errs: &mut Errors,
) -> Option<crate::audit::checkpoint::SharedSigner> {
    let key = "audit.signing_key_secret";
    let Some(loaded) = secrets.get(plan.audit_key_secret?).and_then(|c| c.serving()) else {
        errs.at(None, key, "the secret is not available (stale past max_staleness?)");
        return None;
    };
    crate::audit::checkpoint::Signer::from_secret(loaded.value.expose())
        .map(Arc::new)
        .map_err(|e| errs.at(None, key, e.to_string()))
        .ok()
}

/// Each service's `livemode` against the key its secret holds now.
fn check_livemode(plan: &Plan, secrets: &[Arc<SecretCell>], errs: &mut Errors<'_>) {
    for s in &plan.policy.services {
        let (Some(want), Some(cell)) = (s.livemode, secrets.get(s.secret)) else { continue };
        let Some(loaded) = cell.serving() else { continue };
        let have = crate::policy::identity::key_livemode(loaded.value.expose());
        if have != Some(want) {
            let is = match have {
                Some(true) => "a live-mode key",
                Some(false) => "a test-mode key",
                None => "no Stripe key (sk_/rk_ live or test)",
            };
            errs.at(
                None,
                format!("service \"{}\".livemode", s.name),
                format!("is {want}, but secret \"{}\" holds {is}", cell.name),
            );
        }
    }
}

/// The limits, keeping from `previous` what is configured the same. The Redis store (with its
/// password from `ratelimit.password_secret`) is made only where clients are (`run`, `check`).
async fn build_ratelimits(
    plan: &Plan,
    secrets: &[Arc<SecretCell>],
    opts: Options,
    previous: Option<&Snapshot>,
    errs: &mut Errors<'_>,
) -> RateLimits {
    let mut store = plan.ratelimit.store.clone().filter(|_| opts.clients);
    if let (Some(spec), Some(i)) = (&mut store, plan.redis_secret) {
        match secrets.get(i).and_then(|c| c.serving()) {
            Some(loaded) => spec.password = Some(Zeroizing::new(loaded.value.expose().to_string())),
            None => errs.at(None, "ratelimit.password_secret", "the secret is not available"),
        }
    }
    let limits = limits::Plan { services: &plan.service_limits, budget: plan.ratelimit.budget, store };
    limits::build(limits, previous.map(|p| &p.ratelimits)).await.unwrap_or_else(|msg| {
        errs.at(None, "ratelimit.redis", msg);
        RateLimits::default()
    })
}

/// `forward.tls`: the listener's certificate, offering HTTP/1.1 only (CONNECT is sent over it).
fn proxy_port_tls(plan: &Plan, tls: Option<&Arc<rustls::ServerConfig>>) -> Option<Arc<rustls::ServerConfig>> {
    let mut cfg = (**tls.filter(|_| plan.forward.is_some_and(|f| f.tls))?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(Arc::new(cfg))
}

/// A key file, refused unless private to keyward (`secrets::file::private_enough`).
fn read_private(path: &Path) -> Result<Zeroizing<String>, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| BuildError::Read { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !crate::secrets::file::private_enough(&meta) {
        let mode = meta.permissions().mode() & 0o777;
        return Err(BuildError::Loose { path: path.to_path_buf(), mode });
    }
    std::fs::read_to_string(path).map(Zeroizing::new).map_err(read)
}
