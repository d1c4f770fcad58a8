//! Configuration: the file as users write it (`file`), checked and planned without I/O
//! (`validate`), then built into a `Snapshot` (`build`: tables, secrets, clients, TLS).

pub mod admin;
pub mod build;
mod errors;
pub mod file;
mod forward;
mod ratelimit;
mod services;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::control::snapshot::Snapshot;

/// What to build beyond the policy: `keyward explain` and `check --offline` need none of it,
/// `run` and `check` all.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub secrets: bool,
    pub tls: bool,
    pub clients: bool,
}

impl Options {
    pub const FULL: Options = Options { secrets: true, tls: true, clients: true };
    pub const POLICY_ONLY: Options = Options { secrets: false, tls: false, clients: false };
}

pub async fn compile(src: &Source, opts: Options) -> Result<Snapshot, Vec<ConfigError>> {
    compile_with(src, opts, None).await
}

/// Compile a configuration into a complete snapshot, or report every error found. For a
/// reload, `previous` lends what can be kept (see `build::build`).
pub async fn compile_with(
    src: &Source,
    opts: Options,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let file = validate::parse(src)?;
    let (catalog, expansions) = build::tables(src, &file)?;
    let (plan, errors) = validate::validate(src, file, &catalog, &expansions);
    build::build(src, plan, errors, opts, previous).await
}

/// The configuration `keyward run` uses when no `--config` is given and `config/keyward.toml`
/// does not exist.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/keyward.toml");
pub const DEFAULT_PATH: &str = "config/keyward.toml";
const EMBEDDED_NAME: &str = "<embedded default>";

/// A configuration text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: PathBuf,
    pub text: String,
}

impl Source {
    /// The file this came from; `None` for the embedded default.
    pub fn path(&self) -> Option<&Path> {
        (self.name.as_os_str() != EMBEDDED_NAME).then_some(self.name.as_path())
    }

    pub fn read(path: &Path) -> Result<Source, Vec<ConfigError>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source { name: path.to_path_buf(), text }),
            Err(e) => Err(vec![ConfigError::new(path, None, "", format!("cannot read: {e}"))]),
        }
    }

    /// `--config PATH`, else `config/keyward.toml`, else the embedded default.
    pub fn locate(path: Option<&Path>) -> Result<Source, Vec<ConfigError>> {
        match path {
            Some(p) => Source::read(p),
            None if Path::new(DEFAULT_PATH).exists() => Source::read(Path::new(DEFAULT_PATH)),
            None => Ok(Source { name: EMBEDDED_NAME.into(), text: EMBEDDED_DEFAULT.to_string() }),
        }
    }
}

/// One configuration problem: file, line, key, message. Never quotes a value from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// A key or message that quotes what was written (a key pasted as `secret = "sk_live_…"`, a
    /// path or URL holding one) shows it as prefix and last 4, and control characters escaped:
    /// these errors go to CI logs, the reload log and `POST /-/reload` answers.
    pub fn new(file: &Path, line: Option<usize>, key: &str, message: impl Into<String>) -> Self {
        let shown = |s: &str| crate::text::printable(&crate::text::redacted(s)).into_owned();
        let key = crate::text::shown(key);
        ConfigError { file: file.to_path_buf(), line, key, message: shown(&message.into()) }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        write!(f, "{}", crate::text::shown(&file))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}
