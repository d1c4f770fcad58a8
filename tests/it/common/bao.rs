//! A real OpenBao dev server for the tests: `bao server -dev` on a free loopback port with its
//! own random root token, seeded through its HTTP API (and the `bao` CLI where a runbook would
//! use it), stopped by pid when dropped. `bao` comes from `pip install -r tests/requirements.txt`;
//! without it the tests fail, they do not skip.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

pub struct Bao {
    child: Option<Child>,
    pub port: u16,
    pub root_token: String,
    pub tls: bool,
    pub dir: tempfile::TempDir,
}

impl Bao {
    /// Plain HTTP on 127.0.0.1 (keyward accepts http:// for loopback addresses only).
    pub async fn start() -> Bao {
        Bao::launch(false).await
    }

    /// `-dev-tls`: HTTPS with a CA that bao generates; keyward pins it with `ca`.
    pub async fn start_tls() -> Bao {
        Bao::launch(true).await
    }

    async fn launch(tls: bool) -> Bao {
        let version = Command::new("bao").arg("version").output().unwrap_or_else(|e| {
            panic!("cannot run `bao` ({e}): install it with `pip install -r tests/requirements.txt`")
        });
        assert!(version.status.success(), "`bao version` failed");
        let mut token = [0u8; 12];
        getrandom::fill(&mut token).unwrap();
        let mut bao = Bao {
            child: None,
            port: 0,
            root_token: format!("root-{}", hex::encode(token)),
            tls,
            dir: tempfile::tempdir().unwrap(),
        };
        // The port is free when chosen but could be taken before bao binds it (it also binds
        // port + 1 for clustering): try a few.
        for _ in 0..5 {
            bao.port = free_port();
            bao.spawn();
            if bao.wait_ready().await {
                return bao;
            }
            bao.stop();
        }
        panic!("OpenBao did not start; its log:\n{}", bao.log());
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("bao.log")).unwrap();
        let mut cmd = Command::new("bao");
        cmd.args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={}", self.root_token),
            &format!("-dev-listen-address=127.0.0.1:{}", self.port),
        ]);
        if self.tls {
            cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", self.dir.path().display()));
        }
        for var in ["BAO_ADDR", "VAULT_ADDR", "BAO_TOKEN", "VAULT_TOKEN"] {
            cmd.env_remove(var);
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok((200, _)) = self.try_api(Method::GET, "sys/health", None).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Kill the server (by pid) and wait for it to exit. Its data is gone: it is in memory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same root token (and empty storage).
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.spawn();
            if self.wait_ready().await {
                return;
            }
            self.stop();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("OpenBao did not restart on port {}; its log:\n{}", self.port, self.log());
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA bao generated with `-dev-tls`.
    pub fn ca(&self) -> PathBuf {
        assert!(self.tls);
        self.dir.path().join("vault-ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    fn client(&self) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
        let mut roots = rustls::RootCertStore::empty();
        if self.tls {
            for c in CertificateDer::pem_file_iter(self.ca()).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new()).build(https)
    }

    async fn try_api(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        if self.tls && !self.ca().exists() {
            return Err("bao has not written its CA yet".into());
        }
        let req = Request::builder()
            .method(method)
            .uri(format!("{}/v1/{path}", self.addr()))
            .header("x-vault-token", &self.root_token)
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let call = async {
            let resp = self.client().request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(Duration::from_secs(10), call).await.map_err(|_| "timeout".to_string())?
    }

    /// A call with the root token that must succeed; returns the JSON answer.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        match self.try_api(method.clone(), path, body).await {
            Ok((200..=299, v)) => v,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    /// Write a KV v2 secret at `secret/PATH`; returns its new version.
    pub async fn kv_put(&self, path: &str, fields: Value) -> u64 {
        let v = self.api(Method::POST, &format!("secret/data/{path}"), Some(json!({ "data": fields }))).await;
        v["data"]["version"].as_u64().unwrap()
    }

    /// `bao kv put secret/PATH k=v…` through the CLI, as the runbook in docs/configuration.md does.
    pub fn cli_kv_put(&self, path: &str, pairs: &[(&str, &str)]) {
        let mut cmd = Command::new("bao");
        cmd.args(["kv", "put", &format!("secret/{path}")]);
        cmd.args(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        cmd.env("BAO_ADDR", self.addr()).env("BAO_TOKEN", &self.root_token);
        if self.tls {
            cmd.env("BAO_CACERT", self.ca());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "bao kv put failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A policy that may read `secret/data/PATH` only.
    pub async fn reader_policy(&self, name: &str, path: &str) {
        let hcl = format!("path \"secret/data/{path}\" {{ capabilities = [\"read\"] }}\n");
        self.api(Method::PUT, &format!("sys/policies/acl/{name}"), Some(json!({ "policy": hcl }))).await;
    }

    /// A token with `policies` and `ttl` (e.g. "1h").
    pub async fn token(&self, policies: &[&str], ttl: &str) -> String {
        let v = self
            .api(Method::POST, "auth/token/create", Some(json!({ "policies": policies, "ttl": ttl })))
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// Enable AppRole and make a role; returns (role_id, secret_id).
    pub async fn approle(&self, role: &str, policies: &[&str], ttl: &str, max_ttl: &str) -> (String, String) {
        self.api(Method::POST, "sys/auth/approle", Some(json!({ "type": "approle" }))).await;
        let settings = json!({ "token_policies": policies, "token_ttl": ttl, "token_max_ttl": max_ttl });
        self.api(Method::POST, &format!("auth/approle/role/{role}"), Some(settings)).await;
        let v = self.api(Method::GET, &format!("auth/approle/role/{role}/role-id"), None).await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let v = self.api(Method::POST, &format!("auth/approle/role/{role}/secret-id"), None).await;
        (role_id, v["data"]["secret_id"].as_str().unwrap().to_string())
    }

    /// Mount a KV version 1 engine at `path` and write `fields` at `path/KEY`.
    pub async fn kv1(&self, mount: &str, key: &str, fields: Value) {
        let opts = json!({ "type": "kv", "options": { "version": "1" } });
        self.api(Method::POST, &format!("sys/mounts/{mount}"), Some(opts)).await;
        self.api(Method::POST, &format!("{mount}/{key}"), Some(fields)).await;
    }

    pub async fn seal(&self) {
        self.api(Method::PUT, "sys/seal", None).await;
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Write `text` to `dir/name` with mode 600 (keyward refuses credential files others can read).
pub fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
