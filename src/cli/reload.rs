//! `keyward reload`: ask the running keyward to reload, and print what it said.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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
    let addr = match admin_addr(args.admin, &args.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match admin_request(addr, http::Method::POST, "/-/reload").await {
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

/// `--admin ADDR`, else the configuration's `server.admin_listen`; an unspecified address
/// (`0.0.0.0`, in a container) is reached on loopback.
pub fn admin_addr(admin: Option<SocketAddr>, config: &ConfigArg) -> Result<SocketAddr, ExitCode> {
    let mut addr = match admin {
        Some(a) => a,
        None => {
            let src = Source::locate(config.config.as_deref()).map_err(fail)?;
            admin_listen(&src.text).ok_or_else(|| {
                fail([format!("{}: no server.admin_listen; pass --admin ADDR", src.name.display())])
            })?
        }
    };
    if addr.ip().is_unspecified() {
        let lo =
            if addr.is_ipv4() { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from(Ipv6Addr::LOCALHOST) };
        addr.set_ip(lo);
    }
    Ok(addr)
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

/// One request to the admin port, within 10 s: (status, body).
pub async fn admin_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    tokio::time::timeout(std::time::Duration::from_secs(10), call(addr, method, path))
        .await
        .map_err(|_| "no answer within 10 s")?
}

async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    // The admin token, for calls that change keyward; never printed.
    if let Some(token) = std::env::var("KEYWARD_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
        // This client speaks plain HTTP: the token would cross the network in the clear.
        if !addr.ip().is_loopback() {
            return Err(format!(
                "KEYWARD_ADMIN_TOKEN is sent only to a loopback address over plain HTTP, not {addr}: call a TLS admin port (server.admin_tls) with curl"
            )
            .into());
        }
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "KEYWARD_ADMIN_TOKEN is not a valid header value")?;
        value.set_sensitive(true);
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
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
