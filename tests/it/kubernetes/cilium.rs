//! The Cilium egress overlay (components/cilium-egress): its CiliumNetworkPolicy passes
//! Cilium's CRD schema (tests/crd/validate.mjs, with @kubernetes-models/cilium), uses only keys
//! this test knows (those schemas allow unknown keys, which the API server would prune
//! without a word: a `toFQDN` typo would vanish), and lets keyward's pods reach the hosts of
//! the upstreams keyward's catalog routes to, on 443 alone, DNS through Cilium's DNS proxy,
//! Redis and the vault; the NetworkPolicy keeps ingress only.

use super::*;

/// tests/crd/validate.mjs on `docs` (Cilium's ones; it ignores the others): what it printed,
/// or a failure with its errors.
pub(super) fn validate(docs: &[Value], what: &str) -> String {
    let (ok, out, err) = run(
        Command::new("node").arg("tests/crd/validate.mjs"),
        &serde_json::to_string(docs).unwrap(),
        "node (with `npm ci --prefix tests/crd`)",
    );
    assert!(
        ok,
        "{what}: Cilium's CRD schema refuses it (or `npm ci --prefix tests/crd` was not run):\n{out}{err}"
    );
    out
}

/// The host of an `https://host[:port]` url.
fn host(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    uri.host().unwrap_or_else(|| panic!("{url}: no host")).to_string()
}

/// The upstreams keyward's default catalog routes to (each operation's UPSTREAM column in
/// config/stripe-catalog.txt), and the host of each in the default configuration
/// (config/keyward.toml's [upstream.NAME] url).
fn catalog_upstreams() -> BTreeMap<String, String> {
    let catalog = std::fs::read_to_string(repo().join("config/stripe-catalog.txt")).unwrap();
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("config/keyward.toml")).unwrap()).unwrap();
    let names: BTreeSet<&str> = catalog
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().nth(4).unwrap_or_else(|| panic!("no UPSTREAM column: {l}")))
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    names
        .into_iter()
        .map(|n| {
            let url = config["upstream"][n]["url"]
                .as_str()
                .unwrap_or_else(|| panic!("config/keyward.toml has no [upstream.{n}] url"));
            (n.to_string(), host(url))
        })
        .collect()
}

fn keys(v: &Value, allowed: &[&str], what: &str) {
    for k in v.as_object().unwrap_or_else(|| panic!("{what}: not an object: {v}")).keys() {
        assert!(allowed.contains(&k.as_str()), "{what}: unexpected key {k} in {v}");
    }
}

#[test]
fn cilium_policy_passes_its_crd_schema_and_reaches_only_the_catalogs_hosts() {
    let r = renders().iter().find(|r| r.dir == CILIUM_EGRESS).unwrap();
    let out = validate(&r.docs, r.dir);
    let policy = r.one("CiliumNetworkPolicy");
    let name = policy["metadata"]["name"].as_str().unwrap();
    assert!(out.lines().any(|l| l == format!("valid CiliumNetworkPolicy/{name}")), "{out}");
    assert_eq!(policy["apiVersion"], CILIUM);
    assert_eq!(policy["metadata"]["namespace"], r.one("Deployment")["metadata"]["namespace"]);

    // Only keys this test knows, so that none is a typo the API server would drop.
    keys(policy, &["apiVersion", "kind", "metadata", "spec"], name);
    let spec = &policy["spec"];
    keys(spec, &["description", "endpointSelector", "egress"], "spec");
    keys(&spec["endpointSelector"], &["matchLabels"], "endpointSelector");
    assert!(selects(
        &spec["endpointSelector"]["matchLabels"],
        &r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    ));
    let (_, config) = r.config();
    let mut fqdns = BTreeSet::new();
    let (mut dns, mut api) = (false, false);
    for rule in arr(&spec["egress"]) {
        keys(rule, &["toEndpoints", "toFQDNs", "toPorts"], "egress rule");
        // A rule without a destination allows its ports to everywhere, one without ports
        // every port of its destination.
        let to = arr(&rule["toEndpoints"]).len() + arr(&rule["toFQDNs"]).len();
        assert!(to > 0, "an egress rule open to all destinations: {rule}");
        assert!(!arr(&rule["toPorts"]).is_empty(), "an egress rule open to all ports: {rule}");
        for e in arr(&rule["toEndpoints"]) {
            keys(e, &["matchLabels"], "toEndpoints");
            assert!(!e["matchLabels"].as_object().unwrap().is_empty(), "every endpoint: {rule}");
        }
        let mut ports = BTreeSet::new();
        let mut dns_rules = vec![];
        for p in arr(&rule["toPorts"]) {
            keys(p, &["ports", "rules"], "toPorts");
            for port in arr(&p["ports"]) {
                keys(port, &["port", "protocol"], "ports");
                ports.insert((port["protocol"].as_str().unwrap(), port["port"].as_str().unwrap()));
            }
            if let Some(rules) = p.get("rules") {
                keys(rules, &["dns"], "rules");
                dns_rules.extend(arr(&rules["dns"]).iter().cloned());
            }
        }
        if !arr(&rule["toFQDNs"]).is_empty() {
            for f in arr(&rule["toFQDNs"]) {
                // By name: no matchPattern, which would widen the list to a whole domain.
                keys(f, &["matchName"], "toFQDNs");
                fqdns.insert(f["matchName"].as_str().unwrap().to_string());
            }
            assert!(arr(&rule["toEndpoints"]).is_empty(), "{rule}");
            assert_eq!(ports, BTreeSet::from([("TCP", "443")]), "the API's hosts on HTTPS only");
            api = true;
        }
        if ports.iter().any(|(_, p)| *p == "53") {
            // The DNS rule toFQDNs needs: queries to CoreDNS, through Cilium's DNS proxy.
            assert_eq!(ports, BTreeSet::from([("TCP", "53"), ("UDP", "53")]), "{rule}");
            let kube_dns = serde_json::json!({
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            });
            assert_eq!(
                arr(&rule["toEndpoints"]).iter().map(|e| &e["matchLabels"]).collect::<Vec<_>>(),
                [&kube_dns]
            );
            assert_eq!(dns_rules, [serde_json::json!({ "matchPattern": "*" })], "{rule}");
            dns = true;
        } else {
            assert!(dns_rules.is_empty(), "a dns rule on a port that is not DNS: {rule}");
        }
    }
    assert!(dns && api, "{}: a DNS rule and the API's hosts", r.dir);

    // Exactly the hosts of the upstreams the catalog routes to, and those keyward connects to.
    let upstreams = catalog_upstreams();
    let want: BTreeSet<String> = upstreams.values().cloned().collect();
    assert_eq!(fqdns, want, "toFQDNs against the catalog's upstreams {upstreams:?}");
    let configured: BTreeSet<String> =
        config["upstream"].as_table().unwrap().values().map(|u| host(u["url"].as_str().unwrap())).collect();
    assert_eq!(configured, want, "{}: keyward.toml's upstreams", r.dir);

    // Redis on the port of [ratelimit] redis.
    let redis: http::Uri = config["ratelimit"]["redis"].as_str().unwrap().parse().unwrap();
    let redis_port = redis.port_u16().unwrap_or(6379).to_string();
    let to_redis = arr(&spec["egress"]).iter().find(|rule| {
        arr(&rule["toEndpoints"]).iter().any(|e| e["matchLabels"]["app.kubernetes.io/name"] == "redis")
    });
    let ports = arr(&to_redis.expect("a rule to Redis")["toPorts"][0]["ports"]);
    assert_eq!(ports.iter().map(|p| p["port"].as_str().unwrap()).collect::<Vec<_>>(), [redis_port]);

    // The NetworkPolicy keeps its ingress rules and gives up egress (checked with the others
    // in network_policy_admits_callers_…).
    assert_eq!(strings(&r.one("NetworkPolicy")["spec"]["policyTypes"]), ["Ingress"]);
}

#[test]
fn cilium_schema_check_refuses_a_broken_policy() {
    // The validator is no rubber stamp: a port given as a number, as NetworkPolicy writes it,
    // is refused by Cilium's schema (its ports are strings).
    let r = renders().iter().find(|r| r.dir == CILIUM_EGRESS).unwrap();
    let mut policy = r.one("CiliumNetworkPolicy").clone();
    let api = arr(&policy["spec"]["egress"]).iter().position(|r| r.get("toFQDNs").is_some()).unwrap();
    policy["spec"]["egress"][api]["toPorts"][0]["ports"][0]["port"] = 443.into();
    let (ok, out, err) = run(
        Command::new("node").arg("tests/crd/validate.mjs"),
        &serde_json::to_string(&[policy]).unwrap(),
        "node (with `npm ci --prefix tests/crd`)",
    );
    assert!(!ok && err.contains("must be string"), "{out}{err}");
}

#[test]
fn egress_gateway_example_in_the_docs_passes_its_crd_schema() {
    // docs/operations.md's CiliumEgressGatewayPolicy, as written there.
    let docs = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let block = docs
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("kind: CiliumEgressGatewayPolicy"))
        .expect("a CiliumEgressGatewayPolicy in docs/operations.md");
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
    let (ok, json, err) = run(Command::new("python3").args(["-c", script]), block, "python3 with PyYAML");
    assert!(ok, "{err}");
    let objects: Vec<Value> = serde_json::from_str(&json).unwrap();
    let out = validate(&objects, "docs/operations.md");
    assert!(out.contains("valid CiliumEgressGatewayPolicy/"), "{out}");
    let spec = &objects[0]["spec"];
    keys(spec, &["selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway"], "spec");
    // It selects keyward's pods, and only them.
    let selector = &spec["selectors"][0]["podSelector"]["matchLabels"];
    assert_eq!(selector["app.kubernetes.io/name"], "keyward", "{spec}");
}
