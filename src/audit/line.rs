//! An access record as one JSON line, written by hand: the same bytes serde_json writes for
//! the derived `Serialize` (a test holds the two equal), at a fraction of the cost: almost
//! every string in a record needs no escaping, and is copied as it is.

use std::net::IpAddr;

use time::{OffsetDateTime, UtcOffset};

use super::AccessRecord;

/// A record's time, RFC 3339 in UTC to the microsecond: `2026-11-26T13:00:00.123456Z`. Fixed
/// width, so lines sort by time as text.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let (h, m, s, micro) = t.to_hms_micro();
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for d in b[at..at + width].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, t.month() as u32);
    put(8, 2, t.day().into());
    put(11, 2, h.into());
    put(14, 2, m.into());
    put(17, 2, s.into());
    put(20, 6, micro);
    String::from_utf8(b.to_vec()).expect("digits are ASCII")
}

impl AccessRecord {
    /// Append this record as compact JSON (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut j = Json(out);
        j.0.push(b'{');
        j.num("seq", self.seq);
        j.str("prev", &self.prev);
        j.str("time", &self.time);
        j.opt_str("instance", self.instance.as_deref());
        j.str("kind", self.kind.as_str());
        j.str("request_id", &self.request_id);
        j.opt_str("service", self.service.as_deref());
        j.opt_str("token_id", self.token_id.as_deref());
        j.ip("client_ip", self.client_ip);
        j.str("mode", self.mode.as_str());
        j.opt_str("connect_host", self.connect_host.as_deref());
        j.opt_str("client_id", self.client_id.as_deref());
        j.str("method", &self.method);
        j.str("path", &self.path);
        j.opt_str("template", self.template.as_deref());
        j.opt_str("permission", self.permission.as_deref());
        j.opt_str("access", self.access.as_deref());
        j.str("decision", self.decision.as_str());
        j.str("reason", &self.reason);
        if !self.missing.is_empty() {
            j.key("missing");
            j.0.push(b'[');
            for (i, m) in self.missing.iter().enumerate() {
                if i > 0 {
                    j.0.push(b',');
                }
                escaped(j.0, m);
            }
            j.0.push(b']');
        }
        if self.token_exposed {
            j.key("token_exposed");
            j.0.extend_from_slice(b"true");
        }
        j.num("status", self.status);
        j.opt_str("upstream", self.upstream.as_deref());
        j.opt_str("upstream_request_id", self.upstream_request_id.as_deref());
        j.opt_str("stripe_account", self.stripe_account.as_deref());
        j.ip("egress_ip", self.egress_ip);
        j.float("duration_ms", Some(self.duration_ms));
        j.float("upstream_ms", self.upstream_ms);
        j.num("bytes_in", self.bytes_in);
        j.num("bytes_out", self.bytes_out);
        j.str("config_version", &self.config_version);
        match self.secret_version {
            Some(v) => j.num("secret_version", v),
            None => j.null("secret_version"),
        }
        match self.livemode {
            Some(live) => {
                j.key("livemode");
                j.0.extend_from_slice(if live { b"true" } else { b"false" });
            }
            None => j.null("livemode"),
        }
        if let Some(a) = self.amount {
            j.num("amount", a);
        }
        if let Some(c) = &self.currency {
            j.str("currency", c);
        }
        if let Some(s) = &self.spend {
            j.str("spend", s);
        }
        j.0.push(b'}');
    }
}

struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    /// `"key":` (after a comma unless first). Keys are plain ASCII.
    fn key(&mut self, key: &str) {
        if self.0.last() != Some(&b'{') {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn null(&mut self, key: &str) {
        self.key(key);
        self.0.extend_from_slice(b"null");
    }

    fn num(&mut self, key: &str, n: impl itoa::Integer) {
        self.key(key);
        self.0.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// As serde_json: shortest round-trip form, `null` for NaN and infinities.
    fn float(&mut self, key: &str, f: Option<f64>) {
        match f.filter(|f| f.is_finite()) {
            Some(f) => {
                self.key(key);
                self.0.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
            }
            None => self.null(key),
        }
    }

    fn str(&mut self, key: &str, s: &str) {
        self.key(key);
        escaped(self.0, s);
    }

    fn opt_str(&mut self, key: &str, s: Option<&str>) {
        match s {
            Some(s) => self.str(key, s),
            None => self.null(key),
        }
    }

    /// An address as its `Display` text, which has nothing to escape.
    fn ip(&mut self, key: &str, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return self.null(key) };
        self.key(key);
        self.0.push(b'"');
        match ip {
            // The usual case, without the formatting machinery.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.0.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                write!(self.0, "{v6}").expect("writing to a Vec cannot fail");
            }
        }
        self.0.push(b'"');
    }
}

/// A JSON string with serde_json's escapes: `\"`, `\\`, the short forms of the common control
/// characters, `\u00XX` for the others; everything else, non-ASCII included, as it is.
fn escaped(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // No early exit: the usual answer is "nothing to escape", and this loop vectorizes.
    if !bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b if b < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[(b >> 4) as usize],
                        HEX[(b & 15) as usize],
                    ]);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn same_as_serde(r: &AccessRecord) {
        let mut mine = Vec::new();
        r.write_json(&mut mine);
        assert_eq!(String::from_utf8(mine).unwrap(), serde_json::to_string(r).unwrap());
    }

    #[test]
    fn writes_what_serde_json_writes() {
        same_as_serde(&AccessRecord::default());
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let full = AccessRecord {
            seq: u64::MAX,
            prev: "ab".repeat(32),
            time: "2026-11-26T13:00:00.123456789Z".into(),
            instance: Some(Arc::from("keyward-7d9f-\"x\"")),
            kind: crate::audit::Kind::Request,
            request_id: "kwreq_0123456789abcdef01".into(),
            service: Some(Arc::from("svc \"quoted\" \\ é ☃")),
            token_id: Some(Arc::from(every_ascii.as_str())),
            client_ip: Some("::ffff:10.0.0.1".parse().unwrap()),
            mode: super::super::ProxyMode::Forward,
            connect_host: Some("api.stripe.com:443\u{1}".into()),
            client_id: Some("spiffe://prod.example/ns/pay/sa/\"billing\"".into()),
            method: "POST".into(),
            path: "/v1/charges/ch_1\u{7f}\u{1}\u{1f}".into(),
            template: Some(Arc::from("/v1/charges/{charge}")),
            permission: Some(Arc::from("charge_write")),
            access: Some("write".into()),
            decision: crate::policy::Decision::Allow,
            reason: "ok".into(),
            missing: vec!["invoice_read".into(), "a \"b\"\n".into()],
            token_exposed: true,
            status: 200,
            upstream: Some(Arc::from("stripe")),
            upstream_request_id: Some("req_\u{0}x".into()),
            stripe_account: Some("acct_1".into()),
            egress_ip: Some("10.200.0.255".parse().unwrap()),
            duration_ms: 1.2345678901234567,
            upstream_ms: Some(1e-7),
            bytes_in: 0,
            bytes_out: 1 << 40,
            config_version: Arc::from("558c468d608e"),
            secret_version: Some(7),
            livemode: Some(true),
            amount: Some(u64::MAX),
            currency: Some("us\"d".into()),
            spend: Some("held".into()),
        };
        same_as_serde(&full);
        for f in [0.0, -0.0, 3.0, 1e21, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE] {
            same_as_serde(&AccessRecord { duration_ms: f, upstream_ms: Some(f), ..full.clone() });
            same_as_serde(&AccessRecord {
                livemode: Some(false),
                token_exposed: false,
                missing: vec![],
                amount: None,
                currency: None,
                spend: None,
                ..full.clone()
            });
        }
    }

    #[test]
    fn timestamps_are_fixed_width_rfc3339_to_the_microsecond() {
        use time::format_description::well_known::Rfc3339;
        for (unix_nanos, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1_795_698_000_123_456_789, "2026-11-26T13:00:00.123456Z"),
            (253_402_300_799_999_999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(unix_nanos).unwrap();
            assert_eq!(timestamp(t), text);
            let back = OffsetDateTime::parse(text, &Rfc3339).unwrap();
            assert_eq!(back.unix_timestamp_nanos() / 1000, unix_nanos / 1000);
        }
        let east = OffsetDateTime::from_unix_timestamp(0).unwrap().to_offset(time::macros::offset!(+2));
        assert_eq!(timestamp(east), "1970-01-01T00:00:00.000000Z");
    }
}
