//! Secrets: a type that cannot print, and the sources that load it.

use std::fmt;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use zeroize::Zeroize;

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

pub type LoadFuture<'a> = Pin<Box<dyn Future<Output = Result<Loaded, String>> + Send + 'a>>;

/// Where a secret comes from. Errors name the source, never the value.
pub trait SecretSource: Send + Sync + fmt::Debug {
    fn load(&self) -> LoadFuture<'_>;
}

/// A TOML file of `name = "value"` pairs; refused if group- or world-readable.
#[derive(Debug)]
pub struct FileSource {
    pub path: PathBuf,
    pub key: String,
}

/// An environment variable.
#[derive(Debug)]
pub struct EnvSource {
    pub var: String,
}

impl SecretSource for FileSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move { read_secret_file(&self.path, &self.key) })
    }
}

impl SecretSource for EnvSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move {
            match std::env::var(&self.var) {
                Ok(v) if !v.trim().is_empty() => Ok(Loaded { value: Secret::new(v), version: None }),
                Ok(_) => Err(format!("environment variable {} is empty", self.var)),
                Err(_) => Err(format!("environment variable {} is not set", self.var)),
            }
        })
    }
}

fn read_secret_file(path: &Path, key: &str) -> Result<Loaded, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: readable by group or others (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    // The parse error of a secrets file could quote a value: report only where it is.
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| crate::config::line_of(&text, s.start));
        format!("{shown}: not valid TOML (line {})", line.unwrap_or(0))
    })?;
    match table.remove(key) {
        Some(toml::Value::String(v)) if !v.is_empty() => Ok(Loaded { value: Secret::new(v), version: None }),
        Some(_) => Err(format!("{shown}: key `{key}` is not a non-empty string")),
        None => Err(format!("{shown}: no key `{key}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk_live_canary123".into());
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
    }

    #[test]
    fn file_source_refuses_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "stripe = \"sk_test_canary\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path, "stripe").unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains("canary"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path, "stripe").unwrap().value.expose(), "sk_test_canary");
        let err = read_secret_file(&path, "other").unwrap_err();
        assert!(err.contains("no key `other`"), "{err}");
    }

    #[test]
    fn broken_secret_file_does_not_echo_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "stripe = \"sk_test_canary\nbroken").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_secret_file(&path, "stripe").unwrap_err();
        assert!(err.contains("not valid TOML") && !err.contains("canary"), "{err}");
    }
}
