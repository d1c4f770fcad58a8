//! `keyward certs dev`: development certificates.

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
}

pub fn certs(command: CertsCommand) -> ExitCode {
    let CertsCommand::Dev { dir } = command;
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
