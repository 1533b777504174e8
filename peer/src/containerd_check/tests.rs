//! The check against configs as containerd 1.6/1.7 (version 2), 1.x (version 1) and 2.x
//! (version 3) write them: present, missing, another directory, malformed.

use super::*;

const CERTS: &str = "/etc/containerd/certs.d";

fn run(text: Option<&str>, patch: bool) -> (Result<Verdict>, Option<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    if let Some(t) = text {
        std::fs::write(&config, t).unwrap();
    }
    let r = check(&CheckOptions {
        config: config.clone(),
        certs_dir: CERTS.into(),
        patch,
    });
    let after = std::fs::read_to_string(&config).ok();
    (r, after, dir)
}

fn err(text: Option<&str>) -> String {
    match run(text, false).0 {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected a failure for {text:?}, got {v:?}"),
    }
}

const V2_SET: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
                      config_path = \"/etc/containerd/certs.d\"\n";

#[test]
fn present_in_each_version() {
    let (r, _, _) = run(Some(V2_SET), false);
    assert_eq!(
        r.unwrap(),
        Verdict::Configured {
            config_path: CERTS.into()
        }
    );
    let v1 = "[plugins.cri.registry]\nconfig_path = \"/etc/containerd/certs.d/\"\n";
    assert!(run(Some(v1), false).0.is_ok(), "version 1, trailing slash");
    let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n\
              config_path = '/opt/x:/etc/containerd/certs.d'\n";
    assert!(run(Some(v3), false).0.is_ok(), "version 3, a list");
    // containerd 2.x's default lists the directory.
    assert!(run(Some("version = 3\n"), false).0.is_ok());
}

#[test]
fn missing_fails_naming_the_fix_and_leaves_the_file() {
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"\n";
    let (r, after, _) = run(Some(text), false);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("sets no registry config_path"), "{e}");
    assert!(
        e.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\""),
        "{e}"
    );
    assert!(e.contains("restart containerd"), "{e}");
    assert_eq!(
        after.as_deref(),
        Some(text),
        "a check without --patch writes nothing"
    );
    // No file at all: containerd 1.x runs on defaults without config_path.
    let e = err(None);
    assert!(e.contains("does not exist"), "{e}");
    // Version 1 names its own section.
    let e = err(Some("[plugins.cri]\n"));
    assert!(e.contains("[plugins.cri.registry]"), "{e}");
}

#[test]
fn another_directory_fails_and_the_fix_keeps_it() {
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
                config_path = \"/etc/docker/certs.d\"\n";
    let e = err(Some(text));
    assert!(
        e.contains("does not include /etc/containerd/certs.d"),
        "{e}"
    );
    assert!(
        e.contains("config_path = \"/etc/docker/certs.d:/etc/containerd/certs.d\""),
        "{e}"
    );
    // A directory that merely starts with ours is another directory.
    let e = err(Some(
        &text.replace("/etc/docker/certs.d", "/etc/containerd/certs.d.old"),
    ));
    assert!(e.contains("does not include"), "{e}");
}

#[test]
fn malformed_configs_are_clear_errors() {
    for (text, want) in [
        ("version = 2\n[plugins\n", "not valid TOML"),
        ("version = \"2\"\n", "must be an integer"),
        ("version = 9\n", "version 9"),
        ("version = 2\nplugins = 3\n", "`plugins` must be a table"),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 1\n",
            "config_path must be a string",
        ),
        ("\u{0}\u{1}garbage", "not valid TOML"),
    ] {
        let e = err(Some(text));
        assert!(e.contains(want), "{text:?}: {e}");
    }
    let bad = check(&CheckOptions {
        config: "/nonexistent/config.toml".into(),
        certs_dir: "relative/dir".into(),
        patch: true,
    });
    assert!(bad.unwrap_err().to_string().contains("absolute path"));
}

#[test]
fn patch_adds_the_directory_keeps_the_rest_and_a_backup() {
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"\n\
                [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/docker/certs.d\"\n";
    let (r, after, dir) = run(Some(text), true);
    let wanted = "/etc/docker/certs.d:/etc/containerd/certs.d";
    assert_eq!(
        r.unwrap(),
        Verdict::Patched {
            config_path: wanted.into()
        }
    );
    let after = after.unwrap();
    let parsed: Table = after.parse().expect("the patched file is TOML");
    let cri = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["registry"]["config_path"].as_str(), Some(wanted));
    assert_eq!(cri["sandbox_image"].as_str(), Some("p"), "{after}");
    let backup = dir.path().join("config.toml.shoal-backup");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), text);
    // Patched once, the check now passes and changes nothing more.
    let again = check(&CheckOptions {
        config: dir.path().join("config.toml"),
        certs_dir: CERTS.into(),
        patch: true,
    });
    assert!(matches!(again, Ok(Verdict::Configured { .. })), "{again:?}");
    // No file: a version 2 file with just the setting.
    let (r, after, _) = run(None, true);
    assert!(matches!(r, Ok(Verdict::Patched { .. })));
    let parsed: Table = after.unwrap().parse().unwrap();
    assert_eq!(parsed["version"].as_integer(), Some(2));
    // registry.mirrors next to config_path is refused by containerd: not patched.
    let mirrors =
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n\
                   endpoint = [\"https://m\"]\n";
    let (r, after, _) = run(Some(mirrors), true);
    assert!(r.unwrap_err().to_string().contains("registry.mirrors"));
    assert_eq!(after.as_deref(), Some(mirrors));
}

#[test]
fn patch_waits_for_the_edit_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "version = 2\n").unwrap();
    let held = lock(&config).expect("lock");
    let opts = CheckOptions {
        config: config.clone(),
        certs_dir: CERTS.into(),
        patch: true,
    };
    let patcher = std::thread::spawn(move || check(&opts));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "version = 2\n",
        "patched while another edit held the lock"
    );
    drop(held);
    let r = patcher.join().expect("no panic");
    assert!(matches!(r, Ok(Verdict::Patched { .. })), "{r:?}");
}
