//! `[ratelimit]`, checked without I/O: the shared budget and the Redis store's settings.

use std::num::NonZeroU32;
use std::time::Duration;

use super::errors::Errors;
use super::file::FileConfig;
use crate::control::limits::{BudgetSpec, Rate, StoreSpec};

/// `[ratelimit]` as planned; the store's password is read from its secret by `build`.
pub struct RatelimitPlan {
    pub budget: Option<BudgetSpec>,
    pub store: Option<StoreSpec>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Why `ratelimit.redis` is refused. Never quotes the URL (it may hold a password).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RatelimitError {
    #[error("must be redis://host:port/db, or rediss://host:port/db for Redis over TLS")]
    NotRedis,
    #[error(
        "must not carry a #fragment or ?query: rediss://…/#insecure would turn off certificate checks; \
         give ratelimit.ca for a CA of your own"
    )]
    Fragment,
    /// `detail`: the Redis client's word for why, if it has one.
    #[error("is not a Redis URL: {detail}")]
    NotRedisUrl { detail: String },
    #[error(
        "must not hold a password: put it in a [secret.NAME] and set ratelimit.password_secret = \"NAME\""
    )]
    Password,
}

pub fn check(file: &FileConfig, errs: &mut Errors) -> RatelimitPlan {
    let r = &file.ratelimit;
    let rate = r.upstream_rate.as_ref().and_then(|text| {
        Rate::parse(text.get_ref())
            .map_err(|msg| errs.at(Some(text.span()), "ratelimit.upstream_rate", msg))
            .ok()
    });
    let burst = match r.upstream_burst.map(NonZeroU32::new) {
        Some(None) => {
            errs.at(None, "ratelimit.upstream_burst", "must be at least 1");
            None
        }
        Some(Some(_)) if r.upstream_rate.is_none() => {
            errs.at(None, "ratelimit.upstream_burst", "needs ratelimit.upstream_rate");
            None
        }
        Some(b) => b,
        None => None,
    };
    let budget = rate.map(|rate| BudgetSpec { rate, burst: burst.unwrap_or(rate.count) });
    let Some(url) = &r.redis else {
        let needing = [
            ("password_secret", r.password_secret.is_some()),
            ("key_prefix", r.key_prefix.is_some()),
            ("timeout", r.timeout.is_some()),
            ("on_redis_error", r.on_redis_error.is_some()),
            ("username", r.username.is_some()),
            ("ca", r.ca.is_some()),
            ("tls_cert", r.tls_cert.is_some()),
            ("tls_key", r.tls_key.is_some()),
        ];
        for (key, _) in needing.iter().filter(|(_, set)| *set) {
            errs.at(None, format!("ratelimit.{key}"), "needs ratelimit.redis");
        }
        return RatelimitPlan { budget, store: None };
    };
    if let Err(msg) = check_url(url.get_ref()) {
        errs.at(Some(url.span()), "ratelimit.redis", msg);
    }
    let tls = url.get_ref().starts_with("rediss://");
    for (key, set) in
        [("ca", r.ca.is_some()), ("tls_cert", r.tls_cert.is_some()), ("tls_key", r.tls_key.is_some())]
    {
        if set && !tls {
            errs.at(
                Some(url.span()),
                format!("ratelimit.{key}"),
                "needs ratelimit.redis = \"rediss://…\" (Redis over TLS)",
            );
        }
    }
    let client_cert = match (&r.tls_cert, &r.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        (Some(_), None) => {
            errs.at(None, "ratelimit.tls_key", "is missing: tls_cert needs its key");
            None
        }
        (None, Some(_)) => {
            errs.at(None, "ratelimit.tls_cert", "is missing: tls_key needs its certificate");
            None
        }
    };
    let url_user = redis::IntoConnectionInfo::into_connection_info(url.get_ref().as_str())
        .ok()
        .and_then(|i| i.redis_settings().username().map(str::to_string));
    if let Some(user) = &r.username {
        if url_user.is_some() {
            errs.at(
                Some(url.span()),
                "ratelimit.username",
                "give the user in ratelimit.redis or in username, not both",
            );
        } else if user.is_empty() || !user.bytes().all(|b| b.is_ascii_graphic()) {
            errs.at(None, "ratelimit.username", "must be 1 or more printable characters, no spaces");
        }
    }
    if let Some(name) = &r.password_secret
        && !file.secret.contains_key(name.get_ref())
    {
        errs.at(
            Some(name.span()),
            "ratelimit.password_secret",
            format!("no [secret.{}] is defined", name.get_ref()),
        );
    }
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "keyward".into());
    if key_prefix.is_empty() || key_prefix.len() > 64 || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        errs.at(None, "ratelimit.key_prefix", "must be 1 to 64 printable characters, no spaces");
    }
    let timeout = r.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if !(Duration::from_millis(1)..=Duration::from_secs(5)).contains(&timeout) {
        errs.at(None, "ratelimit.timeout", "must be between 1ms and 5s: a request waits this long for Redis");
    }
    let store = StoreSpec {
        url: url.get_ref().clone(),
        password: None,
        username: r.username.clone(),
        ca: r.ca.clone(),
        client_cert,
        key_prefix,
        timeout,
        on_error: r.on_redis_error.unwrap_or_default(),
    };
    RatelimitPlan { budget, store: Some(store) }
}

/// `redis://[user@]host[:port][/db]` or `rediss://…` (TLS): no password (it goes in a
/// secret), no fragment or query (the client reads `#insecure` as "check no certificate").
fn check_url(url: &str) -> Result<(), RatelimitError> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Err(RatelimitError::NotRedis);
    }
    if url.contains('#') || url.contains('?') {
        return Err(RatelimitError::Fragment);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        RatelimitError::NotRedisUrl { detail: e.detail().unwrap_or("does not parse").to_string() }
    })?;
    if info.redis_settings().password().is_some() {
        return Err(RatelimitError::Password);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn redis_urls_read_one_way() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://redis.infra.svc:6379",
            "redis://keyward@10.0.0.7/2",
            "rediss://redis.example:6380/0",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:6379",
            "rediss://127.0.0.1:6379/#insecure",
            "rediss://127.0.0.1:6379/0?insecure",
            "unix:///run/redis.sock",
            "redis://:hunter2@127.0.0.1:6379",
            "redis://user:hunter2@127.0.0.1:6379",
            "redis://127.0.0.1:6379/zero",
            "REDIS://127.0.0.1",
        ] {
            let msg = check_url(bad).expect_err(bad).to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
        }
    }
}
