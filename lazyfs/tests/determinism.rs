//! The same tree always converts to the same bytes: twice in a row, from a copy written in
//! another order with other mtimes, and from images whose tars differ in order and times;
//! in the runnable image form (the default) and in the artifact form.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

fn files() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for i in 0..40 {
        let len = match i % 4 {
            0 => 0,
            1 => 1000 + i * 37,
            2 => 90_000 + i * 1000,
            _ => 1_500_000 + i * 10_000,
        };
        v.push((
            format!("d{}/sub{}/f{i}", i % 3, i % 2),
            prng_bytes(i as u64, len, i % 2 == 0),
        ));
    }
    v
}

fn write_tree(root: &Path, reverse: bool, mtime: u64) {
    let mut list = files();
    if reverse {
        list.reverse();
    }
    for (p, data) in &list {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
    }
    symlink("../d1/sub1/f1", root.join("d0/link")).unwrap();
    fs::hard_link(root.join("d2/sub1/f5"), root.join("d0/hl")).unwrap();
    xattr::set(root.join("d1/sub1/f1"), "user.tag", b"t").unwrap();
}

fn convert_dir(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let mut args = vec!["convert", "-q"];
    args.extend_from_slice(extra);
    let s = format!("dir:{}", src.display());
    let d = format!("oci:{}:t", dst.display());
    args.push(&s);
    args.push(&d);
    run_ok(&args).trim().to_string()
}

#[test]
fn same_tree_same_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write_tree(&a, false, 1_000_000);
    write_tree(&b, true, 2_000_000);
    let d1 = convert_dir(&a, &tmp.path().join("o1"), &[]);
    let d2 = convert_dir(&a, &tmp.path().join("o2"), &[]);
    let d3 = convert_dir(&b, &tmp.path().join("o3"), &[]);
    assert_eq!(d1, d2, "converting twice differs");
    assert_eq!(
        d1, d3,
        "a copy written in another order with other mtimes differs"
    );
    // The blob directories hold byte-identical files.
    let blobs = |o: &str| {
        let mut v: Vec<_> = fs::read_dir(tmp.path().join(o).join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(blobs("o1"), blobs("o3"));

    // With --keep-mtime the times matter, but a repeat is still identical.
    let k1 = convert_dir(&a, &tmp.path().join("k1"), &["--keep-mtime"]);
    let k2 = convert_dir(&a, &tmp.path().join("k2"), &["--keep-mtime"]);
    let k3 = convert_dir(&b, &tmp.path().join("k3"), &["--keep-mtime"]);
    assert_eq!(k1, k2);
    assert_ne!(k1, k3);

    // The artifact form is as reproducible, and a different manifest of the same blobs.
    let a1 = convert_dir(&a, &tmp.path().join("a1"), &["--artifact"]);
    let a2 = convert_dir(&b, &tmp.path().join("a2"), &["--artifact"]);
    assert_eq!(a1, a2);
    assert_ne!(a1, d1);
    // Only config and manifest differ; index and data blobs are the same bytes.
    let o1 = blobs("o1");
    let only_artifact = blobs("a1").into_iter().filter(|b| !o1.contains(b)).count();
    assert_eq!(only_artifact, 2);
}

#[test]
fn images_with_different_tar_order_and_times_give_the_same_index() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = |rev: bool| {
        let mut v: Vec<E> = files()
            .into_iter()
            .map(|(p, d)| E::File(p, 0o644, d))
            .collect();
        if rev {
            v.reverse();
        }
        v.push(E::Symlink("d0/link", "../d1/sub1/f1"));
        v
    };
    let mut index_lines = Vec::new();
    let mut manifests = Vec::new();
    for (n, (rev, mtime)) in [(false, 5), (true, 999_999)].into_iter().enumerate() {
        let img = tmp.path().join(format!("img{n}"));
        write_oci_image(&img, "t", &[(layer_tar(&entries(rev), mtime), Comp::Gzip)]);
        let out = tmp.path().join(format!("out{n}"));
        manifests.push(run_ok(&[
            "convert",
            "-q",
            &format!("oci:{}:t", img.display()),
            &format!("oci:{}:t", out.display()),
        ]));
        let inspect = run_ok(&["inspect", &format!("oci:{}:t", out.display())]);
        let keep: Vec<String> = inspect
            .lines()
            .filter(|l| l.starts_with("index") || l.starts_with("blob"))
            .map(str::to_string)
            .collect();
        index_lines.push(keep);
    }
    assert_eq!(index_lines[0], index_lines[1]);
    // The runnable config replaces the source's diff_ids (the only config field that
    // differs between the two sources) with the lazyfs layers': same manifest too.
    assert_eq!(manifests[0], manifests[1]);
}
