//! The catalog: (method, path template) → (permission, access, upstream), compiled into a
//! segment trie so classification is a handful of hash look-ups, never a regex scan.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::Method;

/// The catalog shipped with keyward: the Stripe API.
pub const STRIPE_CATALOG: &str = include_str!("../../config/stripe-catalog.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// Index of a permission base name (`charge`, `customer`, …) in [`Catalog::permissions`].
/// `charge` + read → `charge_read`, the name Stripe uses in `rak_charge_read`.
pub fn permission_name(base: &str, access: Access) -> String {
    format!("{base}_{}", access.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PermId(pub u16);

#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in `Catalog::entries`.
    pub index: usize,
    pub method: Method,
    pub template: Arc<str>,
    pub permission: PermId,
    /// `charge_read`: the permission and access, as Stripe names it.
    pub name: Arc<str>,
    pub access: Access,
    pub upstream: String,
    /// Stripe's "(Direct)" permissions: never valid on behalf of a connected account.
    pub direct: bool,
    /// Takes a multipart body (file uploads); no other entry does.
    pub multipart: bool,
    /// The path segment (by `/`-split position) of its `{account}` parameter: a connected
    /// account the call acts on, checked against the service's `accounts`.
    pub account_segment: Option<usize>,
    /// It moves money (`money=KIND:FIELD:PRICE`): what spend caps count it as.
    pub money: Option<Money>,
}

/// What a money-moving entry moves, in which form field, and how keyward learns the amount
/// and currency (`money=refund:amount:refundable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub kind: MoneyKind,
    /// The form field (or, for v2 JSON bodies, the dotted JSON path) holding the amount in
    /// minor units; `None` (`-`) where the request carries none.
    pub field: Option<Arc<str>>,
    pub price: Price,
}

/// The kinds of money a spend cap counts (`[[service.spend]] kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoneyKind {
    Refund,
    Payout,
    Transfer,
    Payment,
}

impl MoneyKind {
    pub const ALL: [MoneyKind; 4] =
        [MoneyKind::Refund, MoneyKind::Payout, MoneyKind::Transfer, MoneyKind::Payment];

    pub fn as_str(self) -> &'static str {
        match self {
            MoneyKind::Refund => "refund",
            MoneyKind::Payout => "payout",
            MoneyKind::Transfer => "transfer",
            MoneyKind::Payment => "payment",
        }
    }

    pub fn parse(s: &str) -> Option<MoneyKind> {
        MoneyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a money-moving call's amount and currency are found (see `policy::spend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Price {
    /// Both in the form: the amount field and `currency`.
    Form,
    /// As `Form`, counted only with `confirm=true` (a PaymentIntent created and confirmed).
    Confirm,
    /// The amount field if given, else what remains unrefunded of the object refunded (the
    /// path's `{charge}` or `{fee}`, or the form's `charge` or `payment_intent`); the currency
    /// always from that object, read first.
    Refundable,
    /// The amount and currency of the PaymentIntent `{id}` (confirm), read first.
    Intent,
    /// The amount field (the new total) less the PaymentIntent `{id}`'s amount, read first.
    Increment,
    /// What remains due on the invoice `{invoice}`, read first; not counted with
    /// `paid_out_of_band=true`.
    Invoice,
    /// The amount field when given (else not counted), in the currency of the form's
    /// `invoice`, read first.
    CreditNote,
    /// A v2 JSON body's `amount.value` and `amount.currency`.
    Json,
}

impl Price {
    const ALL: [(Price, &'static str); 8] = [
        (Price::Form, "form"),
        (Price::Confirm, "confirm"),
        (Price::Refundable, "refundable"),
        (Price::Intent, "intent"),
        (Price::Increment, "increment"),
        (Price::Invoice, "invoice"),
        (Price::CreditNote, "credit_note"),
        (Price::Json, "json"),
    ];

    pub fn as_str(self) -> &'static str {
        Price::ALL.iter().find(|(p, _)| *p == self).map_or("", |(_, s)| s)
    }

    fn parse(s: &str) -> Option<Price> {
        Price::ALL.iter().find(|(_, n)| *n == s).map(|(p, _)| *p)
    }
}

impl Money {
    /// `KIND:FIELD:PRICE`, as the catalog writes it after `money=`.
    fn parse(text: &str) -> Result<Money, String> {
        let bad =
            || format!("`money={text}` is not money=KIND:FIELD:PRICE (e.g. money=refund:amount:refundable)");
        let [kind, field, price] = text.split(':').collect::<Vec<_>>()[..] else {
            return Err(bad());
        };
        let kind = MoneyKind::parse(kind)
            .ok_or_else(|| format!("money kind `{kind}` is not refund, payout, transfer or payment"))?;
        let price = Price::parse(price).ok_or_else(|| {
            let names: Vec<&str> = Price::ALL.iter().map(|(_, n)| *n).collect();
            format!("money price `{price}` is not one of {}", names.join(", "))
        })?;
        let field = match field {
            "-" => None,
            f if !f.is_empty() && f.split('.').all(is_name) => Some(Arc::from(f)),
            _ => return Err(bad()),
        };
        Ok(Money { kind, field, price })
    }
}

#[derive(Debug, Default)]
struct Node {
    literal: foldhash::HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    leaf: [Option<u32>; METHODS.len()],
}

const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::DELETE];

fn method_slot(m: &Method) -> Option<usize> {
    METHODS.iter().position(|x| x == m)
}

#[derive(Debug, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    permissions: Vec<String>,
    perm_index: HashMap<String, PermId>,
    root: Node,
}

/// A catalog line that could not be read, by line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl Catalog {
    /// Parse the whitespace-separated catalog format; every bad line is reported at once.
    pub fn parse(text: &str) -> Result<Catalog, Vec<LineError>> {
        let mut cat = Catalog::default();
        let mut lines_of: HashMap<u32, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            match cat.add_line(content) {
                Ok(idx) => {
                    lines_of.insert(idx, line);
                }
                Err(AddError::Message(message)) => errors.push(LineError { line, message }),
                Err(AddError::Duplicate(other)) => errors.push(LineError {
                    line,
                    message: format!("same method and path shape as line {}", lines_of[&other]),
                }),
            }
        }
        if errors.is_empty() { Ok(cat) } else { Err(errors) }
    }

    fn add_line(&mut self, content: &str) -> Result<u32, AddError> {
        let cols: Vec<&str> = content.split_whitespace().collect();
        let [method, template, permission, access, upstream, rest @ ..] = cols.as_slice() else {
            return Err(AddError::Message(
                "expected: METHOD TEMPLATE PERMISSION ACCESS UPSTREAM [direct] [multipart] [money=KIND:FIELD:PRICE]".into(),
            ));
        };
        let method: Method =
            method.parse().map_err(|_| AddError::Message(format!("bad method `{method}`")))?;
        let slot = method_slot(&method)
            .ok_or_else(|| AddError::Message(format!("method `{method}` is not one of GET, POST, DELETE")))?;
        let access = match *access {
            "read" => Access::Read,
            "write" => Access::Write,
            other => {
                return Err(AddError::Message(format!("access `{other}` is not read or write")));
            }
        };
        if !is_name(permission) {
            return Err(AddError::Message(format!("permission `{permission}` is not a snake_case name")));
        }
        let (mut direct, mut multipart, mut money) = (false, false, None);
        for flag in rest {
            let seen = match *flag {
                "direct" => std::mem::replace(&mut direct, true),
                "multipart" => std::mem::replace(&mut multipart, true),
                f if let Some(m) = f.strip_prefix("money=") => {
                    money.replace(Money::parse(m).map_err(AddError::Message)?).is_some()
                }
                other => {
                    return Err(AddError::Message(format!(
                        "unknown flag `{other}` (direct, multipart, money=KIND:FIELD:PRICE)"
                    )));
                }
            };
            if seen {
                return Err(AddError::Message(format!("flag `{flag}` given twice")));
            }
        }
        if money.is_some() && method != Method::POST {
            return Err(AddError::Message("only a POST moves money (money=…)".into()));
        }
        let segments = template_segments(template).map_err(|e| AddError::Message(e.to_string()))?;
        // The convention the account rule relies on, held here rather than assumed there.
        for tree in ["/v1/accounts/", "/v2/core/accounts/"] {
            if let Some(rest) = template.strip_prefix(tree)
                && rest.starts_with('{')
                && !rest.starts_with("{account}")
            {
                return Err(AddError::Message(format!(
                    "a template under {tree} names its first parameter `{{account}}`"
                )));
            }
        }
        let account_segment = template.split('/').position(|s| s == "{account}");
        let perm_id = self.intern(permission);
        let idx = self.entries.len() as u32;
        let mut node = &mut self.root;
        for seg in segments {
            node = match seg {
                Segment::Param => node.param.get_or_insert_with(Default::default),
                Segment::Literal(s) => node.literal.entry(s.into()).or_default(),
            };
        }
        if let Some(other) = node.leaf[slot] {
            return Err(AddError::Duplicate(other));
        }
        node.leaf[slot] = Some(idx);
        self.entries.push(Entry {
            index: idx as usize,
            method,
            template: (*template).into(),
            name: permission_name(permission, access).into(),
            permission: perm_id,
            access,
            upstream: upstream.to_string(),
            direct,
            multipart,
            account_segment,
            money,
        });
        Ok(idx)
    }

    fn intern(&mut self, name: &str) -> PermId {
        if let Some(id) = self.perm_index.get(name) {
            return *id;
        }
        let id = PermId(self.permissions.len() as u16);
        self.permissions.push(name.to_string());
        self.perm_index.insert(name.to_string(), id);
        id
    }

    /// The catalog entry for a canonical path (already checked by `canonical`). Literal
    /// segments win over parameters, as in Stripe's router (`/v1/customers/search`).
    pub fn classify(&self, method: &Method, path: &str) -> Option<&Entry> {
        let slot = method_slot(method)?;
        let segs = path.strip_prefix('/')?.split('/');
        find(&self.root, segs, slot).map(|i| &self.entries[i as usize])
    }

    pub fn permission_id(&self, name: &str) -> Option<PermId> {
        self.perm_index.get(name).copied()
    }

    pub fn permission(&self, id: PermId) -> &str {
        &self.permissions[id.0 as usize]
    }

    /// Every permission base name, for suggestions.
    pub fn permission_names(&self) -> Vec<&str> {
        self.permissions.iter().map(String::as_str).collect()
    }

    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }
}

enum AddError {
    Message(String),
    Duplicate(u32),
}

fn find(node: &Node, mut segs: std::str::Split<'_, char>, slot: usize) -> Option<u32> {
    let Some(seg) = segs.next() else {
        return node.leaf[slot];
    };
    node.literal
        .get(seg)
        .and_then(|n| find(n, segs.clone(), slot))
        .or_else(|| node.param.as_deref().and_then(|n| find(n, segs, slot)))
}

/// Why a catalog line's path template is refused.
#[derive(Debug, thiserror::Error)]
enum CatalogError {
    #[error("template `{template}` does not start with /")]
    NoSlash { template: String },
    #[error("template `{template}` has a bad segment `{segment}`")]
    BadSegment { template: String, segment: String },
}

enum Segment<'a> {
    Literal(&'a str),
    Param,
}

fn template_segments(template: &str) -> Result<Vec<Segment<'_>>, CatalogError> {
    let rest =
        template.strip_prefix('/').ok_or_else(|| CatalogError::NoSlash { template: template.to_string() })?;
    rest.split('/')
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Ok(Segment::Param);
                }
            } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                return Ok(Segment::Literal(s));
            }
            Err(CatalogError::BadSegment { template: template.to_string(), segment: s.to_string() })
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "
        # comment
        GET    /v1/customers               customer read  api
        GET    /v1/customers/search        customer read  api
        GET    /v1/customers/{customer}    customer read  api
        POST   /v1/customers/{customer}    customer write api
        DELETE /v1/customers/{customer}/sources/{id} customer write api
        POST   /v1/charges/{charge}/refund charge   write api
        GET    /v1/account                 connected_account read api direct
    ";

    #[test]
    fn classifies_literals_before_params() {
        let c = Catalog::parse(SMALL).unwrap();
        let t = |m: Method, p: &str| {
            c.classify(&m, p).map(|e| (&*e.template, c.permission(e.permission), e.access))
        };
        assert_eq!(
            t(Method::GET, "/v1/customers/search"),
            Some(("/v1/customers/search", "customer", Access::Read))
        );
        assert_eq!(
            t(Method::GET, "/v1/customers/cus_123"),
            Some(("/v1/customers/{customer}", "customer", Access::Read))
        );
        assert_eq!(t(Method::POST, "/v1/customers/cus_123").unwrap().2, Access::Write);
        assert_eq!(t(Method::POST, "/v1/charges/ch_1/refund").unwrap().1, "charge");
        assert!(c.classify(&Method::GET, "/v1/account").unwrap().direct);
    }

    #[test]
    fn unknown_shapes_do_not_match() {
        let c = Catalog::parse(SMALL).unwrap();
        for (m, p) in [
            (Method::GET, "/v1/customers/cus_1/extra"),
            (Method::PUT, "/v1/customers/cus_1"),
            (Method::GET, "/v1/charges/ch_1/refund"),
            (Method::GET, "/v1/Customers"),
            (Method::GET, "/v2/customers"),
            (Method::GET, "/v1"),
            (Method::GET, "/"),
            (Method::DELETE, "/v1/customers/cus_1/sources"),
        ] {
            assert!(c.classify(&m, p).is_none(), "{m} {p}");
        }
    }

    #[test]
    fn reports_every_bad_line() {
        let errs = Catalog::parse(
            "GET /v1/a x read api\nGET /v1/{b} x reed api\nPUT /v1/c x read api\nGET /v1/{id} y read api\nGET v1 x read\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 5], "{errs:?}");
        let dup = Catalog::parse("GET /v1/{a} x read api\nGET /v1/{b} y read api\n").unwrap_err();
        assert_eq!(dup[0].message, "same method and path shape as line 1");
    }

    #[test]
    fn an_account_parameter_is_found_by_its_name_and_the_accounts_trees_must_name_it() {
        let c = Catalog::parse(
            "GET /v1/accounts/{account}/persons x read api
GET /v2/core/accounts/{account} y read api
GET /v1/charges/{charge} z read api
",
        )
        .unwrap();
        let segments: Vec<_> = c.entries.iter().map(|e| e.account_segment).collect();
        assert_eq!(segments, [Some(3), Some(4), None]);
        for bad in [
            "GET /v1/accounts/{id} x read api
",
            "GET /v2/core/accounts/{acct}/persons x read api
",
        ] {
            let errs = Catalog::parse(bad).unwrap_err();
            assert!(errs[0].message.contains("names its first parameter `{account}`"), "{errs:?}");
        }
    }
}
