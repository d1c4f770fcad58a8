//! Micro-benchmarks of the pure policy core: token look-up, classification and `decide()`
//! with 1,000 services and the shipped Stripe catalog.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use keyward::control::config::{Options, Source, compile};
use keyward::policy::identity::hash_token;
use keyward::policy::{RequestFacts, Verdict, decide};
use sha2::{Digest, Sha256};

const SERVICES: usize = 1000;

fn token(i: usize, j: usize) -> String {
    format!("kw_bench_{i:04}_{j}_0123456789abcdefghijklmnop")
}

fn config() -> String {
    let mut cfg = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"x\"\ntls_key = \"x\"\n\
         [upstream.api]\nurl = \"https://api.stripe.com\"\n\
         [upstream.files]\nurl = \"https://files.stripe.com\"\n\
         [secret.s]\nsource = \"env\"\nvar = \"X\"\n",
    );
    for i in 0..SERVICES {
        cfg += &format!(
            "[[service]]\nname = \"svc{i}\"\nsecret = \"s\"\nsource_ips = [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n"
        );
        for j in 0..2 {
            let hash = hex::encode(Sha256::digest(token(i, j).as_bytes()));
            cfg += &format!("[[service.token]]\nid = \"t{i}-{j}\"\nsha256 = \"{hash}\"\n");
        }
        cfg += "[service.scope]\ncharge = \"read\"\ncustomer = \"write\"\npayment_intent = \"write\"\n";
    }
    cfg
}

/// Every Stripe operation, instantiated with realistic ids.
fn operations() -> Vec<(http::Method, String)> {
    let text = include_str!("../tests/data/stripe_operations.tsv");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let method = cols.next()?.parse().ok()?;
            let path = cols.next()?;
            let path: Vec<String> = path
                .split('/')
                .map(|s| if s.starts_with('{') { "obj_3NxAbCdEfGhIjK".to_string() } else { s.to_string() })
                .collect();
            Some((method, path.join("/")))
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let src = Source { name: "bench.toml".into(), text: config() };
    let snap = rt.block_on(compile(&src, Options::POLICY_ONLY)).expect("bench config compiles");

    let tok = token(SERVICES / 2, 1);
    c.bench_function("token_lookup_1000_services", |b| {
        b.iter(|| snap.policy.tokens.get(&hash_token(black_box(&tok))).map(|t| t.token))
    });

    let ops = operations();
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(ops.len() as u64));
    g.bench_function("all_stripe_operations", |b| {
        b.iter(|| ops.iter().filter(|(m, p)| snap.policy.catalog.classify(m, black_box(p)).is_some()).count())
    });
    g.finish();
    assert_eq!(ops.iter().filter(|(m, p)| snap.policy.catalog.classify(m, p).is_some()).count(), ops.len());

    let request = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {tok}"))
            .header("stripe-version", "2026-07-29")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let allow = request("GET", "/v1/charges/ch_3NxAbCdEfGhIjK");
    let deny = request("POST", "/v1/charges/ch_3NxAbCdEfGhIjK/refund");
    let ip = "10.1.2.3".parse().unwrap();
    let facts = |parts| RequestFacts::direct(parts, ip, 1_800_000_000);
    assert!(matches!(decide(&snap.policy, &facts(&allow)).verdict, Verdict::Allow(_)));
    assert!(matches!(decide(&snap.policy, &facts(&deny)).verdict, Verdict::Deny(_)));
    c.bench_function("decide_allow_1000_services", |b| {
        b.iter(|| decide(&snap.policy, black_box(&facts(&allow))).verdict.decision())
    });
    c.bench_function("decide_deny_1000_services", |b| {
        b.iter(|| decide(&snap.policy, black_box(&facts(&deny))).verdict.decision())
    });
    // What a call of a service with `rate` and `concurrency` passes locally: a GCRA check
    // (governor; a rate so large it never runs out) and a semaphore permit taken and given
    // back; then the same with the shared budget's GCRA (priorities) too.
    use futures_util::FutureExt;
    use keyward::control::limits::{self, BudgetSpec, LimitSpec, Rate};
    let spec = LimitSpec {
        rate: Some(Rate::parse("1000000000/s").unwrap()),
        burst: std::num::NonZeroU32::new(4_000_000_000),
        concurrency: std::num::NonZeroU32::new(16),
        priority: Default::default(),
    };
    let services = [("billing".into(), Some(spec))];
    let budget = BudgetSpec { rate: spec.rate.unwrap(), burst: spec.burst.unwrap() };
    for (name, budget) in [("service_limits_admit", None), ("service_limits_and_budget_admit", Some(budget))]
    {
        let plan = limits::Plan { services: &services, budget, store: None };
        let limits = limits::build(plan, None).now_or_never().unwrap().unwrap();
        c.bench_function(name, |b| {
            b.iter(|| black_box(limits.admit(black_box(0)).now_or_never().unwrap().unwrap()))
        });
    }
}

criterion_group!(policy, benches);
criterion_main!(policy);
