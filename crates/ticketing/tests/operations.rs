//! What an operator gets in the box: the Prometheus alert rules are valid and fire on the
//! series that mean trouble (`promtool`, from Debian's `prometheus` package: run
//! `eval "$(scripts/ops-deps)"`), the Grafana dashboard is valid JSON, and every ticketing
//! Deployment is scraped on the metrics port its settings open.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool() -> String {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let found = Command::new(&promtool).arg("--version").output().is_ok_and(|output| output.status.success());
    assert!(found, "promtool not found (PROMTOOL={promtool}): run `eval \"$(scripts/ops-deps)\"` first");
    promtool
}

fn run_promtool(args: &[&str]) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid() {
    let text = run_promtool(&["check", "rules", "alerts.yaml"]);
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
}

#[test]
fn each_alert_fires_on_trouble_and_only_there() {
    let text = run_promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_dashboard_is_grafana_json_with_a_panel_per_alert() {
    let path = root().join("deploy/grafana/ticketing.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard file")).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets"))
        .map(|target| target["expr"].as_str().expect("expr"))
        .collect();
    for series in [
        "payments_refund_owed_oldest_age_seconds",
        "consumer_lag_seconds",
        "parked_events",
        "outbox_oldest_age_seconds",
        "expiration_timer_lateness_seconds_bucket",
    ] {
        assert!(exprs.iter().any(|expr| expr.contains(series)), "no panel shows {series}");
    }
}

#[test]
fn every_ticketing_deployment_is_scraped_on_the_metrics_port() {
    let config = std::fs::read_to_string(root().join("deploy/k8s/config.env")).expect("config.env");
    assert!(config.lines().any(|line| line == "METRICS_ADDR=0.0.0.0:9100"), "config.env sets METRICS_ADDR");
    for service in ["auth", "tickets", "orders", "expiration", "payments", "web"] {
        let manifest = std::fs::read_to_string(root().join(format!("deploy/k8s/{service}.yaml"))).expect("manifest");
        for needle in [
            "prometheus.io/scrape: \"true\"",
            "prometheus.io/port: \"9100\"",
            "prometheus.io/path: /metrics",
            "- name: metrics\n              containerPort: 9100",
        ] {
            assert!(manifest.contains(needle), "{service}.yaml lacks {needle}");
        }
    }
}
