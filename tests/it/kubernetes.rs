//! deploy/kubernetes: the kustomize base, the production example and the Cilium egress
//! overlay render with `kubectl kustomize`, pass `kubernetes-validate --strict` against
//! Kubernetes 1.32's schemas (the Prometheus Operator's resources, which have no built-in
//! schema, are checked by structure here; Cilium's against its CRD schema in `cilium`), agree
//! with the keyward configuration they ship (ports, probes, drain, the files it reads), and
//! alert only on metrics a running keyward exposes (`rules` runs promtool on the alerts;
//! `grafana` checks the dashboard's queries the same way).
//!
//! Needs `kubectl` (1.32, for kustomize) and `kubernetes-validate` (tests/requirements.txt,
//! which also brings PyYAML, used to turn the rendered YAML into JSON), `node` with
//! tests/crd's packages (`npm ci --prefix tests/crd`) and `promtool` (Debian's `prometheus`):
//! a test fails, never skips, without them. scripts/test.sh installs them all.

mod cilium;
mod grafana;
mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::redis::Redis;
use crate::common::*;

const BASE: &str = "deploy/kubernetes/base";
const PRODUCTION: &str = "deploy/kubernetes/examples/production";
/// The production example with ../components/cilium-egress: egress by name, on Cilium.
const CILIUM_EGRESS: &str = "deploy/kubernetes/overlays/cilium-egress";
const KUBERNETES_VERSION: &str = "1.32.0";
/// The Dockerfile's user and group.
const UID: i64 = 10001;
/// Prometheus Operator's API group: no schema in kubernetes-validate.
const MONITORING: &str = "monitoring.coreos.com/v1";
/// Cilium's API group: no schema in kubernetes-validate either (`cilium` validates it).
const CILIUM: &str = "cilium.io/v2";

/// A custom resource, which kubernetes-validate has no schema for.
fn is_crd(d: &Value) -> bool {
    d["apiVersion"] == MONITORING || d["apiVersion"] == CILIUM
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `cmd` with `stdin`, and return (success, stdout, stderr); fail if it cannot start.
fn run(cmd: &mut Command, stdin: &str, what: &str) -> (bool, String, String) {
    let mut child = cmd
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not be started ({e}): see this file's header"));
    // A thread writes while this one reads, so that neither pipe fills up.
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// One directory rendered: its YAML, and each resource as JSON.
struct Render {
    dir: &'static str,
    /// The directory whose keyward.toml the render's ConfigMap holds.
    config_dir: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

impl Render {
    fn new(dir: &'static str, config_dir: &'static str) -> Render {
        let (ok, yaml, err) = run(
            Command::new("kubectl").args(["kustomize", dir]),
            "",
            "kubectl (1.32, for `kubectl kustomize`)",
        );
        assert!(ok, "kubectl kustomize {dir} failed:\n{err}");
        // `kubectl kustomize` writes YAML only: PyYAML turns it into JSON.
        let script = "import json, sys, yaml\n\
                      json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
        let (ok, json, err) = run(
            Command::new("python3").args(["-c", script]),
            &yaml,
            "python3 with PyYAML (kubernetes-validate)",
        );
        assert!(ok, "the render of {dir} is not YAML that PyYAML reads:\n{err}");
        let docs: Vec<Value> = serde_json::from_str(&json).unwrap();
        assert!(!docs.is_empty(), "{dir} renders nothing");
        Render { dir, config_dir, yaml, docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one resource of this kind.
    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "{}: expected one {kind}, found {}", self.dir, found.len());
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.dir))
    }

    fn pod(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        container(self.pod(), "keyward")
    }

    /// The ConfigMap the keyward container's `--config` names, and the configuration in it.
    fn config(&self) -> (String, toml::Table) {
        let args = strings(&self.container()["args"]);
        let at = args.iter().position(|a| a == "--config").expect("--config in the args");
        let path = Path::new(&args[at + 1]);
        let (dir, key) = (path.parent().unwrap(), path.file_name().unwrap().to_str().unwrap());
        let mount = arr(&self.container()["volumeMounts"])
            .iter()
            .find(|m| [dir, path].contains(&Path::new(m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {}", self.dir, dir.display()));
        // A subPath mount never sees the ConfigMap's updates (its `..data` swaps).
        assert!(
            mount.get("subPath").is_none(),
            "{}: mount the ConfigMap as a directory, not by subPath",
            self.dir
        );
        let volume = volume(self.pod(), mount["name"].as_str().unwrap());
        let name = volume["configMap"]["name"].as_str().expect("the configuration from a ConfigMap");
        let text = self.named("ConfigMap", name)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {name} has no {key}"))
            .to_string();
        let table = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: keyward.toml: {e}", self.dir));
        (text, table)
    }
}

/// The three directories, rendered once for all the tests: base, production, Cilium egress.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        vec![
            Render::new(BASE, BASE),
            Render::new(PRODUCTION, PRODUCTION),
            Render::new(CILIUM_EGRESS, PRODUCTION),
        ]
    })
}

fn arr(v: &Value) -> &Vec<Value> {
    static EMPTY: Vec<Value> = Vec::new();
    v.as_array().unwrap_or(&EMPTY)
}

fn strings(v: &Value) -> Vec<String> {
    arr(v).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    arr(&pod["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    arr(&pod["volumes"]).iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"))
}

/// The port of an address such as `0.0.0.0:8443` or `[::]:8443`.
fn port_of(addr: &str) -> i64 {
    let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("not host:port: {addr}"));
    assert!(
        matches!(host, "0.0.0.0" | "[::]"),
        "{addr}: in a pod keyward must listen on all addresses, not {host}"
    );
    port.parse().unwrap()
}

/// A container port, by name or number, as its number.
fn container_port(c: &Value, port: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().unwrap();
    arr(&c["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_i64()
        .unwrap()
}

fn duration(table: &toml::Table, section: &str, key: &str, default: &str) -> Duration {
    let text = table.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str()).unwrap_or(default);
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{section}.{key} = {text:?}: {e}"))
}

/// Whether every label of `selector` (a `matchLabels` map) is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let want = selector.as_object().expect("matchLabels");
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn manifests_pass_kubernetes_1_32_schemas_strictly() {
    for r in renders() {
        let (ok, out, err) = run(
            Command::new("kubernetes-validate").args([
                "--kubernetes-version",
                KUBERNETES_VERSION,
                "--strict",
                "-",
            ]),
            &r.yaml,
            "kubernetes-validate (pip install -r tests/requirements.txt)",
        );
        assert!(ok, "{}: kubernetes-validate failed:\n{out}{err}", r.dir);
        assert!(!out.contains("ERROR") && !out.contains("FATAL"), "{}:\n{out}", r.dir);
        let version = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
        for d in &r.docs {
            let (kind, name) = (d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap());
            if is_crd(d) {
                // No schema for CRDs: kubernetes-validate warns and passes them, and
                // `prometheus_operator_resources_are_well_formed` and `cilium` check them instead.
                let api = d["apiVersion"].as_str().unwrap();
                let warning = format!("Couldn't find schema for kind {kind} with api version {api}");
                assert!(out.contains(&warning), "{}: {kind} was not skipped as expected:\n{out}", r.dir);
            } else {
                let passed =
                    format!("passed for resource {}/{name} against version {version}", kind.to_lowercase());
                assert!(out.contains(&passed), "{}: {kind}/{name} was not validated:\n{out}", r.dir);
            }
        }
        let warnings = out.lines().filter(|l| l.starts_with("WARN")).count();
        let crds = r.docs.iter().filter(|d| is_crd(d)).count();
        assert_eq!(warnings, crds, "{}: only the CRDs may go unvalidated:\n{out}", r.dir);
    }
}

#[test]
fn deployment_serves_the_ports_and_probes_of_its_configuration() {
    for r in renders() {
        let (_, config) = r.config();
        let c = r.container();
        assert_eq!(
            strings(&c["args"]),
            ["run", "--config", "/etc/keyward/keyward.toml", "--log-format", "json"],
            "{}",
            r.dir
        );
        let server = config["server"].as_table().unwrap();
        let listen = port_of(server["listen"].as_str().unwrap());
        let admin = port_of(server["admin_listen"].as_str().expect("an admin port, for the probes"));
        let forward = port_of(config["forward"]["listen"].as_str().expect("forward mode"));
        let ports: BTreeMap<&str, i64> = arr(&c["ports"])
            .iter()
            .map(|p| {
                assert_eq!(p["protocol"], "TCP");
                (p["name"].as_str().unwrap(), p["containerPort"].as_i64().unwrap())
            })
            .collect();
        let want = BTreeMap::from([("proxy", listen), ("forward", forward), ("admin", admin)]);
        assert_eq!(ports, want, "{}: container ports against keyward.toml", r.dir);

        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{}: {probe}", r.dir);
            assert_eq!(container_port(c, &get["port"]), admin, "{}: {probe} on the admin port", r.dir);
            assert!(get.get("scheme").is_none_or(|s| *s == "HTTP"), "the admin port is plain HTTP");
        }
        if let Some(get) = c.get("startupProbe").map(|p| &p["httpGet"]) {
            assert!(matches!(get["path"].as_str(), Some("/healthz" | "/readyz")), "{}", r.dir);
            assert_eq!(container_port(c, &get["port"]), admin);
        }
        let instance =
            arr(&c["env"]).iter().find(|e| e["name"] == "KEYWARD_INSTANCE").expect("KEYWARD_INSTANCE");
        assert_eq!(instance["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");

        // The Service: each port reaches its container port, `metrics` (the ServiceMonitor's) the admin's.
        let svc = r.named("Service", "keyward");
        assert!(selects(
            &svc["spec"]["selector"],
            &r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        ));
        let svc_ports: BTreeMap<&str, i64> = arr(&svc["spec"]["ports"])
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), container_port(c, &p["targetPort"])))
            .collect();
        assert_eq!(
            svc_ports,
            BTreeMap::from([("proxy", listen), ("forward", forward), ("metrics", admin)]),
            "{}: Service ports",
            r.dir
        );
    }
}

#[test]
fn pods_run_locked_down_without_a_service_account_token() {
    for r in renders() {
        let pod = r.pod();
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], UID);
        assert_eq!(sc["runAsGroup"], UID);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["automountServiceAccountToken"], false, "{}: no token in the pod", r.dir);
        let sa = r.named("ServiceAccount", pod["serviceAccountName"].as_str().expect("a service account"));
        assert_eq!(sa["automountServiceAccountToken"], false, "{}: nor on its ServiceAccount", r.dir);
        for v in arr(&pod["volumes"]) {
            let projected = arr(&v["projected"]["sources"]);
            assert!(projected.iter().all(|s| s.get("serviceAccountToken").is_none()), "{v}");
        }
        assert!(pod.get("hostNetwork").is_none_or(|h| *h == false) && pod.get("hostPID").is_none());
        let all = arr(&pod["containers"]).iter().chain(arr(&pod["initContainers"]));
        for c in all {
            let sc = &c["securityContext"];
            let name = c["name"].as_str().unwrap();
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
            assert!(sc["capabilities"].get("add").is_none(), "{name}");
            assert!(sc.get("privileged").is_none_or(|p| *p == false), "{name}");
            assert!(sc.get("runAsUser").is_none_or(|u| *u == UID), "{name}");
            for kind in ["cpu", "memory"] {
                for bound in ["requests", "limits"] {
                    assert!(c["resources"][bound].get(kind).is_some(), "{name}: resources.{bound}.{kind}");
                }
            }
        }
        let res = &r.container()["resources"];
        assert_eq!(res["requests"]["memory"], res["limits"]["memory"], "memory is not overcommitted");
        // Secret volumes: nothing readable by others (keyward refuses vault credential files
        // that others may read; the keys it reads are every_file_keyward_reads_…'s).
        for v in arr(&pod["volumes"]) {
            if let Some(mode) = v["secret"].get("defaultMode") {
                assert_eq!(mode.as_i64().unwrap() & 0o007, 0, "{v}");
            }
        }
    }
}

#[test]
fn every_file_keyward_reads_is_mounted_where_its_checks_pass() {
    for r in renders() {
        let (_, config) = r.config();
        let pod = r.pod();
        // (file, whether keyward refuses it unless `secrets::file::private_enough`)
        let mut files: Vec<(String, bool)> = vec![];
        let mut add = |v: Option<&toml::Value>, private: bool| {
            if let Some(p) = v.and_then(|v| v.as_str()) {
                files.push((p.to_string(), private));
            }
        };
        let server = &config["server"];
        for key in ["tls_cert", "tls_key", "client_ca"] {
            add(server.get(key), false);
        }
        if let Some(f) = config.get("forward") {
            add(f.get("ca_cert"), false);
            add(f.get("ca_key"), true);
            // Or the key from the vault, never a file.
            if let Some(name) = f.get("ca_key_secret").and_then(|n| n.as_str()) {
                let source = config.get("secret").and_then(|s| s.get(name)).and_then(|s| s.get("source"));
                assert_eq!(
                    source.and_then(|s| s.as_str()),
                    Some("vault"),
                    "{}: forward.ca_key_secret = {name:?} must name a vault secret",
                    r.dir
                );
            }
        }
        for up in config.get("upstream").and_then(|u| u.as_table()).into_iter().flat_map(|t| t.values()) {
            add(up.get("ca"), false);
        }
        for s in config.get("secret").and_then(|s| s.as_table()).into_iter().flat_map(|t| t.values()) {
            if s.get("source").and_then(|v| v.as_str()) == Some("file") {
                add(s.get("path"), true);
            }
            for key in ["ca", "token_file", "secret_id_file"] {
                add(s.get(key), false);
            }
        }
        // Redis over TLS: its CA and client certificate (issue 33's [ratelimit] keys).
        if let Some(rl) = config.get("ratelimit") {
            add(rl.get("ca"), false);
            add(rl.get("tls_cert"), false);
        }
        if let Some(c) = config.get("catalog") {
            add(c.get("path"), false);
            add(c.get("expansions"), false);
        }
        let audit = config.get("audit").and_then(|a| a.get("path")).and_then(|p| p.as_str()).unwrap_or("-");
        assert_eq!(audit, "-", "{}: the access log goes to stdout, for the log collector", r.dir);
        assert!(!files.is_empty());

        let mounts = arr(&r.container()["volumeMounts"]);
        for (file, private) in files {
            let path = Path::new(&file);
            assert!(path.is_absolute(), "{file}: relative paths would depend on the image's WORKDIR");
            let mount = mounts
                .iter()
                .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
                .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
                .unwrap_or_else(|| panic!("{}: nothing is mounted where keyward reads {file}", r.dir));
            let name = mount["name"].as_str().unwrap();
            let v = volume(pod, name);
            let rel = path.strip_prefix(mount["mountPath"].as_str().unwrap()).unwrap();
            let items = v["secret"].get("items").or(v["configMap"].get("items"));
            let item = items.map(|items| {
                arr(items)
                    .iter()
                    .find(|i| Path::new(i["path"].as_str().unwrap()) == rel)
                    .unwrap_or_else(|| panic!("{}: {file} is not among the items of volume {name}", r.dir))
            });
            if private {
                // A key keyward reads straight from its Secret volume (as a directory, so that
                // a changed Secret reaches the pod and its file watch), in a mode
                // `private_enough` accepts: with fsGroup the kubelet makes the files
                // root:fsGroup, with the mode asked for plus group read (0440 for a read-only
                // volume), and keyward, not root, reads them through that group.
                assert!(v.get("secret").is_some(), "{}: {file} must come from a Secret volume: {v}", r.dir);
                assert!(mount.get("subPath").is_none(), "{}: {file}: a subPath mount never changes", r.dir);
                assert_eq!(mount["readOnly"], true, "{}: {file}", r.dir);
                let sc = &pod["securityContext"];
                let fs_group = sc["fsGroup"].as_i64().unwrap_or_else(|| {
                    panic!(
                        "{}: {file}: without fsGroup a Secret file is root's alone, unreadable to keyward",
                        r.dir
                    )
                });
                // keyward's groups: its own, the supplementary ones, and fsGroup (the kubelet
                // adds it to every container's).
                let groups: Vec<i64> = [&sc["runAsGroup"], &sc["fsGroup"]]
                    .into_iter()
                    .chain(arr(&sc["supplementalGroups"]))
                    .filter_map(|g| g.as_i64())
                    .collect();
                let asked = item
                    .and_then(|i| i.get("mode"))
                    .or(v["secret"].get("defaultMode"))
                    .map_or(0o644, |m| m.as_i64().unwrap());
                let mode = asked | 0o440;
                // `secrets::file::private_enough` for that file: nothing for others, no group
                // write, group read only for a group of keyward's own.
                let private_enough = mode & 0o027 == 0 && (mode & 0o040 == 0 || groups.contains(&fs_group));
                assert!(
                    private_enough,
                    "{}: {file} would be {mode:o} root:{fs_group} (volume {name} asks {asked:o}): keyward refuses it",
                    r.dir
                );
                assert!(
                    matches!(asked, 0o440 | 0o400 | 0o600),
                    "{}: {file}: ask 0440 (what the kubelet makes it), 0400 or 0600, not {asked:o}",
                    r.dir
                );
            }
        }
    }
}

#[test]
fn shutdown_availability_and_scaling_fit_keyward() {
    for r in renders() {
        let (_, config) = r.config();
        let drain = duration(&config, "timeouts", "drain_delay", "5s")
            + duration(&config, "timeouts", "shutdown_grace", "30s");
        let pod = r.pod();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
        assert!(Duration::from_secs(grace) > drain, "{}: {grace} s against a drain of {drain:?}", r.dir);
        assert!(r.container()["lifecycle"].get("preStop").is_none(), "keyward drains by itself");

        let deploy = r.one("Deployment");
        let labels = &deploy["spec"]["template"]["metadata"]["labels"];
        let hpa = r.one("HorizontalPodAutoscaler");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deploy["metadata"]["name"]);
        let min = hpa["spec"]["minReplicas"].as_i64().unwrap();
        assert!(min >= 3, "{}: at least 3 replicas", r.dir);
        // The HPA owns the count: a `replicas` here would reset it on every apply.
        assert!(deploy["spec"].get("replicas").is_none_or(|n| *n == min), "{}", r.dir);
        let cpu = arr(&hpa["spec"]["metrics"]).iter().any(|m| m["resource"]["name"] == "cpu");
        assert!(cpu, "{}: the HPA scales on CPU", r.dir);
        assert!(r.container()["resources"]["requests"].get("cpu").is_some(), "utilization needs a request");

        let pdb = r.one("PodDisruptionBudget");
        assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
        let spec = &pdb["spec"];
        assert!(
            spec["maxUnavailable"] == 1 || spec["minAvailable"].as_i64().is_some_and(|n| n >= 2),
            "{spec}"
        );

        let spread = arr(&pod["topologySpreadConstraints"]);
        for (key, when) in
            [("kubernetes.io/hostname", None), ("topology.kubernetes.io/zone", Some("ScheduleAnyway"))]
        {
            let c =
                spread.iter().find(|c| c["topologyKey"] == key).unwrap_or_else(|| panic!("spread by {key}"));
            assert!(selects(&c["labelSelector"]["matchLabels"], labels));
            if let Some(when) = when {
                assert_eq!(c["whenUnsatisfiable"], when);
            }
        }
        let strategy = &deploy["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(strategy["maxUnavailable"], 0, "a new pod is ready before an old one goes");
    }
}

#[test]
fn network_policy_admits_callers_and_monitoring_and_reaches_only_what_keyward_needs() {
    for r in renders() {
        let (_, config) = r.config();
        let c = r.container();
        let np = r.one("NetworkPolicy");
        let spec = &np["spec"];
        assert!(selects(
            &spec["podSelector"]["matchLabels"],
            &r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        ));
        // With Cilium's policy, egress is its alone (policies add up: the NetworkPolicy's 443 to
        // any public address would let through what it leaves out).
        let cilium = r.all("CiliumNetworkPolicy");
        let types: &[&str] = if cilium.is_empty() { &["Ingress", "Egress"] } else { &["Ingress"] };
        assert_eq!(strings(&spec["policyTypes"]), types, "{}", r.dir);
        let admin = port_of(config["server"]["admin_listen"].as_str().unwrap());
        let mut ingress: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
        for rule in arr(&spec["ingress"]) {
            assert!(!arr(&rule["from"]).is_empty(), "{}: an ingress rule open to all: {rule}", r.dir);
            for p in arr(&rule["ports"]) {
                ingress.entry(container_port(c, &p["port"])).or_default().extend(arr(&rule["from"]));
            }
        }
        let ports: Vec<i64> = arr(&c["ports"]).iter().map(|p| p["containerPort"].as_i64().unwrap()).collect();
        assert_eq!(ingress.keys().copied().collect::<Vec<_>>(), {
            let mut p = ports.clone();
            p.sort();
            p
        });
        let from_ns = |port: i64| -> Vec<Value> {
            let from = ingress.get(&port).unwrap_or_else(|| panic!("{}: no ingress to port {port}", r.dir));
            from.iter().map(|f| f["namespaceSelector"]["matchLabels"].clone()).collect()
        };
        let monitoring = serde_json::json!({ "kubernetes.io/metadata.name": "monitoring" });
        assert_eq!(
            from_ns(admin),
            [monitoring],
            "{}: the admin port from the monitoring namespace only",
            r.dir
        );
        for port in ports.iter().filter(|p| **p != admin) {
            let clients = from_ns(*port);
            assert!(
                clients.iter().all(|l| l.get("keyward.example/client") == Some(&"true".into())),
                "{}: port {port} from client namespaces only: {clients:?}",
                r.dir
            );
        }
        let mut egress: BTreeSet<(String, i64)> = BTreeSet::new();
        for rule in arr(&spec["egress"]) {
            assert!(!arr(&rule["to"]).is_empty(), "{}: an egress rule open to all: {rule}", r.dir);
            for p in arr(&rule["ports"]) {
                egress.insert((p["protocol"].as_str().unwrap().to_string(), p["port"].as_i64().unwrap()));
            }
        }
        assert!(cilium.is_empty() || spec.get("egress").is_none(), "{}: egress in both policies", r.dir);
        for rule in cilium.iter().flat_map(|p| arr(&p["spec"]["egress"])) {
            for p in arr(&rule["toPorts"]).iter().flat_map(|t| arr(&t["ports"])) {
                let port = p["port"].as_str().unwrap().parse().unwrap();
                egress.insert((p["protocol"].as_str().unwrap().to_string(), port));
            }
        }
        let mut want: BTreeSet<(String, i64)> =
            [("TCP", 443), ("UDP", 53), ("TCP", 53), ("TCP", 8200)].map(|(p, n)| (p.to_string(), n)).into();
        if config.get("ratelimit").and_then(|r| r.get("redis")).is_some() {
            want.insert(("TCP".into(), 6379));
        }
        // Traces to an OpenTelemetry collector, if configured.
        if let Some(url) =
            config.get("telemetry").and_then(|t| t.get("otlp_endpoint")).and_then(|u| u.as_str())
        {
            let authority = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap();
            let port = authority
                .rsplit_once(':')
                .map_or(if url.starts_with("https") { 443 } else { 80 }, |(_, p)| p.parse().unwrap());
            want.insert(("TCP".into(), port));
        }
        assert_eq!(egress, want, "{}: egress", r.dir);
    }
}

#[test]
fn images_are_placeholders_in_the_base_and_pinned_in_production() {
    let [base, production, ..] = renders() else { unreachable!() };
    for c in arr(&base.pod()["containers"]).iter().chain(arr(&base.pod()["initContainers"])) {
        assert_eq!(c["image"], "keyward:latest");
    }
    let image = production.container()["image"].as_str().unwrap();
    let (name, digest) =
        image.split_once("@sha256:").unwrap_or_else(|| panic!("{image}: not pinned by digest"));
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{image}");
    assert!(name.rsplit_once(':').is_some_and(|(_, tag)| tag != "latest"), "{image}: a version tag");
    // Production takes its secrets from the vault: no Kubernetes Secret of the base's placeholders.
    assert!(production.all("Secret").is_empty());
    assert!(base.all("Secret").iter().all(|s| {
        s["data"].as_object().unwrap().values().all(|v| {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
            String::from_utf8(text).unwrap().contains("REPLACE_ME")
        })
    }));
}

#[test]
fn production_pods_have_a_priority_class_of_their_own() {
    for r in renders().iter().filter(|r| r.dir != BASE) {
        let class =
            r.pod()["priorityClassName"].as_str().unwrap_or_else(|| panic!("{}: priorityClassName", r.dir));
        let pc = r.named("PriorityClass", class);
        assert!(pc["metadata"].get("namespace").is_none(), "{}: a PriorityClass has no namespace", r.dir);
        let value = pc["value"].as_i64().unwrap();
        // Above ordinary pods (0), below the system-* classes (2000000000 and up), and no
        // default for every pod of the cluster.
        assert!((1..1_000_000_000).contains(&value), "{}: {value}", r.dir);
        assert_eq!(pc["globalDefault"], false);
    }
}

#[test]
fn readmes_own_overlay_replaces_the_placeholder_key_from_an_untracked_file() {
    // deploy/kubernetes/README.md's `local/` overlay, as written there, beside a copy of the base.
    let readme = std::fs::read_to_string(repo().join("deploy/kubernetes/README.md")).unwrap();
    let start = "cat > deploy/kubernetes/local/kustomization.yaml <<'END'\n";
    let at = readme.find(start).expect("the local overlay in deploy/kubernetes/README.md") + start.len();
    let kustomization = &readme[at..at + readme[at..].find("\nEND\n").unwrap()];
    let gitignore = std::fs::read_to_string(repo().join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|l| l == "/deploy/kubernetes/local/"), "local/ is not in .gitignore");
    // Beside the base, as local/ would be (kustomize takes no absolute path); removed on drop.
    let dir =
        tempfile::Builder::new().prefix(".test-local-").tempdir_in(repo().join("deploy/kubernetes")).unwrap();
    let local = dir.path();
    std::fs::write(local.join("kustomization.yaml"), kustomization).unwrap();
    let key = "api_key = \"sk_test_from_an_untracked_file\"\n";
    std::fs::write(local.join("stripe.toml"), key).unwrap();
    let (ok, yaml, err) = run(
        Command::new("kubectl").args(["kustomize", local.to_str().unwrap()]),
        "",
        "kubectl (1.32, for `kubectl kustomize`)",
    );
    assert!(ok, "the README's overlay does not render:\n{err}");
    assert!(!yaml.contains("REPLACE_ME"), "the placeholder key is still there");
    let secret = yaml
        .split("\n---\n")
        .find(|d| d.contains("kind: Secret") && d.contains("name: keyward-stripe-"))
        .expect("the generated keyward-stripe Secret");
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    assert!(secret.contains(&encoded), "{secret}");
    // The Deployment mounts that Secret (its hash-suffixed name).
    let name = secret.lines().find_map(|l| l.trim().strip_prefix("name: keyward-stripe-")).unwrap();
    assert!(yaml.contains(&format!("secretName: keyward-stripe-{name}")), "the pods mount another Secret");
}

#[test]
fn shipped_configurations_pass_keyward_check_offline() {
    for r in renders() {
        let (text, _) = r.config();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["check", "--offline", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.lines().last().is_some_and(|l| l.starts_with("ok:")),
            "{}: keyward check --offline:\n{said}",
            r.dir
        );
        // A placeholder left in a shipped configuration is said, never passed over in silence.
        let zero = format!("sha256 = \"{}\"", "0".repeat(64));
        assert_eq!(text.contains(&zero), said.contains("all-zero placeholder"), "{}: {said}", r.dir);
        // The ConfigMap holds the directory's keyward.toml as it is.
        assert_eq!(text, std::fs::read_to_string(repo().join(r.config_dir).join("keyward.toml")).unwrap());
    }
}

#[test]
fn prometheus_operator_resources_are_well_formed() {
    for r in renders() {
        for d in r.docs.iter().filter(|d| d["apiVersion"] == MONITORING) {
            assert!(matches!(d["kind"].as_str(), Some("ServiceMonitor" | "PrometheusRule")), "{d}");
            only_keys(d, &["apiVersion", "kind", "metadata", "spec"]);
        }
        let svc = r.named("Service", "keyward");
        let sm = r.one("ServiceMonitor");
        only_keys(&sm["spec"], &["selector", "endpoints", "namespaceSelector", "jobLabel"]);
        assert!(selects(&sm["spec"]["selector"]["matchLabels"], &svc["metadata"]["labels"]));
        for e in arr(&sm["spec"]["endpoints"]) {
            only_keys(
                e,
                &["port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "honorLabels"],
            );
            assert_eq!(e["path"], "/metrics");
            assert!(arr(&svc["spec"]["ports"]).iter().any(|p| p["name"] == e["port"]), "{e}");
            for key in ["interval", "scrapeTimeout"] {
                assert!(is_duration(e[key].as_str().unwrap()), "{e}");
            }
        }
        let rules = r.one("PrometheusRule");
        only_keys(&rules["spec"], &["groups"]);
        let mut names = BTreeSet::new();
        for g in arr(&rules["spec"]["groups"]) {
            only_keys(g, &["name", "interval", "rules"]);
            assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()));
            for rule in arr(&g["rules"]) {
                only_keys(rule, &["alert", "expr", "for", "labels", "annotations"]);
                let alert = rule["alert"].as_str().unwrap();
                assert!(
                    alert.starts_with("Keyward") && names.insert(alert),
                    "{alert}: unique, named Keyward*"
                );
                assert!(rule.get("for").is_none_or(|f| is_duration(f.as_str().unwrap())), "{rule}");
                assert!(
                    matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")),
                    "{rule}"
                );
                for a in ["summary", "description"] {
                    assert!(rule["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{alert}: {a}");
                }
                let expr = rule["expr"].as_str().unwrap();
                promql(expr).unwrap_or_else(|e| panic!("{alert}: {e}: {expr}"));
            }
        }
    }
}

fn only_keys(v: &Value, allowed: &[&str]) {
    for k in v.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected key {k} in {v}");
    }
}

/// A Prometheus duration such as `30s`, `1m` or `1h30m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit = ["ms", "s", "m", "h", "d", "w", "y"].into_iter().find(|u| rest[digits..].starts_with(u));
        match (digits, unit) {
            (1.., Some(u)) => rest = &rest[digits + u.len()..],
            _ => return false,
        }
    }
    !s.is_empty()
}

/// A series selector of a PromQL expression: the metric and its label matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression names: its selectors, and the labels of its `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right` clauses. A small reader, enough for these rules:
/// it knows strings, ranges, numbers, functions and the grouping keywords.
fn promql(expr: &str) -> Result<(Vec<Selector>, Vec<String>), String> {
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Keywords, and the aggregations, which may put `by (…)` before their parenthesis.
    const KEYWORDS: [&str; 19] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    let s: Vec<char> = expr.chars().collect();
    let (mut i, mut selectors, mut grouping, mut depth) = (0, vec![], vec![], 0i32);
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == '_' || s[*i] == ':') {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    let skip_space = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    let string = |i: &mut usize| -> Result<String, String> {
        let quote = s[*i];
        let mut out = String::new();
        *i += 1;
        while *i < s.len() && s[*i] != quote {
            if s[*i] == '\\' {
                *i += 1;
            }
            out.extend(s.get(*i));
            *i += 1;
        }
        if *i >= s.len() {
            return Err("an unterminated string".into());
        }
        *i += 1;
        Ok(out)
    };
    while i < s.len() {
        let ch = s[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' {
            string(&mut i)?;
        } else if ch == '[' {
            let end = s[i..].iter().position(|c| *c == ']').ok_or("an unclosed [")?;
            let range: String = s[i + 1..i + end].iter().collect();
            if !is_duration(&range) {
                return Err(format!("not a range: [{range}]"));
            }
            i += end + 1;
        } else if ch.is_ascii_digit() || (ch == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let word = ident(&mut i);
            let mut j = i;
            skip_space(&mut j);
            let next = s.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let end = s[j..].iter().position(|c| *c == ')').ok_or("an unclosed (")?;
                    let labels: String = s[j + 1..j + end].iter().collect();
                    grouping
                        .extend(labels.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
                    i = j + end + 1;
                }
            } else if next == Some('(') || KEYWORDS.contains(&word.as_str()) {
                // A function or an aggregation (its parenthesis is counted below), or a keyword.
            } else {
                let mut matchers = vec![];
                if next == Some('{') {
                    i = j + 1;
                    loop {
                        skip_space(&mut i);
                        match s.get(i) {
                            Some('}') => break,
                            Some(',') => i += 1,
                            Some(_) => {
                                let label = ident(&mut i);
                                skip_space(&mut i);
                                let op: String = s[i..].iter().take_while(|c| "=!~".contains(**c)).collect();
                                if label.is_empty() || !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
                                    return Err(format!("a bad matcher in {word}{{…}}"));
                                }
                                i += op.len();
                                skip_space(&mut i);
                                let value = string(&mut i)?;
                                matchers.push((label, op, value));
                            }
                            None => return Err(format!("an unclosed {word}{{")),
                        }
                    }
                    i += 1;
                }
                selectors.push(Selector { name: word, matchers });
            }
        } else {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                '{' | '}' | ']' => return Err(format!("a stray {ch}")),
                _ => {}
            }
            if depth < 0 {
                return Err("a ) without its (".into());
            }
            i += 1;
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    if selectors.is_empty() {
        return Err("no metric".into());
    }
    Ok((selectors, grouping))
}

/// The samples of an exposition: metric name → the label sets seen.
fn samples(text: &str) -> HashMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: HashMap<String, Vec<BTreeMap<String, String>>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap();
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap()];
            let mut rest = body;
            while let Some((key, after)) = rest.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = after.len();
                while let Some((at, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = at;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').trim().to_string(), value);
                rest = &after[(end + 1).min(after.len())..];
            }
        }
        out.entry(line[..name_end].to_string()).or_default().push(labels);
    }
    out
}

const LIMITED: &str = "kw_k8s_limited_0123456789abcdefWXYZabcd";
const BATCH: &str = "kw_k8s_batch_0123456789abcdefWXYZabcdef";
const BUSY: &str = "kw_k8s_busy_0123456789abcdefWXYZabcdefg";

/// Metrics the kit's dashboard reads that keyward exposes only from their first sample, which
/// `exposed_metrics` does not provoke (a spend refusal), with the labels the queries expect of
/// them. `check_expr` fails once keyward exposes one, to say so.
const NOT_YET_EXPOSED: [(&str, &[&str]); 1] = [("keyward_spend_refused_total", &["service"])];

/// Labels Prometheus adds to every series it scrapes through the ServiceMonitor (the
/// ServiceMonitor drops its `service`, which is keyward's own).
const TARGET_LABELS: [&str; 6] = ["namespace", "pod", "instance", "job", "container", "endpoint"];

/// What a keyward's /metrics holds: metric name → the label sets seen.
type Exposed = HashMap<String, Vec<BTreeMap<String, String>>>;

/// keyward with the base's [ratelimit] (its Redis replaced by one of the test's, its budget
/// made small enough to spend), forward mode, and services whose calls make every series the
/// alerts and the dashboard read appear (each labelled series exists only from its first
/// sample): its /metrics.
async fn exposed_metrics() -> Exposed {
    let [base, ..] = renders() else { unreachable!() };
    let (_, config) = base.config();
    let redis = Redis::start();
    let mut ratelimit = config["ratelimit"].as_table().expect("[ratelimit]").clone();
    assert!(ratelimit["redis"].as_str().unwrap().starts_with("redis://"));
    ratelimit.insert("redis".into(), redis.url().into());
    ratelimit.insert("upstream_rate".into(), "10/m".into());
    ratelimit.insert("timeout".into(), "2s".into());
    let top =
        toml::to_string(&toml::Table::from_iter([("ratelimit".to_string(), ratelimit.into())])).unwrap();
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let kw = Harness::new()
        .top(&top)
        .forward("")
        .service(
            Svc::new("limited")
                .token_with("limited-1", LIMITED, &format!("expires = {expires:?}"))
                .scope("charge", "read")
                .extra("rate = \"1/m\"\nburst = 1"),
        )
        .service(
            Svc::new("batch").token("batch-1", BATCH).scope("charge", "read").extra("priority = \"batch\""),
        )
        .service(
            Svc::new("busy")
                .token("busy-1", BUSY)
                .scope("charge", "read")
                .scope("quote", "read")
                .extra("concurrency = 1"),
        )
        .start()
        .await;

    assert_eq!(kw.get("/v1/charges", LIMITED).await.status, 200);
    assert_eq!(kw.get("/v1/charges", LIMITED).await.status, 429, "rate_limited");
    assert_eq!(kw.post("/v1/customers", LIMITED, "name=x").await.status, 403, "deny");
    let r = kw.get("/v1/quotes/qt_1/pdf", BUSY).await;
    assert_eq!((r.status, r.error_code()), (502, "upstream_not_configured".to_string()));
    let mut slow = req("GET", "/v1/charges", BUSY, "");
    slow.headers_mut().insert("x-test-delay-ms", "800".parse().unwrap());
    let first = tokio::spawn({
        let (addr, tls) = (kw.addr(), kw.client.clone());
        async move { send(addr, tls, "127.0.0.1".parse().unwrap(), slow).await }
    });
    assert!(eventually(|| async { kw.metric("keyward_requests_in_flight").await == 1.0 }).await);
    assert_eq!(kw.get("/v1/charges", BUSY).await.status, 429, "concurrency_limited");
    assert_eq!(first.await.unwrap().status, 200);
    let mut budget_spent = false;
    for _ in 0..12 {
        if kw.get("/v1/charges", BATCH).await.status == 429 {
            budget_spent = true;
            break;
        }
    }
    assert!(budget_spent, "budget_limited");
    assert_eq!(kw.admin_reload().await.0, 200);
    let good = kw.config_text();
    std::fs::write(&kw.config_path, "[server\n").unwrap();
    assert_eq!(kw.admin_reload().await.0, 422, "a refused reload");
    std::fs::write(&kw.config_path, good).unwrap();
    // A CONNECT keyward refuses: keyward_connects_total gets its `outcome`.
    let mut tcp = tokio::net::TcpStream::connect(kw.forward_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![];
    let read = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer);
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 403"), "{}", String::from_utf8_lossy(&answer));

    let (status, body) = kw.admin_raw("GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    drop(redis);
    samples(std::str::from_utf8(&body).unwrap())
}

/// Check that each metric and label `expr` names is one keyward exposes (or one of
/// NOT_YET_EXPOSED), with each label value an equality names among those keyward has sent;
/// add the keyward metrics it reads to `checked`.
fn check_expr(what: &str, expr: &str, exposed: &Exposed, checked: &mut BTreeSet<String>) {
    let (selectors, grouping) = promql(expr).unwrap_or_else(|e| panic!("{what}: {e}: {expr}"));
    let mut labels: BTreeSet<&str> = TARGET_LABELS.into();
    for sel in &selectors {
        if !sel.name.starts_with("keyward_") {
            // Prometheus' own series of each target.
            assert_eq!(sel.name, "up", "{what}: {} is not keyward's", sel.name);
            continue;
        }
        checked.insert(sel.name.clone());
        let coming = NOT_YET_EXPOSED.iter().find(|(name, _)| *name == sel.name);
        let Some(series) = exposed.get(&sel.name) else {
            let (_, coming) = coming.unwrap_or_else(|| {
                let mut names: Vec<_> = exposed.keys().collect();
                names.sort();
                panic!("{what}: keyward exposes no {} (it has {names:?})", sel.name)
            });
            labels.extend(coming.iter());
            for (label, ..) in sel.matchers.iter().filter(|m| !TARGET_LABELS.contains(&m.0.as_str())) {
                assert!(coming.contains(&label.as_str()), "{what}: {} has no label {label}", sel.name);
            }
            continue;
        };
        assert!(coming.is_none(), "{what}: keyward exposes {} now: remove it from NOT_YET_EXPOSED", sel.name);
        labels.extend(series.iter().flat_map(|l| l.keys().map(String::as_str)));
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let values: BTreeSet<&str> =
                series.iter().filter_map(|l| l.get(label).map(String::as_str)).collect();
            assert!(!values.is_empty(), "{what}: {} has no label {label}", sel.name);
            // Each value an equality or a plain alternation names, keyward has sent.
            let plain = value
                .split('|')
                .all(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if (op == "=" || op == "=~") && plain {
                for v in value.split('|') {
                    assert!(
                        values.contains(v),
                        "{what}: {}{{{label}}} is never {v:?} (seen {values:?})",
                        sel.name
                    );
                }
            }
        }
    }
    for g in &grouping {
        assert!(labels.contains(g.as_str()), "{what}: grouping by {g}, which no series of it has");
    }
}

#[tokio::test]
async fn every_alert_names_only_metrics_and_labels_keyward_exposes() {
    let exposed = exposed_metrics().await;
    let rules = renders()[0].one("PrometheusRule");
    let mut checked = BTreeSet::new();
    for rule in arr(&rules["spec"]["groups"]).iter().flat_map(|g| arr(&g["rules"])) {
        let (alert, expr) = (rule["alert"].as_str().unwrap(), rule["expr"].as_str().unwrap());
        check_expr(alert, expr, &exposed, &mut checked);
    }
    for name in [
        "keyward_audit_healthy",
        "keyward_secret_stale",
        "keyward_token_expiry_seconds",
        "keyward_reloads_total",
        "keyward_requests_total",
        "keyward_upstream_errors_total",
        "keyward_ratelimit_store_up",
        "keyward_audit_unrecorded_total",
        "keyward_audit_checkpoint_publish_errors_total",
        "keyward_tokens_quarantined_total",
        "keyward_tokens_suspended",
        "keyward_added_latency_seconds_bucket",
        "keyward_forward_ca_expiry_timestamp_seconds",
    ] {
        assert!(checked.contains(name), "no alert reads {name}");
    }
    let absent = arr(&rules["spec"]["groups"])
        .iter()
        .flat_map(|g| arr(&g["rules"]))
        .any(|r| r["expr"].as_str().unwrap().replace(' ', "") == "absent(up{job=\"keyward\"})");
    assert!(absent, "an alert for keyward's targets all gone");
    // The ServiceMonitor sets no jobLabel: Prometheus' job is the name of the Service it selects.
    let sm = renders()[0].one("ServiceMonitor");
    assert!(sm["spec"].get("jobLabel").is_none());
    let services: Vec<&Value> = renders()[0]
        .all("Service")
        .into_iter()
        .filter(|s| selects(&sm["spec"]["selector"]["matchLabels"], &s["metadata"]["labels"]))
        .collect();
    assert!(services.len() == 1 && services[0]["metadata"]["name"] == "keyward", "job=\"keyward\"");
}
