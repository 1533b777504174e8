//! The peer's containerd wiring as the chart renders it, run with the real `shoal-peer`: the
//! hosts.toml step writes `_default` when `containerd.mirrorAllRegistries` is on, and the
//! `containerd-check` init container fails naming the fix when containerd's config does not
//! read the hosts directory (or, with `containerd.patchConfig`, adds it).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::support::bin;

/// The named init container's command, or None.
pub fn init_command(spec: &Value, name: &str) -> Option<Vec<String>> {
    spec["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| {
            c["command"]
                .as_array()
                .expect("init container command")
                .iter()
                .map(|v| v.as_str().expect("string argument").to_owned())
                .collect()
        })
}

/// Runs the check's rendered command with `--config` pointing at `config` (written first
/// with `text`), as the init container would on a node with that config.
fn run_check(command: &[String], config: &Path, text: &str) -> Output {
    std::fs::write(config, text).unwrap();
    let mut args = command[1..].to_vec();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .expect("the check passes --config")
        + 1;
    args[at] = config.display().to_string();
    Command::new(bin("shoal-peer"))
        .args(&args)
        .output()
        .expect("run shoal-peer containerd-check")
}

/// The check container of a rendered peer DaemonSet: mounts, and behaviour on configs
/// without and with `config_path`. `patch`: whether the variant sets `containerd.patchConfig`.
pub fn check_containerd_check(spec: &Value, patch: bool, tmp: &Path) {
    let cmd = init_command(spec, "containerd-check").expect("containerd-check init container");
    assert_eq!(&cmd[..2], ["shoal-peer", "containerd-check"], "{cmd:?}");
    assert_eq!(cmd.contains(&"--patch".to_owned()), patch, "{cmd:?}");
    let certs = &cmd[cmd
        .iter()
        .position(|a| a == "--certs-dir")
        .expect("--certs-dir")
        + 1];
    assert_eq!(certs, "/etc/containerd/certs.d");
    let config_arg = &cmd[cmd.iter().position(|a| a == "--config").unwrap() + 1];
    let check = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "containerd-check")
        .unwrap();
    let mount = check["volumeMounts"][0].clone();
    assert!(
        config_arg.starts_with(mount["mountPath"].as_str().unwrap()),
        "--config {config_arg} is not under the mounted {mount}"
    );
    assert_eq!(mount["readOnly"], !patch, "{mount}");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the check's volume");
    assert_eq!(volume["hostPath"]["path"], "/etc/containerd");
    assert_eq!(check["terminationMessagePolicy"], "FallbackToLogsOnError");

    let config = tmp.join(format!("config-{patch}.toml"));
    let missing = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"\n";
    let o = run_check(&cmd, &config, missing);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    if patch {
        assert!(o.status.success(), "{stderr}");
        assert!(stdout.contains("RESTART CONTAINERD"), "{stdout}");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.contains("config_path = \"/etc/containerd/certs.d\""),
            "{text}"
        );
    } else {
        assert!(!o.status.success(), "a config without config_path passes");
        assert!(
            stderr.contains(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\""
            ),
            "the failure does not name the fix:\n{stderr}"
        );
    }
    let good = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
                config_path = \"/etc/containerd/certs.d\"\n";
    let o = run_check(&cmd, &config, good);
    assert!(
        o.status.success(),
        "a config with config_path fails: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `_default/hosts.toml` written by the rendered hosts.toml step, into `certs`.
pub fn check_default_written(certs: &Path) {
    let text = std::fs::read_to_string(certs.join("_default/hosts.toml"))
        .expect("mirrorAllRegistries writes _default/hosts.toml");
    assert!(!text.contains("server"), "{text}");
    assert!(text.contains("[host.\"http://127.0.0.1:65001\"]"), "{text}");
}
