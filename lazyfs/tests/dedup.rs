//! Chunk-level dedup across images: a second image of the same files, built independently
//! (other mtimes, other layer split and order), converted with the first as chunk
//! dictionary, must add at most 10 % new data bytes; an edited large file adds little.

mod common;

use common::*;

fn file_set() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for i in 0..60u64 {
        let len = match i % 5 {
            0 => 3_000_000 + (i as usize) * 7_919,
            1 => 400_000,
            _ => 2_000 + (i as usize) * 311,
        };
        v.push((
            format!("usr/share/pkg{}/file{i}", i % 7),
            prng_bytes(100 + i, len, i % 3 != 0),
        ));
    }
    v
}

fn new_bytes(stderr: &str) -> (u64, u64) {
    // "... N entries, TOTAL bytes of file data ... ; K new chunks (NEW bytes, ..."
    let total = stderr
        .split(" bytes of file data")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let new = stderr
        .split(" new chunks (")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (new, total)
}

fn convert(args: &[&str]) -> (u64, u64) {
    let out = run(args);
    assert!(out.status.success());
    new_bytes(&String::from_utf8_lossy(&out.stderr))
}

#[test]
fn second_image_reuses_the_first_images_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let files = file_set();
    let entries = |range: std::ops::Range<usize>, rev: bool| {
        let mut v: Vec<E> = files[range]
            .iter()
            .map(|(p, d)| E::File(p.clone(), 0o644, d.clone()))
            .collect();
        if rev {
            v.reverse();
        }
        v
    };
    // Image A: two layers. Image B: three layers, split elsewhere, reversed order, new mtimes.
    let a = tmp.path().join("a");
    write_oci_image(
        &a,
        "t",
        &[
            (layer_tar(&entries(0..30, false), 1), Comp::Gzip),
            (layer_tar(&entries(30..60, false), 1), Comp::Gzip),
        ],
    );
    let b = tmp.path().join("b");
    write_oci_image(
        &b,
        "t",
        &[
            (layer_tar(&entries(0..10, true), 77), Comp::Gzip),
            (layer_tar(&entries(10..45, true), 77), Comp::Gzip),
            (layer_tar(&entries(45..60, true), 77), Comp::None),
        ],
    );
    let lz = tmp.path().join("lz");
    let (new_a, total) = convert(&[
        "convert",
        "-q",
        &format!("oci:{}:t", a.display()),
        &format!("oci:{}:a", lz.display()),
    ]);
    assert!(new_a > 0 && total > 0);
    let dict = format!("oci:{}:a", lz.display());
    let (new_b, total_b) = convert(&[
        "convert",
        "-q",
        "--chunk-dict",
        &dict,
        &format!("oci:{}:t", b.display()),
        &format!("oci:{}:b", lz.display()),
    ]);
    eprintln!(
        "image B: {new_b} new bytes of {total_b} ({:.2} %)",
        new_b as f64 * 100.0 / total_b as f64
    );
    assert!(new_b * 10 <= total_b, "{new_b} new bytes of {total_b}");
    run_ok(&["check", &format!("oci:{}:b", lz.display())]);

    // A third image with one large file edited in the middle: only chunks near the edit change.
    let mut edited = files.clone();
    let big = &mut edited[0].1;
    let mid = big.len() / 2;
    big.splice(
        mid..mid,
        b"an inserted sentence that shifts every later byte"
            .iter()
            .copied(),
    );
    let c = tmp.path().join("c");
    let all: Vec<E> = edited
        .iter()
        .map(|(p, d)| E::File(p.clone(), 0o644, d.clone()))
        .collect();
    write_oci_image(&c, "t", &[(layer_tar(&all, 3), Comp::Gzip)]);
    let (new_c, total_c) = convert(&[
        "convert",
        "-q",
        "--chunk-dict",
        &dict,
        &format!("oci:{}:t", c.display()),
        &format!("oci:{}:c", lz.display()),
    ]);
    eprintln!("image C (one edit): {new_c} new bytes of {total_c}");
    assert!(new_c <= 4 * 1024 * 1024, "an edit re-stored {new_c} bytes");
    let out = tmp.path().join("unpacked");
    run_ok(&[
        "unpack",
        &format!("oci:{}:c", lz.display()),
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(out.join(&edited[0].0)).unwrap(), edited[0].1);
}
