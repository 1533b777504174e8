//! `shoal-lazyfs mount` against a registry that requires basic auth (real `docker-registry`
//! with htpasswd), on the direct path a mount falls back to when the peer is down: with the
//! node's credentials (`SHOAL_REGISTRY_USERNAME`/`SHOAL_REGISTRY_PASSWORD`) the tree reads
//! back intact; without them, or with wrong ones, the mount refuses to start and says why
//! instead of serving a tree it cannot read.

mod common;
mod mount_support;

use std::fs;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use mount_support::fixture::can_mount;
use mount_support::*;

const USER: &str = "shoal";
const PASSWORD: &str = "s3cret-pass";

fn lazyfs(args: &[&str], creds: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-lazyfs"));
    cmd.args(args)
        .env_remove("SHOAL_REGISTRY_USERNAME")
        .env_remove("SHOAL_REGISTRY_PASSWORD");
    if let Some((u, p)) = creds {
        cmd.env("SHOAL_REGISTRY_USERNAME", u)
            .env("SHOAL_REGISTRY_PASSWORD", p);
    }
    cmd.output().expect("running shoal-lazyfs")
}

#[test]
fn basic_auth_registry_on_the_direct_path() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start_in(tmp.path(), RegistryAuth::htpasswd(USER, PASSWORD));
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    let big = prng_bytes(7, 700_000, true);
    fs::write(src.join("etc/hostname"), b"auth-test\n").unwrap();
    fs::write(src.join("big.bin"), &big).unwrap();
    let image = format!("{}/private/app:t", registry.addr);
    let convert = [
        "convert",
        "-q",
        &format!("dir:{}", src.display()),
        &image,
        "--insecure-registry",
        &registry.addr,
    ];
    let out = lazyfs(&convert, Some((USER, PASSWORD)));
    assert!(out.status.success(), "convert: {out:?}");

    // No peer: a dead port, so every request takes the registry fallback.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let common = [
        "--peer",
        &dead,
        "--insecure-registry",
        &registry.addr,
        "--prefetch",
        "none",
        "--timeout",
        "5s",
    ];

    // Without credentials, and with a wrong password: no mount, a clear error, the password
    // never echoed.
    for (name, creds) in [("none", None), ("wrong", Some((USER, "not-the-password")))] {
        let mp = tmp.path().join(format!("mnt-{name}"));
        fs::create_dir_all(&mp).unwrap();
        let mut args: Vec<String> = vec!["mount".into(), image.clone(), mp.display().to_string()];
        args.extend(common.iter().map(|a| a.to_string()));
        let out = within(Duration::from_secs(60), "refused mount", move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lazyfs(&args, creds)
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: mounted without access");
        assert!(
            stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
            "{name}: the error should say access was refused:\n{stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{stderr}");
        assert!(!is_mounted(&mp), "{name}: left a mount behind");
    }

    // With the node's credentials: the tree reads back intact over the direct path.
    let cache = tmp.path().join("cache");
    let mut extra = common.to_vec();
    extra.extend(["--cache-dir", cache.to_str().unwrap()]);
    let m = MountProc::start_env(
        tmp.path(),
        "mount-auth",
        &image,
        &tmp.path().join("mnt"),
        &extra,
        &[
            ("SHOAL_REGISTRY_USERNAME", USER),
            ("SHOAL_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    let mp = m.mp.clone();
    let (host, got) = within(Duration::from_secs(60), "authenticated reads", move || {
        (
            fs::read(mp.join("etc/hostname")).unwrap(),
            fs::read(mp.join("big.bin")).unwrap(),
        )
    });
    assert_eq!(host, b"auth-test\n");
    assert!(got == big, "big.bin differs");
    let scrape = m.scrape();
    assert!(
        metric_sum(
            &scrape,
            "shoal_lazyfs_fetch_bytes_total{source=\"registry\"}"
        ) > 0.0
    );
    assert!(
        !m.proc_.log_text().contains(PASSWORD),
        "password in the mount log"
    );
}
