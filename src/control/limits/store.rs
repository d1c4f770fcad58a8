//! `[ratelimit] redis`: the rates every replica shares, kept in Redis, so that N replicas
//! enforce one budget, not N. One script call per request checks the service's rate and the
//! shared budget together (both updated or neither), on Redis's clock. Each replica also
//! counts the replicas alive (a heartbeat), so that while Redis is out it can keep its share.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::LimitsError;
use super::gcra::Params;

/// What a replica does while Redis cannot be reached (`on_redis_error`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Keep this replica's share of each limit (the limit over the replicas last seen alive).
    #[default]
    Local,
    /// Admit every call (concurrency still holds).
    Allow,
    /// Refuse every call with 503 until Redis answers again.
    Deny,
}

impl OnRedisError {
    pub fn name(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

/// The store as configured. The password comes from a `[secret.NAME]`, never from the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub url: String,
    pub password: Option<Zeroizing<String>>,
    /// The ACL user, when not in the URL.
    pub username: Option<String>,
    /// `rediss://`: the CA (else the system's roots) and a client certificate and key.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub on_error: OnRedisError,
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpec")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// `rediss://`'s CA and client certificate, read (PEM).
fn tls_files(spec: &StoreSpec) -> Result<redis::TlsCertificates, LimitsError> {
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| LimitsError::TlsFile { path: p.clone(), source: e });
    let root_cert = spec.ca.as_ref().map(read).transpose()?;
    let client_tls = match &spec.client_cert {
        Some((cert, key)) => {
            use std::os::unix::fs::PermissionsExt;
            let meta =
                std::fs::metadata(key).map_err(|e| LimitsError::TlsFile { path: key.clone(), source: e })?;
            if !crate::secrets::file::private_enough(&meta) {
                let mode = meta.permissions().mode() & 0o777;
                return Err(LimitsError::LooseKey { path: key.clone(), mode });
            }
            Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? })
        }
        None => None,
    };
    Ok(redis::TlsCertificates { client_tls, root_cert })
}

/// GCRA over each key in turn (ARGV: interval and tolerance in µs, per key); every key is
/// updated only if all admit. Returns `{0, 0}`, or `{i, µs to wait}` for the first key `i`
/// (from 1) that refuses. `%d` keeps 16-digit times exact (Lua prints numbers with 14).
const TAKE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tats = {}
for i, key in ipairs(KEYS) do
  local interval, tolerance = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key) or now), now)
  if tat - now > tolerance then
    return {i, tat - now - tolerance}
  end
  tats[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {0, 0}
";

/// Mark this replica alive (ARGV[1]) and count those seen within ARGV[2] seconds.
const HEARTBEAT: &str = r"
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
";

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long no longer counts.
const ALIVE_WITHIN_SECS: u64 = 5;

pub struct Store {
    pub spec: StoreSpec,
    conn: ConnectionManager,
    take: redis::Script,
    beat: redis::Script,
    up: AtomicBool,
    replicas: AtomicU32,
    errors: AtomicU64,
    /// This process in the replica set: its instance name and a random suffix (two
    /// processes may share a host name).
    member: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("spec", &self.spec).field("up", &self.is_up()).finish()
    }
}

/// What the script said.
pub enum Taken {
    Admitted,
    /// The `i`th check (from 0) refused; one may pass after `wait`.
    Refused(usize, Duration),
}

impl Store {
    /// Connect, waiting at most a second (a Redis that is down does not stop keyward
    /// starting: calls then get `on_redis_error` until the heartbeat reaches it), and start
    /// the heartbeat, which ends when the store is dropped.
    pub async fn start(spec: StoreSpec) -> Result<Arc<Store>, LimitsError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(spec.url.as_str())
            .map_err(LimitsError::NotRedisUrl)?;
        if let Some(pw) = &spec.password {
            info = info.clone().set_redis_settings(info.redis_settings().clone().set_password(pw.as_str()));
        }
        if let Some(user) = &spec.username {
            info = info.clone().set_redis_settings(info.redis_settings().clone().set_username(user));
        }
        let client = match spec.url.starts_with("rediss://") {
            true => redis::Client::build_with_tls(info, tls_files(&spec)?)?,
            false => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(spec.timeout))
            .set_response_timeout(Some(spec.timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix)?;
        let store = Arc::new(Store {
            member: format!("{}/{}", crate::control::instance::instance(), hex::encode(suffix)),
            spec,
            conn,
            take: redis::Script::new(TAKE),
            beat: redis::Script::new(HEARTBEAT),
            up: AtomicBool::new(false),
            replicas: AtomicU32::new(1),
            errors: AtomicU64::new(0),
        });
        let first = async {
            let mut conn = store.conn.clone();
            store.take.load_async(&mut conn).await?;
            store.beat.load_async(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(1).max(store.spec.timeout), first).await {
            Ok(Ok(_)) => store.beat().await,
            Ok(Err(e)) => store.failed(&e.to_string()),
            Err(_) => store.failed("no answer within a second of starting"),
        }
        tokio::spawn(heartbeat(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Whether Redis answered last time it was asked. While it is out, requests do not wait
    /// for it: only the heartbeat keeps asking.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Replicas seen alive at the last heartbeat (at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The connection, for other scripts on the same store (the shared spend ledger).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.spec.key_prefix)
    }

    /// Take one call from each `(key, params)` at once; `Err` if Redis did not answer in time
    /// (the store is then out until the heartbeat reaches it).
    pub async fn take(&self, checks: &[(String, Params)]) -> Result<Taken, ()> {
        let mut call = self.take.prepare_invoke();
        for (key, p) in checks {
            call.key(key).arg(p.interval.as_micros() as u64).arg(p.tolerance.as_micros() as u64);
        }
        let mut conn = self.conn.clone();
        let answer =
            tokio::time::timeout(self.spec.timeout, call.invoke_async::<(u64, u64)>(&mut conn)).await;
        let why = match answer {
            Ok(Ok((0, _))) => return Ok(Taken::Admitted),
            Ok(Ok((i, wait))) => return Ok(Taken::Refused(i as usize - 1, Duration::from_micros(wait))),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time (ratelimit.timeout)".into(),
        };
        self.failed(&why);
        Err(())
    }

    /// Set fields of the hash at `key` (nothing to do for none).
    pub async fn hash_set(&self, key: &str, set: &[(String, String)]) -> Result<(), LimitsError> {
        if set.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key).arg(set);
        let mut conn = self.conn.clone();
        let done = tokio::time::timeout(self.spec.timeout, cmd.query_async::<()>(&mut conn)).await;
        Ok(done.map_err(|_| LimitsError::Timeout)??)
    }

    /// Every field of the hash at `key`.
    pub async fn hash_all(
        &self,
        key: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, LimitsError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        let answer = tokio::time::timeout(self.spec.timeout, cmd.query_async(&mut conn)).await;
        Ok(answer.map_err(|_| LimitsError::Timeout)??)
    }

    fn failed(&self, why: &str) {
        // Once per outage; at start (`up` is false before Redis first answers), the first.
        let first = self.errors.fetch_add(1, Ordering::Relaxed) == 0;
        if self.up.swap(false, Ordering::Relaxed) || first {
            tracing::warn!(
                error = why,
                on_redis_error = self.spec.on_error.name(),
                "the rate-limit store (ratelimit.redis) is out; applying on_redis_error"
            );
        }
    }

    async fn beat(&self) {
        let mut conn = self.conn.clone();
        let mut call = self.beat.prepare_invoke();
        call.key(self.key("replicas")).arg(&self.member).arg(ALIVE_WITHIN_SECS);
        let call = call.invoke_async::<u32>(&mut conn);
        match tokio::time::timeout(self.spec.timeout, call).await {
            Ok(Ok(n)) => {
                self.replicas.store(n, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::Relaxed) && self.errors() > 0 {
                    tracing::info!(replicas = n, "the rate-limit store (ratelimit.redis) answers again");
                }
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer in time (ratelimit.timeout)"),
        }
    }
}

async fn heartbeat(store: std::sync::Weak<Store>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        store.beat().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let spec = StoreSpec {
            url: "redis://127.0.0.1:6379/0".into(),
            password: Some(Zeroizing::new("CANARY-redis-pw".into())),
            username: Some("keyward".into()),
            ca: None,
            client_cert: None,
            key_prefix: "keyward".into(),
            timeout: Duration::from_millis(50),
            on_error: OnRedisError::Local,
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("CANARY") && shown.contains("<redacted>"), "{shown}");
    }
}
