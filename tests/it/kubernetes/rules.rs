//! The PrometheusRule's groups pass `promtool check rules` (Prometheus' own parser and
//! checks, Debian's `prometheus` package), and `promtool test rules` evaluates the alerts
//! added for issue 33 on made-up series: each fires on trouble and stays quiet without it.
//! The expressions are read from the rendered rule, never copied here.

use super::*;

/// The base's PrometheusRule `spec` (its `groups`), as a Prometheus rules file (JSON is YAML),
/// written to a new directory.
fn rules_file() -> (tempfile::TempDir, PathBuf, &'static Value) {
    let rules = renders()[0].one("PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward-rules.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&rules["spec"]).unwrap()).unwrap();
    (dir, path, rules)
}

/// Input series of a promtool test: (series, values in promtool's notation).
type Series = Vec<(String, String)>;
/// (alert, input series, evaluated at, the samples its expression must give)
type Case = (&'static str, Series, &'static str, Vec<(String, f64)>);

fn promtool(args: &[&str]) -> (bool, String) {
    let (ok, out, err) =
        run(Command::new("promtool").args(args), "", "promtool (Debian: apt-get install prometheus)");
    (ok, out + &err)
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let (_dir, path, rules) = rules_file();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "promtool check rules:\n{out}");
    let count = arr(&rules["spec"]["groups"]).iter().map(|g| arr(&g["rules"]).len()).sum::<usize>();
    assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");
}

#[test]
fn new_alerts_fire_on_trouble_and_not_without_it() {
    let (dir, _path, rules) = rules_file();
    let expr = |alert: &str| -> String {
        arr(&rules["spec"]["groups"])
            .iter()
            .flat_map(|g| arr(&g["rules"]))
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"))["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let day = 86400;
    let ns = r#"namespace="keyward""#;
    // (alert, input series, evaluated at, the samples its expression must give)
    let cases: Vec<Case> = vec![
        // No keyward target at all, then one.
        (
            "KeywardAbsent",
            vec![(r#"up{job="other"}"#.into(), "1x20".into())],
            "15m",
            vec![(r#"{job="keyward"}"#.into(), 1.0)],
        ),
        (
            "KeywardAbsent",
            vec![(r#"up{job="keyward",pod="keyward-0"}"#.into(), "1x20".into())],
            "15m",
            vec![],
        ),
        // 100 calls a minute: 3 of them between 10 and 100 ms of keyward's own time, so the
        // 99th percentile is two thirds into that bucket (70 ms); then all under 1 ms.
        (
            "KeywardAddedLatencyHigh",
            ["0.001:90", "0.01:97", "0.1:100", "+Inf:100"]
                .iter()
                .map(|b| {
                    let (le, n) = b.split_once(':').unwrap();
                    (format!("keyward_added_latency_seconds_bucket{{{ns},le=\"{le}\"}}"), format!("0+{n}x20"))
                })
                .collect(),
            "10m",
            vec![(format!("{{{ns}}}"), 0.07)],
        ),
        (
            "KeywardAddedLatencyHigh",
            ["0.001:100", "0.01:100", "0.1:100", "+Inf:100"]
                .iter()
                .map(|b| {
                    let (le, n) = b.split_once(':').unwrap();
                    (format!("keyward_added_latency_seconds_bucket{{{ns},le=\"{le}\"}}"), format!("0+{n}x20"))
                })
                .collect(),
            "10m",
            vec![],
        ),
        // The forward CA expires in 20 days (at time 0): under the 30 days' warning; in 40: not.
        (
            "KeywardForwardCaExpiring",
            vec![(
                format!("keyward_forward_ca_expiry_timestamp_seconds{{{ns},pod=\"a\"}}"),
                format!("{}x5", 20 * day),
            )],
            "0m",
            vec![(format!("{{{ns}}}"), (20 * day) as f64)],
        ),
        (
            "KeywardForwardCaExpiring",
            vec![(
                format!("keyward_forward_ca_expiry_timestamp_seconds{{{ns},pod=\"a\"}}"),
                format!("{}x5", 40 * day),
            )],
            "0m",
            vec![],
        ),
        // One access record lost; none.
        (
            "KeywardAuditRecordsLost",
            vec![(format!("keyward_audit_unrecorded_total{{{ns},pod=\"a\"}}"), "0 0 0 1 1 1".into())],
            "5m",
            vec![(format!("{{{ns},pod=\"a\"}}"), 1.0)],
        ),
        (
            "KeywardAuditRecordsLost",
            vec![(format!("keyward_audit_unrecorded_total{{{ns},pod=\"a\"}}"), "0x5".into())],
            "5m",
            vec![],
        ),
        // A token quarantined.
        (
            "KeywardTokenQuarantined",
            vec![(format!("keyward_tokens_quarantined_total{{{ns},pod=\"a\"}}"), "0 0 1 1 1".into())],
            "4m",
            vec![(format!("{{{ns},pod=\"a\"}}"), 1.0)],
        ),
        (
            "KeywardTokensSuspended",
            vec![(format!("keyward_tokens_suspended{{{ns},pod=\"a\"}}"), "2x5".into())],
            "4m",
            vec![(format!("{{{ns}}}"), 2.0)],
        ),
        (
            "KeywardTokensSuspended",
            vec![(format!("keyward_tokens_suspended{{{ns},pod=\"a\"}}"), "0x5".into())],
            "4m",
            vec![],
        ),
    ];
    let tests: Vec<Value> = cases
        .iter()
        .map(|(alert, series, at, want)| {
            serde_json::json!({
                "interval": "1m",
                "input_series": series.iter().map(|(s, v)| serde_json::json!({"series": s, "values": v})).collect::<Vec<_>>(),
                "promql_expr_test": [{
                    // The latency to the millisecond, not to the last bit of its interpolation.
                    "expr": if *alert == "KeywardAddedLatencyHigh" {
                        format!("round({}, 0.001)", expr(alert))
                    } else {
                        expr(alert)
                    },
                    "eval_time": at,
                    "exp_samples": want.iter().map(|(l, v)| serde_json::json!({"labels": l, "value": v})).collect::<Vec<_>>(),
                }],
            })
        })
        .collect();
    let test = dir.path().join("keyward-rules-test.yaml");
    let file = serde_json::json!({ "rule_files": ["keyward-rules.yaml"], "tests": tests });
    std::fs::write(&test, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let (ok, out) = promtool(&["test", "rules", test.to_str().unwrap()]);
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}
