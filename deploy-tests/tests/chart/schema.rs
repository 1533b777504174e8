//! Strict validation of rendered manifests against the Kubernetes API schemas, with the pip
//! package `kubernetes-validate` (installed by `.ci/run`): unknown fields, wrong types and
//! missing required fields fail. prometheus-operator's CRDs (ServiceMonitor, PrometheusRule)
//! have no schema there and are left out, with a printed note.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The Kubernetes version validated against: the oldest the chart supports.
const KUBERNETES: &str = "1.31.0";
/// API groups of custom resources the tool has no schema for.
const CRD_GROUPS: &[&str] = &["monitoring.coreos.com/"];

/// Validates every document of `out` (renderer output); `label` names the variant.
pub fn validate(out: &Value, label: &str, dir: &Path) {
    let probe = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED schema validation of {label}: `kubernetes-validate` is not installed \
             (pip install kubernetes-validate; .ci/run does)"
        );
        return;
    }
    let docs = out["documents"].as_array().expect("documents");
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let api = d["object"]["apiVersion"].as_str().unwrap_or("");
        if CRD_GROUPS.iter().any(|g| api.starts_with(g)) {
            eprintln!(
                "{label}: {} ({api}) not schema-checked: a CRD kubernetes-validate has no schema for",
                d["object"]["kind"]
            );
            continue;
        }
        let file = dir.join(format!("{}-{i}.yaml", label.replace(' ', "-")));
        std::fs::write(&file, d["text"].as_str().expect("document text")).unwrap();
        files.push(file);
    }
    assert!(!files.is_empty(), "{label}: nothing to validate");
    let o = Command::new("kubernetes-validate")
        .args(["-k", KUBERNETES, "--strict", "--no-warn"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !report.contains("ERROR"),
        "{label}: rendered manifests fail strict Kubernetes {KUBERNETES} schema validation:\n{report}"
    );
    // Every file was really checked (the tool names each valid one).
    for f in &files {
        let name = f.display().to_string();
        assert!(
            report.contains(&name),
            "{label}: {name} not reported:\n{report}"
        );
    }
}
