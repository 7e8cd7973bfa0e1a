//! The Helm chart and the alert rules, checked by the real tools: `helm lint --strict`
//! and `helm template` (helm 3, from the npm package pinned in tests/helm), every rendered
//! manifest validated by `kubernetes-validate --strict` (PyPI, in .venv) against its
//! newest Kubernetes, the production example's configuration by `intercom check-config`,
//! and the rules by `promtool check rules` and `promtool test rules` (Debian `prometheus`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::*;

fn chart() -> PathBuf {
    repo_root().join("helm/intercom")
}

fn production_values() -> PathBuf {
    chart().join("ci/production-values.yaml")
}

/// Runs a tool; its output, stdout and stderr together.
fn run(mut command: Command) -> (bool, String) {
    let shown = format!("{command:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (scripts/test deps installs it)"));
    let text = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    (status.success(), text)
}

fn helm(args: &[&str]) -> (bool, String) {
    let mut command = Command::new(repo_root().join("tests/helm/bin/helm"));
    // No repositories, no plugins, no cache outside the test's reach.
    let home = tempfile::tempdir().unwrap();
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    run(command)
}

/// `helm template` of the chart as release `release` with `args`; the manifests.
fn render(release: &str, args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec!["template", release, chart.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, text) = helm(&all);
    assert!(ok, "helm template {args:?}:\n{text}");
    text
}

/// The YAML documents of `text` as JSON (PyYAML from .venv, which kubernetes-validate
/// brings).
fn documents(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(repo_root().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn kubernetes_validate(file: &Path) -> String {
    let mut command = Command::new(repo_root().join(".venv/bin/kubernetes-validate"));
    command.arg("--strict").arg(file);
    let (ok, text) = run(command);
    assert!(ok, "kubernetes-validate --strict:\n{text}");
    assert!(!text.contains("ERROR"), "{text}");
    text
}

#[test]
fn the_chart_lints_strictly_and_renders_manifests_kubernetes_accepts() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let production = production_values();
    for args in [vec![], vec!["-f", production.to_str().unwrap()]] {
        let mut all = vec!["lint", "--strict", chart];
        all.extend_from_slice(&args);
        let (ok, text) = helm(&all);
        assert!(ok, "helm lint --strict {args:?}:\n{text}");
        assert!(text.contains("0 chart(s) failed"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("default", vec![]),
        ("production", vec!["-f", production.to_str().unwrap()]),
    ] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, render("intercom", &args)).unwrap();
        let report = kubernetes_validate(&file);
        // Every built-in kind was checked against a schema (the operator's CRDs have none
        // there: they are checked below).
        for kind in ["deployment", "service", "configmap", "networkpolicy"] {
            assert!(
                report.contains(&format!("passed for resource {kind}/")),
                "{name}: {report}"
            );
        }
        eprintln!("kubernetes-validate {name}:\n{report}");
    }
}

#[test]
fn the_default_values_render_a_hardened_deployment_named_once() {
    let docs = documents(&render("intercom", &[]));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    for absent in [
        "HorizontalPodAutoscaler",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(!kinds.contains(&absent), "{absent} is off by default");
    }
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(
        deployment["metadata"]["name"], "intercom",
        "not intercom-intercom"
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert_eq!(pod["terminationGracePeriodSeconds"], 45);

    // The admin port is open only to the monitoring namespace; the public port to all.
    let policy = &of_kind(&docs, "NetworkPolicy")[0]["spec"]["ingress"];
    assert_eq!(policy[0]["ports"][0]["port"], "http");
    assert!(policy[0].get("from").is_none());
    assert_eq!(policy[1]["ports"][0]["port"], "admin");
    assert_eq!(
        policy[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );

    // Another release name is prefixed; a changed configuration changes the checksum
    // that rolls the pods.
    let other = documents(&render("payments", &["--set", "config=[server]"]));
    let moved = of_kind(&other, "Deployment")[0];
    assert_eq!(moved["metadata"]["name"], "payments-intercom");
    let checksum = |d: &serde_json::Value| {
        d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert_ne!(checksum(moved), checksum(deployment));

    // With hot reload, the directory is mounted (the kubelet updates it) and a changed
    // configuration rolls nothing.
    let reloading = documents(&render("intercom", &["--set", "configReload.enabled=true"]));
    let pod = &of_kind(&reloading, "Deployment")[0]["spec"]["template"];
    assert!(checksum(of_kind(&reloading, "Deployment")[0]).is_null());
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/intercom");
    assert!(mount.get("subPath").is_none());
}

#[test]
fn the_production_example_renders_autoscaling_tls_and_the_operators_objects() {
    let docs = documents(&render(
        "intercom",
        &["-f", production_values().to_str().unwrap()],
    ));
    let deployment = of_kind(&docs, "Deployment")[0];
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count"
    );
    let hpa = of_kind(&docs, "HorizontalPodAutoscaler")[0];
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "intercom");
    let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    let paths: Vec<&str> = mounts
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/var/run/secrets/intercom/tls"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/var/run/secrets/intercom/approle"),
        "{paths:?}"
    );
    let ingress = of_kind(&docs, "Ingress")[0];
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http",
        "never the admin port"
    );
    let monitor = of_kind(&docs, "ServiceMonitor")[0];
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    // The ServiceMonitor selects the admin Service, and only it.
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let selected: Vec<&serde_json::Value> = of_kind(&docs, "Service")
        .into_iter()
        .filter(|s| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0]["metadata"]["name"], "intercom-admin");

    // The example's configuration is one Intercom accepts.
    let config = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "intercom")
        .unwrap()["data"]["intercom.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intercom.toml");
    std::fs::write(&file, config).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_intercom"));
    check
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env_remove("INTERCOM_ENV");
    let (ok, text) = run(check);
    assert!(
        ok,
        "intercom check-config on the production example:\n{text}"
    );
    assert!(text.contains("configuration is valid (1 routes)"), "{text}");
}

#[test]
fn a_wrong_value_fails_the_lint() {
    let chart = chart();
    for wrong in [
        "replicaCount=0",
        "image.pullPolicy=Sometimes",
        "servce.port=80",
        "networkPolicy.monitoringNamespace=",
        "serviceMonitor.interval=often",
    ] {
        let (ok, text) = helm(&["lint", "--strict", chart.to_str().unwrap(), "--set", wrong]);
        assert!(!ok, "{wrong} passed the lint:\n{text}");
        assert!(
            text.contains("values don't meet the specifications of the schema"),
            "{wrong}: {text}"
        );
    }
}

fn promtool(args: &[&str]) -> String {
    let mut command = Command::new("promtool");
    command.args(args);
    let (ok, text) = run(command);
    assert!(ok, "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = chart().join("alerts/intercom.rules.yaml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    eprintln!("promtool check rules:\n{checked}");
    let tests = repo_root().join("tests/alerts/intercom.test.yaml");
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    eprintln!("promtool test rules:\n{tested}");

    // What the PrometheusRule ships is those rules, unchanged.
    let docs = documents(&render(
        "intercom",
        &["-f", production_values().to_str().unwrap()],
    ));
    let shipped = &of_kind(&docs, "PrometheusRule")[0]["spec"];
    let file = documents(&std::fs::read_to_string(&rules).unwrap());
    assert_eq!(shipped, &file[0]);
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool checks PromQL in rules files: each panel's queries become recording rules.
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_queries(&dashboard).iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
}

pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(chart().join("dashboards/intercom.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every query of every panel.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(queries.len() > 20, "{}", queries.len());
    queries
}

/// The metric names in `text` (a histogram's `_bucket` named by its base name).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("intercom_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        names.insert(name.to_string());
        i = end;
    }
    names
}

/// The alert rules' text.
pub fn alert_rules() -> String {
    std::fs::read_to_string(chart().join("alerts/intercom.rules.yaml")).unwrap()
}
