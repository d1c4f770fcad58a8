//! Caller identity: client certificates verified against `server.client_ca`, and tokens bound
//! to the identities a service lists in `client_ids` (sender-constrained tokens).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, string::Ia5String};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::common::*;

const BILLING: &str = "kw_identity_billing_0123456789abcdWXYZ";
const REPORTS: &str = "kw_identity_reports_0123456789abcdQRST";
const BILLING_ID: &str = "spiffe://prod.example/ns/pay/sa/billing";
const REPORTS_ID: &str = "spiffe://prod.example/ns/data/sa/reports";

/// A clients' CA, and leaves it signs.
struct ClientCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate and its key (PEM).
#[derive(Clone)]
struct ClientCert {
    chain: String,
    key: String,
}

impl ClientCa {
    fn new(name: &str) -> ClientCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        ClientCa { pem, issuer: Issuer::new(p, key) }
    }

    /// A leaf naming `uri` (a SPIFFE ID) and `dns`, valid from `from` for `life`.
    fn leaf(&self, uri: &str, dns: &str, from: SystemTime, life: Duration) -> ClientCert {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from(uri).unwrap()),
            SanType::DnsName(Ia5String::try_from(dns).unwrap()),
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = from.into();
        p.not_after = (from + life).into();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        ClientCert { chain: cert.pem(), key: key.serialize_pem() }
    }

    fn valid(&self, uri: &str, dns: &str) -> ClientCert {
        self.leaf(uri, dns, SystemTime::now() - Duration::from_secs(60), Duration::from_secs(3600))
    }
}

/// A client TLS config trusting the CAs in `roots`, presenting `cert` if any, offering
/// HTTP/1.1.
fn client_tls(roots: &Path, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(roots).unwrap() {
        store.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(store);
    let mut cfg = match cert {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.chain.as_bytes()).map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// GET /v1/charges with `token`, presenting `cert` if any: the status and error code, or the
/// TLS or HTTP error that ended the connection.
async fn call(kw: &Running, token: &str, cert: Option<&ClientCert>) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    let tls = TlsConnector::from(client_tls(&kw.pki.ca, cert))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req("GET", "/v1/charges", token, "")).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body: Bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((status, code))
}

async fn harness(client_ca: &Path, extra_server: &str) -> Running {
    Harness::new()
        .top(&format!("[server]\nclient_ca = {:?}\n{extra_server}", client_ca.display().to_string()))
        .service(
            Svc::new("billing")
                .token("b", BILLING)
                .scope("charge", "read")
                .extra(&format!("client_ids = [{BILLING_ID:?}, \"dns:billing.pay.svc\"]")),
        )
        .service(Svc::new("reports").token("r", REPORTS).scope("charge", "read"))
        .start()
        .await
}

#[tokio::test]
async fn tokens_bound_to_client_ids_need_the_right_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("clients CA");
    let ca_path = write(dir.path(), "clients-ca.pem", &ca.pem);
    let kw = harness(&ca_path, "").await;
    let billing = ca.valid(BILLING_ID, "billing.pay.svc");
    let by_dns = ca.valid("spiffe://prod.example/ns/pay/sa/other", "billing.pay.svc");
    let reports = ca.valid(REPORTS_ID, "reports.data.svc");
    let now = SystemTime::now();
    let expired =
        ca.leaf(BILLING_ID, "billing.pay.svc", now - Duration::from_secs(7200), Duration::from_secs(3600));
    let foreign = ClientCa::new("another CA").valid(BILLING_ID, "billing.pay.svc");

    assert_eq!(call(&kw, BILLING, Some(&billing)).await, Ok((200, String::new())));
    assert_eq!(call(&kw, BILLING, Some(&by_dns)).await, Ok((200, String::new())), "a DNS SAN id");
    assert_eq!(call(&kw, BILLING, None).await, Ok((401, "client_certificate_required".into())));
    assert_eq!(call(&kw, BILLING, Some(&reports)).await, Ok((403, "client_certificate_not_allowed".into())));
    for (what, cert) in [("an expired certificate", &expired), ("a certificate of another CA", &foreign)] {
        assert!(call(&kw, BILLING, Some(cert)).await.is_err(), "{what} was accepted");
    }
    // A service without client_ids: tokens alone, with or without a certificate.
    assert_eq!(call(&kw, REPORTS, None).await, Ok((200, String::new())));
    assert_eq!(call(&kw, REPORTS, Some(&reports)).await, Ok((200, String::new())));
    assert_eq!(kw.upstream.requests().len(), 4);
    let recs = kw.records(6).await;
    assert_eq!(recs[0]["client_id"], BILLING_ID);
    assert_eq!(recs[2]["reason"], "client_certificate_required");
    assert_eq!(recs[2]["client_id"], serde_json::Value::Null);
    assert_eq!(recs[3]["client_id"], REPORTS_ID);
    let refused = "keyward_requests_total{service=\"billing\",permission=\"\",mode=\"reverse\",decision=\"deny\",status=\"4xx\",reason=\"client_certificate_not_allowed\"}";
    let (_, metrics) = kw.admin_raw("GET", "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.lines().any(|l| l.starts_with(refused)), "{metrics}");
}

#[tokio::test]
async fn client_cert_required_refuses_callers_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("clients CA");
    let ca_path = write(dir.path(), "clients-ca.pem", &ca.pem);
    let kw = harness(&ca_path, "client_cert = \"required\"").await;
    assert!(call(&kw, REPORTS, None).await.is_err(), "a caller without a certificate got through");
    let reports = ca.valid(REPORTS_ID, "reports.data.svc");
    assert_eq!(call(&kw, REPORTS, Some(&reports)).await, Ok((200, String::new())));
}

/// The client CA rotates with the configuration: after a reload, certificates of the old CA
/// are refused and those of the new one accepted, on new connections.
#[tokio::test]
async fn the_client_ca_rotates_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (ClientCa::new("clients CA 1"), ClientCa::new("clients CA 2"));
    let ca_path = write(dir.path(), "clients-ca.pem", &old.pem);
    let kw = harness(&ca_path, "").await;
    let (old_cert, new_cert) =
        (old.valid(BILLING_ID, "billing.pay.svc"), new.valid(BILLING_ID, "billing.pay.svc"));
    assert_eq!(call(&kw, BILLING, Some(&old_cert)).await, Ok((200, String::new())));
    assert!(call(&kw, BILLING, Some(&new_cert)).await.is_err());
    std::fs::write(&ca_path, &new.pem).unwrap();
    let (status, body) = kw.admin_reload().await;
    assert_eq!(status, 200, "{body}");
    assert!(call(&kw, BILLING, Some(&old_cert)).await.is_err(), "the old CA still trusted");
    assert_eq!(call(&kw, BILLING, Some(&new_cert)).await, Ok((200, String::new())));
}

/// In forward mode the caller's certificate is asked for in the tunnel's own handshake (the
/// one the SDK makes to api.stripe.com), and binds the same way.
#[tokio::test]
async fn client_ids_bind_in_forward_mode_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new("clients CA");
    let ca_path = write(dir.path(), "clients-ca.pem", &ca.pem);
    let kw = Harness::new()
        .forward("")
        .top(&format!("[server]\nclient_ca = {:?}", ca_path.display().to_string()))
        .service(
            Svc::new("billing")
                .token("b", BILLING)
                .scope("charge", "read")
                .extra(&format!("client_ids = [{BILLING_ID:?}]")),
        )
        .start()
        .await;
    let through = |cert: Option<ClientCert>| {
        let kw = &kw;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(kw.forward_addr()).await.unwrap();
            tcp.write_all(b"CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n\r\n")
                .await
                .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"));
            let mut tls = TlsConnector::from(client_tls(&kw.forward_ca(), cert.as_ref()))
                .connect(ServerName::try_from("api.stripe.com").unwrap(), tcp)
                .await
                .unwrap();
            let get = format!(
                "GET /v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\nAuthorization: Bearer {BILLING}\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(get.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).split(' ').nth(1).unwrap_or("").to_string()
        }
    };
    assert_eq!(through(Some(ca.valid(BILLING_ID, "billing.pay.svc"))).await, "200");
    assert_eq!(through(None).await, "401");
    let recs = kw.records(2).await;
    assert_eq!(recs[0]["client_id"], BILLING_ID);
    assert_eq!(recs[0]["mode"], "forward");
}
