//! The HTML report's building blocks: sections, tables, number cells, flags, escaping.

use std::fmt::Write;

pub(super) fn section(b: &mut String, id: &str, title: &str, body: impl FnOnce(&mut String)) {
    let _ = write!(b, "<section id={id}><h2>{}</h2>", esc(title));
    body(b);
    b.push_str("</section>");
}

/// A table; cells are already escaped (numbers right-aligned by `num`).
pub(super) fn rows_html(b: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    b.push_str("<table><tr>");
    for h in head {
        let _ = write!(b, "<th>{h}</th>");
    }
    b.push_str("</tr>");
    let mut any = false;
    for row in rows {
        any = true;
        b.push_str("<tr>");
        for cell in row {
            match cell.strip_prefix('\u{1}') {
                Some(n) => {
                    let _ = write!(b, "<td class=n>{n}</td>");
                }
                None => {
                    let _ = write!(b, "<td>{cell}</td>");
                }
            }
        }
        b.push_str("</tr>");
    }
    if !any {
        let _ = write!(b, "<tr><td class=none colspan={}>none</td></tr>", head.len());
    }
    b.push_str("</table>");
}

/// A number cell (marked for `rows_html` to right-align).
pub(super) fn num(n: u64) -> String {
    format!("\u{1}{n}")
}

pub(super) fn flag(s: &str) -> String {
    format!("<span class=flag>{}</span>", esc(s))
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
