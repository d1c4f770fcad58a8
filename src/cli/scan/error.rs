//! Why a scan could not read a repository's history (`--git`) or the `--config` it names
//! owners from.

use std::path::PathBuf;
use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("git: {0}")]
    Git(std::io::Error),
    /// `git COMMAND` failed; `stderr`: what it said, trimmed.
    #[error("git {command}: {stderr}")]
    GitFailed { command: String, stderr: String },
    #[error("git cat-file: {0}")]
    CatFile(std::io::Error),
    /// A header whose size does not read, as git wrote it (newline included).
    #[error("git cat-file: {0}")]
    CatFileHeader(String),
    #[error("git cat-file: {0:?}")]
    CatFileExit(std::io::Result<ExitStatus>),
    #[error("{}: {source}", path.display())]
    ConfigRead { path: PathBuf, source: std::io::Error },
    /// `message`: TOML's short message, without the text around it.
    #[error("{}: {message}", path.display())]
    ConfigToml { path: PathBuf, message: String },
}
