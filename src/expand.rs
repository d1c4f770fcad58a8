//! Expansions: `expand[]=customer` returns the customer inside the answer, so it needs
//! read permission on the customer too. Parsed from the query string and from small form
//! bodies; each element of a dotted expression (`latest_invoice.payment_intent`) counts.

use std::collections::HashMap;

use crate::catalog::{Catalog, LineError, PermId};

/// The expansion table shipped with keyward.
pub const STRIPE_EXPANSIONS: &str = include_str!("../config/stripe-expansions.txt");

#[derive(Debug, Default)]
pub struct Expansions {
    fields: HashMap<String, PermId>,
}

impl Expansions {
    /// `FIELD PERMISSION_BASE` lines; every base must be in the catalog.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Expansions, Vec<LineError>> {
        let mut fields = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let line = i + 1;
            let cols: Vec<&str> = content.split_whitespace().collect();
            let message = match cols.as_slice() {
                [field, base] => match catalog.permission_id(base) {
                    Some(id) if fields.insert(field.to_string(), id).is_none() => continue,
                    Some(_) => format!("field `{field}` is listed twice"),
                    None => format!("`{base}` is no permission in the catalog"),
                },
                _ => "expected: FIELD PERMISSION_BASE".to_string(),
            };
            errors.push(LineError { line, message });
        }
        if errors.is_empty() { Ok(Expansions { fields }) } else { Err(errors) }
    }

    /// The permissions needed to expand what a query string or form body asks for, each
    /// with the field that needs it. Fields not in the table need nothing more: they expand
    /// parts of the object already being read.
    pub fn required<'a>(&'a self, encoded: &'a str) -> impl Iterator<Item = (String, PermId)> + 'a {
        expand_values(encoded)
            .flat_map(|expr| expr.split('.').map(str::to_string).collect::<Vec<_>>())
            .filter_map(|field| self.fields.get(&field).map(|id| (field, *id)))
    }

    pub fn get(&self, field: &str) -> Option<PermId> {
        self.fields.get(field).copied()
    }
}

/// The values of `expand`, `expand[]` and `expand[N]` parameters, percent-decoded.
fn expand_values(encoded: &str) -> impl Iterator<Item = String> + '_ {
    encoded.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        let is_expand = key == "expand"
            || key
                .strip_prefix("expand[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()));
        if is_expand { decode(v) } else { None }
    })
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space). `None` if malformed.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_spelling_of_expand() {
        let q = "expand[]=customer&expand%5B0%5D=latest_invoice.payment_intent&expand=data.charge&limit=3&expands=x&expand[a]=y";
        let got: Vec<String> = expand_values(q).collect();
        assert_eq!(got, ["customer", "latest_invoice.payment_intent", "data.charge"]);
    }

    #[test]
    fn each_dotted_element_needs_its_permission() {
        let cat = Catalog::parse(
            "GET /v1/a customer read api\nGET /v1/b invoice read api\nGET /v1/c payment_intent read api\n",
        )
        .unwrap();
        let ex = Expansions::parse(
            "customer customer\nlatest_invoice invoice\npayment_intent payment_intent\n",
            &cat,
        )
        .unwrap();
        let need: Vec<String> = ex
            .required("expand[]=latest_invoice.payment_intent&expand[]=data.unknown")
            .map(|(f, _)| f)
            .collect();
        assert_eq!(need, ["latest_invoice", "payment_intent"]);
        let errs = Expansions::parse("a nope\nb\ncustomer customer\ncustomer customer\n", &cat).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 4]);
    }
}
