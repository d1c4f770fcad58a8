//! What a reload costs: compiling a 10,000-service config with the full catalog, and what the
//! request path pays to pick up the current snapshot.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use keyward::control::config::{Options, Source, compile};
use keyward::policy::{RequestFacts, decide};
use sha2::{Digest, Sha256};

const SERVICES: usize = 10_000;

fn config(dir: &std::path::Path) -> String {
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\ndev_certs = true\n\
         [upstream.api]\nurl = \"https://api.stripe.com\"\n[upstream.files]\nurl = \"https://files.stripe.com\"\n\
         [upstream.connect]\nurl = \"https://connect.stripe.com\"\n[upstream.meter_events]\nurl = \"https://meter-events.stripe.com\"\n\
         [secret.s]\nsource = \"env\"\nvar = \"KEYWARD_BENCH_SECRET\"\n",
        dir.join("k.crt"),
        dir.join("k.key")
    );
    for i in 0..SERVICES {
        cfg += &format!("[[service]]\nname = \"svc{i}\"\nsecret = \"s\"\nsource_ips = [\"10.0.0.0/8\"]\n");
        for j in 0..2 {
            let hash = hex::encode(Sha256::digest(format!("kw_bench_{i}_{j}").as_bytes()));
            cfg += &format!(
                "[[service.token]]\nid = \"t{i}-{j}\"\nsha256 = \"{hash}\"\nexpires = \"2099-01-01T00:00:00Z\"\n"
            );
        }
        cfg += "[service.scope]\ncharge = \"read\"\ncustomer = \"write\"\npayment_intent = \"write\"\n";
    }
    cfg
}

fn benches(c: &mut Criterion) {
    // SAFETY: set before any thread reads the environment.
    unsafe { std::env::set_var("KEYWARD_BENCH_SECRET", "sk_test_bench") };
    let dir = tempfile::tempdir().unwrap();
    let src = Source { name: "bench.toml".into(), text: config(dir.path()) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let snap = rt.block_on(compile(&src, Options::FULL)).expect("compiles");
    assert_eq!(snap.policy.services.len(), SERVICES);

    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    g.bench_function("compile_10000_services_full", |b| {
        b.iter(|| rt.block_on(compile(black_box(&src), Options::FULL)).is_ok())
    });
    g.finish();

    let swap = ArcSwap::new(Arc::new(snap));
    let parts = http::Request::get("/v1/charges/ch_3NxAbCdEf")
        .header("authorization", "Bearer kw_bench_5000_1")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let ip = "10.1.2.3".parse().unwrap();
    let facts = RequestFacts::direct(&parts, ip, 1_800_000_000);
    c.bench_function("snapshot_load_full", |b| b.iter(|| swap.load_full().version.len()));
    c.bench_function("decide_10000_services", |b| {
        let snap = swap.load_full();
        b.iter(|| decide(&snap.policy, black_box(&facts)).verdict.decision())
    });
    c.bench_function("load_full_then_decide_10000_services", |b| {
        b.iter(|| {
            let snap = swap.load_full();
            decide(&snap.policy, black_box(&facts)).verdict.decision()
        })
    });
}

criterion_group!(reload, benches);
criterion_main!(reload);
