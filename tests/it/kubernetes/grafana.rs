//! deploy/grafana/keyward.json, keyward's Grafana dashboard: every panel's query names only
//! metrics and labels a running keyward exposes (the alerts' check, `check_expr`), its panels
//! cover what a platform team watches, and the production overlay ships it as the ConfigMap
//! Grafana's sidecar loads.

use super::*;

const DASHBOARD: &str = "deploy/grafana/keyward.json";

fn dashboard() -> (String, Value) {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    (text, json)
}

/// Every panel, those inside collapsed rows too.
fn panels(dash: &Value) -> Vec<&Value> {
    arr(&dash["panels"]).iter().flat_map(|p| std::iter::once(p).chain(arr(&p["panels"]))).collect()
}

/// A query with Grafana's variables replaced by what Prometheus would get.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$namespace", "keyward")
}

#[tokio::test]
async fn every_dashboard_query_names_only_metrics_and_labels_keyward_exposes() {
    let (_, dash) = dashboard();
    let exposed = exposed_metrics().await;
    let mut checked = BTreeSet::new();
    let mut queries = 0;
    for p in panels(&dash).into_iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        let targets = arr(&p["targets"]);
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            check_expr(title, &substituted(expr), &exposed, &mut checked);
            // Each query on the chosen namespaces, so that two installations do not add up.
            let (selectors, _) = promql(&substituted(expr)).unwrap();
            for sel in selectors {
                assert!(
                    sel.matchers.iter().any(|(l, op, v)| l == "namespace" && op == "=~" && v == "keyward"),
                    "{title}: {} without namespace=~\"$namespace\"",
                    sel.name
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // The panels issue 33 asks for, by the metrics they read.
    for name in [
        "keyward_requests_total",
        "keyward_added_latency_seconds_bucket",
        "keyward_upstream_errors_total",
        "keyward_spend_refused_total",
        "keyward_tunnels_open",
        "keyward_connects_total",
        "keyward_secret_age_seconds",
        "keyward_reloads_total",
        "keyward_audit_healthy",
        "keyward_audit_checkpoint_publish_errors_total",
    ] {
        assert!(checked.contains(name), "no panel reads {name}");
    }
    // The namespace variable's own query.
    let vars = arr(&dash["templating"]["list"]);
    let ns = vars.iter().find(|v| v["name"] == "namespace").expect("a namespace variable");
    let query = ns["query"]["query"].as_str().unwrap();
    let metric = query.strip_prefix("label_values(").and_then(|q| q.split(',').next()).unwrap();
    assert!(exposed.contains_key(metric), "{query}");
}

#[test]
fn dashboard_is_well_formed_and_shipped_for_grafanas_sidecar() {
    let (text, dash) = dashboard();
    assert_eq!(dash["uid"], "keyward");
    assert!(dash["schemaVersion"].as_i64().unwrap() >= 36, "a Grafana 9+ dashboard");
    let vars = arr(&dash["templating"]["list"]);
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus")
    );
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_i64().unwrap()), "{title}: id used twice");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_i64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(p["gridPos"]["x"].as_i64().unwrap() + p["gridPos"]["w"].as_i64().unwrap() <= 24, "{title}");
        if p["type"] != "row" {
            assert!(!p["description"].as_str().unwrap_or("").is_empty(), "{title}: a description");
            // The data source the variable chose, not one of the author's.
            for d in
                std::iter::once(&p["datasource"]).chain(arr(&p["targets"]).iter().map(|t| &t["datasource"]))
            {
                assert_eq!(d["uid"], "${datasource}", "{title}");
            }
        }
    }
    // The production overlay's ConfigMap holds the file as it is, labelled for the sidecar.
    let production = renders().iter().find(|r| r.dir == PRODUCTION).unwrap();
    let cm = production.named("ConfigMap", "keyward-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["data"]["keyward.json"].as_str(), Some(text.as_str()));
}
