//! `keyward run`: serve until SIGTERM or SIGINT, then drain.

use std::process::ExitCode;

use clap::Args;
use keyward::control::config::Source;

use super::{ConfigArg, LogFormat, fail};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Format of keyward's own log on stderr (the access log goes to `audit.path`).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Worker threads [default: one per CPU]; 1 runs everything on one thread.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let src = match Source::locate(args.config.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let shutdown = match keyward::app::shutdown_signal() {
        Ok(s) => s,
        Err(e) => return fail([format!("cannot listen for signals: {e}")]),
    };
    match keyward::app::start(&src).await {
        Ok(running) => {
            running.until(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(keyward::app::StartError::Config(errors)) => fail(errors),
        Err(e) => fail([e]),
    }
}
