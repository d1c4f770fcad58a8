//! Broken configuration files: each gets a clear error naming file, line and key, a non-zero
//! exit, and never an echo of a secret.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::*;

const CANARY: &str = "sk_live_CANARY_7f3a9";

/// A good configuration as a person writes it: these tests break it by editing its text,
/// the way mistakes happen (and so that errors can be checked for their line numbers).
fn base(pki: &Pki, dir: &std::path::Path) -> String {
    let secrets = dir.join("secrets.toml");
    std::fs::write(&secrets, format!("stripe = {SECRET:?}\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hash = sha256_hex("kw_tok_aaaaaaaaaaaaaaaaaaaaaaaa");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\n\
         [upstream.api]\nurl = \"https://localhost:9\"\nca = {:?}\n\n\
         [secret.stripe]\nsource = \"file\"\npath = {secrets:?}\nkey = \"stripe\"\n\n\
         [audit]\npath = {:?}\n\n\
         [[service]]\nname = \"billing\"\nsecret = \"stripe\"\nsource_ips = [\"127.0.0.0/8\", \"::1/128\"]\n\
         [[service.token]]\nid = \"b1\"\nsha256 = \"{hash}\"\n\n[service.scope]\n\"charge\" = \"read\"\n",
        pki.cert,
        pki.key,
        pki.ca,
        dir.join("audit.jsonl"),
    )
}

fn check(dir: &std::path::Path, text: &str) -> (bool, String) {
    let path = dir.join("keyward.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(dir)
        .env("KEYWARD_LOG", "warn")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn valid_config_checks_ok() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(dir.path(), &base(&pki, dir.path()));
    assert!(ok, "{out}");
    assert!(out.starts_with("ok: 1 services, 1 tokens"), "{out}");
}

#[test]
fn broken_configs_are_refused_with_file_line_and_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = base(&pki, dir.path());
    let svc_at = good.find("[[service]]").unwrap();
    let (head, svc) = good.split_at(svc_at);
    let cidr_line = format!("keyward.toml:{}:", good[..good.find("127.0.0.0/8").unwrap()].lines().count());
    let second_svc = svc.replace("name = \"billing\"", "name = \"other\"");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "typo in a key",
            good.replace("[service.scope]", "tokn = 1\n[service.scope]"),
            vec!["keyward.toml:", "unknown field `tokn`"],
        ),
        ("truncated file", good[..good.len() - 30].to_string() + "charge = \"re", vec!["keyward.toml:"]),
        (
            "bad CIDR",
            good.replace("127.0.0.0/8", "127.0.0.300/8"),
            vec![&cidr_line, "invalid IP address syntax"],
        ),
        (
            "bad level",
            good.replace("\"charge\" = \"read\"", "\"charge\" = \"reed\""),
            vec!["unknown variant"],
        ),
        (
            "unknown scope key",
            good.replace("\"charge\" = \"read\"", "\"chrage\" = \"read\""),
            vec!["service \"billing\".scope.chrage", "names no permission"],
        ),
        (
            "hash not hex",
            good.replace(&sha256_hex("kw_tok_aaaaaaaaaaaaaaaaaaaaaaaa"), "zz"),
            vec!["service \"billing\".token[0].sha256", "64 hex digits"],
        ),
        (
            "same token twice",
            format!("{head}{svc}{second_svc}"),
            vec!["service \"other\".token[0].sha256", "configured twice"],
        ),
        (
            "same service twice",
            format!("{head}{svc}{}", svc.replace("kw_", ""))
                .replace(&sha256_hex("kw_tok_aaaaaaaaaaaaaaaaaaaaaaaa"), &sha256_hex("x")),
            vec!["defined twice"],
        ),
        (
            "unknown secret",
            good.replace("secret = \"stripe\"", "secret = \"nope\""),
            vec!["service \"billing\".secret", "no [secret.nope]"],
        ),
        (
            "env secret missing",
            good.replacen(
                "source = \"file\"\npath",
                "source = \"env\"\nvar = \"KEYWARD_TEST_UNSET_VAR\"\n#path",
                1,
            )
            .replace("key = \"stripe\"", ""),
            vec!["secret.stripe", "KEYWARD_TEST_UNSET_VAR is not set"],
        ),
        (
            "http upstream",
            good.replace("https://localhost:9", "http://localhost:9"),
            vec!["upstream.api.url", "https://"],
        ),
        (
            "bad expiry",
            good.replace("sha256 =", "expires = \"next tuesday\"\nsha256 ="),
            vec!["service \"billing\".token[0].expires", "RFC 3339"],
        ),
        ("no server", good.replace("[server]", "[serverr]"), vec!["unknown field `serverr`"]),
        ("missing cert", good.replace("leaf.crt", "missing.crt"), vec!["server.tls_cert", "missing.crt"]),
        (
            "empty source_ips",
            good.replace("source_ips = [\"127.0.0.0/8\", \"::1/128\"]", "source_ips = []"),
            vec!["service \"billing\".source_ips", "is empty"],
        ),
        (
            "bad account",
            good.replace("source_ips =", "accounts = [\"bob\"]\nsource_ips ="),
            vec!["service \"billing\".accounts[0]", "is not an account id"],
        ),
        (
            "a service name the report uses for no service",
            good.replace("name = \"billing\"", "name = \"(unidentified)\""),
            vec!["service[0].name", "not start with `(`"],
        ),
        (
            "audit keep and queue out of bounds",
            good.replace("[audit]\n", "[audit]\nkeep = 100000000\nqueue = 100000000000\n"),
            vec!["audit.keep", "at most 1000", "audit.queue", "at most 1000000"],
        ),
        (
            "tiny header limit",
            good.replace("[upstream.api]", "[limits]\nmax_header_bytes = 10\n[upstream.api]"),
            vec!["limits.max_header_bytes"],
        ),
        (
            "secret value in a wrong key",
            good.replace("key = \"stripe\"", &format!("key = \"stripe\"\nvalue = \"{CANARY}\"")),
            vec!["unknown field `value`"],
        ),
        (
            "secret value in a wrong type",
            good.replace("mode = ", "x = ")
                .replace("source_ips =", &format!("mode = [\"{CANARY}\"]\nsource_ips =")),
            vec!["keyward.toml:"],
        ),
        (
            "secret as a variant",
            good.replace("source_ips =", &format!("mode = \"{CANARY}\"\nsource_ips =")),
            vec!["unknown variant"],
        ),
        (
            "credentials in the upstream url",
            good.replace("https://localhost:9", &format!("https://user:{CANARY}@localhost:9")),
            vec!["upstream.api", "https://***@localhost:9", "must not carry credentials"],
        ),
        (
            "credentials in an upstream url that does not parse",
            good.replace("https://localhost:9", &format!("https://user:{CANARY} x@localhost:9")),
            vec!["upstream.api", "is not a URL"],
        ),
        (
            "secret as an account id",
            good.replace("source_ips =", &format!("accounts = [\"acct_1Ok\", \"{CANARY}\"]\nsource_ips =")),
            vec!["accounts[1]", "is not an account id"],
        ),
        (
            "a client id that is neither a URI nor dns:NAME",
            good.replace("source_ips =", "client_ids = [\"billing\"]\nsource_ips ="),
            vec!["service \"billing\".client_ids[0]", "neither a URI"],
        ),
        (
            "a spend cap on a kind keyward does not count",
            format!("{good}\n[[service.spend]]\nkinds = [\"refund\", \"refunds\"]\ncurrency = \"usd\"\nper_day = 5\n"),
            vec!["service \"billing\".spend[0].kinds[1]", "`refunds` is not a kind keyward counts"],
        ),
        (
            "a spend cap without a currency",
            format!("{good}\n[[service.spend]]\nkinds = [\"payout\"]\nper_day = 5\n"),
            vec!["service \"billing\".spend[0].currency", "is required"],
        ),
        (
            "a spend cap whose per_call is over its per_day",
            format!("{good}\n[[service.spend]]\nkinds = [\"payout\"]\ncurrency = \"usd\"\nper_call = 9\nper_day = 5\n"),
            vec!["service \"billing\".spend[0].per_call", "larger than per_day (9 > 5)"],
        ),
        (
            "two spend caps for one kind and currency",
            format!(
                "{good}\n[[service.spend]]\nkinds = [\"payout\"]\ncurrency = \"usd\"\nper_day = 5\n\
                 [[service.spend]]\nkinds = [\"transfer\", \"payout\"]\ncurrency = \"usd\"\nper_day = 7\n"
            ),
            vec!["service \"billing\".spend[1].kinds[1]", "payout in usd is capped twice"],
        ),
        (
            "a spend currency in capitals",
            format!("{good}\n[[service.spend]]\nkinds = [\"payout\"]\ncurrency = \"USD\"\nper_day = 5\n"),
            vec!["service \"billing\".spend[0].currency", "lowercase three-letter"],
        ),
        (
            "a rate that is not one",
            good.replace("source_ips =", "rate = \"20 per second\"\nsource_ips ="),
            vec!["service \"billing\".rate", "not a rate like"],
        ),
        (
            "a burst without a rate, a concurrency of 0",
            good.replace("source_ips =", "burst = 5\nconcurrency = 0\nsource_ips ="),
            vec![
                "service \"billing\".burst",
                "needs a rate",
                "service \"billing\".concurrency",
                "at least 1",
            ],
        ),
        (
            "a priority that is not one",
            good.replace("source_ips =", "priority = \"batch\"\nsource_ips =")
                .replace("[audit]", "[[service]]\nname = \"x\"\nsecret = \"stripe\"\nsource_ips = []\npriority = \"urgent\"\n[audit]"),
            vec!["keyward.toml:20", "expected one of `critical`, `normal`, `batch`"],
        ),
        (
            "a priority without a shared budget",
            good.replace("source_ips =", "priority = \"batch\"\nsource_ips ="),
            vec!["service \"billing\".priority", "needs [ratelimit] upstream_rate"],
        ),
        (
            "a Redis URL holding a password, a budget that is not a rate",
            good.replace(
                "[audit]",
                &format!("[ratelimit]\nupstream_rate = \"90 a second\"\nredis = \"redis://:{CANARY}@127.0.0.1:6379/0\"\n[audit]"),
            ),
            vec!["ratelimit.upstream_rate", "not a rate like", "ratelimit.redis", "password_secret"],
        ),
        (
            "not a Redis URL, a timeout too long, a password secret that is not defined",
            good.replace(
                "[audit]",
                "[ratelimit]\nredis = \"memcached://redis:6379\"\ntimeout = \"30s\"\npassword_secret = \"nope\"\n[audit]",
            ),
            vec!["ratelimit.redis", "rediss://", "ratelimit.timeout", "ratelimit.password_secret", "no [secret.nope]"],
        ),
        (
            "Redis settings without Redis, a burst of 0",
            good.replace(
                "[audit]",
                "[ratelimit]\nupstream_rate = \"90/s\"\nupstream_burst = 0\non_redis_error = \"deny\"\n[audit]",
            ),
            vec!["ratelimit.upstream_burst", "at least 1", "ratelimit.on_redis_error", "needs ratelimit.redis"],
        ),
        (
            "a live-mode service whose secret is a test key",
            good.replace("source_ips =", "livemode = true\nsource_ips ="),
            vec!["service \"billing\".livemode", "is true, but secret \"stripe\" holds a test-mode key"],
        ),
        (
            "a quarantine that would trip at once, or never end its window",
            good.replace("source_ips =", "quarantine = { ip_refusals = 1, within = \"2d\" }\nsource_ips ="),
            vec![
                "service \"billing\".quarantine.ip_refusals",
                "at least 2",
                "service \"billing\".quarantine.within",
                "between 1s and 24h",
            ],
        ),
        (
            "admin tokens with one id twice and a hash that is not one",
            format!(
                "{good}\n[[admin.token]]\nid = \"ops\"\nsha256 = \"{}\"\n[[admin.token]]\nid = \"ops\"\nsha256 = \"nothex\"\nexpires = \"soon\"\n",
                "a".repeat(64)
            ),
            vec![
                "admin.token[1].id",
                "admin token id is used twice",
                "admin.token[1].sha256",
                "must be 64 hex digits",
                "admin.token[1].expires",
                "RFC 3339",
            ],
        ),
        (
            "the unproven-caller limits and the ClientHello timeout at zero",
            good.replace("[server]", "[limits]\nmax_unproven_connections = 0\nrefusals_per_connection = 0\n[timeouts]\nclient_hello = \"0s\"\n[server]"),
            vec![
                "limits.max_unproven_connections",
                "limits.refusals_per_connection",
                "at least 1",
                "timeouts.client_hello",
                "longer than zero",
            ],
        ),
        (
            "an upstream share of no streams",
            good.replace("[upstream.api]\n", "[upstream.api]\nstreams_per_service = 0\n"),
            vec!["upstream.api.streams_per_service", "between 1 and 10000"],
        ),
        (
            "a quarantine with a key it does not have",
            good.replace("source_ips =", "quarantine = { ip_refusals = 5, within = \"5m\", ban = true }\nsource_ips ="),
            vec!["unknown field `ban`"],
        ),
        (
            "an OTLP endpoint that is not an http URL",
            good.replace("[audit]", "[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\n[audit]"),
            vec!["telemetry.otlp_endpoint", "http:// or https://"],
        ),
        (
            "an on_redis_error that is not one",
            good.replace("[audit]", "[ratelimit]\nredis = \"redis://127.0.0.1/0\"\non_redis_error = \"retry\"\n[audit]"),
            vec!["expected one of `local`, `allow`, `deny`"],
        ),
        (
            "a client CA that is not there",
            good.replace("[server]\n", "[server]\nclient_ca = \"/nonexistent/clients-ca.pem\"\n"),
            vec!["server.client_ca", "/nonexistent/clients-ca.pem"],
        ),
        (
            "client_cert neither optional nor required",
            good.replace("[server]\n", "[server]\nclient_cert = \"always\"\n"),
            vec!["keyward.toml:2", "expected `optional` or `required`"],
        ),
        (
            "secret as a timeout",
            good.replace("[upstream.api]", &format!("[timeouts]\nupstream = \"{CANARY}\"\n[upstream.api]")),
            vec!["keyward.toml:"],
        ),
        // Names records, reports and terminals show: an escape there could forge a line.
        (
            "a token id with an escape",
            good.replace("id = \"b1\"", "id = \"b1\\u001b[2J\""),
            vec!["token[0].id", "must be non-empty and printable"],
        ),
        (
            "a service name with a bidirectional override",
            good.replace("name = \"billing\"", "name = \"bill\\u202eing\""),
            vec!["service[0].name", "be printable"],
        ),
        ("an empty token id", good.replace("id = \"b1\"", "id = \"\""), vec!["token[0].id", "non-empty"]),
        (
            "a signing key secret not defined",
            good.replace("[audit]\n", "[audit]\nsigning_key_secret = \"nope\"\n"),
            vec!["audit.signing_key_secret", "no [secret.nope] is defined"],
        ),
        (
            // The Stripe key is no Ed25519 key: said so, never shown.
            "a signing key secret that holds no key",
            good.replace("[audit]\n", "[audit]\nsigning_key_secret = \"stripe\"\n"),
            vec!["audit.signing_key_secret", "is not base64"],
        ),
        (
            "checkpoints published into the log itself",
            good.replace("[audit]\n", "[audit]\ncheckpoints = \"-\"\n"),
            vec!["audit.checkpoints", "other than the access log"],
        ),
        (
            "a network with host bits set",
            good.replace("127.0.0.0/8", "127.20.1.5/8"),
            vec!["source_ips[0]", "host bits set", "`127.0.0.0/8`"],
        ),
        (
            "a CA for Redis without TLS",
            good.replacen("[[service]]", "[ratelimit]\nredis = \"redis://127.0.0.1:6379\"\nca = \"ca.pem\"\n\n[[service]]", 1),
            vec!["ratelimit.ca", "needs ratelimit.redis = \"rediss://"],
        ),
        (
            "TLS checks turned off in the Redis URL",
            good.replacen("[[service]]", "[ratelimit]\nredis = \"rediss://127.0.0.1:6379/#insecure\"\n\n[[service]]", 1),
            vec!["ratelimit.redis", "#fragment"],
        ),
        (
            "a Redis user twice",
            good.replacen(
                "[[service]]",
                "[ratelimit]\nredis = \"rediss://kw@127.0.0.1:6379\"\nusername = \"keyward\"\n\n[[service]]",
                1,
            ),
            vec!["ratelimit.username", "not both"],
        ),
        (
            "a client certificate without its key",
            good.replacen("[[service]]", "[ratelimit]\nredis = \"rediss://127.0.0.1:6379\"\ntls_cert = \"c.pem\"\n\n[[service]]", 1),
            vec!["ratelimit.tls_key", "is missing"],
        ),
        (
            "a checkpoint interval too short",
            good.replace("[audit]\n", "[audit]\ncheckpoint_interval = \"10ms\"\n"),
            vec!["audit.checkpoint_interval", "between 100ms and 1h"],
        ),
    ];
    for (what, text, wants) in cases {
        let (ok, out) = check(dir.path(), &text);
        assert!(!ok, "{what}: accepted\n{out}");
        for w in wants {
            assert!(out.contains(w), "{what}: wanted `{w}` in:\n{out}");
        }
        assert!(!out.contains(CANARY) && !out.contains(SECRET), "{what}: echoed a secret:\n{out}");
        assert!(!out.contains("panicked"), "{what}: panicked:\n{out}");
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let text = base(&pki, dir.path())
        .replace("\"charge\" = \"read\"", "\"chrage\" = \"read\"\n\"custmer\" = \"write\"")
        .replace("secret = \"stripe\"", "secret = \"nope\"");
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok);
    assert_eq!(out.lines().filter(|l| l.starts_with("error: ")).count(), 3, "{out}");
}

#[test]
fn loose_secret_file_permissions_are_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let text = base(&pki, dir.path());
    std::fs::set_permissions(dir.path().join("secrets.toml"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok);
    assert!(out.contains("secret.stripe") && out.contains("chmod 600"), "{out}");
    assert!(!out.contains(SECRET));
}

#[test]
fn run_refuses_to_start_on_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.toml"), "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--config", "k.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field `tls_cert`"));
}

#[test]
fn a_catalog_of_your_own_for_another_api() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("widgets.txt");
    std::fs::write(&catalog, "GET /v1/widgets widget read api\nPOST /v1/widgets widget write api\n").unwrap();
    let text = base(&pki, dir.path())
        .replace("[upstream.api]", &format!("[catalog]\npath = {:?}\n\n[upstream.api]", catalog))
        .replace("\"charge\" = \"read\"", "\"widget\" = \"read\"");
    let (ok, out) = check(dir.path(), &text);
    assert!(ok, "{out}");
    assert!(out.contains("2 catalog entries"), "{out}");
    std::fs::write(&catalog, "GET /v1/widgets widget read api\nGET /v1/widgets/{id} widget reed api\n")
        .unwrap();
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok && out.contains("widgets.txt:2") && out.contains("reed"), "{out}");
}

/// `check --offline` reads the configuration and its tables only: missing certificates, CA
/// files and secret files are not errors there (CI on a repository of configurations).
#[test]
fn check_offline_reads_no_secret_certificate_or_ca() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let text = base(&pki, dir.path())
        .replace(pki.cert.to_str().unwrap(), "/nonexistent/keyward.crt")
        .replace(pki.ca.to_str().unwrap(), "/nonexistent/ca.pem")
        .replace(dir.path().join("secrets.toml").to_str().unwrap(), "/nonexistent/secrets.toml");
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "online, the missing files are errors: {out}");
    let path = dir.path().join("keyward.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check", "--offline", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("offline"), "{text}");
}

/// `[forward]` mistakes: each named by its key, none echoing key material.
#[test]
fn forward_mistakes_are_refused_by_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("fca.crt"), dir.path().join("fca.key"));
    keyward::control::tls::ensure_dev_forward_ca(&cert, &key).unwrap();
    let ca_key = std::fs::read_to_string(&key).unwrap();
    let forward = format!("[forward]\nlisten = \"127.0.0.1:0\"\nca_cert = {cert:?}\nca_key = {key:?}\n\n");
    let good = base(&pki, dir.path())
        .replace(
            "url = \"https://localhost:9\"",
            "url = \"https://api.stripe.com\"\nconnect_to = \"127.0.0.1:9\"",
        )
        .replace("[upstream.api]", &format!("{forward}[upstream.api]"));
    let (ok, out) = check(dir.path(), &good);
    assert!(ok, "{out}");
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, &ca_key).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key_line = format!("ca_key = {key:?}");
    let other_key = dir.path().join("other.key");
    std::fs::copy(&pki.key, &other_key).unwrap();
    std::fs::set_permissions(&other_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("no CA key", good.replace(&key_line, ""), vec!["forward.ca_key", "is missing"]),
        (
            "two CA keys",
            good.replace(&key_line, &format!("{key_line}\nca_key_secret = \"stripe\"")),
            vec!["forward.ca_key_secret", "not both"],
        ),
        (
            "a CA key secret not defined",
            good.replace(&key_line, "ca_key_secret = \"forward_ca\""),
            vec!["forward.ca_key_secret", "no [secret.forward_ca]"],
        ),
        (
            "a CA key others may read",
            good.replace(&key_line, &format!("ca_key = {loose:?}")),
            vec!["forward.ca_key", "chmod 600"],
        ),
        (
            "a CA key that is not the certificate's",
            good.replace(&key_line, &format!("ca_key = {other_key:?}")),
            vec!["forward.ca_cert", "does not verify against the CA certificate"],
        ),
        (
            "a leaf certificate as the CA",
            good.replace(&format!("ca_cert = {cert:?}"), &format!("ca_cert = {:?}", pki.cert)),
            vec!["forward.ca_cert"],
        ),
        (
            "no upstream with a DNS name",
            good.replace("https://api.stripe.com", "https://127.0.0.1:9"),
            vec!["forward", "no upstream can be intercepted"],
        ),
        (
            "an upstream host in capitals",
            good.replace("https://api.stripe.com", "https://API.stripe.com"),
            vec!["upstream.api.url", "lowercase"],
        ),
        (
            "an idle timeout shorter than the upstream's",
            good.replace(&key_line, &format!("{key_line}\nidle_timeout = \"30s\"")),
            vec!["forward.idle_timeout", "longer than timeouts.upstream"],
        ),
        (
            "a leaf lifetime out of bounds",
            good.replace(&key_line, &format!("{key_line}\nleaf_lifetime = \"5000d\"")),
            vec!["forward.leaf_lifetime"],
        ),
        (
            "two upstreams with one host",
            good.replace(
                "[secret.stripe]",
                "[upstream.files]\nurl = \"https://api.stripe.com\"\n\n[secret.stripe]",
            ),
            vec!["upstream.files.url", "same host and port"],
        ),
        (
            "dev_certs with the CA key file missing beside an existing certificate",
            good.replace("[server]\n", "[server]\ndev_certs = true\n")
                .replace(&key_line, &format!("ca_key = {:?}", dir.path().join("missing.key"))),
            vec!["server.dev_certs", "exists but", "does not"],
        ),
        (
            "a connect_to that is not an address",
            good.replace("connect_to = \"127.0.0.1:9\"", "connect_to = \"api.internal:443\""),
            vec!["keyward.toml:14", "invalid socket address"],
        ),
    ];
    let key_body: Vec<&str> = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, text, wants) in cases {
        let (ok, out) = check(dir.path(), &text);
        assert!(!ok, "{what}: accepted\n{out}");
        for w in wants {
            assert!(out.contains(w), "{what}: wanted `{w}` in:\n{out}");
        }
        for line in &key_body {
            assert!(!out.contains(line), "{what}: echoed the CA key:\n{out}");
        }
        assert!(!out.contains("panicked"), "{what}: panicked:\n{out}");
    }
}

/// A key pasted where a name, a path or a URL goes is shown as its prefix and last 4 by
/// `check` and `check --offline` (so into CI logs), whatever the error it causes.
#[test]
fn a_pasted_key_is_shown_as_prefix_and_last_4() {
    const PASTED: &str = "sk_live_51PastedKeyCANARYabcd9876";
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = base(&pki, dir.path());
    let ca = pki.ca.to_str().unwrap();
    let cases = [
        (
            "a key as the service's secret",
            good.replace("secret = \"stripe\"", &format!("secret = \"{PASTED}\"")),
        ),
        (
            "a key as the variable's name",
            good.replace("source = \"file\"", &format!("source = \"env\"\nvar = \"{PASTED}\""))
                .replace(&format!("path = {:?}\nkey = \"stripe\"\n", dir.path().join("secrets.toml")), ""),
        ),
        (
            "a key in the upstream's URL",
            good.replace("https://localhost:9", &format!("https://localhost:9/{PASTED}")),
        ),
        ("a key in a ca path", good.replace(ca, &format!("/etc/{PASTED}/ca.pem"))),
        ("a key as a key name", good.replace("[upstream.api]\n", &format!("[upstream.api]\n{PASTED} = 1\n"))),
    ];
    let path = dir.path().join("keyward.toml");
    for (what, text) in cases {
        for offline in [false, true] {
            std::fs::write(&path, &text).unwrap();
            let mut args = vec!["check", "--config", path.to_str().unwrap()];
            if offline {
                args.push("--offline");
            }
            let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
                .args(&args)
                .env("KEYWARD_LOG", "warn")
                .output()
                .unwrap();
            let out =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            println!(
                "{what:<32} offline={offline:<5} {}",
                out.lines().find(|l| l.contains("sk_live")).unwrap_or("-")
            );
            assert!(
                !out.contains("PastedKeyCANARY"),
                "{what} (offline: {offline}): the key quoted whole:\n{out}"
            );
            if !offline || !what.contains("variable") && !what.contains("ca path") {
                assert!(out.contains("sk_live_…9876"), "{what} (offline: {offline}): not named:\n{out}");
            }
        }
    }
}

#[test]
fn spend_caps_without_redis_are_checked_with_a_warning_and_with_redis_without() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let capped = format!(
        "{}\n[[service.spend]]\nkinds = [\"refund\"]\ncurrency = \"usd\"\nper_day = 50000\n",
        base(&pki, dir.path())
    );
    let (ok, out) = check(dir.path(), &capped);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: spend caps are set (billing) without [ratelimit] redis: each replica counts"),
        "{out}"
    );
    let (ok, out) = check(dir.path(), &base(&pki, dir.path()));
    assert!(ok && !out.contains("spend caps"), "{out}");
    // With Redis every replica spends one budget: nothing to warn of.
    let shared = format!("{capped}\n[ratelimit]\nredis = \"redis://127.0.0.1:1/0\"\ntimeout = \"50ms\"\n");
    let (ok, out) = check(dir.path(), &shared);
    assert!(ok && !out.contains("spend caps"), "{out}");
}

/// What the examples ship with, left in place, passes `check` with a warning naming where:
/// the all-zero token hash, a secret that says it is to be replaced (its value never shown).
#[test]
fn placeholders_left_in_place_are_warned_of() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = base(&pki, dir.path());
    let (ok, out) = check(dir.path(), &good);
    assert!(ok && !out.contains("placeholder"), "{out}");
    let zero = "0".repeat(64);
    let hash = sha256_hex("kw_tok_aaaaaaaaaaaaaaaaaaaaaaaa");
    let placeholder = good.replace(&hash, &zero);
    std::fs::write(dir.path().join("secrets.toml"), "stripe = \"sk_test_REPLACE_ME\"\n").unwrap();
    let (ok, out) = check(dir.path(), &placeholder);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: service billing token b1: its sha256 is the all-zero placeholder"),
        "{out}"
    );
    assert!(out.contains("warning: secret stripe holds a placeholder value"), "{out}");
    assert!(!out.contains("REPLACE_ME"), "the value is never shown: {out}");
}
