//! Connect accounts, direct permissions, expansions and host routing.

use crate::common::*;

const TOKEN: &str = "kw_connect_token_0123456789abcdWXYZ";
const ALLOWED: &str = "acct_1Allowed";

fn with(
    r: http::Request<http_body_util::Full<bytes::Bytes>>,
    k: &str,
    v: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = r;
    r.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    r
}

#[tokio::test]
async fn connect_accounts_are_checked_in_headers_and_paths() {
    let svc = |name: &str, token: &str, accounts: &str| {
        Svc::new(name)
            .token(name, token)
            .scope("charge", "read")
            .scope("connected_account", "write")
            .scope("v2_account_storer", "write")
            .extra(&format!("accounts = {accounts}"))
    };
    let kw = Harness::new()
        .service(svc("listed", TOKEN, "[\"acct_1Allowed\"]"))
        .service(svc("platform", "kw_platform_token_000000000000000", "[]"))
        .service(svc("any", "kw_any_token_00000000000000000000", "[\"*\"]"))
        .start()
        .await;
    let get = |t: &str, p: &str| req("GET", p, t, "");
    let cases = vec![
        ("listed, own account", with(get(TOKEN, "/v1/charges"), "stripe-account", ALLOWED), 200, ""),
        (
            "listed, other account",
            with(get(TOKEN, "/v1/charges"), "stripe-account", "acct_1Other"),
            403,
            "account_not_allowed",
        ),
        (
            "listed, context path",
            with(get(TOKEN, "/v1/charges"), "stripe-context", "acct_1Allowed/acct_1Other"),
            403,
            "account_not_allowed",
        ),
        ("listed, context ok", with(get(TOKEN, "/v1/charges"), "stripe-context", ALLOWED), 200, ""),
        (
            "platform, any account",
            with(get("kw_platform_token_000000000000000", "/v1/charges"), "stripe-account", ALLOWED),
            403,
            "account_not_allowed",
        ),
        ("platform, no header", get("kw_platform_token_000000000000000", "/v1/charges"), 200, ""),
        (
            "any, any account",
            with(get("kw_any_token_00000000000000000000", "/v1/charges"), "stripe-account", "acct_1Zzz"),
            200,
            "",
        ),
        (
            "path: other account",
            get(TOKEN, "/v1/accounts/acct_1Other/capabilities"),
            403,
            "account_not_allowed",
        ),
        ("path: own account", get(TOKEN, "/v1/accounts/acct_1Allowed/capabilities"), 200, ""),
        (
            "v2 path: other account",
            req("POST", "/v2/core/accounts/acct_1Other/close", TOKEN, ""),
            403,
            "account_not_allowed",
        ),
        ("v2 path: own account", get(TOKEN, "/v2/core/accounts/acct_1Allowed/person_tokens/pt_1"), 200, ""),
        ("v2 list: no account in path", get(TOKEN, "/v2/core/accounts"), 200, ""),
        (
            "path: platform-only",
            get("kw_platform_token_000000000000000", "/v1/accounts/acct_1Allowed"),
            403,
            "account_not_allowed",
        ),
        (
            "direct on behalf",
            with(get(TOKEN, "/v1/account"), "stripe-account", ALLOWED),
            403,
            "direct_permission_on_connected_account",
        ),
        ("direct on own platform", get(TOKEN, "/v1/account"), 200, ""),
        (
            "direct via context",
            with(get("kw_any_token_00000000000000000000", "/v1/account"), "stripe-context", "acct_1Zzz"),
            403,
            "direct_permission_on_connected_account",
        ),
    ];
    for (what, r, status, code) in cases {
        let reply = kw.send(r).await;
        assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
        if !code.is_empty() {
            assert_eq!(reply.error_code(), code, "{what}");
            assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
        }
    }
    let recs = kw.records(13).await;
    assert_eq!(recs[0]["stripe_account"], ALLOWED);
    assert_eq!(recs[1]["reason"], "account_not_allowed");
    kw.stop().await;
}

#[tokio::test]
async fn expansions_need_read_on_what_they_expand() {
    let kw = Harness::new()
        .service(
            Svc::new("narrow").token("n", TOKEN).scope("charge", "read").scope("payment_intent", "write"),
        )
        .service(
            Svc::new("wide")
                .token("w", "kw_wide_token_000000000000000000000")
                .scope("charge", "read")
                .scope("customer", "write")
                .scope("payment_intent", "write"),
        )
        .service(
            Svc::new("report")
                .token("r", "kw_report_token_0000000000000000000")
                .scope("payment_intent", "write")
                .extra("mode = \"report\""),
        )
        .top("[limits]\nmax_form_bytes = 4096")
        .start()
        .await;
    let wide = "kw_wide_token_000000000000000000000";
    let deny = kw.get("/v1/charges/ch_1?expand[]=customer", TOKEN).await;
    assert_eq!((deny.status, deny.error_code().as_str()), (403, "more_permissions_required"));
    assert!(deny.json()["error"]["message"].as_str().unwrap().contains("'rak_customer_read'"));
    let deny = kw.get("/v1/charges/ch_1?expand%5B0%5D=balance_transaction", wide).await;
    assert!(deny.json()["error"]["message"].as_str().unwrap().contains("'rak_balance_read'"));
    let deny = kw.get("/v1/charges?expand[]=data.customer", TOKEN).await;
    assert_eq!(deny.status, 403, "list expansions count too");
    assert_eq!(kw.get("/v1/charges/ch_1?expand[]=customer", wide).await.status, 200);
    assert_eq!(
        kw.get("/v1/charges/ch_1?expand[]=outcome", TOKEN).await.status,
        200,
        "fields not in the table"
    );

    let form = "amount=2000&currency=usd&expand[]=customer";
    let deny = kw.post("/v1/payment_intents", TOKEN, form).await;
    assert_eq!(deny.status, 403, "{:?}", deny.body);
    assert!(deny.json()["error"]["message"].as_str().unwrap().contains("'rak_customer_read'"));
    let ok = kw.post("/v1/payment_intents", wide, form).await;
    assert_eq!(ok.status, 200);
    assert_eq!(kw.upstream.requests().last().unwrap().body, form.as_bytes(), "form forwarded byte for byte");

    let big = format!("amount=1&metadata[note]={}", "x".repeat(5000));
    let too_big = kw.post("/v1/payment_intents", wide, &big).await;
    assert_eq!((too_big.status, too_big.error_code().as_str()), (413, "form_body_too_large"));

    let reported = kw.post("/v1/payment_intents", "kw_report_token_0000000000000000000", form).await;
    assert_eq!(reported.status, 200);
    let recs = kw.records(9).await;
    let last = recs.last().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["reason"].as_str()),
        (Some("would_deny"), Some("more_permissions_required"))
    );
    assert_eq!(recs[5]["decision"], "deny");
    assert_eq!(recs[5]["reason"], "more_permissions_required");

    // A body with no Content-Type may still be read as a form upstream: it is checked as one.
    let mut untyped = req("POST", "/v1/payment_intents", TOKEN, form);
    untyped.headers_mut().remove("content-type");
    let deny = kw.send(untyped).await;
    assert_eq!(deny.status, 403, "{:?}", deny.body);
    assert!(deny.json()["error"]["message"].as_str().unwrap().contains("'rak_customer_read'"));
    // Some frameworks take the method from a `_method` form field.
    for body in ["amount=1&_method=DELETE", "%5Fmethod=DELETE"] {
        let overridden = kw.post("/v1/payment_intents", wide, body).await;
        assert_eq!((overridden.status, overridden.error_code().as_str()), (400, "non_canonical_request"));
    }
    // GET and DELETE take their parameters in the query only.
    for method in ["GET", "DELETE"] {
        let with_body = kw.send(req(method, "/v1/customers/cus_1", wide, "expand[]=customer")).await;
        assert_eq!((with_body.status, with_body.error_code().as_str()), (400, "non_canonical_request"));
    }
    kw.stop().await;
}

#[tokio::test]
async fn operations_go_to_their_own_host() {
    let kw = Harness::new()
        .also_upstream("files")
        .service(
            Svc::new("files")
                .token("f", TOKEN)
                .scope("file", "write")
                .scope("quote", "read")
                .scope("oauth", "write"),
        )
        .start()
        .await;
    // A multipart upload, larger than any buffer, streams through to files.stripe.com's stand-in.
    let boundary = "kwBoundary7MA4YWxkTrZu0gW";
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndispute_evidence\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"e.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&payload);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let upload = http::Request::builder()
        .method("POST")
        .uri("/v1/files")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    assert_eq!(kw.send(upload).await.status, 200);
    assert_eq!(kw.get("/v1/quotes/qt_1/pdf", TOKEN).await.status, 200);
    assert_eq!(kw.get("/v1/files/file_1", TOKEN).await.status, 200);

    let files = kw.others["files"].requests();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].uri, "/v1/files");
    assert_eq!(files[0].body, body, "multipart body arrives whole");
    assert_eq!(files[1].uri, "/v1/quotes/qt_1/pdf");
    let api = kw.upstream.requests();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].uri, "/v1/files/file_1");

    // OAuth lives on connect.stripe.com, which this config does not route.
    let oauth = kw.post("/oauth/token", TOKEN, "grant_type=authorization_code").await;
    assert_eq!((oauth.status, oauth.error_code().as_str()), (502, "upstream_not_configured"));
    let recs = kw.records(4).await;
    assert_eq!(recs[0]["upstream"], "files");
    assert_eq!(recs[0]["bytes_in"].as_u64().unwrap(), body.len() as u64);
    kw.stop().await;
}
