//! A differential test against Rack, what Stripe's API is built on: requests go through
//! keyward to the recording stand-in, and what reached it is read with the real Rack
//! (`tests/rack/read.rb`, Debian's ruby-rack, under both of Puma's header mappings). For every
//! request keyward forwarded, Rack must read exactly what keyward classified: the same method,
//! path, `expand` fields in the query and in the form, and Stripe account. The table holds the
//! known hostile inputs and every generated input that ever disagreed; the generated part is
//! new each run (`KEYWARD_RACK_SEED=N` repeats one, `KEYWARD_RACK_CASES` sets how many).

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;
use base64::Engine;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "kw_rack_differential_token_0123456789";

/// One request as sent: method, target, extra headers, body.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn case(method: &'static str, target: &str, headers: &[(&'static str, &'static str)], body: &str) -> Case {
    Case { method, target: target.into(), headers: headers.to_vec(), body: body.into() }
}

/// The hostile inputs, and every generated one that ever disagreed with Rack.
fn table() -> Vec<Case> {
    let p = "/v1/customers/cus_1";
    let mut out = Vec::new();
    for q in [
        "a=1;expand[]=default_source",
        "[expand][]=default_source",
        "expand]=default_source",
        "expand[0=default_source",
        "expand%5B%5D=x",
        "expand[]=a&expand[]=b",
        "expand=a&expand=b",
        "expand[1]=a&expand[0]=b",
        "expand[a]=x",
        "expand=a&expand[]=b",
        "expand[]=%zz",
        "%5Fmethod=DELETE",
        "expand[]=data.customer&limit=3",
        // Found by the generator: Rack reads a value without `=` as nil.
        "expand",
        "e%78pand",
        "expand[]",
    ] {
        out.push(case("GET", &format!("{p}?{q}"), &[], ""));
    }
    let cts: [&[(&str, &str)]; 5] = [
        &[FORM],
        &[("Content-Type", "application/x-www-form-urlencoded, text/plain")],
        &[("Content-Type", "application/x-www-form-urlencoded,")],
        &[("Content-Type", "")],
        &[],
    ];
    for body in [
        "[expand][]=x",
        "expand]=x",
        "[expand]=x",
        "expand[0=x",
        "_method=DELETE",
        "a=1;_method=DELETE",
        "expand[]=x&name=a",
        "expand%5B%5D",
        "items[0][price]=& expand[0]&",
    ] {
        for ct in cts {
            out.push(case("POST", p, ct, body));
        }
    }
    let multipart = ("Content-Type", "multipart/form-data; boundary=B");
    for (name, value) in [("_method", "DELETE"), ("expand[]", "x"), ("name", "Jo")] {
        let body =
            format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n--B--\r\n");
        out.push(case("POST", p, &[multipart], &body));
        out.push(case("POST", "/v1/files", &[multipart], &body));
    }
    // Found by a code review: Rack read these as `_method` / `expand` parts.
    for body in [
        "--B\r\n\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--B--\r\n",
        "--B\r\nContent-Disposition: form-data; filename=\"%65xpand[]\"\r\n\r\nx\r\n--B--\r\n",
    ] {
        out.push(case("POST", "/v1/files", &[multipart], body));
    }
    for (name, value) in [
        ("Stripe_Account", "acct_evil"),
        ("Stripe_Context", "acct_evil"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-HTTP_Method-Override", "DELETE"),
        ("Stripe-Account", "acct_1"),
        ("Content_Type", "text/plain"),
    ] {
        out.push(case("POST", p, &[(name, value), FORM], "name=a"));
    }
    out
}

/// Pieces that query strings and form bodies are built from.
const PIECES: &[&str] = &[
    "expand",
    "expand[]",
    "expand[0]",
    "expand[1]",
    "[expand]",
    "expand]",
    "expand[",
    "e%78pand",
    "expand%5B%5D",
    "_method",
    "%5Fmethod",
    "_method[]",
    "a",
    "b",
    "metadata[k]",
    "items[0][price]",
    "[",
    "]",
    "%5B",
    "%5D",
    "=",
    "=",
    "=",
    "&",
    "&",
    "&",
    ";",
    "%",
    "%zz",
    "%4",
    "%41",
    "+",
    "customer",
    "default_source",
    "data.customer",
    "DELETE",
    "%26",
    "%3D",
    "%3B",
    "%00",
    "%ff",
    "expand[a]",
    " ",
];

const HEADERS: &[(&str, &str)] = &[
    ("Stripe-Account", "acct_1"),
    ("stripe-account", "acct_2"),
    ("Stripe_Account", "acct_evil"),
    ("STRIPE-ACCOUNT", "acct_3"),
    ("Stripe-Context", "acct_4"),
    ("Stripe_context", "acct_evil"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X_HTTP_Method_Override", "DELETE"),
    ("x-http_method-override", "PATCH"),
    ("X-Custom_Thing", "1"),
];

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/x-www-form-urlencoded"),
    Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
    Some("application/x-www-form-urlencoded, text/plain"),
    Some(""),
    Some("text/plain"),
    Some("application/json"),
    Some("multipart/form-data; boundary=BB"),
];

/// Whole part heads (CRLF-joined lines), besides the plain `name=` one.
const PART_HEADS: &[&str] = &[
    "",
    "Content-ID: _method",
    "Content-Disposition: form-data; filename=\"%65xpand[]\"",
    "Content-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain",
    "Content-Disposition: form-data; filename=\"a.txt\"",
    "Content-Disposition: form-data; name=\"_m\\ethod\"",
    "X-A: y",
];

const PART_NAMES: &[&str] =
    &["name", "_method", "expand[]", "file\"; filename=\"a.txt", "x\"; name=\"_method", "email"];

fn encoded() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|v| v.concat())
}

fn generated() -> impl Strategy<Value = Case> {
    let method = prop::sample::select(&["GET", "POST", "POST", "DELETE"][..]);
    let headers = prop::sample::subsequence(HEADERS, 0..3);
    let ct = prop::sample::select(CONTENT_TYPES);
    let head = prop::option::of(prop::sample::select(PART_HEADS));
    let parts = prop::collection::vec((prop::sample::select(PART_NAMES), head, encoded()), 1..3);
    (method, prop::option::of(encoded()), headers, ct, encoded(), parts).prop_map(
        |(method, query, mut headers, ct, form, parts)| {
            let target = match query {
                // The request line has no room for a space.
                Some(q) => format!("/v1/customers/cus_1?{}", q.replace(' ', "+")),
                None => "/v1/customers/cus_1".into(),
            };
            let mut body = String::new();
            let mut target = target;
            if method == "POST" {
                if let Some(ct) = ct {
                    headers.push(("Content-Type", ct));
                }
                body = if ct.is_some_and(|c| c.starts_with("multipart")) {
                    // Multipart goes to the endpoint that takes files.
                    target = target.replacen("/v1/customers/cus_1", "/v1/files", 1);
                    let mut b: String = parts
                        .iter()
                        .map(|(n, head, v)| match head {
                            Some(h) => format!("--BB\r\n{h}\r\n\r\n{v}\r\n"),
                            None => {
                                format!("--BB\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n")
                            }
                        })
                        .collect();
                    b += "--BB--\r\n";
                    b
                } else {
                    form
                };
            }
            Case { method, target, headers, body }
        },
    )
}

/// What keyward reads from a case it forwarded, as the test states it independently of the
/// request path's code: the `expand` fields (by `params::read`, keyward's one parser) of the
/// query and of a body Rack reads as a form.
fn keyward_reading(c: &Case) -> (Vec<String>, Vec<String>) {
    let query = c.target.split_once('?').map_or("", |(_, q)| q);
    let q = keyward::policy::params::read(query.as_bytes()).expect("a forwarded query string is readable");
    let ct = c.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| *v);
    let form = c.method == "POST"
        && ct.is_none_or(|ct| {
            ct.split(';').next().unwrap().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let f = if form {
        keyward::policy::params::read(c.body.as_bytes()).expect("a forwarded form is readable")
    } else {
        vec![]
    };
    (q, f)
}

/// Send a case over its own TLS connection; returns keyward's request id for it.
async fn send_case(
    addr: std::net::SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    n: usize,
    c: &Case,
) -> String {
    let mut raw = format!(
        "{} {} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\nx-case: {n}\r\n",
        c.method, c.target
    );
    for (k, v) in &c.headers {
        raw += &format!("{k}: {v}\r\n");
    }
    raw += &format!("Content-Length: {}\r\nConnection: close\r\n\r\n{}", c.body.len(), c.body);
    let mut s = tls_connect(addr, tls, "127.0.0.1".parse().unwrap(), b"http/1.1").await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|l| l.strip_prefix("keyward-request-id: "))
        .unwrap_or("") // hyper's own bare 400s carry none
        .trim()
        .to_string()
}

/// What Rack read from each request the stand-in received, in order.
fn rack_reads(seen: &[Seen], new_puma: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["tests/rack/read.rb"];
    if new_puma {
        args.push("--new-puma");
    }
    let mut child = Command::new("ruby")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ruby (Debian's ruby-rack, installed by the test command)");
    let mut input = String::new();
    for s in seen {
        let headers: Vec<(String, String)> = s
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&s.body);
        input +=
            &serde_json::json!({ "method": s.method, "target": s.uri, "headers": headers, "body_b64": b64 })
                .to_string();
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "ruby failed");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), seen.len(), "one reading per request");
    lines
}

fn list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rack_reads_is_what_keyward_classified() {
    let seed: u64 =
        std::env::var("KEYWARD_RACK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        });
    let count: usize = std::env::var("KEYWARD_RACK_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    println!("KEYWARD_RACK_SEED={seed} KEYWARD_RACK_CASES={count}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let strategy = generated();
    let mut cases = table();
    let tabled = cases.len();
    cases.extend((0..count).map(|_| strategy.new_tree(&mut runner).unwrap().current()));

    let kw = Harness::new()
        .also_upstream("files")
        .service(Svc::new("svc").token("t", TOKEN).scope("*", "write").extra("accounts = [\"*\"]"))
        .start()
        .await;
    // Sixteen at a time, each on its own connection.
    let mut ids = vec![String::new(); cases.len()];
    for (chunk, start) in cases.chunks(16).zip((0..).step_by(16)) {
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in chunk.iter().enumerate() {
            let (addr, tls, c) = (kw.addr(), kw.client.clone(), c.clone());
            set.spawn(async move { (start + i, send_case(addr, tls, start + i, &c).await) });
        }
        while let Some(r) = set.join_next().await {
            let (n, id) = r.unwrap();
            ids[n] = id;
        }
    }
    let recorded = ids.iter().filter(|id| id.starts_with("kwreq_") && *id != "kwreq_unrecorded").count();
    let records: HashMap<String, serde_json::Value> = kw
        .records(recorded)
        .await
        .into_iter()
        .map(|r| (r["request_id"].as_str().unwrap_or("").to_string(), r))
        .collect();
    let mut seen = kw.upstream.requests();
    seen.extend(kw.others["files"].requests());
    let case_of: Vec<usize> =
        seen.iter().map(|s| s.headers["x-case"].to_str().unwrap().parse().unwrap()).collect();
    let mut disagreements = Vec::new();
    for new_puma in [false, true] {
        for (reading, &n) in rack_reads(&seen, new_puma).iter().zip(&case_of) {
            let c = &cases[n];
            let Some(rec) = records.get(&ids[n]) else {
                disagreements.push(format!("{c:?}: forwarded, but no access record"));
                continue;
            };
            let (query, form) = keyward_reading(c);
            let account = rec["stripe_account"].as_str().map(str::to_string);
            let rack_account =
                reading["account"].as_str().or(reading["context"].as_str()).map(str::to_string);
            let checks = [
                ("error", reading["error"].is_null(), reading["error"].to_string()),
                ("decision", rec["decision"] == "allow", rec["decision"].to_string()),
                (
                    "method",
                    reading["method"] == rec["method"],
                    format!("{} vs {}", reading["method"], rec["method"]),
                ),
                ("path", reading["path"] == rec["path"], format!("{} vs {}", reading["path"], rec["path"])),
                (
                    "query expand",
                    list(&reading["query_expand"]) == query,
                    format!("{} vs {query:?}", reading["query_expand"]),
                ),
                (
                    "form expand",
                    list(&reading["form_expand"]) == form,
                    format!("{} vs {form:?}", reading["form_expand"]),
                ),
                ("account", rack_account == account, format!("{rack_account:?} vs {account:?}")),
            ];
            for (what, ok, detail) in checks {
                if !ok {
                    let puma = if new_puma { "new Puma" } else { "old Puma" };
                    disagreements.push(format!("{c:?}\n    {what} ({puma}; Rack vs keyward): {detail}"));
                }
            }
        }
    }
    let forwarded = seen.len();
    println!(
        "{} cases ({tabled} from the table): {forwarded} forwarded and read by Rack, the rest refused",
        cases.len()
    );
    assert!(disagreements.is_empty(), "seed {seed}: Rack read differently:\n{}", disagreements.join("\n"));
    assert!(
        forwarded * 5 >= cases.len(),
        "only {forwarded} of {} forwarded: the generator tests too little",
        cases.len()
    );
    kw.stop().await;
}
