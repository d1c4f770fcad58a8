//! A keyward token anywhere but `Authorization` — the query, the path, another header, a form,
//! JSON or multipart body — is refused with 400 `token_in_wrong_place` and never forwarded;
//! the record counts the token as exposed and names it, and `keyward audit report` lists it.

use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use keyward::policy::token_format::with_checksum;

use crate::common::*;

fn minted(letter: &str) -> String {
    with_checksum(&format!("{letter}9z").repeat(15)[..43])
}

/// A token minted before the checksum: `kw_` and 43 letters, known by its configured hash.
fn old() -> String {
    format!("kw_{}", &"Old7".repeat(11)[..43])
}

fn request(
    method: &str,
    uri: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder().method(method).uri(uri).header("host", "keyward.internal");
    if let Some(t) = auth {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// What is sent, whether it is refused, and the service and token id its record names.
type Row<'a> = (&'a str, http::Request<Full<Bytes>>, bool, (&'a str, &'a str));

#[tokio::test]
async fn a_token_in_the_wrong_place_is_refused_never_forwarded_and_counted_exposed() {
    let (a, b, c) = (minted("A"), minted("B"), old());
    let a_body = &a[3..];
    let kw = Harness::new()
        .also_upstream("files")
        .service(
            Svc::new("billing")
                .token("a", &a)
                .token("c", &c)
                .scope("customer", "write")
                .scope("file", "write"),
        )
        .service(Svc::new("reports").token("b", &b).scope("customer", "read"))
        .start()
        .await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let json = [("content-type", "application/json")];
    let boundary = "kwB0undary";
    let multipart_ct = format!("multipart/form-data; boundary={boundary}");
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndispute_evidence\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"n.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nnotes: {a}\r\n--{boundary}--\r\n"
    );
    let mut lookalike = a.clone().into_bytes();
    lookalike[10] = if lookalike[10] == b'x' { b'y' } else { b'x' };
    let lookalike = String::from_utf8(lookalike).unwrap();
    let cookie = format!("session=x{a}y");
    let table: Vec<Row> = vec![
        (
            "query",
            request("GET", &format!("/v1/customers?api_key={a}"), Some(&a), &[], ""),
            true,
            ("billing", "a"),
        ),
        (
            "query, %5F",
            request("GET", &format!("/v1/customers?k=kw%5F{a_body}"), Some(&a), &[], ""),
            true,
            ("billing", "a"),
        ),
        ("path", request("GET", &format!("/v1/customers/{a}"), Some(&a), &[], ""), true, ("billing", "a")),
        (
            "X-Api-Key",
            request("GET", "/v1/customers", Some(&a), &[("x-api-key", &a)], ""),
            true,
            ("billing", "a"),
        ),
        (
            "Stripe-Account",
            request("GET", "/v1/customers", Some(&a), &[("stripe-account", &a)], ""),
            true,
            ("billing", "a"),
        ),
        (
            "Cookie, glued",
            request("GET", "/v1/customers", Some(&a), &[("cookie", &cookie)], ""),
            true,
            ("billing", "a"),
        ),
        (
            "form field",
            request("POST", "/v1/customers", Some(&a), &form, &format!("description={a}")),
            true,
            ("billing", "a"),
        ),
        (
            "form field, %5F",
            request("POST", "/v1/customers", Some(&a), &form, &format!("name=n&description=kw%5f{a_body}")),
            true,
            ("billing", "a"),
        ),
        (
            "JSON body",
            request("POST", "/v1/customers", Some(&a), &json, &format!(r#"{{"description":"{a}"}}"#)),
            true,
            ("billing", "a"),
        ),
        (
            "JSON body, \\u005f",
            request("POST", "/v1/customers", Some(&a), &json, &format!(r#"{{"d":"kw\u005f{a_body}"}}"#)),
            true,
            ("billing", "a"),
        ),
        (
            "multipart file",
            request("POST", "/v1/files", Some(&a), &[("content-type", &multipart_ct)], &multipart),
            true,
            ("billing", "a"),
        ),
        (
            "no Authorization, query",
            request("GET", &format!("/v1/customers?key={b}"), None, &[], ""),
            true,
            ("reports", "b"),
        ),
        (
            "another service's token",
            request("GET", "/v1/customers", Some(&a), &[("x-api-key", &b)], ""),
            true,
            ("reports", "b"),
        ),
        (
            "a pre-checksum token",
            request("GET", "/v1/customers", Some(&a), &[("x-key", &c)], ""),
            true,
            ("billing", "c"),
        ),
        (
            "a lookalike goes on",
            request("GET", &format!("/v1/customers?q={lookalike}"), Some(&a), &[], ""),
            false,
            ("billing", "a"),
        ),
        ("Authorization alone", request("GET", "/v1/customers", Some(&a), &[], ""), false, ("billing", "a")),
    ];
    let n = table.len();
    for (i, (what, req, refused, whose)) in table.into_iter().enumerate() {
        let (status, code) = if refused { (400, "token_in_wrong_place") } else { (200, "") };
        let reply = kw.send(req).await;
        println!("{what:<28} {:>4}  {}", reply.status, reply.error_code());
        assert_eq!(reply.status, status, "{what}: {}", String::from_utf8_lossy(&reply.body));
        let record = kw.last_record(i + 1).await;
        if status == 400 {
            assert_eq!(reply.error_code(), code, "{what}");
            assert_eq!(record["reason"], code, "{what}");
            assert_eq!(record["token_exposed"], true, "{what}: {record}");
            let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(message.contains("rotate"), "{what}: {message}");
            for t in [&a, &b, &c] {
                assert!(!message.contains(t.as_str()), "{what}: {message}");
            }
        } else {
            assert!(record.get("token_exposed").is_none(), "{what}: {record}");
        }
        let (service, token) = whose;
        assert_eq!(
            (record["service"].as_str(), record["token_id"].as_str()),
            (Some(service), Some(token)),
            "{what}"
        );
    }

    // A token split across the chunks of a streamed body is found too.
    let (head, tail) = a.split_at(20);
    let raw = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {a}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{{\"d\":\"{head}\r\n{:x}\r\n{tail}\"}}\r\n0\r\n\r\n",
        head.len() + 6,
        tail.len() + 2
    );
    let answer = kw.raw(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("token_in_wrong_place"), "{answer}");

    // Only the two calls that were let go reached the API, and no token with them.
    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 2, "{:?}", seen.iter().map(|s| &s.uri).collect::<Vec<_>>());
    let mut files = kw.others["files"].requests();
    files.extend(seen);
    for s in &files {
        let all = format!("{} {:?} {}", s.uri, s.headers, String::from_utf8_lossy(&s.body));
        for t in [&a, &b, &c] {
            assert!(!all.contains(&t[3..]), "forwarded: {all}");
        }
    }

    // The report lists the exposed tokens, to be rotated.
    let dir = kw.stop().await;
    let log = dir.path().join("audit.jsonl");
    let out =
        Command::new(env!("CARGO_BIN_EXE_keyward")).args(["audit", "report"]).arg(&log).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposed: Vec<&str> = report.lines().filter(|l| l.contains("token exposed")).collect();
    assert_eq!(exposed.len(), 3, "{report}");
    assert!(
        exposed.iter().any(|l| l.contains("billing token a") && l.contains(&format!("{} calls", n - 4))),
        "{report}"
    );
    assert!(exposed.iter().any(|l| l.contains("reports token b") && l.contains("2 calls")), "{report}");
    assert!(exposed.iter().any(|l| l.contains("billing token c") && l.contains("1 call")), "{report}");
}
