//! Why a vault table is refused, or a vault secret did not load. Names the vault, the path and
//! the file or variable, never a value, a token or a secret_id.

use std::path::PathBuf;

use crate::upstream::UpstreamError;

/// `addr` fields of a table's checks hold the address as errors show it (`text::url_shown`: no
/// credentials).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("`{addr}` is not a URL")]
    NotUrl { addr: String },
    #[error("`{addr}` has no host")]
    NoHost { addr: String },
    #[error("`{addr}` must not carry credentials")]
    Credentials { addr: String },
    #[error("`{addr}` must have no path or query")]
    PathOrQuery { addr: String },
    #[error("`{addr}` must start with https:// (http:// is accepted for loopback addresses only)")]
    PlainHttp { addr: String },
    #[error("`{addr}` must start with https://")]
    NotHttps { addr: String },
    #[error("`{path}` is not a vault path: use segments of letters, digits and -_.@+=:,~ separated by /")]
    NotAPath { path: String },
    #[error("AppRole needs both `role_id` and `secret_id_file`")]
    HalfAppRole,
    #[error("set one of `token_file`, `token_env`, or `role_id` with `secret_id_file`")]
    NoAuth,
    #[error("set only one of `token_file`, `token_env`, or `role_id` with `secret_id_file`")]
    TwoAuths,
    #[error("ca {}: {source}", path.display())]
    Ca { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] UpstreamError),
    /// One load that gave nothing: `doing` (reading the path, logging in) and why. Both have
    /// the session's token replaced by `***`: vault's own messages are quoted.
    #[error("vault {addr} {doing}: {why}")]
    Load { addr: String, doing: String, why: String },
    /// `token_env`'s variable holds no token. `var`: as errors show it (`text::shown`).
    #[error("token_env: environment variable {var} is empty or not a token")]
    TokenEnvNotToken { var: String },
    /// `var`: as errors show it (`text::shown`).
    #[error("token_env: environment variable {var} is not set")]
    TokenEnvUnset { var: String },
    #[error("no configured token with AppRole")]
    NoConfiguredToken,
    /// A token or secret_id file; `key` is its setting (`token_file`, `secret_id_file`).
    #[error("{key} {}: {source}", path.display())]
    CredentialRead { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key} {}: readable by others; run `chmod o-r {}`", path.display(), path.display())]
    CredentialReadable { key: &'static str, path: PathBuf },
    #[error("{key} {}: empty, or not a single line of printable characters", path.display())]
    NotACredential { key: &'static str, path: PathBuf },
}
