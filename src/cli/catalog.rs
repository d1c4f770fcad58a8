//! `keyward catalog`: the endpoints the catalog knows, and the permission each needs.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use super::{ConfigArg, lenient_policy};

#[derive(Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// List the built-in Stripe catalog, whatever the configuration says.
    #[arg(long, conflicts_with = "config")]
    no_config: bool,
    /// Only entries whose permission or path contains this text.
    filter: Option<String>,
}

pub async fn catalog(args: CatalogArgs) -> ExitCode {
    let catalog = if args.no_config {
        keyward::policy::catalog::Catalog::parse(keyward::policy::catalog::STRIPE_CATALOG)
            .expect("the built-in catalog parses")
    } else {
        match lenient_policy(args.config.config.as_deref()) {
            Ok(p) => p.catalog,
            Err(code) => return code,
        }
    };
    let mut out = std::io::stdout().lock();
    for e in &catalog.entries {
        let perm = &e.name;
        if args.filter.as_deref().is_some_and(|f| !perm.contains(f) && !e.template.contains(f)) {
            continue;
        }
        let direct = if e.direct { " (direct)" } else { "" };
        let line = format!("{:<7}{:<60}{:<40}{}{direct}", e.method.as_str(), e.template, perm, e.upstream);
        // A closed pipe (`keyward catalog | head`) ends the listing quietly.
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}
