//! Why a secret did not load. Names the source (a variable, a file and key, a vault path),
//! never the value.

use std::path::PathBuf;

use super::UNUSABLE;
use super::vault::VaultError;

/// `var` fields hold the variable's name as errors show it (`text::shown`: a key pasted as the
/// name is not quoted).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {var} is not set")]
    EnvUnset { var: String },
    #[error("environment variable {var} is empty")]
    EnvEmpty { var: String },
    #[error("environment variable {var} {}", UNUSABLE)]
    EnvUnusable { var: String },
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// `mode`: the file's permission bits (`& 0o777`).
    #[error(
        "{}: readable by others or by a group not keyward's own (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Loose { path: PathBuf, mode: u32 },
    /// Only where: TOML's own error could quote a value.
    #[error("{}: not valid TOML (line {line})", path.display())]
    NotToml { path: PathBuf, line: usize },
    #[error("{}: key `{key}` {}", path.display(), UNUSABLE)]
    Unusable { path: PathBuf, key: String },
    #[error("{}: key `{key}` is not a non-empty string", path.display())]
    NotAString { path: PathBuf, key: String },
    #[error("{}: no key `{key}`", path.display())]
    NoKey { path: PathBuf, key: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
}
