//! Where checkpoints are published besides the chain (`audit.checkpoints`): a file the
//! operator keeps out of the log writer's reach (another volume, shipped elsewhere), or
//! stderr, which a cluster's collector ships apart from the access log. Lines are published
//! only once the log holds them, so a published checkpoint never names a head the log lacks.

use std::fs::{File, OpenOptions};
use std::io::Write;

pub enum Publisher {
    Stderr,
    File(File),
}

impl Publisher {
    pub fn open(to: &str) -> std::io::Result<Publisher> {
        if to == "stderr" {
            return Ok(Publisher::Stderr);
        }
        let path = std::path::Path::new(to);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Publisher::File(OpenOptions::new().create(true).append(true).open(path)?))
    }

    /// Append `lines` (each with its newline) whole, and sync a file.
    pub fn publish(&mut self, lines: &[u8]) -> std::io::Result<()> {
        match self {
            Publisher::Stderr => std::io::stderr().lock().write_all(lines),
            Publisher::File(f) => {
                f.write_all(lines)?;
                f.sync_data()
            }
        }
    }
}
