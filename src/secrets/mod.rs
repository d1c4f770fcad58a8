//! Secrets: a type that cannot print, the sources that load it (a file, the environment, a
//! vault), and the cell a snapshot holds it in — refreshed in the background for sources that
//! change (the vault).

mod cell;
mod env;
mod error;
pub mod file;
pub mod vault;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;
use zeroize::Zeroize;

pub use cell::{Refresh, SecretCell, spawn_refresh};
pub use env::EnvSource;
pub use error::SecretError;
pub use file::FileSource;

/// What to do once a vault secret is older than `max_staleness` (docs/configuration.md says why
/// `serve` is the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    #[default]
    Serve,
    Refuse,
}

/// A secret value (an upstream API key). Redacted in `Debug`/`Display`, zeroed on drop.
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The only way to read the value: callers that need it say so by name.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A loaded secret and the version its source reports (vault KV versions; `None` for files).
#[derive(Debug)]
pub struct Loaded {
    pub value: Secret,
    pub version: Option<u64>,
}

pub type LoadFuture<'a> = Pin<Box<dyn Future<Output = Result<Loaded, SecretError>> + Send + 'a>>;

/// Where a secret comes from. Errors name the source, never the value.
pub trait SecretSource: Send + Sync + fmt::Debug {
    fn load(&self) -> LoadFuture<'_>;
}

/// Whether a secret can go into a header as it is: no whitespace at its ends (a trailing
/// newline from a file or `echo`) and no control characters. Every source is held to this
/// when it loads, so that a bad value fails the load, not every request.
pub fn header_safe(v: &str) -> bool {
    v.trim() == v && !v.bytes().any(|b| b.is_ascii_control())
}

pub(crate) const UNUSABLE: &str = "has whitespace at its ends or control characters: it cannot be sent as a header \
                        (a trailing newline?)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk_live_canary123".into());
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
    }
}
