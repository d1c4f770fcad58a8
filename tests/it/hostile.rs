//! Hostile request targets: anything the upstream could read differently from keyward is
//! refused before classification. Each row: what is sent, what it gets.

use crate::common::*;

const TOKEN: &str = "kw_hostile_token_0123456789abcdWXYZ";

/// `(request line, extra header, status, code, why)`. A `code` of `-` means the HTTP parser
/// itself refuses the request (a bare 400 before keyward's policy runs). `why` is what the
/// refusal's message must say: the rule that fired, so that a row cannot pass because another
/// one did.
const CASES: &[(&str, &str, u16, &str, &str)] = &[
    ("GET /v1/charges/../customers HTTP/1.1", "", 400, "non_canonical_request", "has a dot segment"),
    ("GET /v1/./charges HTTP/1.1", "", 400, "non_canonical_request", "has a dot segment"),
    ("GET /v1/customers/cus_1/../../charges HTTP/1.1", "", 400, "non_canonical_request", "has a dot segment"),
    (
        "GET /v1/charges/%2e%2e/customers HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges/%2E%2E/customers HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges/ch_1%2e HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges%2fch_1 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges%2Fch_1 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges%5cch_1 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges%5Cch_1 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    (
        "GET /v1/charges/%252e%252e HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a path delimiter (/ \\ . % ;)",
    ),
    ("GET /v1/charges\\ch_1 HTTP/1.1", "", 400, "non_canonical_request", "has a backslash"),
    (
        "GET //v1/charges HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has an empty path segment (// or a trailing /)",
    ),
    (
        "GET /v1//charges HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has an empty path segment (// or a trailing /)",
    ),
    (
        "GET /v1/charges/ HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has an empty path segment (// or a trailing /)",
    ),
    ("GET /v1/charges;jsessionid=1 HTTP/1.1", "", 400, "non_canonical_request", "has a ; path parameter"),
    ("GET /v1/charges/ch_1;v=2 HTTP/1.1", "", 400, "non_canonical_request", "has a ; path parameter"),
    (
        "GET /v1/charges/ch_1%00 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a control or non-ASCII byte",
    ),
    (
        "GET /v1/charges/ch_1%0d%0aX-Injected:1 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a control or non-ASCII byte",
    ),
    (
        "GET /v1/charges/ch_1%C3%A9 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a control or non-ASCII byte",
    ),
    ("GET /v1/charges/%zz HTTP/1.1", "", 400, "non_canonical_request", "has a malformed percent-encoding"),
    ("GET /v1/charges. HTTP/1.1", "", 400, "non_canonical_request", "has a path segment ending in a dot"),
    (
        "GET /v1/charges/ch_1. HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has a path segment ending in a dot",
    ),
    ("GET /v1/charges.. HTTP/1.1", "", 400, "non_canonical_request", "has a path segment ending in a dot"),
    (
        "GET https://evil.example/v1/charges HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "is in absolute form; send only the path",
    ),
    (
        "GET http://api.stripe.com/v1/charges HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "is in absolute form; send only the path",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X-HTTP-Method-Override: DELETE",
        400,
        "non_canonical_request",
        "carries a method-override header",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X-HTTP-Method: DELETE",
        400,
        "non_canonical_request",
        "carries a method-override header",
    ),
    // A header named in `Connection` is dropped on the way: keyward would check one request
    // (and record one account) and forward another.
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Connection: Stripe-Account",
        400,
        "non_canonical_request",
        "comes with a Connection header naming a header keyward checks",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Connection: keep-alive, stripe-context",
        400,
        "non_canonical_request",
        "comes with a Connection header naming a header keyward checks",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Connection: content-type",
        400,
        "non_canonical_request",
        "comes with a Connection header naming a header keyward checks",
    ),
    ("GET /v1/customers/cus_1 HTTP/1.1", "Connection: keep-alive", 200, "", ""),
    (
        "GET /v1/customers/%73earch HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "percent-encodes a letter, digit, -, _ or ~, which need no encoding",
    ),
    (
        "GET /v1/customers/cus_1?%5Fmethod=DELETE HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "carries a _method override",
    ),
    (
        "POST /v1/customers/cus_1 HTTP/1.1",
        "Content-Type: text/plain\r\nContent-Type: application/x-www-form-urlencoded",
        400,
        "non_canonical_request",
        "carries more than one Content-Type, Stripe-Account or Stripe-Context",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X-Method-Override: POST",
        400,
        "non_canonical_request",
        "carries a method-override header",
    ),
    (
        "GET /v1/customers/cus_1?_method=DELETE HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "carries a _method override",
    ),
    // CGI-style servers read `_` in a header name as `-`.
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Stripe_Account: acct_evil",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Stripe_Context: acct_evil",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X_HTTP_Method_Override: DELETE",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X-HTTP_Method-Override: DELETE",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Keyward_Debug: 1",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "X_Forwarded_For: 10.0.0.1",
        400,
        "non_canonical_request",
        "has a header name with _ that servers read as a header keyward checks or sets",
    ),
    ("GET /v1/customers/cus_1 HTTP/1.1", "X_Custom_Header: 1", 200, "", ""),
    (
        "GET /v1/customers/cus_1 HTTP/1.1",
        "Stripe-Account: acct_1\r\nStripe-Account: acct_2",
        400,
        "non_canonical_request",
        "carries more than one Content-Type, Stripe-Account or Stripe-Context",
    ),
    // Rack splits the query on `;` too, and reads stray brackets leniently.
    (
        "GET /v1/customers/cus_1?a=1;expand[]=default_source HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "uses ; between parameters, which some servers read as &",
    ),
    (
        "GET /v1/customers/cus_1?[expand][]=default_source HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has a parameter name with stray or unbalanced brackets",
    ),
    (
        "GET /v1/customers/cus_1?expand]=default_source HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has a parameter name with stray or unbalanced brackets",
    ),
    (
        "GET /v1/customers/cus_1?expand[0=default_source HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has a parameter name with stray or unbalanced brackets",
    ),
    (
        "GET /v1/customers/cus_1?expand=a&expand=b HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "gives expand twice, or in two forms, which servers read differently",
    ),
    (
        "GET /v1/customers/cus_1?expand[]=%zz HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "has a malformed percent-encoding in a parameter",
    ),
    ("GET /v1/customers/cus_1?expand[0]=a&expand[1]=b HTTP/1.1", "", 200, "", ""),
    (
        "CONNECT api.stripe.com:443 HTTP/1.1",
        "",
        400,
        "non_canonical_request",
        "is in absolute form; send only the path",
    ),
    ("GET /V1/CHARGES HTTP/1.1", "", 403, "endpoint_not_in_catalog", "no entry for GET /V1/CHARGES"),
    ("GET /v1/Charges HTTP/1.1", "", 403, "endpoint_not_in_catalog", "no entry for GET /v1/Charges"),
    ("Get /v1/charges HTTP/1.1", "", 403, "endpoint_not_in_catalog", "no entry for Get /v1/charges"),
    ("TRACE /v1/charges HTTP/1.1", "", 403, "endpoint_not_in_catalog", "no entry for TRACE /v1/charges"),
    (
        "PUT /v1/customers/cus_1 HTTP/1.1",
        "",
        403,
        "endpoint_not_in_catalog",
        "no entry for PUT /v1/customers/cus_1",
    ),
    (
        "GET /v1/customers/cus_1/extra HTTP/1.1",
        "",
        403,
        "endpoint_not_in_catalog",
        "no entry for GET /v1/customers/cus_1/extra",
    ),
    // The Host header is not where a call goes: keyward picks the upstream.
    ("GET /v1/customers/cus_1 HTTP/1.1", "Host: evil.example", 200, "", ""),
    ("GET /v1/customers/cus_1?expand[]=x HTTP/1.1", "", 200, "", ""),
];

/// The `error.message` of a JSON answer, or nothing.
fn message_of(body: &[u8]) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok();
    v.and_then(|v| v["error"]["message"].as_str().map(str::to_string)).unwrap_or_default()
}

#[tokio::test]
async fn hostile_request_table() {
    let kw = Harness::new().service(Svc::new("svc").token("t", TOKEN).scope("*", "write")).start().await;
    let mut failures = Vec::new();
    let overlong = format!("GET /v1/customers/{} HTTP/1.1", "a".repeat(2000));
    let nul = "GET /v1/charges/ch_1\0 HTTP/1.1".to_string();
    let utf8 = "GET /v1/charges/ch_\u{e9} HTTP/1.1".to_string();
    // The record keeps the first 1,024 bytes of a path: here that cut falls inside the `é`.
    let utf8_at_cut = format!("GET /{}\u{e9} HTTP/1.1", "a".repeat(1022));
    let extra: Vec<(String, &str, u16, &str, &str)> = vec![
        (overlong, "", 400, "non_canonical_request", "path is too long"),
        (nul, "", 400, "-", ""),
        (utf8, "", 400, "non_canonical_request", "has a non-ASCII byte"),
        // Too long before it is anything else.
        (utf8_at_cut, "", 400, "non_canonical_request", "path is too long"),
    ];
    let all = CASES.iter().map(|(l, h, s, c, w)| (l.to_string(), *h, *s, *c, *w)).chain(extra);
    let mut rows = 0;
    for (line, header, status, code, why) in all {
        rows += 1;
        let mut raw = format!("{line}\r\n");
        if !header.starts_with("Host:") {
            raw += "Host: keyward.internal\r\n";
        }
        if !header.is_empty() {
            raw += &format!("{header}\r\n");
        }
        raw += &format!("Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
        let answer = kw.raw(raw.as_bytes()).await;
        let got_status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let got_code = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| if got_status == 200 { String::new() } else { "-".into() });
        let shown: String = line.chars().take(60).collect::<String>().escape_debug().to_string();
        let message = message_of(body.as_bytes());
        println!("{shown:<62} {header:<32} -> {got_status} {got_code} ({why})");
        if got_status != status || got_code != code || !message.contains(why) {
            failures.push(format!(
                "{shown} [{header}]: got {got_status} {got_code} \"{message}\", want {status} {code} \"{why}\""
            ));
        }
    }
    assert!(rows >= 30);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // Only the rows that should reach the upstream did.
    assert_eq!(kw.upstream.requests().len(), CASES.iter().filter(|c| c.2 == 200).count());
    for seen in kw.upstream.requests() {
        assert!(seen.uri.starts_with("/v1/customers/cus_1"));
        assert!(seen.authority.starts_with("localhost:"));
    }
    kw.stop().await;
}

/// `(Content-Type header or "" for none, body, status, code)`: POST bodies that the API's
/// servers (Rack) would read differently from keyward. Each is sent to a service that may not
/// read sources, so an `expand` that slipped through would be a privilege keyward did not check.
const BODIES: &[(&str, &str, u16, &str)] = &[
    (
        "Content-Type: application/x-www-form-urlencoded",
        "[expand][]=default_source",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: application/x-www-form-urlencoded",
        "expand]=default_source",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: application/x-www-form-urlencoded",
        "[expand]=default_source",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: application/x-www-form-urlencoded",
        "expand[0=default_source",
        400,
        "non_canonical_request",
    ),
    ("Content-Type: application/x-www-form-urlencoded", "a=1;_method=DELETE", 400, "non_canonical_request"),
    ("Content-Type: application/x-www-form-urlencoded", "_method=DELETE", 400, "non_canonical_request"),
    (
        "Content-Type: application/x-www-form-urlencoded",
        "expand[]=default_source",
        403,
        "more_permissions_required",
    ),
    (
        "Content-Type: application/x-www-form-urlencoded, text/plain",
        "expand[]=default_source",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: application/x-www-form-urlencoded,",
        "expand[]=default_source",
        400,
        "non_canonical_request",
    ),
    ("Content-Type: ", "expand[]=default_source", 400, "non_canonical_request"),
    ("Content-Type: ", "_method=DELETE", 400, "non_canonical_request"),
    (
        "Content-Type: text/plain, application/x-www-form-urlencoded",
        "_method=DELETE",
        400,
        "non_canonical_request",
    ),
    ("", "expand[]=default_source", 403, "more_permissions_required"),
    (
        "Content-Type: multipart/form-data; boundary=B",
        "--B\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--B--\r\n",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: multipart/form-data; boundary=B",
        "--B\r\nContent-Disposition: form-data; name=\"expand[]\"\r\n\r\ndefault_source\r\n--B--\r\n",
        400,
        "non_canonical_request",
    ),
    (
        "Content-Type: multipart/mixed; boundary=B",
        "--B\r\nContent-ID: _method\r\n\r\nDELETE\r\n--B--\r\n",
        400,
        "non_canonical_request",
    ),
    ("Content-Type: multipart/form-data", "x", 400, "non_canonical_request"),
    // Multipart goes only to the endpoints that take files: not to this one, however plain.
    (
        "Content-Type: multipart/form-data; boundary=B",
        "--B\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nJo\r\n--B--\r\n",
        400,
        "non_canonical_request",
    ),
    // Rack finds no boundary here and reads the body as a form.
    (
        "Content-Type: multipart/form-data; boundary = AAA",
        "_method=DELETE&expand[]=default_source",
        400,
        "non_canonical_request",
    ),
    // Something in front of the API could decode it: keyward reads bodies as they are sent.
    (
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip",
        "name=Jo",
        400,
        "non_canonical_request",
    ),
    ("Content-Type: application/x-www-form-urlencoded", "name=Jo&metadata[k]=v", 200, ""),
];

#[tokio::test]
async fn hostile_body_table() {
    let kw = Harness::new()
        .service(Svc::new("svc").token("t", TOKEN).scope("customer", "write").scope("source", "none"))
        .start()
        .await;
    let mut failures = Vec::new();
    for (n, (header, body, status, code)) in BODIES.iter().enumerate() {
        let header = if header.is_empty() { String::new() } else { format!("{header}\r\n") };
        let raw = format!(
            "POST /v1/customers/cus_1 HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\n{header}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = kw.raw(raw.as_bytes()).await;
        let got_status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let reply = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let got_code = serde_json::from_str::<serde_json::Value>(reply)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        // Each row's record says what was decided, and why.
        let rec = kw.last_record(n + 1).await;
        let want_decision = if *status == 200 { "allow" } else { "deny" };
        let want_reason = if *status == 200 { "ok" } else { code };
        let shown = format!("{header:?} {body:.60?}");
        println!("{shown:<110} -> {got_status} {got_code}");
        if got_status != *status
            || got_code != *code
            || rec["decision"] != want_decision
            || rec["reason"] != want_reason
        {
            failures.push(format!(
                "{shown}: got {got_status} {got_code} (record {} {}), want {status} {code}",
                rec["decision"], rec["reason"]
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(kw.upstream.requests().len(), BODIES.iter().filter(|c| c.2 == 200).count());
    kw.stop().await;
}

/// Multipart uploads to the endpoint that takes files: the one shape every parser reads alike
/// passes; each body a hostile review found Rack reading as `_method` or `expand` is refused.
#[tokio::test]
async fn hostile_multipart_uploads() {
    let kw = Harness::new()
        .also_upstream("files")
        .service(Svc::new("svc").token("t", TOKEN).scope("file", "write"))
        .start()
        .await;
    let part = |name: &str, value: &str| {
        format!("--AAA\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    };
    let good = format!("{}{}--AAA--\r\n", part("purpose", "dispute_evidence"), part("file", "%PDF"));
    let ct = "multipart/form-data; boundary=AAA";
    let cases: Vec<(String, String, u16)> = vec![
        (ct.into(), good.clone(), 200),
        ("multipart/form-data; boundary = AAA".into(), "_method=DELETE&expand[]=invoice".into(), 400),
        ("multipart/form-data; boundary=AAA; boundary=BBB".into(), good.replace("AAA", "BBB"), 400),
        ("multipart/form-data; boundary=AAA; x=\"boundary=BBB\"".into(), good.replace("AAA", "BBB"), 400),
        ("multipart/form-data; boundary=\"AAA;x\"".into(), good.clone(), 400),
        ("multipart/form-data; boundary=AAA\"".into(), good.clone(), 400),
        (ct.into(), format!("--AAA--\r\n{}--AAA--\r\n", part("_method", "DELETE")), 400),
        (ct.into(), format!("{}--AAA--X\r\n{}--AAA--\r\n", part("a", "x"), part("_method", "DELETE")), 400),
        (
            ct.into(),
            "--AAA\r\nX-A: y\n\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--AAA--\r\n".into(),
            400,
        ),
        (ct.into(), format!("{}--AAA--\r\n", part("_m\\ethod", "DELETE")), 400),
        (ct.into(), format!("{}--AAA--\r\n", part("exp\\and[]", "invoice")), 400),
    ];
    let mut failures = Vec::new();
    for (content_type, body, status) in &cases {
        let raw = format!(
            "POST /v1/files HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = kw.raw(raw.as_bytes()).await;
        let got: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if got != *status {
            failures.push(format!("{content_type} {body:.80?}: got {got}, want {status}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // What was refused never reached the upstream whole: only the good upload arrived.
    let arrived: Vec<_> =
        kw.others["files"].requests().into_iter().filter(|s| s.body.ends_with(b"--AAA--\r\n")).collect();
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].body, good.as_bytes());
    kw.stop().await;
}

/// The same table over HTTP/2, with each row's access record checked too. Rows an HTTP/2
/// client cannot send (absolute-form targets, CONNECT, connection-specific headers, targets
/// that are not URIs) are left to the HTTP/1.1 table.
#[tokio::test]
async fn hostile_request_table_over_http2() {
    let kw = Harness::new().service(Svc::new("svc").token("t", TOKEN).scope("*", "write")).start().await;
    let tls = kw.tls_from("127.0.0.1".parse().unwrap(), b"h2").await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut failures, mut sent) = (Vec::new(), Vec::new());
    for (line, header, status, code, why) in CASES {
        let mut words = line.split(' ');
        let (method, target) = (words.next().unwrap(), words.next().unwrap());
        let extra: Vec<(&str, &str)> =
            header.split("\r\n").filter(|h| !h.is_empty()).map(|h| h.split_once(": ").unwrap()).collect();
        let connection_specific =
            extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("host"));
        if !target.starts_with('/') || method == "CONNECT" || connection_specific {
            continue;
        }
        let Ok(uri) = format!("https://localhost{target}").parse::<http::Uri>() else { continue };
        let mut r = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in &extra {
            r = r.header(*k, *v);
        }
        let Ok(r) = r.body(()) else { continue };
        let mut client = client.clone().ready().await.unwrap();
        let (answer, _) = client.send_request(r, true).unwrap();
        let resp = answer.await.unwrap();
        let got_status = resp.status().as_u16();
        let id = resp.headers()["keyward-request-id"].to_str().unwrap().to_string();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let got_code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        let message = message_of(&bytes);
        if got_status != *status || got_code != *code || !message.contains(why) {
            failures.push(format!(
                "{line} [{header}]: got {got_status} {got_code} \"{message}\", want {status} {code} \"{why}\""
            ));
        }
        sent.push((id, *line, *status, *code));
    }
    assert!(sent.len() >= 30, "{} rows sent over HTTP/2", sent.len());
    let records: std::collections::HashMap<String, serde_json::Value> = kw
        .records(sent.len())
        .await
        .into_iter()
        .map(|r| (r["request_id"].as_str().unwrap().to_string(), r))
        .collect();
    for (id, line, status, code) in &sent {
        let rec = &records[id];
        let (decision, reason) = if *status == 200 { ("allow", "ok") } else { ("deny", *code) };
        if rec["decision"] != decision || rec["reason"] != reason {
            failures.push(format!(
                "{line}: recorded {} {}, want {decision} {reason}",
                rec["decision"], rec["reason"]
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    kw.stop().await;
}

/// hyper answers what it cannot parse itself, with a bare status: keyward still records it.
#[tokio::test]
async fn requests_the_parser_refuses_are_recorded() {
    let kw = Harness::new().service(Svc::new("svc").token("t", TOKEN).scope("*", "write")).start().await;
    let nul = "GET /v1/charges/ch_1\0 HTTP/1.1\r\nHost: k\r\n\r\n".to_string();
    let huge = format!("GET /v1/charges HTTP/1.1\r\nHost: k\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    for (raw, status, reason) in [(nul, 400, "malformed_request"), (huge, 431, "request_head_too_large")] {
        let answer = kw.raw(raw.as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer:.80}");
        let rec = kw.last_record(if status == 400 { 1 } else { 2 }).await;
        assert_eq!(rec["status"], status);
        assert_eq!(rec["reason"], reason);
        assert_eq!(rec["decision"], "deny");
        assert_eq!(rec["client_ip"], "127.0.0.1");
        assert_eq!(rec["method"], "");
        assert!(rec["request_id"].as_str().unwrap().starts_with("kwreq_"));
    }
    assert!(kw.upstream.requests().is_empty());
    kw.stop().await;
}
