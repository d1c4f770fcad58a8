//! Vault's answers, read as untrusted data from the network. A body is parsed (with serde)
//! into a small JSON tree whose every string is a `Secret` — zeroed on drop, never printed —
//! and only then interpreted. Pure functions: the tests feed them hostile and broken bodies.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::secrets::{Loaded, Secret};

/// Larger answers are refused unread: a KV secret is a few hundred bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// JSON with redacted strings. Only object keys are plain text (they are field names).
#[derive(Debug)]
pub enum Json {
    Null,
    Bool(bool),
    /// A non-negative integer; `None` for any other number.
    Number(Option<u64>),
    Text(Secret),
    List(Vec<Json>),
    Map(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn take(&mut self, key: &str) -> Option<Json> {
        match self {
            Json::Map(entries) => entries.iter().position(|(k, _)| k == key).map(|i| entries.remove(i).1),
            _ => None,
        }
    }

    fn at(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    fn number(&self) -> Option<u64> {
        match self {
            Json::Number(n) => *n,
            _ => None,
        }
    }

    fn is_map(&self) -> bool {
        matches!(self, Json::Map(_))
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(Some(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(u64::try_from(v).ok()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number(None))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Text(Secret::new(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::Text(Secret::new(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Json::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            out.push((k, v));
        }
        Ok(Json::Map(out))
    }
}

/// Parse a body. serde_json's own messages quote the input, so only its position is kept.
pub fn parse(body: &[u8]) -> Result<Json, Refusal> {
    if body.len() > MAX_BODY {
        return Err(Refusal::Malformed(format!("the answer is larger than {MAX_BODY} bytes")));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "JSON that ends early",
            serde_json::error::Category::Syntax => "not JSON",
            _ => "JSON keyward cannot read",
        };
        Refusal::Malformed(format!("{what} (line {}, column {})", e.line(), e.column()))
    })
}

/// Why an answer gives no secret. `Display` shows names and numbers, never a value from the
/// answer, except vault's own error message (printable ASCII, shortened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Forbidden(String),
    NotFound,
    Deleted { version: u64 },
    Destroyed { version: u64 },
    NoField { field: String, present: Vec<String> },
    FieldNotText { field: String },
    FieldEmpty { field: String },
    FieldUnusable { field: String },
    NotKv2,
    Kv1Mount { mount: String },
    NotKvMount { mount: String, kind: String },
    Sealed(String),
    Status(u16, String),
    Malformed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Forbidden(msg) => write!(
                f,
                "permission denied (403{}): the token is wrong or expired, or its policy does not \
                 grant `read` on this path",
                note(msg)
            ),
            Refusal::NotFound => f.write_str("no secret at this path (404)"),
            Refusal::Deleted { version } => write!(
                f,
                "the latest version ({version}) is deleted (404): `bao kv undelete` it or write a new one"
            ),
            Refusal::Destroyed { version } => {
                write!(f, "the latest version ({version}) is destroyed (404): write a new one")
            }
            Refusal::NoField { field, present } if present.is_empty() => {
                write!(f, "the secret has no field `{field}` (it has no fields)")
            }
            Refusal::NoField { field, present } => {
                write!(f, "the secret has no field `{field}` (its fields: {})", present.join(", "))
            }
            Refusal::FieldNotText { field } => write!(f, "field `{field}` is not a string"),
            Refusal::FieldEmpty { field } => write!(f, "field `{field}` is empty"),
            Refusal::FieldUnusable { field } => write!(
                f,
                "field `{field}` has whitespace at its ends or control characters: it cannot be sent \
                 as a header (a trailing newline from `bao kv put field=@file`?)"
            ),
            Refusal::NotKv2 => f.write_str(
                "the answer has no data.data and data.metadata: not a KV version 2 mount \
                 (keyward reads KV version 2 only)",
            ),
            Refusal::Kv1Mount { mount } => write!(
                f,
                "mount `{mount}` is a KV version 1 mount: keyward reads KV version 2 only \
                 (upgrade it with `bao kv enable-versioning {mount}`)"
            ),
            Refusal::NotKvMount { mount, kind } => {
                write!(f, "mount `{mount}` is a `{kind}` secrets engine, not KV version 2")
            }
            Refusal::Sealed(msg) => write!(f, "vault is sealed or unavailable (503{})", note(msg)),
            Refusal::Status(status, msg) => write!(f, "vault answered {status}{}", note(msg)),
            Refusal::Malformed(what) => write!(f, "malformed answer: {what}"),
        }
    }
}

fn note(msg: &str) -> String {
    if msg.is_empty() { String::new() } else { format!(": {msg}") }
}

/// Vault's first error message, if any: printable ASCII only, at most 160 characters.
fn vault_message(body: &[u8]) -> String {
    let Ok(tree) = parse(body) else {
        return String::new();
    };
    let Some(Json::List(errors)) = tree.get("errors") else {
        return String::new();
    };
    let Some(Json::Text(first)) = errors.first() else {
        return String::new();
    };
    let words = first.expose().split_whitespace().collect::<Vec<_>>().join(" ");
    words.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(160).collect()
}

fn refusal_for_status(status: u16, body: &[u8]) -> Refusal {
    match status {
        403 => Refusal::Forbidden(vault_message(body)),
        404 => Refusal::NotFound,
        503 => Refusal::Sealed(vault_message(body)),
        s => Refusal::Status(s, vault_message(body)),
    }
}

/// A KV v2 read (`GET /v1/MOUNT/data/PATH`): the field's value and the secret's version.
pub fn kv_read(status: u16, body: &[u8], field: &str) -> Result<Loaded, Refusal> {
    if status == 404 {
        // A deleted or destroyed latest version is a 404 that still carries its metadata.
        let meta = parse(body).ok().and_then(|mut t| t.take("data")?.take("metadata"));
        let version = meta.as_ref().and_then(|m| m.get("version")?.number());
        let deleted = matches!(meta.as_ref().and_then(|m| m.get("deletion_time")),
            Some(Json::Text(t)) if !t.expose().is_empty());
        let destroyed = matches!(meta.as_ref().and_then(|m| m.get("destroyed")), Some(Json::Bool(true)));
        return Err(match version {
            Some(version) if destroyed => Refusal::Destroyed { version },
            Some(version) if deleted => Refusal::Deleted { version },
            _ => Refusal::NotFound,
        });
    }
    if status != 200 {
        return Err(refusal_for_status(status, body));
    }
    let mut tree = parse(body)?;
    let Some(mut data) = tree.take("data").filter(Json::is_map) else {
        return Err(Refusal::NotKv2);
    };
    let (fields, meta) = (data.take("data"), data.take("metadata"));
    let Some(meta) = meta.filter(Json::is_map) else {
        return Err(Refusal::NotKv2);
    };
    let mut fields = match fields {
        Some(f @ Json::Map(_)) => f,
        Some(Json::Null) | None => {
            let version = meta.get("version").and_then(Json::number).unwrap_or(0);
            return Err(Refusal::Deleted { version });
        }
        Some(_) => return Err(Refusal::NotKv2),
    };
    let Some(version) = meta.get("version").and_then(Json::number) else {
        return Err(Refusal::Malformed("data.metadata.version is not a version number".into()));
    };
    let present = match &fields {
        Json::Map(entries) => entries.iter().take(20).map(|(k, _)| printable(k)).collect(),
        _ => Vec::new(),
    };
    let field_name = printable(field);
    match fields.take(field) {
        None => Err(Refusal::NoField { field: field_name, present }),
        Some(Json::Text(value)) => {
            let v = value.expose();
            if v.is_empty() {
                Err(Refusal::FieldEmpty { field: field_name })
            } else if !crate::secrets::header_safe(v) {
                Err(Refusal::FieldUnusable { field: field_name })
            } else {
                Ok(Loaded { value, version: Some(version) })
            }
        }
        Some(_) => Err(Refusal::FieldNotText { field: field_name }),
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(64).collect()
}

/// A vault token and how long it lives, from a login or a renewal.
#[derive(Debug)]
pub struct Lease {
    pub token: Secret,
    /// `None`: the token does not expire.
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// The longest token TTL taken as given (ten years): a hostile or broken answer of 2^63
/// seconds must not overflow the deadline arithmetic.
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

fn ttl_of(seconds: Option<u64>) -> Option<Duration> {
    seconds.filter(|s| *s > 0).map(|s| Duration::from_secs(s.min(MAX_TTL_SECS)))
}

/// An AppRole login or `renew-self`: `auth.client_token`, `auth.lease_duration`, `auth.renewable`.
pub fn auth(status: u16, body: &[u8]) -> Result<Lease, Refusal> {
    if status != 200 {
        return Err(refusal_for_status(status, body));
    }
    let mut tree = parse(body)?;
    let Some(mut auth) = tree.take("auth").filter(Json::is_map) else {
        return Err(Refusal::Malformed("no `auth` object".into()));
    };
    let Some(Json::Text(token)) = auth.take("client_token") else {
        return Err(Refusal::Malformed("no auth.client_token".into()));
    };
    if token.expose().is_empty() || token.expose().bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Refusal::Malformed("auth.client_token is not a usable token".into()));
    }
    let ttl = ttl_of(auth.get("lease_duration").and_then(Json::number));
    let renewable = matches!(auth.get("renewable"), Some(Json::Bool(true)));
    Ok(Lease { token, ttl, renewable })
}

/// `lookup-self` on a configured token: its remaining `ttl` (`None`: never expires) and
/// whether it is renewable.
pub fn lookup(status: u16, body: &[u8]) -> Result<(Option<Duration>, bool), Refusal> {
    if status != 200 {
        return Err(refusal_for_status(status, body));
    }
    let tree = parse(body)?;
    let ttl = ttl_of(tree.at(&["data", "ttl"]).and_then(Json::number));
    let renewable = matches!(tree.at(&["data", "renewable"]), Some(Json::Bool(true)));
    Ok((ttl, renewable))
}

/// What `sys/internal/ui/mounts/PATH` says the mount is: `(type, KV version)`.
pub fn mount(status: u16, body: &[u8]) -> Option<(String, Option<u64>)> {
    if status != 200 {
        return None;
    }
    let tree = parse(body).ok()?;
    let Some(Json::Text(kind)) = tree.at(&["data", "type"]) else {
        return None;
    };
    let version = match tree.at(&["data", "options", "version"]) {
        Some(Json::Text(v)) => v.expose().parse().ok(),
        _ => None,
    };
    Some((printable(kind.expose()), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "sk_live_CANARYVALUE_31337";

    fn kv(fields: &str, meta: &str) -> String {
        format!(
            r#"{{"request_id":"r","lease_id":"","data":{{"data":{fields},"metadata":{meta}}},"auth":null}}"#
        )
    }

    #[test]
    fn reads_a_kv2_field_and_its_version() {
        let body =
            kv(&format!(r#"{{"api_key":"{CANARY}","other":1}}"#), r#"{"version":7,"destroyed":false}"#);
        let got = kv_read(200, body.as_bytes(), "api_key").unwrap();
        assert_eq!((got.value.expose(), got.version), (CANARY, Some(7)));
    }

    /// Hostile and broken answers: each is refused with the expected reason, and no message
    /// repeats the value planted in the body.
    #[test]
    fn broken_answers_are_refused_without_echoing_values() {
        let ok_meta = r#"{"version":3}"#;
        let with_field = format!(r#"{{"api_key":"{CANARY}"}}"#);
        let cases: Vec<(&str, u16, String, &str)> = vec![
            ("empty body", 200, String::new(), "ends early"),
            ("not JSON", 200, format!("<html>{CANARY}</html>"), "not JSON"),
            ("truncated", 200, format!(r#"{{"data":{{"data":{{"api_key":"{CANARY}"#), "ends early"),
            ("top-level array", 200, format!(r#"["{CANARY}"]"#), "not a KV version 2"),
            ("data is a string", 200, format!(r#"{{"data":"{CANARY}"}}"#), "not a KV version 2"),
            ("KV v1 shape", 200, format!(r#"{{"data":{{"api_key":"{CANARY}"}}}}"#), "not a KV version 2"),
            (
                "KV v1 with a data key",
                200,
                format!(r#"{{"data":{{"data":"{CANARY}"}}}}"#),
                "not a KV version 2",
            ),
            ("no metadata", 200, format!(r#"{{"data":{{"data":{with_field}}}}}"#), "not a KV version 2"),
            ("metadata not an object", 200, kv(&with_field, &format!(r#""{CANARY}""#)), "not a KV version 2"),
            (
                "version is a string",
                200,
                kv(&with_field, &format!(r#"{{"version":"{CANARY}"}}"#)),
                "version number",
            ),
            ("version negative", 200, kv(&with_field, r#"{"version":-1}"#), "version number"),
            ("version float", 200, kv(&with_field, r#"{"version":1.5}"#), "version number"),
            (
                "field missing",
                200,
                kv(&format!(r#"{{"other":"{CANARY}"}}"#), ok_meta),
                "no field `api_key` (its fields: other)",
            ),
            ("no fields", 200, kv("{}", ok_meta), "no field `api_key` (it has no fields)"),
            ("field is a number", 200, kv(r#"{"api_key":4242}"#, ok_meta), "not a string"),
            (
                "field is an object",
                200,
                kv(&format!(r#"{{"api_key":{{"v":"{CANARY}"}}}}"#), ok_meta),
                "not a string",
            ),
            ("field is null", 200, kv(r#"{"api_key":null}"#, ok_meta), "not a string"),
            ("field is empty", 200, kv(r#"{"api_key":""}"#, ok_meta), "is empty"),
            (
                "trailing newline",
                200,
                kv(&format!(r#"{{"api_key":"{CANARY}\n"}}"#), ok_meta),
                "trailing newline",
            ),
            (
                "inner control byte",
                200,
                kv(&format!(r#"{{"api_key":"{CANARY}\u0000x"}}"#), ok_meta),
                "control characters",
            ),
            (
                "data.data null",
                200,
                kv("null", r#"{"version":4,"deletion_time":"2026-01-01T00:00:00Z"}"#),
                "(4) is deleted",
            ),
            (
                "deleted (404)",
                404,
                kv("null", r#"{"version":5,"deletion_time":"2026-01-01T00:00:00Z","destroyed":false}"#),
                "(5) is deleted",
            ),
            (
                "destroyed (404)",
                404,
                kv("null", r#"{"version":6,"deletion_time":"","destroyed":true}"#),
                "(6) is destroyed",
            ),
            ("missing path", 404, r#"{"errors":[]}"#.into(), "no secret at this path"),
            ("404 not JSON", 404, CANARY.to_string(), "no secret at this path"),
            (
                "forbidden",
                403,
                r#"{"errors":["permission denied"]}"#.into(),
                "permission denied (403: permission denied)",
            ),
            (
                "sealed",
                503,
                r#"{"errors":["Vault is sealed"]}"#.into(),
                "sealed or unavailable (503: Vault is sealed)",
            ),
            ("server error", 500, "oops".into(), "vault answered 500"),
            (
                "ugly error text",
                400,
                "{\"errors\":[\"bad\\n\\u001b[31m  request\"]}".into(),
                "vault answered 400: bad [31m request",
            ),
            (
                "deep nesting",
                200,
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
                "(line 1, column 128)",
            ),
            ("huge", 200, format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_BODY)), "larger than"),
        ];
        for (name, status, body, want) in cases {
            let err = kv_read(status, body.as_bytes(), "api_key").expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains("CANARY"), "{name} echoes the value: {err}");
        }
    }

    #[test]
    fn tree_debug_is_redacted() {
        let tree = parse(format!(r#"{{"k":["{CANARY}"]}}"#).as_bytes()).unwrap();
        assert!(!format!("{tree:?}").contains("CANARY"));
    }

    #[test]
    fn auth_answers() {
        let body = r#"{"auth":{"client_token":"s.abc","lease_duration":30,"renewable":true}}"#;
        let lease = auth(200, body.as_bytes()).unwrap();
        assert_eq!(
            (lease.token.expose(), lease.ttl, lease.renewable),
            ("s.abc", Some(Duration::from_secs(30)), true)
        );
        let root =
            auth(200, br#"{"auth":{"client_token":"s.x","lease_duration":0,"renewable":false}}"#).unwrap();
        assert_eq!((root.ttl, root.renewable), (None, false));
        // A TTL no deadline could hold is taken as ten years, for logins and look-ups alike.
        let huge = format!(r#"{{"auth":{{"client_token":"s.x","lease_duration":{}}}}}"#, u64::MAX);
        let ten_years = Duration::from_secs(MAX_TTL_SECS);
        assert_eq!(auth(200, huge.as_bytes()).unwrap().ttl, Some(ten_years));
        let huge = format!(r#"{{"data":{{"ttl":{}}}}}"#, u64::MAX / 2);
        assert_eq!(lookup(200, huge.as_bytes()).unwrap().0, Some(ten_years));
        assert!(std::time::Instant::now().checked_add(ten_years).is_some());
        for (status, body, want) in [
            (200, r#"{"auth":null}"#, "no `auth` object"),
            (200, r#"{"auth":{"lease_duration":3}}"#, "no auth.client_token"),
            (200, r#"{"auth":{"client_token":7}}"#, "no auth.client_token"),
            (200, r#"{"auth":{"client_token":"s.a b"}}"#, "not a usable token"),
            (400, r#"{"errors":["invalid role or secret ID"]}"#, "400: invalid role or secret ID"),
            (200, "{", "ends early"),
        ] {
            let err = auth(status, body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let looked = lookup(200, br#"{"data":{"ttl":0,"renewable":false,"id":"s.secret"}}"#).unwrap();
        assert_eq!(looked, (None, false));
        let looked = lookup(200, br#"{"data":{"ttl":120,"renewable":true}}"#).unwrap();
        assert_eq!(looked, (Some(Duration::from_secs(120)), true));
    }

    #[test]
    fn mount_answers() {
        let v1 = br#"{"data":{"type":"kv","options":{"version":"1"},"path":"kv1/"}}"#;
        assert_eq!(mount(200, v1), Some(("kv".into(), Some(1))));
        let v2 = br#"{"data":{"type":"kv","options":{"version":"2"}}}"#;
        assert_eq!(mount(200, v2), Some(("kv".into(), Some(2))));
        assert_eq!(mount(200, br#"{"data":{"type":"pki","options":null}}"#), Some(("pki".into(), None)));
        assert_eq!(mount(403, br#"{"errors":["preflight"]}"#), None);
        assert_eq!(mount(200, b"[]"), None);
    }
}
