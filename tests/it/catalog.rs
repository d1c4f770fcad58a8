//! The shipped Stripe catalog: every operation of the Stripe API classifies to its own entry,
//! Stripe's permission names are used, and paths Stripe does not serve match nothing.

use std::collections::{BTreeSet, HashMap};

use http::Method;
use keyward::policy::catalog::permission_name;
use keyward::policy::catalog::{Access, Catalog, STRIPE_CATALOG};

fn catalog() -> Catalog {
    Catalog::parse(STRIPE_CATALOG).expect("the shipped catalog parses")
}

/// A realistic id for a path parameter, by its name.
fn id_for(param: &str) -> &'static str {
    match param {
        "account" | "accountId" => "acct_1Nv0FGQ9RKHgCVdK",
        "charge" => "ch_3NxAbCdEfGhIjKlM",
        "customer" => "cus_NffrFeUfNV2Hib",
        "invoice" => "in_1MtHbELkdIwHu7ix",
        "subscription_exposed_id" | "subscription" => "sub_1MowQVLkdIwHu7ix",
        "payment_intent" | "intent" => "pi_3MtwBwLkdIwHu7ix",
        "fee" => "fee_1B73DOKbnvuxQXGu",
        "transfer" => "tr_1MiN3gLkdIwHu7ix",
        "quote" => "qt_1NqDz8LkdIwHu7ix",
        "session" => "cs_test_a1b2c3",
        _ => "obj_3NxAbCdEfGhIjK",
    }
}

fn shape(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
}

fn instantiate(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => id_for(name),
            None => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn operations() -> Vec<(Method, String)> {
    include_str!("../data/stripe_operations.tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].parse().unwrap(), cols[1].to_string())
        })
        .collect()
}

#[test]
fn every_stripe_operation_classifies_to_its_own_entry() {
    let cat = catalog();
    let ops = operations();
    assert_eq!(ops.len(), 762);
    assert_eq!(cat.entries.len(), 762);
    let mut used = BTreeSet::new();
    let mut wrong = Vec::new();
    for (method, template) in &ops {
        let path = instantiate(template);
        match cat.classify(method, &path) {
            Some(e) if shape(&e.template) == shape(template) => {
                used.insert(e.index);
            }
            Some(e) => wrong.push(format!("{method} {path}: matched {}", e.template)),
            None => wrong.push(format!("{method} {path}: no entry")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(used.len(), 762, "each operation has its own entry");
}

/// The operations the installed SDKs (stripe-node from tests/sdk/node, stripe-python from
/// tests/requirements.txt) can call, read out of their sources by scripts/sdk-operations.py:
/// the next SDK release shows up here, as a failing test, not as a user's PermissionError.
#[test]
fn every_operation_the_installed_sdks_can_call_is_in_the_catalog() {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sdk-operations.py"))
        .output()
        .expect("python3");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}{}", String::from_utf8_lossy(&out.stderr));
    let cat = catalog();
    let (mut missing, mut read) = (Vec::new(), 0);
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [method, path, upstream, _sdks] = cols[..] else { panic!("not an operation line: {line}") };
        read += 1;
        let method: Method = method.parse().unwrap();
        match cat.classify(&method, &instantiate(path)) {
            Some(e) if shape(&e.template) == path && e.upstream == upstream => {}
            Some(e) => {
                missing.push(format!("{method} {path} ({upstream}): matched {} ({})", e.template, e.upstream))
            }
            None => missing.push(format!("{method} {path} ({upstream}): no entry")),
        }
    }
    assert!(read > 600, "only {read} operations read from the SDKs");
    assert!(
        missing.is_empty(),
        "operations the SDKs call that the catalog lacks (scripts/sdk-operations.py --missing-from \
         config/stripe-catalog.txt prints them as catalog lines):\n{}",
        missing.join("\n")
    );
}

#[test]
fn stripe_names_where_stripe_has_them() {
    let cat = catalog();
    let expected = [
        ("GET", "/v1/charges", "charge_read", "api"),
        ("POST", "/v1/charges/ch_1/capture", "charge_write", "api"),
        ("POST", "/v1/refunds", "charge_write", "api"),
        ("GET", "/v1/refunds/re_1", "charge_read", "api"),
        ("POST", "/v1/charges/ch_1/refund", "charge_write", "api"),
        ("GET", "/v1/prices", "plan_read", "api"),
        ("POST", "/v1/prices", "plan_write", "api"),
        ("GET", "/v1/customers", "customer_read", "api"),
        ("POST", "/v1/customers", "customer_write", "api"),
        ("GET", "/v1/customers/search", "customer_read", "api"),
        ("GET", "/v1/charges/search", "charge_read", "api"),
        ("POST", "/v1/coupons", "coupon_write", "api"),
        ("GET", "/v1/checkout/sessions/cs_1", "checkout_session_read", "api"),
        ("GET", "/v1/account", "connected_account_read", "api"),
        ("GET", "/v1/accounts", "connected_account_read", "api"),
        ("POST", "/v1/accounts/acct_1/capabilities/card_payments", "connected_account_write", "api"),
        ("DELETE", "/v1/accounts/acct_1/external_accounts/ba_1", "connected_account_write", "api"),
        ("POST", "/v1/account_links", "account_link_write", "api"),
        ("POST", "/v1/account_sessions", "account_session_write", "api"),
        ("POST", "/v1/webhook_endpoints", "webhook_write", "api"),
        ("GET", "/v1/webhook_endpoints/we_1", "webhook_read", "api"),
        ("POST", "/v1/reporting/report_runs", "report_runs_and_report_types_read", "api"),
        ("GET", "/v1/balance", "balance_read", "api"),
        ("GET", "/v1/events", "event_read", "api"),
        ("POST", "/v1/payment_intents/pi_1/confirm", "payment_intent_write", "api"),
        ("POST", "/v1/setup_intents", "setup_intent_write", "api"),
        ("POST", "/v1/payouts", "payout_write", "api"),
        ("POST", "/v1/transfers", "transfer_write", "api"),
        ("POST", "/v1/disputes/dp_1/close", "dispute_write", "api"),
        ("POST", "/v1/files", "file_write", "files"),
        ("GET", "/v1/files/file_1", "file_read", "api"),
        ("GET", "/v1/quotes/qt_1/pdf", "quote_read", "files"),
        ("POST", "/oauth/token", "oauth_write", "connect"),
        ("POST", "/v2/billing/meter_event_stream", "billing_meter_event_write", "meter_events"),
    ];
    for (method, path, perm, upstream) in expected {
        let e = cat
            .classify(&method.parse().unwrap(), path)
            .unwrap_or_else(|| panic!("{method} {path}: no entry"));
        assert_eq!(permission_name(cat.permission(e.permission), e.access), perm, "{method} {path}");
        assert_eq!(e.upstream, upstream, "{method} {path}");
    }
}

#[test]
fn catalog_names_are_stripes_or_documented() {
    let cat = catalog();
    let stripe: BTreeSet<String> = include_str!("../data/permission_names.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split('\t').skip(2).map(|s| s.trim().to_string()).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let documented = include_str!("../../docs/catalog.md");
    let mut unexplained = Vec::new();
    let bases: BTreeSet<&str> = cat.entries.iter().map(|e| cat.permission(e.permission)).collect();
    for base in bases {
        let known = stripe.contains(&format!("{base}_read")) || stripe.contains(&format!("{base}_write"));
        if !known && !documented.contains(&format!("`{base}`")) {
            unexplained.push(base);
        }
    }
    assert!(unexplained.is_empty(), "names neither Stripe's nor in docs/catalog.md: {unexplained:?}");
}

#[test]
fn paths_stripe_does_not_serve_match_nothing() {
    let cat = catalog();
    let not_stripe = [
        ("GET", "/v1/chargez"),
        ("GET", "/v1/charges/ch_1/refunds/re_1/extra"),
        ("POST", "/v1/charges/ch_1/capture/now"),
        ("GET", "/v1/ch_1/charges"),
        ("GET", "/v2/charges"),
        ("GET", "/v3/customers"),
        ("GET", "/v1/customers/cus_1/charges"),
        ("POST", "/v1/refunds/re_1/charge"),
        ("DELETE", "/v1/charges/ch_1"),
        ("GET", "/v1"),
        ("GET", "/"),
        ("GET", "/oauth/authorize"),
        ("GET", "/v1/customers/cus_1/sources/src_1/verify/x"),
        ("POST", "/v1/accounts/acct_1/login_links/extra"),
        ("GET", "/v1/balance/extra"),
        ("GET", "/V1/charges"),
        ("PATCH", "/v1/customers/cus_1"),
        ("PUT", "/v1/customers/cus_1"),
    ];
    for (method, path) in not_stripe {
        let hit = cat.classify(&method.parse().unwrap(), path).map(|e| e.template.clone());
        assert_eq!(hit, None, "{method} {path}");
    }
}

#[test]
fn no_two_entries_share_a_shape() {
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for e in catalog().entries {
        let key = (e.method.to_string(), shape(&e.template));
        if let Some(other) = seen.insert(key, e.template.to_string()) {
            panic!("{} and {} overlap", other, e.template);
        }
    }
}

/// GET reads, POST and DELETE write: a POST marked read would hand write access to read-only
/// services. The few that read anyway are listed here and explained in docs/catalog.md.
#[test]
fn reads_are_gets_and_writes_are_posts_and_deletes_but_for_a_documented_few() {
    const READ_POSTS: [&str; 3] =
        ["/v1/invoices/create_preview", "/v1/reporting/report_runs", "/v2/data/reporting/query_runs"];
    let documented = include_str!("../../docs/catalog.md");
    let mut wrong = Vec::new();
    for e in catalog().entries {
        let expected = match e.method.as_str() {
            "GET" => Access::Read,
            _ if READ_POSTS.contains(&&*e.template) => Access::Read,
            _ => Access::Write,
        };
        if e.access != expected {
            wrong.push(format!("{} {} is {}", e.method, e.template, e.access.as_str()));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    for t in READ_POSTS {
        assert!(
            documented.contains(&format!("| `POST {t}` | read |")),
            "{t} is not explained in docs/catalog.md"
        );
    }
}

/// docs/configuration.md lists the money-moving endpoints as the catalog's `money=` column
/// says, generated from it (`policy::spend::table`): the two cannot drift apart.
#[test]
fn the_spend_caps_table_in_the_docs_is_the_catalogs() {
    let table = keyward::policy::spend::table(&catalog());
    let doc = include_str!("../../docs/configuration.md");
    assert!(doc.contains(&table), "docs/configuration.md should hold, under \"Spend caps\":\n{table}");
    assert!(table.lines().count() >= 2 + 16, "{table}");
}
