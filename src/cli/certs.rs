//! `keyward certs dev`: development certificates; `keyward certs audit-key`: the access
//! log's checkpoint signing key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use keyward::control::tls;

use super::fail;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a development CA, a certificate for localhost and a forward-mode CA in DIR (never
    /// in production).
    Dev {
        /// Where to write ca.crt, keyward.crt, keyward.key, forward-ca.crt and forward-ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Make an Ed25519 key pair for signing the access log's checkpoints: DIR/audit-signing.key
    /// (PKCS#8 PEM, 0600: put its base64 in the secret `audit.signing_key_secret` names) and
    /// DIR/audit-signing.pub (give it to auditors: `audit verify --key`). Prints the key id.
    AuditKey {
        #[arg(long)]
        dir: PathBuf,
    },
}

pub fn certs(command: CertsCommand) -> ExitCode {
    let dir = match command {
        CertsCommand::Dev { dir } => dir,
        CertsCommand::AuditKey { dir } => return audit_key(&dir),
    };
    let d = dir.display();
    let made = [
        (
            tls::ensure_dev_certs(&dir.join("keyward.crt"), &dir.join("keyward.key")),
            format!("{d}/ca.crt, {d}/keyward.crt, {d}/keyward.key"),
        ),
        (
            tls::ensure_dev_forward_ca(&dir.join("forward-ca.crt"), &dir.join("forward-ca.key")),
            format!("{d}/forward-ca.crt, {d}/forward-ca.key (the forward-mode CA)"),
        ),
    ];
    for (result, files) in made {
        match result {
            Ok(true) => println!("wrote {files}"),
            Ok(false) => println!("{files}: exist; left as they are"),
            Err(e) => return fail([e]),
        }
    }
    ExitCode::SUCCESS
}

fn audit_key(dir: &std::path::Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = (dir.join("audit-signing.key"), dir.join("audit-signing.pub"));
    let (signer, key_pem, pub_pem) = match keyward::audit::checkpoint::Signer::generate() {
        Ok(k) => k,
        Err(e) => return fail([e.to_string()]),
    };
    let write = |path: &std::path::Path, mode: u32, text: &[u8]| {
        std::fs::create_dir_all(dir)?;
        // Never over an existing key: that would orphan every checkpoint it signed.
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        f.write_all(text)
    };
    for (path, mode, text) in [(&private, 0o600, key_pem.as_bytes()), (&public, 0o644, pub_pem.as_bytes())] {
        if let Err(e) = write(path, mode, text) {
            return fail([format!("{}: {e}", path.display())]);
        }
    }
    println!("wrote {} (keep it secret) and {}", private.display(), public.display());
    println!("key id {}", signer.id);
    ExitCode::SUCCESS
}
