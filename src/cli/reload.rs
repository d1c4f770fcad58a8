//! `keyward reload`: ask the running keyward to reload, and print what it said.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use keyward::control::config::Source;

use super::{ConfigArg, fail};

#[derive(Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The admin address [default: `server.admin_listen` of the configuration].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
}

pub async fn reload(args: ReloadArgs) -> ExitCode {
    let addr = match args.admin {
        Some(a) => a,
        None => {
            let src = match Source::locate(args.config.config.as_deref()) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match admin_listen(&src.text) {
                Some(a) => a,
                None => {
                    return fail([format!(
                        "{}: no server.admin_listen; pass --admin ADDR",
                        src.name.display()
                    )]);
                }
            }
        }
    };
    match post_reload(addr).await {
        Ok((status, body)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(body);
            println!("{pretty}");
            if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => fail([format!("admin endpoint {addr}: {e}")]),
    }
}

/// `server.admin_listen`, read leniently: a config with other errors is exactly the one whose
/// reload report the operator wants to see.
fn admin_listen(text: &str) -> Option<SocketAddr> {
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        return t.get("server")?.get("admin_listen")?.as_str()?.parse().ok();
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("admin_listen")?.trim().strip_prefix('='))
        .find_map(|v| v.trim().trim_matches('"').parse().ok())
}

async fn post_reload(addr: SocketAddr) -> Result<(u16, String), Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/-/reload")
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_listen_is_found_even_in_a_broken_config() {
        let ok = "[server]\nadmin_listen = \"127.0.0.1:9090\"\n";
        assert_eq!(super::admin_listen(ok), Some("127.0.0.1:9090".parse().unwrap()));
        let broken = "[server]\nadmin_listen = \"127.0.0.1:9091\"\n[service\nname = ";
        assert_eq!(super::admin_listen(broken), Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(super::admin_listen("[server]\n"), None);
    }
}
