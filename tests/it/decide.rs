//! `keyward::policy::decide`, table-tested: every verdict and every reason it gives, each row a
//! request built by hand (`http::request::Parts`) and decided against a compiled policy. No
//! sockets, no servers. Each row names its exact reason (and who the ruling names), so that a
//! row cannot pass because another rule fired first; rows that pair an allowed request with
//! its refused twin show which one fact the rule turns on. Then `check_form`, the body rules.

use std::collections::BTreeSet;
use std::net::IpAddr;

use base64::Engine;
use http::Version;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use keyward::control::config::{Options, Source, compile};
use keyward::control::snapshot::Snapshot;
use keyward::policy::forward::{Tunnel, TunnelToken};
use keyward::policy::identity::{hash_token, redact};
use keyward::policy::token_format::with_checksum;
use keyward::policy::{Failure, Policy, RequestFacts, Ruling, Verdict, check_form, decide};
use sha2::{Digest, Sha256};

const ALLOW: &str = "allow";
const DENY: &str = "deny";
const WOULD: &str = "would_deny";

/// The clock of every row unless it says otherwise: 2027-01-15T08:00:00Z.
const NOW: i64 = 1_800_000_000;
/// 2027-01-01T00:00:00Z: `b-expired`'s `expires` (in the past at `NOW`).
const EXPIRES: i64 = 1_798_761_600;
/// 2027-02-01T00:00:00Z: `b-early`'s `not_before` (in the future at `NOW`).
const NOT_BEFORE: i64 = 1_801_440_000;
/// 2027-01-10T00:00:00Z: `b-revoked`'s `revoked` (in the past at `NOW`).
const REVOKED: i64 = 1_799_539_200;

/// Where the rows call from unless they say otherwise: in every service's `source_ips`.
const CALLER: &str = "10.1.2.3";
const OUTSIDE: &str = "192.0.2.1";

const API: &str = "api.stripe.com:443";
const FILES: &str = "files.stripe.com:443";

/// A token as `keyward token new` mints it: `kw_`, 43 base62 characters, their checksum.
fn minted(seed: &str) -> String {
    with_checksum(&seed.repeat(43)[..43])
}

/// Every token the rows present, by what it is.
struct Tokens {
    b1: String,
    /// Minted before the checksum (`kw_` and 43): known by its configured hash only.
    b_old: String,
    b_expired: String,
    b_early: String,
    b_revoked: String,
    /// With `source_ips` of its own, narrower than its service's.
    b_narrow: String,
    r1: String,
    p1: String,
    /// Well-formed, checksum and all, but configured nowhere.
    stranger: String,
}

impl Tokens {
    fn new() -> Self {
        Tokens {
            b1: minted("Bil1"),
            b_old: format!("kw_{}", &"Old7".repeat(11)[..43]),
            b_expired: minted("Exp2"),
            b_early: minted("Ear3"),
            b_revoked: minted("Rev4"),
            b_narrow: minted("Nar5"),
            r1: minted("Rep6"),
            p1: minted("Pin7"),
            stranger: minted("Str8"),
        }
    }
}

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"x\"\ntls_key = \"x\"\n\
                    [secret.s]\nsource = \"env\"\nvar = \"X\"\n";
/// Forward mode: without it no host is intercepted (`Policy::hosts` is all `None`).
const FORWARD: &str = "[forward]\nlisten = \"127.0.0.1:0\"\nca_cert = \"x\"\nca_key = \"x\"\n";

/// The main policy: `api` and `files` upstreams (no `meter_events`), three services.
/// - billing (enforce): accounts `acct_1Allowed`; six tokens, one of each validity;
/// - reports (report mode): accounts `acct_1Allowed`, reads customers;
/// - pinned (enforce): sender-constrained by `client_ids`, platform only.
fn main_config(t: &Tokens) -> String {
    format!(
        r#"{HEAD}{FORWARD}
[upstream.api]
url = "https://api.stripe.com"

[upstream.files]
url = "https://files.stripe.com"

[[service]]
name = "billing"
secret = "s"
source_ips = ["10.0.0.0/8", "127.0.0.1/32"]
accounts = ["acct_1Allowed"]

[[service.token]]
id = "b1"
sha256 = "{b1}"

[[service.token]]
id = "b-old"
sha256 = "{b_old}"

[[service.token]]
id = "b-expired"
sha256 = "{b_expired}"
expires = "2027-01-01T00:00:00Z"

[[service.token]]
id = "b-early"
sha256 = "{b_early}"
not_before = "2027-02-01T00:00:00Z"

[[service.token]]
id = "b-revoked"
sha256 = "{b_revoked}"
revoked = "2027-01-10T00:00:00Z"

[[service.token]]
id = "b-narrow"
sha256 = "{b_narrow}"
source_ips = ["10.1.0.0/16"]

[service.scope]
customer = "write"
charge = "read"
payment_intent = "write"
file = "write"
connected_account = "read"
v2_account_storer = "read"

[[service]]
name = "reports"
secret = "s"
source_ips = ["10.0.0.0/8"]
mode = "report"
accounts = ["acct_1Allowed"]

[[service.token]]
id = "r1"
sha256 = "{r1}"

[service.scope]
customer = "read"
billing_meter_event = "write"

[[service]]
name = "pinned"
secret = "s"
source_ips = ["10.0.0.0/8"]
client_ids = ["spiffe://prod.example/ns/pay/sa/pinned", "dns:pinned.internal"]

[[service.token]]
id = "p1"
sha256 = "{p1}"

[service.scope]
customer = "read"
"#,
        b1 = sha(&t.b1),
        b_old = sha(&t.b_old),
        b_expired = sha(&t.b_expired),
        b_early = sha(&t.b_early),
        b_revoked = sha(&t.b_revoked),
        b_narrow = sha(&t.b_narrow),
        r1 = sha(&t.r1),
        p1 = sha(&t.p1),
    )
}

/// `api` only: uploads (`files`) have nowhere to go.
fn no_files_config(t: &Tokens) -> String {
    format!(
        "{HEAD}{FORWARD}[upstream.api]\nurl = \"https://api.stripe.com\"\n\
         [[service]]\nname = \"billing\"\nsecret = \"s\"\nsource_ips = [\"10.0.0.0/8\"]\n\
         [[service.token]]\nid = \"b1\"\nsha256 = \"{}\"\n\
         [service.scope]\nfile = \"write\"\n",
        sha(&t.b1)
    )
}

/// `files` only, a service in report mode (an unknown endpoint has no `api` to go to), and no
/// `[forward]`.
fn no_api_config(t: &Tokens) -> String {
    format!(
        "{HEAD}[upstream.files]\nurl = \"https://files.stripe.com\"\n\
         [[service]]\nname = \"reports\"\nsecret = \"s\"\nsource_ips = [\"10.0.0.0/8\"]\nmode = \"report\"\n\
         [[service.token]]\nid = \"r1\"\nsha256 = \"{}\"\n\
         [service.scope]\ncustomer = \"read\"\n",
        sha(&t.r1)
    )
}

async fn policy(name: &str, text: String) -> Snapshot {
    let src = Source { name: name.into(), text };
    compile(&src, Options::POLICY_ONLY).await.unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// Which compiled policy a row is decided against.
#[derive(Clone, Copy)]
enum On {
    Main,
    NoFiles,
    NoApi,
}

/// A request and the facts around it, built by hand.
struct Req {
    parts: Parts,
    ip: IpAddr,
    now: i64,
    tunnel: Option<Tunnel>,
    client_ids: Vec<String>,
    /// The hashes of the tokens the control plane holds suspended.
    suspended: Vec<[u8; 32]>,
    has_body: bool,
}

fn req(method: &str, uri: &str) -> Req {
    let (parts, ()) = http::Request::builder().method(method).uri(uri).body(()).unwrap().into_parts();
    let ip = CALLER.parse().unwrap();
    Req { parts, ip, now: NOW, tunnel: None, client_ids: Vec::new(), suspended: Vec::new(), has_body: false }
}

fn get(uri: &str) -> Req {
    req("GET", uri)
}

fn post(uri: &str) -> Req {
    req("POST", uri)
}

impl Req {
    /// Appends: a second call with the same name makes two headers.
    fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        self.parts.headers.append(name, HeaderValue::from_str(value).unwrap());
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// `Authorization: Basic` of `user_password` as it is (`T:`, `T`, `T:pw`).
    fn basic(self, user_password: &str) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_password);
        self.header("authorization", &format!("Basic {b64}"))
    }

    fn form(self) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
    }

    fn from(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }

    fn at(mut self, now: i64) -> Self {
        self.now = now;
        self
    }

    /// The identities of a verified client certificate.
    fn cert(mut self, ids: &[&str]) -> Self {
        self.client_ids = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Forward mode: in a tunnel opened to `target`, with this `Proxy-Authorization` token.
    fn tunnel(mut self, target: &str, proxy_token: Option<&str>) -> Self {
        let token = proxy_token.map(|t| TunnelToken { hash: hash_token(t), redacted: redact(t) });
        self.tunnel = Some(Tunnel { target: target.into(), token });
        self
    }

    fn host(self, host: &str) -> Self {
        self.header("host", host)
    }

    /// An operator (or the quarantine) suspended this token.
    fn suspend(mut self, token: &str) -> Self {
        self.suspended.push(hash_token(token));
        self
    }

    /// A body follows the head.
    fn with_body(mut self) -> Self {
        self.has_body = true;
        self
    }

    fn h2(mut self) -> Self {
        self.parts.version = Version::HTTP_2;
        self
    }
}

/// Who a ruling names: service and token id.
type Who = (&'static str, &'static str);
const BILL: Who = ("billing", "b1");
const REP: Who = ("reports", "r1");
const PIN: Who = ("pinned", "p1");
const B_OLD: Who = ("billing", "b-old");
const B_EXPIRED: Who = ("billing", "b-expired");
const B_EARLY: Who = ("billing", "b-early");
const B_REVOKED: Who = ("billing", "b-revoked");
const B_NARROW: Who = ("billing", "b-narrow");

/// What a row expects: the decision and reason, whose service and token the ruling names
/// (`None`: nobody's), where the call goes (or would), a piece of the refusal's message, and
/// the policy it is decided against.
struct Want {
    decision: &'static str,
    reason: &'static str,
    by: Option<Who>,
    to: Option<&'static str>,
    says: Option<String>,
    on: On,
}

fn want(decision: &'static str, reason: &'static str) -> Want {
    Want { decision, reason, by: None, to: None, says: None, on: On::Main }
}

fn allow() -> Want {
    want(ALLOW, "ok")
}

fn deny(reason: &'static str) -> Want {
    want(DENY, reason)
}

fn would(reason: &'static str) -> Want {
    want(WOULD, reason)
}

impl Want {
    fn by(mut self, who: Who) -> Self {
        self.by = Some(who);
        self
    }

    fn to(mut self, upstream: &'static str) -> Self {
        self.to = Some(upstream);
        self
    }

    fn says(mut self, text: impl Into<String>) -> Self {
        self.says = Some(text.into());
        self
    }

    fn on(mut self, on: On) -> Self {
        self.on = on;
        self
    }
}

/// One row: what it shows, the request, what decide must say.
type Row = (&'static str, Req, Want);

fn failure<'a>(ruling: &'a Ruling<'_>) -> Option<&'a Failure> {
    match &ruling.verdict {
        Verdict::Allow(_) => None,
        Verdict::WouldDeny(_, f) | Verdict::Deny(f) => Some(f),
    }
}

/// Every way `ruling` is not what `row` wants, as text (empty: it is).
fn mismatches(policy: &Policy, want: &Want, ruling: &Ruling<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let (decision, reason) = (ruling.verdict.decision().as_str(), ruling.verdict.reason());
    if (decision, reason) != (want.decision, want.reason) {
        out.push(format!("got {decision} {reason}, want {} {}", want.decision, want.reason));
    }
    let by = ruling.service.zip(ruling.token).map(|(s, t)| (&*s.name, &*t.id));
    if by != want.by || ruling.service.is_some() != ruling.token.is_some() {
        out.push(format!(
            "names {:?} / {:?}, want {:?}",
            ruling.service.map(|s| &s.name),
            ruling.token.map(|t| &t.id),
            want.by
        ));
    }
    let upstream = ruling.upstream.map(|u| &*policy.upstreams[u]);
    // What is forwarded goes for the service and to the upstream the record shows.
    if let Verdict::Allow(route) | Verdict::WouldDeny(route, _) = &ruling.verdict
        && (Some(route.upstream) != ruling.upstream
            || !ruling.service.is_some_and(|s| std::ptr::eq(s, route.service)))
    {
        out.push("the route is not the ruling's service and upstream".into());
    }
    if want.to.is_some() && upstream != want.to {
        out.push(format!("goes to {upstream:?}, want {:?}", want.to));
    }
    match (failure(ruling), &want.says) {
        (Some(f), Some(text)) if !f.message().contains(text.as_str()) => {
            out.push(format!("message {:?} lacks {text:?}", f.message()))
        }
        (None, Some(text)) => out.push(format!("allowed, so no message says {text:?}")),
        _ => {}
    }
    // The record of an exposed token names the token to rotate: the one the ruling names.
    if let Some(Failure::TokenInWrongPlace { whose, .. }) = failure(ruling)
        && whose.as_ref().map(|(s, t)| (&**s, &**t)) != want.by
    {
        out.push(format!("the failure names {whose:?}, want {:?}", want.by));
    }
    out
}

#[tokio::test]
async fn every_verdict_and_reason_of_decide() {
    let t = Tokens::new();
    let main = policy("main.toml", main_config(&t)).await;
    let no_files = policy("no-files.toml", no_files_config(&t)).await;
    let no_api = policy("no-api.toml", no_api_config(&t)).await;
    let b1 = t.b1.as_str();
    let r1 = t.r1.as_str();
    let p1 = t.p1.as_str();
    let b1_body = &b1[3..];
    let mut lookalike = t.b1.clone().into_bytes();
    lookalike[10] = if lookalike[10] == b'x' { b'y' } else { b'x' };
    let lookalike = String::from_utf8(lookalike).unwrap();
    let multipart = "multipart/form-data; boundary=kwB0undary";
    let too_long = format!("/v1/customers/{}", "a".repeat(1100));

    let table: Vec<Row> = vec![
        // --- allowed: the baseline every refusal below is a twin of.
        ("a read in scope", get("/v1/customers/cus_1").bearer(b1), allow().by(BILL).to("api")),
        ("a write in scope", post("/v1/customers").form().bearer(b1), allow().by(BILL).to("api")),
        (
            "the scheme's case does not matter",
            get("/v1/customers").header("authorization", &format!("bearer {b1}")),
            allow().by(BILL),
        ),
        (
            "Basic, token as user, empty password (curl -u T:)",
            get("/v1/customers").basic(&format!("{b1}:")),
            allow().by(BILL),
        ),
        ("Basic, token as user, no colon", get("/v1/customers").basic(b1), allow().by(BILL)),
        (
            "a token minted before the checksum, by its hash",
            get("/v1/customers").bearer(&t.b_old),
            allow().by(B_OLD),
        ),
        (
            "Proxy-Authorization is no wrong place for a token",
            get("/v1/customers").bearer(b1).header("proxy-authorization", &format!("Bearer {b1}")),
            allow().by(BILL),
        ),
        (
            "a lookalike (bad checksum) in the query is no token",
            get(&format!("/v1/customers?email={lookalike}")).bearer(b1),
            allow().by(BILL),
        ),
        (
            "an expansion the scope grants",
            get("/v1/payment_intents/pi_1?expand[]=customer").bearer(b1),
            allow().by(BILL),
        ),
        (
            "an expansion the table does not list needs nothing",
            get("/v1/customers/cus_1?expand[]=data.no_such_field").bearer(b1),
            allow().by(BILL),
        ),
        (
            "Stripe-Account in accounts",
            get("/v1/customers").bearer(b1).header("stripe-account", "acct_1Allowed"),
            allow().by(BILL),
        ),
        (
            "a direct permission on the path's account, no header",
            get("/v1/accounts/acct_1Allowed").bearer(b1),
            allow().by(BILL),
        ),
        (
            "an upload goes to files",
            post("/v1/files").header("content-type", multipart).bearer(b1),
            allow().by(BILL).to("files"),
        ),
        ("GET /v1/files is on api", get("/v1/files").bearer(b1), allow().by(BILL).to("api")),
        (
            "expires: one second before",
            get("/v1/customers").bearer(&t.b_expired).at(EXPIRES - 1),
            allow().by(B_EXPIRED),
        ),
        (
            "not_before: at the instant",
            get("/v1/customers").bearer(&t.b_early).at(NOT_BEFORE),
            allow().by(B_EARLY),
        ),
        (
            "revoked: one second before",
            get("/v1/customers").bearer(&t.b_revoked).at(REVOKED - 1),
            allow().by(B_REVOKED),
        ),
        (
            "a token inside its own narrower range",
            get("/v1/customers").bearer(&t.b_narrow).from("10.1.200.7"),
            allow().by(B_NARROW),
        ),
        (
            "loopback, in the service's list",
            get("/v1/customers").bearer(b1).from("127.0.0.1"),
            allow().by(BILL),
        ),
        (
            "a certificate naming one of client_ids",
            get("/v1/customers").bearer(p1).cert(&["spiffe://other", "dns:pinned.internal"]),
            allow().by(PIN),
        ),
        (
            "a certificate where no client_ids are asked changes nothing",
            get("/v1/customers").bearer(b1).cert(&["spiffe://anything"]),
            allow().by(BILL),
        ),
        // --- identify: the token. `api_key_missing` is whatever cannot be read as a token at all.
        ("no Authorization", get("/v1/customers"), deny("api_key_missing")),
        (
            "another scheme",
            get("/v1/customers").header("authorization", &format!("Token {b1}")),
            deny("api_key_missing"),
        ),
        (
            "Bearer and nothing",
            get("/v1/customers").header("authorization", "Bearer"),
            deny("api_key_missing"),
        ),
        (
            "Basic with a password, though the user is a good token",
            get("/v1/customers").basic(&format!("{b1}:secret")),
            deny("api_key_missing"),
        ),
        (
            "Basic that is not base64",
            get("/v1/customers").header("authorization", "Basic !!!"),
            deny("api_key_missing"),
        ),
        (
            "a token over 256 characters",
            get("/v1/customers").bearer(&"a".repeat(300)),
            deny("api_key_missing"),
        ),
        (
            "a well-formed token configured nowhere",
            get("/v1/customers").bearer(&t.stranger),
            deny("api_key_invalid").says(redact(&t.stranger)),
        ),
        (
            "a Stripe key instead of a keyward token",
            get("/v1/customers").bearer("sk_live_0123456789abcdef"),
            deny("api_key_invalid").says("sk_***cdef"),
        ),
        (
            "Basic, empty password, unknown user",
            get("/v1/customers").basic("kw_nobody:"),
            deny("api_key_invalid"),
        ),
        (
            "a good token with a character changed",
            get("/v1/customers").bearer(&lookalike),
            deny("api_key_invalid"),
        ),
        (
            "two Authorization headers: never one chosen",
            get("/v1/customers").bearer(b1).bearer(b1),
            deny("non_canonical_request").says("more than one Authorization"),
        ),
        (
            "expired",
            get("/v1/customers").bearer(&t.b_expired),
            deny("api_key_expired").by(B_EXPIRED).says(redact(&t.b_expired)),
        ),
        (
            "expires: at the instant",
            get("/v1/customers").bearer(&t.b_expired).at(EXPIRES),
            deny("api_key_expired").by(B_EXPIRED),
        ),
        ("not valid yet", get("/v1/customers").bearer(&t.b_early), deny("api_key_not_yet_valid").by(B_EARLY)),
        (
            "not_before: one second before",
            get("/v1/customers").bearer(&t.b_early).at(NOT_BEFORE - 1),
            deny("api_key_not_yet_valid").by(B_EARLY),
        ),
        ("revoked", get("/v1/customers").bearer(&t.b_revoked), deny("api_key_revoked").by(B_REVOKED)),
        (
            "revoked is checked before the address",
            get("/v1/customers").bearer(&t.b_revoked).from(OUTSIDE),
            deny("api_key_revoked").by(B_REVOKED),
        ),
        (
            "outside the service's source_ips",
            get("/v1/customers").bearer(b1).from(OUTSIDE),
            deny("ip_not_allowed").by(BILL),
        ),
        (
            "an IPv6 caller, a v4-only list",
            get("/v1/customers").bearer(b1).from("::1"),
            deny("ip_not_allowed").by(BILL),
        ),
        (
            "in the service's range, outside the token's",
            get("/v1/customers").bearer(&t.b_narrow).from("127.0.0.1"),
            deny("ip_not_allowed").by(B_NARROW),
        ),
        (
            "client_ids and no certificate",
            get("/v1/customers").bearer(p1),
            deny("client_certificate_required").by(PIN),
        ),
        (
            "client_ids and a certificate of another identity",
            get("/v1/customers").bearer(p1).cert(&["spiffe://prod.example/ns/pay/sa/billing"]),
            deny("client_certificate_not_allowed").by(PIN),
        ),
        (
            "client_ids are compared exactly",
            get("/v1/customers").bearer(p1).cert(&["dns:PINNED.internal"]),
            deny("client_certificate_not_allowed").by(PIN),
        ),
        (
            "the address is checked before the certificate",
            get("/v1/customers").bearer(p1).from(OUTSIDE),
            deny("ip_not_allowed").by(PIN),
        ),
        // --- canonicalise: a target read one way only. The caller is known by now.
        (
            "a dot-dot segment",
            get("/v1/customers/../charges").bearer(b1),
            deny("non_canonical_request").by(BILL).says("dot segment"),
        ),
        (
            "a dot segment",
            get("/v1/./customers").bearer(b1),
            deny("non_canonical_request").by(BILL).says("dot segment"),
        ),
        (
            "an encoded slash",
            get("/v1/customers%2Fcus_1").bearer(b1),
            deny("non_canonical_request").by(BILL).says("path delimiter"),
        ),
        (
            "encoded dots",
            get("/v1/customers/%2e%2e/charges").bearer(b1),
            deny("non_canonical_request").by(BILL).says("path delimiter"),
        ),
        (
            "an encoded letter (%73earch is search upstream)",
            get("/v1/customers/%73earch").bearer(b1),
            deny("non_canonical_request").by(BILL).says("need no encoding"),
        ),
        (
            "an empty segment",
            get("/v1//customers").bearer(b1),
            deny("non_canonical_request").by(BILL).says("empty path segment"),
        ),
        (
            "a trailing slash",
            get("/v1/customers/").bearer(b1),
            deny("non_canonical_request").by(BILL).says("empty path segment"),
        ),
        (
            "a ; path parameter",
            get("/v1/customers;x=1").bearer(b1),
            deny("non_canonical_request").by(BILL).says("; path parameter"),
        ),
        (
            "a segment ending in a dot",
            get("/v1/customers/cus_1.").bearer(b1),
            deny("non_canonical_request").by(BILL).says("ending in a dot"),
        ),
        (
            "a malformed percent-encoding in the path",
            get("/v1/customers/%zz").bearer(b1),
            deny("non_canonical_request").by(BILL).says("malformed"),
        ),
        (
            "a path over 1024 bytes",
            get(&too_long).bearer(b1),
            deny("non_canonical_request").by(BILL).says("too long"),
        ),
        (
            "absolute form over HTTP/1.1",
            get("https://api.stripe.com/v1/customers").bearer(b1),
            deny("non_canonical_request").by(BILL).says("absolute form"),
        ),
        (
            "CONNECT on the reverse listener",
            req("CONNECT", "/v1/customers").bearer(b1),
            deny("non_canonical_request").by(BILL).says("CONNECT"),
        ),
        (
            "a method-override header",
            post("/v1/customers").bearer(b1).header("x-http-method-override", "DELETE"),
            deny("non_canonical_request").by(BILL).says("method-override"),
        ),
        (
            "Stripe_Account: _ read as - by Rack",
            get("/v1/customers").bearer(b1).header("Stripe_Account", "acct_2Other"),
            deny("non_canonical_request").by(BILL).says("header name with _"),
        ),
        (
            "two Stripe-Account headers",
            get("/v1/customers")
                .bearer(b1)
                .header("stripe-account", "acct_1Allowed")
                .header("stripe-account", "acct_2Other"),
            deny("non_canonical_request").by(BILL).says("more than one"),
        ),
        (
            "a Content-Type that is a list",
            post("/v1/customers")
                .bearer(b1)
                .header("content-type", "application/x-www-form-urlencoded, text/plain"),
            deny("non_canonical_request").by(BILL).says("is a list"),
        ),
        (
            "an empty Content-Type",
            post("/v1/customers").bearer(b1).header("content-type", ""),
            deny("non_canonical_request").by(BILL).says("empty Content-Type"),
        ),
        (
            "multipart without a boundary",
            post("/v1/files").bearer(b1).header("content-type", "multipart/form-data"),
            deny("non_canonical_request").by(BILL).says("boundary"),
        ),
        (
            "a Content-Encoding",
            post("/v1/customers").form().bearer(b1).header("content-encoding", "gzip"),
            deny("non_canonical_request").by(BILL).says("Content-Encoding"),
        ),
        (
            "Connection naming Stripe-Account",
            get("/v1/customers").bearer(b1).header("connection", "keep-alive, Stripe-Account"),
            deny("non_canonical_request").by(BILL).says("Connection header"),
        ),
        (
            "; between query parameters",
            get("/v1/customers?limit=1;expand[]=invoice").bearer(b1),
            deny("non_canonical_request").by(BILL).says("uses ;"),
        ),
        (
            "_method in the query",
            post("/v1/customers?_method=DELETE").bearer(b1),
            deny("non_canonical_request").by(BILL).says("_method"),
        ),
        (
            "expand in two forms",
            get("/v1/customers/cus_1?expand=a&expand[]=b").bearer(b1),
            deny("non_canonical_request").by(BILL).says("two forms"),
        ),
        (
            "stray brackets (expand] is expand to Rack)",
            get("/v1/customers/cus_1?expand]=invoice").bearer(b1),
            deny("non_canonical_request").by(BILL).says("brackets"),
        ),
        (
            "a malformed percent-encoding in the query",
            get("/v1/customers?email=%zz").bearer(b1),
            deny("non_canonical_request").by(BILL).says("malformed"),
        ),
        (
            "report mode refuses a non-canonical target too",
            get("/v1//customers").bearer(r1),
            deny("non_canonical_request").by(REP),
        ),
        // --- a token where the API would log it: first of all, and names the token to rotate.
        (
            "in the query",
            get(&format!("/v1/customers?api_key={b1}")).bearer(b1),
            deny("token_in_wrong_place").by(BILL).says("the query string"),
        ),
        (
            "in the query, _ as %5F",
            get(&format!("/v1/customers?k=kw%5F{b1_body}")).bearer(b1),
            deny("token_in_wrong_place").by(BILL).says("the query string"),
        ),
        (
            "in the query, _ as %5f",
            get(&format!("/v1/customers?k=kw%5f{b1_body}")).bearer(b1),
            deny("token_in_wrong_place").by(BILL),
        ),
        (
            "in the path",
            get(&format!("/v1/customers/{b1}")).bearer(b1),
            deny("token_in_wrong_place").by(BILL).says("the path"),
        ),
        (
            "in another header",
            get("/v1/customers").bearer(b1).header("x-debug", b1),
            deny("token_in_wrong_place").by(BILL).says("the x-debug header"),
        ),
        (
            "glued inside a cookie",
            get("/v1/customers").bearer(b1).header("cookie", &format!("session=x{b1}y")),
            deny("token_in_wrong_place").by(BILL).says("the cookie header"),
        ),
        (
            "another service's token: that one is named",
            get(&format!("/v1/customers?k={r1}")).bearer(b1),
            deny("token_in_wrong_place").by(REP),
        ),
        (
            "an unknown token: the caller is named",
            get(&format!("/v1/customers?k={}", t.stranger)).bearer(b1),
            deny("token_in_wrong_place").by(BILL),
        ),
        (
            "an unknown token, no caller: nobody is named",
            get(&format!("/v1/customers?k={}", t.stranger)),
            deny("token_in_wrong_place"),
        ),
        (
            "a pre-checksum token, by its configured hash",
            get("/v1/customers").bearer(b1).header("x-note", &format!("key {}", t.b_old)),
            deny("token_in_wrong_place").by(B_OLD),
        ),
        (
            "before a missing Authorization",
            get(&format!("/v1/customers?k={r1}")),
            deny("token_in_wrong_place").by(REP),
        ),
        (
            "before a non-canonical target",
            get(&format!("/v1//customers?k={b1}")).bearer(b1),
            deny("token_in_wrong_place").by(BILL),
        ),
        (
            "before the caller's address",
            get(&format!("/v1/customers?k={b1}")).bearer(b1).from(OUTSIDE),
            deny("token_in_wrong_place").by(BILL),
        ),
        (
            "an expired token exposed is named all the same",
            get(&format!("/v1/customers?k={}", t.b_expired)),
            deny("token_in_wrong_place").by(B_EXPIRED),
        ),
        (
            "before a tunnel's Host check",
            get(&format!("/v1/customers?k={b1}")).bearer(b1).tunnel(API, Some(b1)).host("evil.example"),
            deny("token_in_wrong_place").by(BILL),
        ),
        // --- classify and authorize.
        (
            "no catalog entry",
            get("/v1/nope").bearer(b1),
            deny("endpoint_not_in_catalog").by(BILL).says("GET /v1/nope"),
        ),
        (
            "a method no entry has",
            req("PATCH", "/v1/customers/cus_1").bearer(b1),
            deny("endpoint_not_in_catalog").by(BILL),
        ),
        (
            "one segment more than the template",
            get("/v1/customers/cus_1/extra").bearer(b1),
            deny("endpoint_not_in_catalog").by(BILL),
        ),
        (
            "scope read, a write",
            post("/v1/charges").form().bearer(b1),
            deny("more_permissions_required").by(BILL).says("rak_charge_write"),
        ),
        (
            "scope none, a read",
            get("/v1/invoices").bearer(b1),
            deny("more_permissions_required").by(BILL).says("rak_invoice_read"),
        ),
        (
            "expand[] needing a permission not granted",
            get("/v1/customers/cus_1?expand[]=default_payment_method").bearer(b1),
            deny("more_permissions_required").by(BILL).says("rak_payment_method_read"),
        ),
        (
            "each dotted element counts",
            get("/v1/payment_intents/pi_1?expand[]=customer.default_payment_method").bearer(b1),
            deny("more_permissions_required").by(BILL).says("rak_payment_method_read"),
        ),
        (
            "expand[N] counts too",
            get("/v1/customers/cus_1?expand[0]=invoice").bearer(b1),
            deny("more_permissions_required").by(BILL).says("rak_invoice_read"),
        ),
        (
            "Stripe-Account not in accounts",
            get("/v1/customers").bearer(b1).header("stripe-account", "acct_2Other"),
            deny("account_not_allowed").by(BILL).says("acct_2Other"),
        ),
        (
            "every account of a Stripe-Context",
            get("/v1/customers").bearer(b1).header("stripe-context", "acct_1Allowed/acct_2Other"),
            deny("account_not_allowed").by(BILL).says("acct_2Other"),
        ),
        (
            "the {account} of /v1/accounts/{account}/...",
            get("/v1/accounts/acct_2Other/persons").bearer(b1),
            deny("account_not_allowed").by(BILL).says("acct_2Other"),
        ),
        (
            "the {account} of /v2/core/accounts/{account}",
            get("/v2/core/accounts/acct_2Other").bearer(b1),
            deny("account_not_allowed").by(BILL).says("acct_2Other"),
        ),
        (
            "platform only: any account is refused",
            get("/v1/customers")
                .bearer(p1)
                .cert(&["dns:pinned.internal"])
                .header("stripe-account", "acct_1Allowed"),
            deny("account_not_allowed").by(PIN),
        ),
        (
            "accounts are checked before scope",
            post("/v1/charges").form().bearer(b1).header("stripe-account", "acct_2Other"),
            deny("account_not_allowed").by(BILL),
        ),
        (
            "a direct permission with Stripe-Account",
            get("/v1/accounts/acct_1Allowed").bearer(b1).header("stripe-account", "acct_1Allowed"),
            deny("direct_permission_on_connected_account").by(BILL).says("connected_account_read"),
        ),
        (
            "a direct permission with Stripe-Context",
            get("/v1/account").bearer(b1).header("stripe-context", "acct_1Allowed"),
            deny("direct_permission_on_connected_account").by(BILL),
        ),
        (
            "direct is checked before scope",
            post("/v1/accounts/acct_1Allowed").form().bearer(b1).header("stripe-account", "acct_1Allowed"),
            deny("direct_permission_on_connected_account").by(BILL).says("connected_account_write"),
        ),
        (
            "an entry on an upstream not configured",
            post("/v2/billing/meter_event_stream").bearer(b1),
            deny("upstream_not_configured").by(BILL).says("'meter_events'"),
        ),
        (
            "not configured, before scope",
            post("/v2/billing/meter_event_stream").bearer(p1).cert(&["dns:pinned.internal"]),
            deny("upstream_not_configured").by(PIN),
        ),
        (
            "an upload, files not configured",
            post("/v1/files").header("content-type", multipart).bearer(b1),
            deny("upstream_not_configured").by(BILL).says("'files'").on(On::NoFiles),
        ),
        (
            "files not configured, GET /v1/files still on api",
            get("/v1/files").bearer(b1),
            allow().by(BILL).to("api").on(On::NoFiles),
        ),
        // --- report mode: what enforcing would refuse is forwarded, and recorded would_deny.
        ("report: a read in scope", get("/v1/customers").bearer(r1), allow().by(REP).to("api")),
        (
            "report: a write beyond scope",
            post("/v1/customers").form().bearer(r1),
            would("more_permissions_required").by(REP).to("api").says("rak_customer_write"),
        ),
        (
            "report: an expansion beyond scope",
            get("/v1/customers/cus_1?expand[]=invoice").bearer(r1),
            would("more_permissions_required").by(REP).says("rak_invoice_read"),
        ),
        (
            "report: no catalog entry goes to api",
            get("/v1/nope").bearer(r1),
            would("endpoint_not_in_catalog").by(REP).to("api"),
        ),
        (
            "report: an account not allowed",
            get("/v1/customers").bearer(r1).header("stripe-account", "acct_2Other"),
            would("account_not_allowed").by(REP),
        ),
        (
            "report: a direct permission on behalf",
            get("/v1/account").bearer(r1).header("stripe-account", "acct_1Allowed"),
            would("direct_permission_on_connected_account").by(REP),
        ),
        (
            "report: an upload to files goes to files",
            post("/v1/files").header("content-type", multipart).bearer(r1),
            would("more_permissions_required").by(REP).to("files"),
        ),
        (
            "report: the address is still enforced",
            get("/v1/customers").bearer(r1).from("127.0.0.1"),
            deny("ip_not_allowed").by(REP),
        ),
        (
            "report: upstream_not_configured is still enforced",
            post("/v2/billing/meter_event_stream").bearer(r1),
            deny("upstream_not_configured").by(REP),
        ),
        (
            "report: no api upstream, so no catalog entry is refused",
            get("/v1/nope").bearer(r1),
            deny("endpoint_not_in_catalog").by(REP).on(On::NoApi),
        ),
        (
            "report: no api upstream for a catalog entry",
            get("/v1/customers").bearer(r1),
            deny("upstream_not_configured").by(REP).says("'api'").on(On::NoApi),
        ),
        // --- forward mode: requests inside a tunnel.
        (
            "tunnel: its host, its service's token",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("api.stripe.com"),
            allow().by(BILL).to("api"),
        ),
        (
            "tunnel: Host as host:port",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("api.stripe.com:443"),
            allow().by(BILL),
        ),
        (
            "tunnel: HTTP/2 :authority, no Host",
            get("https://api.stripe.com/v1/customers").h2().bearer(b1).tunnel(API, Some(b1)),
            allow().by(BILL).to("api"),
        ),
        (
            "tunnel: opened without Proxy-Authorization",
            get("/v1/customers").bearer(b1).tunnel(API, None).host("api.stripe.com"),
            allow().by(BILL),
        ),
        (
            "tunnel: another token of the same service",
            get("/v1/customers").bearer(&t.b_old).tunnel(API, Some(b1)).host("api.stripe.com"),
            allow().by(B_OLD),
        ),
        (
            "tunnel: an upload in a tunnel to files",
            post("/v1/files")
                .header("content-type", multipart)
                .bearer(b1)
                .tunnel(FILES, Some(b1))
                .host("files.stripe.com"),
            allow().by(BILL).to("files"),
        ),
        (
            "tunnel: Host of another upstream",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("files.stripe.com"),
            deny("misdirected_request").says(API),
        ),
        (
            "tunnel: no Host, no :authority",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)),
            deny("misdirected_request"),
        ),
        (
            "tunnel: Host in other case",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("API.STRIPE.COM"),
            deny("misdirected_request"),
        ),
        (
            "tunnel: a second Host",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("api.stripe.com").host("evil.example"),
            deny("misdirected_request"),
        ),
        (
            "tunnel: :authority of another host",
            get("https://evil.example/v1/customers").h2().bearer(b1).tunnel(API, Some(b1)),
            deny("misdirected_request"),
        ),
        (
            "tunnel: the Host before the proxy token",
            get("/v1/customers").tunnel(API, Some(&t.stranger)).host("evil.example"),
            deny("misdirected_request"),
        ),
        (
            "tunnel: an endpoint another upstream serves",
            post("/v1/files")
                .header("content-type", multipart)
                .bearer(b1)
                .tunnel(API, Some(b1))
                .host("api.stripe.com"),
            deny("misdirected_request").by(BILL),
        ),
        (
            "tunnel: misdirected, whatever else is wrong",
            get("/v1/quotes/qt_1/pdf").bearer(b1).tunnel(API, Some(b1)).host("api.stripe.com"),
            deny("misdirected_request").by(BILL),
        ),
        (
            "tunnel: misdirected in report mode too",
            post("/v1/files")
                .header("content-type", multipart)
                .bearer(r1)
                .tunnel(API, Some(r1))
                .host("api.stripe.com"),
            deny("misdirected_request").by(REP),
        ),
        (
            "tunnel: report mode, unknown endpoint, the tunnel's upstream",
            get("/v1/nope").bearer(r1).tunnel(FILES, Some(r1)).host("files.stripe.com"),
            would("endpoint_not_in_catalog").by(REP).to("files"),
        ),
        (
            "tunnel: a proxy token configured nowhere",
            get("/v1/customers").bearer(b1).tunnel(API, Some(&t.stranger)).host("api.stripe.com"),
            deny("proxy_token_invalid").says("is not known to keyward"),
        ),
        (
            "tunnel: the proxy token expired",
            get("/v1/customers").bearer(b1).tunnel(API, Some(&t.b_expired)).host("api.stripe.com"),
            deny("proxy_token_invalid").says("has expired"),
        ),
        (
            "tunnel: the proxy token revoked",
            get("/v1/customers").bearer(b1).tunnel(API, Some(&t.b_revoked)).host("api.stripe.com"),
            deny("proxy_token_invalid").says("was revoked"),
        ),
        (
            "tunnel: the proxy token not valid yet",
            get("/v1/customers").bearer(b1).tunnel(API, Some(&t.b_early)).host("api.stripe.com"),
            deny("proxy_token_invalid").says("is not valid yet"),
        ),
        (
            "tunnel: the proxy token not from this address",
            get("/v1/customers")
                .bearer(b1)
                .from("127.0.0.1")
                .tunnel(API, Some(&t.b_narrow))
                .host("api.stripe.com"),
            deny("proxy_token_invalid").says("does not allow calls from this address"),
        ),
        (
            "tunnel: the proxy token before the request's own",
            get("/v1/customers").tunnel(API, Some(&t.stranger)).host("api.stripe.com"),
            deny("proxy_token_invalid"),
        ),
        (
            "tunnel: a pinned proxy token, no certificate",
            get("/v1/customers").bearer(b1).tunnel(API, Some(p1)).host("api.stripe.com"),
            deny("client_certificate_required"),
        ),
        (
            "tunnel: a good tunnel, the request without a token",
            get("/v1/customers").tunnel(API, Some(b1)).host("api.stripe.com"),
            deny("api_key_missing"),
        ),
        (
            "tunnel: the token of another service than the tunnel's",
            get("/v1/customers").bearer(r1).tunnel(API, Some(b1)).host("api.stripe.com"),
            deny("tunnel_service_mismatch").by(REP),
        ),
        (
            "tunnel: mismatch, even for a misdirected endpoint",
            post("/v1/files")
                .header("content-type", multipart)
                .bearer(r1)
                .tunnel(API, Some(b1))
                .host("api.stripe.com"),
            deny("tunnel_service_mismatch").by(REP),
        ),
        (
            "tunnel: to a host not configured",
            get("/v1/customers")
                .bearer(b1)
                .tunnel("connect.stripe.com:443", Some(b1))
                .host("connect.stripe.com"),
            deny("host_not_proxied").says("api.stripe.com:443, files.stripe.com:443"),
        ),
        (
            "tunnel: its upstream gone by a reload",
            get("/v1/files").bearer(b1).tunnel(FILES, Some(b1)).host("files.stripe.com"),
            deny("host_not_proxied").says("api.stripe.com:443").on(On::NoFiles),
        ),
        (
            "tunnel: no [forward], so no host is intercepted",
            get("/v1/files").bearer(r1).tunnel(FILES, Some(r1)).host("files.stripe.com"),
            deny("host_not_proxied").says("none configured").on(On::NoApi),
        ),
        // The control plane's state, read by the policy: suspension wins over what else holds.
        (
            "a suspended token",
            get("/v1/customers").bearer(b1).suspend(b1),
            deny("api_key_suspended").by(BILL),
        ),
        (
            "a suspended token that has expired too",
            get("/v1/customers").bearer(&t.b_expired).suspend(&t.b_expired),
            deny("api_key_suspended").by(("billing", "b-expired")),
        ),
        (
            "a suspended token from outside its allowlist",
            get("/v1/customers").bearer(b1).suspend(b1).from(OUTSIDE),
            deny("api_key_suspended").by(BILL),
        ),
        (
            "another token of the service is suspended",
            get("/v1/customers").bearer(b1).suspend(&t.b_narrow),
            allow().by(BILL),
        ),
        (
            "tunnel: its proxy token suspended since it opened",
            get("/v1/customers").bearer(b1).tunnel(API, Some(b1)).host("api.stripe.com").suspend(b1),
            deny("proxy_token_invalid").says("is suspended"),
        ),
        // The body's shape, read once from the head.
        (
            "a GET with a body",
            get("/v1/customers").bearer(b1).with_body(),
            deny("non_canonical_request").by(BILL).says("only POST calls may have"),
        ),
        (
            "a DELETE with a body",
            req("DELETE", "/v1/customers/cus_1").bearer(b1).with_body(),
            deny("non_canonical_request").by(BILL).says("only POST calls may have"),
        ),
        ("a POST with a body", post("/v1/customers").form().bearer(b1).with_body(), allow().by(BILL)),
        (
            "multipart to an endpoint that takes none",
            post("/v1/customers").header("content-type", multipart).bearer(b1).with_body(),
            deny("non_canonical_request").by(BILL).says("takes none"),
        ),
        (
            "report mode: multipart to one that takes none is refused all the same",
            post("/v1/customers").header("content-type", multipart).bearer(r1).with_body(),
            deny("non_canonical_request").by(REP).says("takes none"),
        ),
        (
            "multipart where the scope refuses first",
            post("/v1/charges").header("content-type", multipart).bearer(b1).with_body(),
            deny("more_permissions_required").by(BILL),
        ),
    ];

    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for (what, r, want) in &table {
        let policy = match want.on {
            On::Main => &main.policy,
            On::NoFiles => &no_files.policy,
            On::NoApi => &no_api.policy,
        };
        let facts = RequestFacts {
            parts: &r.parts,
            client_ip: r.ip,
            now: r.now,
            tunnel: r.tunnel.as_ref(),
            client_ids: &r.client_ids,
            suspended: &|t| r.suspended.contains(&t.hash),
            has_body: r.has_body,
        };
        let ruling = decide(policy, &facts);
        let (decision, reason) = (ruling.verdict.decision().as_str(), ruling.verdict.reason());
        println!("{what:<64} {decision:<10} {reason}");
        seen.insert((decision, reason));
        for m in mismatches(policy, want, &ruling) {
            wrong.push(format!("{what}: {m}"));
        }
    }
    assert!(wrong.is_empty(), "{} rows differ:\n{}", wrong.len(), wrong.join("\n"));

    // The table covers every reason decide gives (`internal_error` is unreachable: a ruling
    // without an upstream is `upstream_not_configured`, or a refusal with no upstream to
    // report to), and report mode's would_deny for each reason report mode forwards.
    let reasons: BTreeSet<&str> = seen.iter().map(|(_, r)| *r).collect();
    for want in [
        "ok",
        "api_key_missing",
        "api_key_invalid",
        "api_key_expired",
        "api_key_not_yet_valid",
        "api_key_revoked",
        "api_key_suspended",
        "ip_not_allowed",
        "client_certificate_required",
        "client_certificate_not_allowed",
        "non_canonical_request",
        "token_in_wrong_place",
        "endpoint_not_in_catalog",
        "more_permissions_required",
        "account_not_allowed",
        "direct_permission_on_connected_account",
        "upstream_not_configured",
        "misdirected_request",
        "proxy_token_invalid",
        "tunnel_service_mismatch",
        "host_not_proxied",
    ] {
        assert!(reasons.contains(want), "no row gives {want}");
    }
    for want in [
        "more_permissions_required",
        "endpoint_not_in_catalog",
        "account_not_allowed",
        "direct_permission_on_connected_account",
    ] {
        assert!(seen.contains(&(WOULD, want)), "no report-mode row gives would_deny {want}");
    }
    println!("{} rows, {} reasons", table.len(), reasons.len());
}

/// `check_form`: a form body (read whole) of a call about to be forwarded. `Err` refuses it in
/// any mode, `Ok(Some)` is report mode's would_deny, `Ok(None)` lets it go. Each row: what it
/// shows, the service (and token) calling, the form, and what `check_form` must say; `by` is
/// whose token a `token_in_wrong_place` names.
#[tokio::test]
async fn check_form_rules() {
    let t = Tokens::new();
    let snap = policy("main.toml", main_config(&t)).await;
    let policy = &snap.policy;
    let (b1, r1) = (t.b1.as_str(), t.r1.as_str());
    let b1_body = &b1[3..];
    let table: Vec<(&str, Who, String, Want)> = vec![
        ("a form without expand", BILL, "amount=100&currency=eur".into(), allow()),
        ("expand[] the scope grants", BILL, "expand[]=customer".into(), allow()),
        (
            "expand[] needing a permission",
            BILL,
            "amount=1&expand[]=invoice".into(),
            deny("more_permissions_required").says("rak_invoice_read"),
        ),
        (
            "a dotted expand, each element",
            BILL,
            "expand[]=customer.default_payment_method".into(),
            deny("more_permissions_required").says("rak_payment_method_read"),
        ),
        (
            "report: expand[] needing a permission",
            REP,
            "expand[]=invoice".into(),
            would("more_permissions_required"),
        ),
        ("a token in the form", BILL, format!("description={b1}"), deny("token_in_wrong_place").by(BILL)),
        (
            "a token in the form, _ as %5F",
            BILL,
            format!("description=kw%5F{b1_body}"),
            deny("token_in_wrong_place").by(BILL).says("the form body"),
        ),
        (
            "report: another service's token, refused all the same",
            REP,
            format!("metadata[k]={b1}"),
            deny("token_in_wrong_place").by(BILL),
        ),
        (
            "an unknown token: nobody named",
            BILL,
            format!("description={}", t.stranger),
            deny("token_in_wrong_place"),
        ),
        (
            "; between parameters: reads two ways",
            BILL,
            "a=1;expand[]=invoice".into(),
            deny("non_canonical_request"),
        ),
        (
            "report: reads two ways, refused all the same",
            REP,
            "a=1;expand[]=invoice".into(),
            deny("non_canonical_request"),
        ),
        ("_method in the form", BILL, "_method=DELETE".into(), deny("non_canonical_request").says("_method")),
        (
            "expand twice as expand",
            BILL,
            "expand=customer&expand=invoice".into(),
            deny("non_canonical_request"),
        ),
        ("expand without =", BILL, "expand[]".into(), deny("non_canonical_request").says("without a value")),
    ];
    let mut wrong = Vec::new();
    for (what, (name, _), form, want) in &table {
        let service = policy.services.iter().find(|s| &*s.name == *name).unwrap();
        let token = if *name == "billing" { b1 } else { r1 };
        let got = check_form(policy, service, form.as_bytes(), token);
        let (decision, failure) = match &got {
            Ok(None) => (ALLOW, None),
            Ok(Some(f)) => (WOULD, Some(f)),
            Err(f) => (DENY, Some(f)),
        };
        let reason = failure.map_or("ok", Failure::reason);
        println!("{what:<64} {decision:<10} {reason}");
        if (decision, reason) != (want.decision, want.reason) {
            wrong.push(format!("{what}: got {decision} {reason}, want {} {}", want.decision, want.reason));
        }
        let named = match failure {
            Some(Failure::TokenInWrongPlace { whose, place }) => {
                if place != "the form body" {
                    wrong.push(format!("{what}: place {place:?}"));
                }
                whose.as_ref().map(|(s, t)| (&**s, &**t))
            }
            _ => None,
        };
        if named != want.by {
            wrong.push(format!("{what}: names {named:?}, want {:?}", want.by));
        }
        if let (Some(f), Some(text)) = (failure, &want.says)
            && !f.message().contains(text.as_str())
        {
            wrong.push(format!("{what}: message {:?} lacks {text:?}", f.message()));
        }
    }
    assert!(wrong.is_empty(), "{} rows differ:\n{}", wrong.len(), wrong.join("\n"));
    println!("{} rows", table.len());
}

/// `secret_mode`: a service that names its `livemode` is never sent with a key of the other
/// mode (a vault's new version can change it), nor with one of no known mode; a service that
/// names none takes any.
#[tokio::test]
async fn a_secret_of_the_other_mode_is_never_used() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tokens::new();
    // A test-mode key, as the configuration's check of `livemode` reads it at compile time.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("secrets.toml");
    std::fs::write(&keys, "s = \"sk_test_0123456789abcdefABCDEF\"\n").unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = main_config(&t)
        .replacen("name = \"billing\"\n", "name = \"billing\"\nlivemode = false\n", 1)
        .replacen(
            "source = \"env\"\nvar = \"X\"",
            &format!("source = \"file\"\npath = {keys:?}\nkey = \"s\""),
            1,
        );
    let with_secrets = Options { secrets: true, ..Options::POLICY_ONLY };
    let snap = compile(&Source { name: "mode.toml".into(), text }, with_secrets).await.unwrap();
    let service = |name: &str| snap.policy.services.iter().find(|s| &*s.name == name).unwrap();
    let (test_only, any) = (service("billing"), service("reports"));
    assert_eq!(keyward::policy::secret_mode(test_only, Some(false)), Ok(()));
    for other in [Some(true), None] {
        assert_eq!(
            keyward::policy::secret_mode(test_only, other),
            Err(Failure::LivemodeMismatch),
            "{other:?}"
        );
    }
    for mode in [Some(true), Some(false), None] {
        assert_eq!(keyward::policy::secret_mode(any, mode), Ok(()), "{mode:?}");
    }
}
