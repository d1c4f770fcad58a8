//! The access log: one JSON line per request. Records have no field that could hold a token
//! or a secret: only ids, names and numbers.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct AccessRecord {
    pub time: String,
    pub request_id: String,
    pub service: Option<Arc<str>>,
    pub token_id: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    pub method: String,
    /// Path only: a query string can carry personal data.
    pub path: String,
    pub template: Option<String>,
    pub permission: Option<String>,
    pub access: Option<&'static str>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub status: u16,
    pub upstream: Option<String>,
    pub upstream_request_id: Option<String>,
    pub stripe_account: Option<String>,
    pub egress_ip: Option<IpAddr>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub config_version: String,
    pub secret_version: Option<u64>,
}

/// Where records go. Each record is written and flushed whole, under one lock, so lines from
/// concurrent requests never interleave.
pub struct AuditLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AuditLog {
    /// `"-"` is stdout; anything else a file opened for appending.
    pub fn open(path: &str) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(AuditLog { out: Mutex::new(out) })
    }

    pub fn write(&self, record: &AccessRecord) {
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|_| out.flush()) {
            tracing::error!(error = %e, "could not write access record");
        }
    }
}
