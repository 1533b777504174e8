//! Push and pull through a real `docker-registry` on 127.0.0.1: a regular image pushed with
//! skopeo is converted registry → registry, then inspected, checked and unpacked from the
//! registry; a chunk-dictionary conversion into another repository copies the shared blob.

mod common;

use std::process::{Command, Stdio};

use common::*;
use shoal_testkit::{Registry, RegistryAuth};

/// A registry on loopback, or `None` (the test skips) when docker-registry is not installed.
fn start_registry(dir: &std::path::Path) -> Option<(Registry, String)> {
    if !Registry::installed() {
        eprintln!("SKIP: docker-registry is not installed");
        return None;
    }
    let registry = Registry::start_in(dir, RegistryAuth::Open);
    let addr = registry.addr.clone();
    Some((registry, addr))
}

#[test]
fn registry_push_pull_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_registry, addr)) = start_registry(tmp.path()) else {
        return;
    };
    let files: Vec<E> = (0..20u64)
        .map(|i| {
            E::File(
                format!("opt/f{i}"),
                0o644,
                prng_bytes(i, 50_000 + (i as usize) * 40_000, i % 2 == 0),
            )
        })
        .chain([
            E::Symlink("opt/link", "f1"),
            E::Hardlink("opt/hl", "opt/f2"),
        ])
        .collect();
    let img = tmp.path().join("img");
    write_oci_image(
        &img,
        "t",
        &[
            (layer_tar(&files, 1), Comp::Gzip),
            (layer_tar(&[E::Whiteout("opt/.wh.f3")], 1), Comp::Gzip),
        ],
    );

    // Reference conversion from the layout.
    let local = tmp.path().join("local");
    run_ok(&[
        "convert",
        "-q",
        &format!("oci:{}:t", img.display()),
        &format!("oci:{}:t", local.display()),
    ]);
    let local_unpacked = tmp.path().join("u0");
    run_ok(&[
        "unpack",
        &format!("oci:{}:t", local.display()),
        local_unpacked.to_str().unwrap(),
    ]);

    let insecure = ["--insecure-registry", addr.as_str()];
    let src_ref = format!("{addr}/plain/img:t");
    let lz_ref = format!("{addr}/lazy/img:lz");
    if have("skopeo") {
        let st = Command::new("skopeo")
            .args([
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:t", img.display()),
                &format!("docker://{src_ref}"),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "skopeo push failed");
        // Registry → registry.
        let mut args = vec!["convert", "-q", src_ref.as_str(), lz_ref.as_str()];
        args.extend_from_slice(&insecure);
        run_ok(&args);
    } else {
        eprintln!("skopeo missing: pushing the converted layout instead");
        let mut args = vec!["convert", "-q"];
        let s = format!("oci:{}:t", img.display());
        args.push(&s);
        args.push(&lz_ref);
        args.extend_from_slice(&insecure);
        run_ok(&args);
    }
    let with = |cmd: &[&str]| {
        let mut v: Vec<&str> = cmd.to_vec();
        v.extend_from_slice(&insecure);
        run(&v)
    };
    assert!(with(&["check", &lz_ref]).status.success());
    let inspect = with(&["inspect", &lz_ref]);
    assert!(inspect.status.success());
    let from_registry = tmp.path().join("u1");
    assert!(with(&["unpack", &lz_ref, from_registry.to_str().unwrap()])
        .status
        .success());
    assert_same_tree(&snapshot(&local_unpacked), &snapshot(&from_registry));

    // The manifest is a runnable OCI image whose layers carry lazyfs media types, and the
    // registry accepted it as such.
    let manifest = |tag: &str| -> serde_json::Value {
        reqwest::blocking::Client::new()
            .get(format!("http://{addr}/v2/lazy/img/manifests/{tag}"))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let m = manifest("lz");
    assert!(m.get("artifactType").is_none(), "{m}");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.shoal.lazyfs.index.v1+zstd"
    );
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.shoal.lazyfs.data.v1"
    );
    assert_eq!(
        m["layers"][1]["annotations"]["containerd.io/snapshot/shoal.lazyfs.role"],
        "data"
    );

    // The artifact form through the same registry: Shoal media types, read back the same.
    let art_ref = format!("{addr}/lazy/img:art");
    let s = format!("oci:{}:t", img.display());
    let mut args = vec!["convert", "-q", "--artifact", s.as_str(), art_ref.as_str()];
    args.extend_from_slice(&insecure);
    run_ok(&args);
    let m = manifest("art");
    assert_eq!(m["artifactType"], "application/vnd.shoal.lazyfs.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.shoal.lazyfs.config.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.shoal.lazyfs.index.v1+zstd"
    );
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.shoal.lazyfs.data.v1"
    );
    assert!(with(&["check", &art_ref]).status.success());
    let from_artifact = tmp.path().join("u2");
    assert!(with(&["unpack", &art_ref, from_artifact.to_str().unwrap()])
        .status
        .success());
    assert_same_tree(&snapshot(&local_unpacked), &snapshot(&from_artifact));

    // Dictionary in the registry, destination in another repository: the dictionary's data
    // blob must be copied there, and the result must check.
    let other = format!("{addr}/other/img:v2");
    let mut args = vec!["convert", "-q", "--chunk-dict", lz_ref.as_str()];
    let s = format!("oci:{}:t", img.display());
    args.push(&s);
    args.push(&other);
    args.extend_from_slice(&insecure);
    let out = run(&args);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(" 0 new chunks"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(with(&["check", &other]).status.success());

    // Plain http is refused unless the host is declared insecure.
    let out = run(&["inspect", &lz_ref]);
    assert!(!out.status.success());
}
