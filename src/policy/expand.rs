//! Expansions: `expand[]=customer` returns the customer inside the answer, so it needs
//! read permission on the customer too. Read from the query string and from small form
//! bodies (by `params`); each element of a dotted expression (`latest_invoice.payment_intent`)
//! counts.

use std::collections::HashMap;

use crate::policy::catalog::{Catalog, LineError, PermId};

/// The expansion table shipped with keyward.
pub const STRIPE_EXPANSIONS: &str = include_str!("../../config/stripe-expansions.txt");

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

    /// The permissions needed to expand `fields` (what `params::read` found in a query string
    /// or form body), each with the field that needs it. Fields not in the table need nothing
    /// more: they expand parts of the object already being read.
    pub fn required<'a>(&'a self, fields: &'a [String]) -> impl Iterator<Item = (String, PermId)> + 'a {
        fields
            .iter()
            .flat_map(|expr| expr.split('.'))
            .filter_map(|field| self.fields.get(field).map(|id| (field.to_string(), *id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let fields = ["latest_invoice.payment_intent".to_string(), "data.unknown".to_string()];
        let need: Vec<String> = ex.required(&fields).map(|(f, _)| f).collect();
        assert_eq!(need, ["latest_invoice", "payment_intent"]);
        let errs = Expansions::parse("a nope\nb\ncustomer customer\ncustomer customer\n", &cat).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 4]);
    }
}
