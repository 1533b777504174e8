//! Round trip: a hand-made multi-layer OCI image (whiteouts, an opaque directory, hardlinks
//! across layers, symlinks, xattrs, devices, a fifo, empty files, unicode names, a 110 MiB
//! file) → `convert` → `unpack` must equal what umoci's own layer application produces.

mod common;

use std::process::Command;

use common::*;

fn layers() -> Vec<(Vec<u8>, Comp)> {
    let l1 = vec![
        E::Dir("etc", 0o755),
        E::File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0::/root:/bin/sh\n".to_vec(),
        ),
        E::File("etc/gone".into(), 0o644, b"deleted later\n".to_vec()),
        E::FileX(
            "etc/shadow".into(),
            0o640,
            0,
            42,
            vec![],
            b"root:*:1::::::\n".to_vec(),
        ),
        E::Dir("usr", 0o755),
        E::Dir("usr/bin", 0o755),
        E::File("usr/bin/tool".into(), 0o755, prng_bytes(1, 300_000, true)),
        E::Hardlink("usr/bin/tool-link", "usr/bin/tool"),
        E::File("usr/bin/su".into(), 0o4755, b"#!/bin/sh\n".to_vec()),
        E::Dir("data", 0o700),
        E::File("data/empty".into(), 0o600, Vec::new()),
        E::File(
            "data/ünïcødé-名前 ✓.txt".into(),
            0o644,
            "grüße\n".as_bytes().to_vec(),
        ),
        E::FileX(
            "data/xattr.txt".into(),
            0o644,
            0,
            0,
            vec![("user.color", b"blue"), ("user.empty", b"")],
            b"has xattrs\n".to_vec(),
        ),
        E::Symlink("link", "usr/bin/tool"),
        E::Symlink("dangling", "/nonexistent/target"),
        E::Dir("dev", 0o755),
        E::CharDev("dev/null", 1, 3),
        E::Dir("run", 0o755),
        E::Fifo("run/fifo"),
        E::Dir("olddir", 0o755),
        E::File("olddir/a".into(), 0o644, b"a".to_vec()),
        E::Dir("opq", 0o755),
        E::File("opq/old1".into(), 0o644, b"old1".to_vec()),
        E::Dir("opq/sub", 0o755),
        E::File("opq/sub/x".into(), 0o644, b"x".to_vec()),
        E::File(
            format!("deep/{}/file", "d".repeat(120) + "/" + &"e".repeat(120)),
            0o644,
            b"long path".to_vec(),
        ),
    ];
    let l2 = vec![
        E::Dir("big", 0o755),
        E::File("big/huge.bin".into(), 0o644, prng_bytes(7, 110 << 20, true)),
        E::Whiteout("etc/.wh.gone"),
        E::Whiteout(".wh.olddir"),
        E::Dir("opq", 0o750),
        E::Opaque("opq"),
        E::File("opq/new".into(), 0o644, b"new".to_vec()),
        E::Hardlink("data/tool-hardlink2", "usr/bin/tool"),
        E::File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n".to_vec(),
        ),
        E::Dir("home", 0o755),
        E::FileX(
            "home/user/file".into(),
            0o600,
            1000,
            1000,
            vec![("user.owner", b"user")],
            prng_bytes(3, 70_000, false),
        ),
    ];
    let l3 = vec![
        E::FileX(
            "data/xattr2".into(),
            0o644,
            0,
            0,
            vec![("user.a", b"1"), ("user.b", b"\x00\x01binary")],
            Vec::new(),
        ),
        E::File("link".into(), 0o644, b"now a regular file".to_vec()),
        E::Whiteout("usr/bin/.wh.tool-link"),
        E::File("usr/bin/tool2".into(), 0o755, prng_bytes(1, 300_000, true)),
    ];
    vec![
        (layer_tar(&l1, 1_600_000_000), Comp::Gzip),
        (layer_tar(&l2, 1_600_000_100), Comp::None),
        (layer_tar(&l3, 1_600_000_200), Comp::Gzip),
    ]
}

#[test]
fn multi_layer_image_round_trip() {
    if !is_root() || !have("umoci") {
        eprintln!("SKIP: needs root and umoci to compute the reference tree");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    write_oci_image(&img, "t", &layers());

    // Reference: umoci applies the layers itself.
    let bundle = tmp.path().join("bundle");
    let st = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:t", img.display()),
            bundle.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "umoci unpack failed");
    let expected = snapshot(&bundle.join("rootfs"));

    let out = tmp.path().join("lz");
    let digest = run_ok(&[
        "convert",
        "-q",
        &format!("oci:{}:t", img.display()),
        &format!("oci:{}:lz", out.display()),
    ]);
    assert!(digest.trim().starts_with("sha256:"));
    run_ok(&["check", &format!("oci:{}:lz", out.display())]);
    let inspect = run_ok(&["inspect", "--tree", &format!("oci:{}:lz", out.display())]);
    assert!(inspect.contains("/big/huge.bin"), "{inspect}");

    let unpacked = tmp.path().join("unpacked");
    run_ok(&[
        "unpack",
        &format!("oci:{}:lz", out.display()),
        unpacked.to_str().unwrap(),
    ]);
    let actual = snapshot(&unpacked);
    assert_same_tree(&expected, &actual);

    // Spot checks that the reference itself has what the test is about.
    assert!(!expected.contains_key("etc/gone") && !expected.contains_key("olddir"));
    assert!(expected.contains_key("opq/new") && !expected.contains_key("opq/old1"));
    assert_eq!(
        expected["data/tool-hardlink2"].link_group.as_deref(),
        Some("data/tool-hardlink2")
    );
    assert_eq!(expected["data/xattr.txt"].xattrs["user.color"], b"blue");
    assert_eq!(expected["home/user/file"].uid, 1000);
    assert_eq!(expected["usr/bin/su"].mode, 0o4755);
    assert_eq!(
        actual["big/huge.bin"].content,
        expected["big/huge.bin"].content
    );
}

/// The same layers compressed differently (zstd, gzip, none) convert to the same index.
#[test]
fn layer_compression_does_not_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let small = |comp: Comp| {
        let l1 = vec![
            E::Dir("a", 0o755),
            E::File("a/f".into(), 0o644, prng_bytes(9, 200_000, true)),
            E::Symlink("a/s", "f"),
        ];
        let l2 = vec![
            E::Whiteout("a/.wh.s"),
            E::File("a/g".into(), 0o600, b"g".to_vec()),
        ];
        vec![(layer_tar(&l1, 1), comp), (layer_tar(&l2, 2), comp)]
    };
    let mut digests = Vec::new();
    for (n, comp) in [Comp::Zstd, Comp::Gzip, Comp::None].into_iter().enumerate() {
        let img = tmp.path().join(format!("img{n}"));
        write_oci_image(&img, "t", &small(comp));
        let out = tmp.path().join(format!("out{n}"));
        run_ok(&[
            "convert",
            "-q",
            &format!("oci:{}:t", img.display()),
            &format!("oci:{}:t", out.display()),
        ]);
        let inspect = run_ok(&["inspect", "--tree", &format!("oci:{}:t", out.display())]);
        assert!(
            inspect.contains("/a/g") && !inspect.contains("/a/s"),
            "{inspect}"
        );
        digests.push(inspect.lines().nth(1).unwrap().to_string());
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[1], digests[2]);
}

/// An image built the usual daemonless way (umoci new/unpack/repack, rootless), with a
/// second layer deleting, replacing and hardlinking files.
#[test]
fn umoci_built_image_round_trip() {
    if !is_root() || !have("umoci") {
        eprintln!("SKIP: needs root and umoci");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let image = format!("{}:t", img.display());
    let sh = |script: &str| {
        let st = Command::new("sh").arg("-ec").arg(script).status().unwrap();
        assert!(st.success(), "{script}");
    };
    let b = tmp.path().join("b");
    let b = b.display();
    sh(&format!(
        "umoci init --layout {img}; umoci new --image {image}; umoci unpack --rootless --image {image} {b}
         r={b}/rootfs; mkdir -p $r/etc $r/usr/lib/app $r/var/cache/x
         printf 'hello\\n' > $r/etc/hello; : > $r/etc/empty
         head -c 3000000 /usr/bin/umoci > $r/usr/lib/app/blob; ln $r/usr/lib/app/blob $r/usr/lib/app/blob.hl
         ln -s ../lib/app/blob $r/usr/lib/app/sym; printf x > $r/var/cache/x/1; printf y > $r/var/cache/x/2
         printf 'ü' > \"$r/etc/ünï 名\"; setfattr -n user.k -v v $r/etc/hello 2>/dev/null || python3 -c \"import os; os.setxattr('$r/etc/hello','user.k',b'v')\"
         umoci repack --image {image} {b}
         rm $r/etc/empty; rm -rf $r/var/cache/x; mkdir $r/var/cache/x; printf z > $r/var/cache/x/3
         printf changed > $r/etc/hello; ln $r/etc/hello $r/etc/hello.hl; chmod 0600 $r/usr/lib/app/blob
         umoci repack --image {image} {b}",
        img = img.display()
    ));
    let reference = tmp.path().join("ref");
    sh(&format!(
        "umoci unpack --image {image} {}",
        reference.display()
    ));
    let expected = snapshot(&reference.join("rootfs"));
    assert!(!expected.contains_key("etc/empty") && !expected.contains_key("var/cache/x/1"));

    let out = tmp.path().join("lz");
    run_ok(&[
        "convert",
        "-q",
        &format!("oci:{image}"),
        &format!("oci:{}:lz", out.display()),
    ]);
    let unpacked = tmp.path().join("unpacked");
    run_ok(&[
        "unpack",
        &format!("oci:{}:lz", out.display()),
        unpacked.to_str().unwrap(),
    ]);
    assert_same_tree(&expected, &snapshot(&unpacked));
}
