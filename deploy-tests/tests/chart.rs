//! The Helm chart renders with a real Go template engine (a small renderer built from
//! `deploy-tests/render/main.go` with Debian's Go, sprig and yaml.v3), with its defaults and with
//! every option on; every document is YAML with apiVersion, kind and metadata.name; the rendered
//! peer and supernode configs load with the binaries' own `check-config`; every variant
//! passes strict Kubernetes schema validation ([`schema`]), and the containerd wiring init
//! containers run with the real binary ([`wiring`]).

#[path = "chart/schema.rs"]
mod schema;
mod support;
#[path = "chart/wiring.rs"]
mod wiring;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{bin, workspace_root};

const GOPATH: &str = "/usr/share/gocode";

/// Builds the renderer into `dir`; panics with what to install when Go is missing.
fn build_renderer(dir: &Path) -> PathBuf {
    let go_ok = Command::new("go")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        go_ok,
        "`go` is missing: install golang-go golang-github-masterminds-sprig-dev \
         golang-gopkg-yaml.v3-dev (see .ci/run)"
    );
    // GOPATH mode needs the package outside any module: copy the source into the temp dir.
    let src = dir.join("render");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(
        workspace_root().join("deploy-tests/render/main.go"),
        src.join("main.go"),
    )
    .unwrap();
    let out = dir.join("render-bin");
    let o = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .output()
        .expect("run go build");
    assert!(
        o.status.success(),
        "go build of the renderer failed (are golang-github-masterminds-sprig-dev and \
         golang-gopkg-yaml.v3-dev installed?):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn render(renderer: &Path, values: &[PathBuf]) -> Value {
    let o = Command::new(renderer)
        .arg(workspace_root().join("helm/shoal"))
        .arg("rel")
        .args(values)
        .output()
        .expect("run renderer");
    assert!(
        o.status.success(),
        "chart does not render with {values:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("renderer output is JSON")
}

fn docs(out: &Value) -> &Vec<Value> {
    out["documents"].as_array().expect("documents")
}

fn find<'a>(out: &'a Value, kind: &str, name_suffix: &str) -> Option<&'a Value> {
    docs(out).iter().map(|d| &d["object"]).find(|o| {
        o["kind"] == kind
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn kinds(out: &Value) -> Vec<String> {
    docs(out)
        .iter()
        .map(|d| d["object"]["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn check_documents(out: &Value, label: &str) {
    assert!(!docs(out).is_empty(), "{label}: nothing rendered");
    for d in docs(out) {
        let o = &d["object"];
        let src = &d["source"];
        for key in ["apiVersion", "kind"] {
            assert!(
                o[key].as_str().is_some_and(|s| !s.is_empty()),
                "{label}: {src} has no {key}:\n{}",
                d["text"].as_str().unwrap_or("")
            );
        }
        assert!(
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty() && s.len() <= 63),
            "{label}: {src} has no valid metadata.name:\n{}",
            d["text"].as_str().unwrap_or("")
        );
    }
    assert!(
        out["notes"].as_str().is_some_and(|n| n.contains("rel")),
        "{label}: NOTES.txt did not render"
    );
}

/// Writes the rendered config to a file and runs the binary's `check-config` on it.
fn check_config(dir: &Path, binary: &str, args: &[&str], file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let o = Command::new(bin(binary))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run check-config");
    assert!(
        o.status.success(),
        "{binary} check-config rejects the rendered {file}:\n{text}\n--- stderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn check_configs(out: &Value, dir: &Path) -> (String, String) {
    let cm = find(out, "ConfigMap", "-config").expect("config ConfigMap");
    let peer = cm["data"]["peer.toml"].as_str().expect("peer.toml");
    let sn = cm["data"]["supernode.toml"]
        .as_str()
        .expect("supernode.toml");
    let peer_out = check_config(dir, "shoal-peer", &["check-config"], "peer.toml", peer);
    let sn_out = check_config(
        dir,
        "shoal-supernode",
        &["check-config"],
        "supernode.toml",
        sn,
    );
    (peer.to_owned(), format!("{peer_out}\n{sn_out}"))
}

#[test]
fn chart_renders_defaults_and_all_options() {
    let tmp = tempfile::tempdir().unwrap();
    let renderer = build_renderer(tmp.path());

    // Defaults.
    let out = render(&renderer, &[]);
    check_documents(&out, "defaults");
    schema::validate(&out, "defaults", tmp.path());
    let k = kinds(&out);
    for want in ["Deployment", "Service", "DaemonSet", "ConfigMap"] {
        assert!(k.iter().any(|x| x == want), "defaults: no {want} in {k:?}");
    }
    assert!(!k
        .iter()
        .any(|x| x == "ServiceMonitor" || x == "PrometheusRule"));
    let (peer_toml, _) = check_configs(&out, tmp.path());
    assert!(
        peer_toml.contains(r#"supernodes = ["http://rel-supernode:8002"]"#),
        "{peer_toml}"
    );
    let svc = find(&out, "Service", "rel-supernode").expect("supernode Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8002);
    let dep = find(&out, "Deployment", "rel-supernode").expect("supernode Deployment");
    assert_eq!(dep["spec"]["replicas"], 1);

    let ds = find(&out, "DaemonSet", "-peer").expect("peer DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(spec["tolerations"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    let peer = &spec["containers"][0];
    assert_eq!(peer["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(peer["livenessProbe"]["httpGet"]["port"], 65003);
    assert_eq!(peer["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(peer["resources"]["limits"]["memory"].is_string());
    assert!(spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["hostPath"]["path"] == "/var/lib/shoal"));
    let init: Vec<&str> = spec["initContainers"][0]["command"]
        .as_array()
        .expect("containerd-config init container")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        &init[..4],
        ["shoal-peer", "containerd-config", "--registry", "docker.io"]
    );
    assert!(init
        .windows(2)
        .any(|w| w == ["--config-path", "/etc/containerd/certs.d"]));
    assert!(init.contains(&"--all-registries"), "{init:?}");
    assert_eq!(
        spec["initContainers"][0]["name"], "containerd-config",
        "hosts.toml are written before they are checked"
    );
    wiring::check_containerd_check(spec, false, tmp.path());
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_string());
    for c in spec["initContainers"].as_array().unwrap() {
        assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    }
    let pdb = find(&out, "PodDisruptionBudget", "rel-supernode").expect("supernode PDB");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"],
        "the PDB selects the supernode's pods"
    );
    assert!(dep["spec"]["template"]["spec"]["priorityClassName"].is_null());
    assert_eq!(
        spec["containers"].as_array().unwrap().len(),
        1,
        "lazyfs is off by default"
    );

    assert!(
        find(&out, "DaemonSet", "-snapshotter").is_none(),
        "the snapshotter is off by default"
    );

    let dash = find(&out, "ConfigMap", "-dashboard").expect("dashboard ConfigMap");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dash["data"]["shoal.json"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(json).expect("dashboard JSON in the ConfigMap");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));

    // Every option on.
    let all = workspace_root().join("deploy-tests/values-all.yaml");
    let out = render(&renderer, &[all]);
    check_documents(&out, "all options");
    schema::validate(&out, "all options", tmp.path());
    let pdb = find(&out, "PodDisruptionBudget", "rel-supernode").expect("supernode PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(pdb["spec"]["maxUnavailable"].is_null());
    let dep = find(&out, "Deployment", "rel-supernode").unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["priorityClassName"],
        "shoal-critical"
    );
    let k = kinds(&out);
    for want in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            k.iter().any(|x| x == want),
            "all options: no {want} in {k:?}"
        );
    }
    let (peer_toml, resolved) = check_configs(&out, tmp.path());
    assert!(peer_toml.contains("insecure_registries"), "{peer_toml}");
    assert!(
        resolved.contains("zone"),
        "labels reach the peer config:\n{resolved}"
    );
    let ds = find(&out, "DaemonSet", "-peer").expect("peer DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let lazyfs = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lazyfs")
        .expect("lazyfs container");
    assert_eq!(lazyfs["securityContext"]["privileged"], true);
    let mounts = lazyfs["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/dev/fuse"));
    assert!(mounts
        .iter()
        .any(|m| m["mountPropagation"] == "Bidirectional"));
    // Every flag the mount script passes exists in the real `shoal-lazyfs mount`.
    let script = lazyfs["command"][2].as_str().expect("lazyfs script");
    assert!(script.contains("shoal-lazyfs mount"), "{script}");
    let help = Command::new(bin("shoal-lazyfs"))
        .args(["mount", "--help"])
        .output()
        .expect("run shoal-lazyfs mount --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in script
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(['\\', '"']))
    {
        assert!(
            help.contains(flag),
            "the chart passes {flag}, which `shoal-lazyfs mount` does not know:\n{help}"
        );
    }
    assert!(script.contains("--insecure-registry"), "{script}");
    let init: Vec<&str> = spec["initContainers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        init.iter().filter(|a| **a == "--registry").count(),
        3,
        "{init:?}"
    );
    assert!(init.contains(&"--insecure"), "{init:?}");
    run_init_container(&init, tmp.path());
    wiring::check_containerd_check(spec, true, tmp.path());
    check_snapshotter(&out, tmp.path());
    let rule = find(&out, "PrometheusRule", "").unwrap();
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        alerts,
        [
            "ShoalPeerDown",
            "ShoalOriginShareHigh",
            "ShoalVerificationFailures"
        ]
    );
}

/// Runs the rendered init container's command with the real `shoal-peer`, writing into a temp
/// dir instead of the host's certs.d: the chart's flags are the binary's.
fn run_init_container(command: &[&str], tmp: &Path) {
    let certs = tmp.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    let mut args: Vec<String> = command[1..].iter().map(|s| s.to_string()).collect();
    let i = args
        .iter()
        .position(|a| a == "--config-path")
        .expect("--config-path");
    args[i + 1] = certs.display().to_string();
    let o = Command::new(bin("shoal-peer"))
        .args(&args)
        .output()
        .expect("run containerd-config");
    assert!(
        o.status.success(),
        "the chart's init container command fails: {args:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for host in ["docker.io", "ghcr.io", "registry.local:5000"] {
        let hosts = certs.join(host).join("hosts.toml");
        let text =
            std::fs::read_to_string(&hosts).unwrap_or_else(|e| panic!("{}: {e}", hosts.display()));
        assert!(text.contains("127.0.0.1:65001"), "{text}");
    }
    wiring::check_default_written(&certs);
}

/// Optional parts off: still valid, and what is off is absent.
#[test]
fn chart_renders_with_options_off() {
    let tmp = tempfile::tempdir().unwrap();
    let renderer = build_renderer(tmp.path());
    let minimal = workspace_root().join("deploy-tests/values-minimal.yaml");
    let out = render(&renderer, &[minimal]);
    check_documents(&out, "options off");
    schema::validate(&out, "options off", tmp.path());
    check_configs(&out, tmp.path());
    assert!(find(&out, "PodDisruptionBudget", "").is_none());
    let ds = find(&out, "DaemonSet", "-peer").expect("peer DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert!(spec["priorityClassName"].is_null(), "{spec}");
    assert!(spec["initContainers"].is_null(), "{spec}");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "OnDelete");
    assert!(!spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "containerd-certs"));
}

/// The snapshotter container passes only flags `shoal-lazyfs snapshotter` knows, can make FUSE
/// mounts that containerd on the host sees, and its init container, run for real on a copy
/// of a containerd config, wires the proxy plugin in.
fn check_snapshotter(out: &Value, tmp: &Path) {
    let ds = find(out, "DaemonSet", "-snapshotter").expect("snapshotter DaemonSet");
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"], "OnDelete",
        "a rolling update would end the lazy mounts running containers read through"
    );
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostNetwork"], true,
        "the peer's mirror is on 127.0.0.1"
    );
    let named = |list: &str, name: &str| -> Value {
        spec[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    let snap = named("containers", "snapshotter");
    assert_eq!(snap["securityContext"]["privileged"], true);
    let args: Vec<&str> = snap["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // A shell loop restarts a crashed snapshotter inside the container (the mounts live on).
    assert_eq!(&args[..2], ["/bin/sh", "-c"]);
    assert!(
        args[2].contains("shoal-lazyfs snapshotter \"$@\""),
        "{}",
        args[2]
    );
    assert_eq!(args[3], "snapshotter", "$0 of the script");
    let root = args[args.iter().position(|a| *a == "--root").unwrap() + 1];
    let mounts = snap["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == root && m["mountPropagation"] == "Bidirectional"),
        "the snapshot root must propagate to the host: {mounts:?}"
    );
    let help = Command::new(bin("shoal-lazyfs"))
        .args(["snapshotter", "--help"])
        .output()
        .expect("run shoal-lazyfs snapshotter --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args[4..].iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "the chart passes {flag}, which `shoal-lazyfs snapshotter` does not know:\n{help}"
        );
    }
    let init = named("initContainers", "containerd-config");
    let mut cmd: Vec<String> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let config = tmp.join("containerd-config.toml");
    std::fs::write(&config, "version = 2\n").unwrap();
    let at = cmd.iter().position(|a| a == "--config").unwrap() + 1;
    cmd[at] = config.display().to_string();
    let out = Command::new(bin("shoal-lazyfs"))
        .args(&cmd[1..])
        .output()
        .expect("run the snapshotter-config init container's command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("[proxy_plugins.shoal]") && written.contains("snapshotter = \"shoal\""),
        "{written}"
    );
}
