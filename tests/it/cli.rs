//! The command line as platform teams use it.

use std::process::Command;

fn keyward(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).current_dir(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn explain_json_answers_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = keyward(dir.path(), &["explain", "--json", "--service", "demo", "POST", "/v1/refunds"]);
    assert!(!ok, "a refused call exits 1: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["permission"], "charge_write");
    assert_eq!(v["access"], "write");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "more_permissions_required");
    assert_eq!(v["template"], "/v1/refunds");
    assert_eq!(v["upstream"], "api");
    assert_eq!(v["allow_with"], "charge = \"write\"");
    let (ok, out) = keyward(dir.path(), &["explain", "--service", "demo", "GET", "/v1/charges/ch_1"]);
    assert!(ok && out.trim_start().starts_with("decision: allow"), "{out}");
    let (ok, out) = keyward(dir.path(), &["explain", "--no-config", "POST", "/v1/refunds"]);
    assert!(ok && out.contains("allow_with: charge = \"write\""), "{out}");
    let (ok, out) =
        keyward(dir.path(), &["explain", "--service", "demo", "--form", "name=x", "GET", "/v1/charges/ch_1"]);
    assert!(
        !ok && out.contains("non_canonical_request") && out.contains("only POST calls may have"),
        "{out}"
    );

    let (_, out) = keyward(
        dir.path(),
        &[
            "explain",
            "--json",
            "--service",
            "demo",
            "--header",
            "Stripe-Account: acct_1X",
            "GET",
            "/v1/customers/cus_1?expand[]=subscription",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reason"], "account_not_allowed");
    assert_eq!(v["expansions"][0]["permission"], "subscription_read");
    assert_eq!(v["expansions"][0]["granted"], false);

    let (ok, out) = keyward(dir.path(), &["explain", "--service", "nobody", "GET", "/v1/charges"]);
    assert!(!ok && out.contains("no service named `nobody`"), "{out}");
    assert!(out.contains("the configuration has: "), "the services it has are named: {out}");
}

#[test]
fn catalog_lists_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = keyward(dir.path(), &["catalog"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 762);
    let (_, out) = keyward(dir.path(), &["catalog", "webhook_"]);
    assert!(out.lines().count() >= 5 && out.lines().all(|l| l.contains("webhook_")), "{out}");
}

#[test]
fn token_new_prints_a_token_and_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = keyward(dir.path(), &["token", "new", "billing", "--id", "billing-2026-11"]);
    assert!(ok);
    let token = out.split_whitespace().find(|w| w.starts_with("kw_")).unwrap();
    assert_eq!(token.len(), 52);
    assert!(keyward::policy::token_format::checksum_ok(token), "{token}");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    assert!(
        out.contains(&format!("sha256 = \"{hash}\"")) && out.contains("id = \"billing-2026-11\""),
        "{out}"
    );
    assert!(out.contains("[[service]]\nname = \"billing\""), "a new service gets a whole block: {out}");
    // A configured service gets its token block only, and scripts get JSON.
    let (_, out) = keyward(dir.path(), &["token", "new", "demo", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("kw_"), "{out}");
    assert!(!v["snippet"].as_str().unwrap().contains("[[service]]"), "{out}");
}

#[test]
fn certs_dev_writes_a_ca_and_a_leaf_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = keyward(dir.path(), &["certs", "dev", "--dir", "c"]);
    assert!(ok, "{out}");
    for f in ["ca.crt", "keyward.crt", "keyward.key", "forward-ca.crt", "forward-ca.key"] {
        assert!(dir.path().join("c").join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    for key in ["c/keyward.key", "c/forward-ca.key"] {
        let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{key} is private");
    }
    let (_, out) = keyward(dir.path(), &["certs", "dev", "--dir", "c"]);
    assert!(out.contains("left as they are"));
}
