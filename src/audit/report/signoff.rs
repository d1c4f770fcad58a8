//! The report written out, in each format, ending in the section an auditor signs: the
//! report's own SHA-256 (of every byte above the sign-off, so anyone can recompute it), the
//! inputs' hashes, each instance's head, the checkpoints, and blank fields for name, role,
//! date and signature. A report on an unverified log carries its banner on every page.

use std::fmt::Write;

use super::{Report, cells, html as page, sha256_hex, text};
use crate::text::printable;

/// The line the plain-text sign-off begins with.
pub const TEXT_MARK: &str = "SIGN-OFF";
/// The line the JSON sign-off begins with.
pub const JSON_MARK: &str = "  \"sign_off\": {";
/// What the HTML sign-off's line begins with.
pub const HTML_MARK: &str = "<section id=sign-off>";

/// How to recompute the hash, per format.
fn how(mark: &str) -> String {
    format!(
        "SHA-256 of every line above the line that begins `{mark}`: sed '/^{mark}/,$d' REPORT | sha256sum"
    )
}

/// What the sign-off says of the checkpoints.
fn checkpoints(r: &Report) -> String {
    match &r.integrity.signed {
        None => "not signed (no --key given): a rewrite of a whole chain cannot be detected".into(),
        Some(s) => {
            let tails: Vec<String> = s
                .instances
                .iter()
                .map(|i| {
                    format!(
                        "{} last checkpoint seq {}, unsigned tail {} records",
                        i.instance,
                        i.last_checkpoint_seq.map_or("-".into(), |n| n.to_string()),
                        i.unsigned_tail
                    )
                })
                .collect();
            format!("{} verified under key(s) {}; {}", s.checkpoints, s.keys.join(", "), tails.join("; "))
        }
    }
}

/// The plain-text report, signed off.
pub fn table(r: &Report) -> String {
    let mut body = String::new();
    if let Some(b) = &r.unverified {
        let _ = writeln!(body, "{b}\n");
    }
    body.push_str(&text::body(r));
    let mut out = printable(&body).into_owned();
    while !out.ends_with("\n\n") {
        out.push('\n');
    }
    let hash = sha256_hex(out.as_bytes());
    let mut s = format!("{TEXT_MARK}\n");
    let _ = writeln!(s, "report sha256: {hash}");
    let _ = writeln!(s, "  ({})", how(TEXT_MARK));
    let _ = writeln!(s, "inputs:");
    for i in &r.sign_off.inputs {
        let _ = writeln!(s, "  {}  {} bytes  sha256 {}", i.file, i.bytes, i.sha256);
    }
    let _ = writeln!(s, "instance heads:");
    for h in &r.sign_off.heads {
        let _ = writeln!(s, "  {}  seq {}  head {}", h.instance, h.seq, h.head);
    }
    if r.sign_off.heads.is_empty() {
        let _ = writeln!(s, "  none: no chain verified");
    }
    let _ = writeln!(s, "checkpoints: {}\n", checkpoints(r));
    for f in &r.sign_off.fields {
        let _ = writeln!(s, "{f}:\n");
    }
    if let Some(b) = &r.unverified {
        let _ = writeln!(s, "{b}");
    }
    out.push_str(&printable(&s));
    out
}

/// The report as one JSON object, its last member `sign_off`.
pub fn json(r: &Report) -> String {
    let body = serde_json::to_string_pretty(r).unwrap_or_default();
    let open = body.strip_suffix("\n}").unwrap_or(&body);
    let above = format!("{open},\n");
    let fields: serde_json::Map<String, serde_json::Value> =
        r.sign_off.fields.iter().map(|f| (f.to_string(), "".into())).collect();
    let sign_off = serde_json::json!({
        "report_sha256": sha256_hex(above.as_bytes()),
        "hashed": how(JSON_MARK),
        "inputs": r.sign_off.inputs,
        "heads": r.sign_off.heads,
        "checkpoints": checkpoints(r),
        "fields": fields,
    });
    let pretty = serde_json::to_string_pretty(&sign_off).unwrap_or_default().replace('\n', "\n  ");
    format!("{above}  \"sign_off\": {pretty}\n}}\n")
}

/// The report as one self-contained HTML page, its last section the sign-off.
pub fn html(r: &Report) -> String {
    let mut out = page::page(r);
    out.push('\n');
    let hash = sha256_hex(out.as_bytes());
    let e = cells::esc;
    let _ = write!(out, "{HTML_MARK}<h2>Sign-off</h2><table>");
    let _ = write!(
        out,
        "<tr><th>report sha256</th><td><code>{hash}</code><br><small>{}</small></td></tr>",
        e(&how(HTML_MARK))
    );
    for i in &r.sign_off.inputs {
        let _ = write!(
            out,
            "<tr><th>input</th><td><code>{}</code>, {} bytes, sha256 <code>{}</code></td></tr>",
            e(&i.file),
            i.bytes,
            i.sha256
        );
    }
    for h in &r.sign_off.heads {
        let _ = write!(
            out,
            "<tr><th>instance head</th><td>{} seq {} <code>{}</code></td></tr>",
            e(&h.instance),
            h.seq,
            e(&h.head)
        );
    }
    let _ =
        write!(out, "<tr><th>checkpoints</th><td>{}</td></tr></table><table class=sign>", e(&checkpoints(r)));
    for f in &r.sign_off.fields {
        let _ = write!(out, "<tr><th>{f}:</th><td class=blank></td></tr>");
    }
    out.push_str("</table></section></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let data = vec![("audit.jsonl".to_string(), b"{}\n".to_vec())];
        let mut r = Report::default();
        r.sign_off.inputs = super::super::Input::of(&data);
        r.sign_off.fields = super::super::evidence::FIELDS.to_vec();
        r
    }

    /// Every byte above the sign-off, as `sed '/^MARK/,$d'` keeps it.
    fn above<'a>(out: &'a str, mark: &str) -> &'a str {
        let at = out.lines().scan(0, |o, l| {
            let start = *o;
            *o += l.len() + 1;
            Some((start, l))
        });
        let start = at.into_iter().find(|(_, l)| l.starts_with(mark)).map(|(s, _)| s).unwrap();
        &out[..start]
    }

    #[test]
    fn each_format_states_the_hash_of_what_is_above_its_sign_off() {
        let mut r = report();
        let t = table(&r);
        let hash = t.split("report sha256: ").nth(1).unwrap()[..64].to_string();
        assert_eq!(hash, sha256_hex(above(&t, TEXT_MARK).as_bytes()));
        assert!(
            t.contains("\nName:\n") && t.contains("\nSignature:\n") && t.contains("audit.jsonl  3 bytes")
        );
        assert!(t.contains("checkpoints: not signed (no --key given)"));

        let j = json(&r);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["sign_off"]["report_sha256"], sha256_hex(above(&j, JSON_MARK).as_bytes()));
        assert_eq!(v["sign_off"]["fields"]["Role"], "");
        assert_eq!(v["records"], 0);

        let h = html(&r);
        let at = h.find("report sha256</th><td><code>").unwrap() + 28;
        assert_eq!(&h[at..at + 64], sha256_hex(above(&h, HTML_MARK).as_bytes()));
        assert!(h.ends_with("</section></body></html>\n"));

        r.unverified = Some("UNVERIFIED: test".into());
        let t = table(&r);
        assert!(t.starts_with("UNVERIFIED: test\n") && t.ends_with("UNVERIFIED: test\n"), "{t}");
        assert!(json(&r).starts_with("{\n  \"unverified\": \"UNVERIFIED: test\""));
    }
}
