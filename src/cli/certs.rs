//! `keyward certs dev`: development certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::fail;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a development CA and a certificate for localhost in DIR (never in production).
    Dev {
        /// Where to write ca.crt, keyward.crt and keyward.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

pub fn certs(command: CertsCommand) -> ExitCode {
    let CertsCommand::Dev { dir } = command;
    match keyward::control::tls::ensure_dev_certs(&dir.join("keyward.crt"), &dir.join("keyward.key")) {
        Ok(true) => {
            println!("wrote {0}/ca.crt, {0}/keyward.crt, {0}/keyward.key", dir.display());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("{}/keyward.crt and keyward.key exist; left as they are", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail([e]),
    }
}
