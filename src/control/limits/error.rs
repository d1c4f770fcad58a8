//! Why a limit cannot be set up (a rate that does not read, a Redis store that cannot be made)
//! or the Redis store did not answer. Redis's errors never hold the password: it is set on
//! the connection, not in the URL.

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("`{text}` is not a rate like \"20/s\" or \"600/m\"")]
    NotARate { text: String },
    #[error("`{text}` is more than 1000000000 calls a second")]
    TooFast { text: String },
    #[error("not a Redis URL: {0}")]
    NotRedisUrl(redis::RedisError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Random(#[from] getrandom::Error),
    #[error("no answer in time (ratelimit.timeout)")]
    Timeout,
    #[error("{}: {source}", path.display())]
    TlsFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}: others or a group not keyward's own may read this key (mode {mode:o}): chmod 600 it", path.display())]
    LooseKey { path: std::path::PathBuf, mode: u32 },
}
