//! Damaged images: `check` must fail and name the bad chunk (with a file using it) or
//! the index problem; `unpack` must refuse corrupt data rather than write it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use shoal_common::Digest;
use shoal_lazyfs::codec;

struct Image {
    dir: PathBuf,
    index_blob: PathBuf,
    data_blob: PathBuf,
}

fn make(tmp: &Path) -> Image {
    let src = tmp.join("src");
    for i in 0..12u64 {
        let p = src.join(format!("dir{}/file{i}", i % 3));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, prng_bytes(i, 10_000 + i as usize * 120_000, true)).unwrap();
    }
    let dir = tmp.join("lz");
    run_ok(&[
        "convert",
        "-q",
        &format!("dir:{}", src.display()),
        &format!("oci:{}:t", dir.display()),
    ]);
    let inspect = run_ok(&["inspect", &format!("oci:{}:t", dir.display())]);
    let digest_after = |prefix: &str| -> PathBuf {
        let line = inspect.lines().find(|l| l.starts_with(prefix)).unwrap();
        let d: Digest = line
            .split_whitespace()
            .nth(if prefix == "blob" { 2 } else { 1 })
            .unwrap()
            .parse()
            .unwrap();
        dir.join("blobs/sha256").join(d.hex())
    };
    Image {
        index_blob: digest_after("index"),
        data_blob: digest_after("blob"),
        dir,
    }
}

fn check(img: &Image) -> (bool, String) {
    let out = run(&["check", &format!("oci:{}:t", img.dir.display())]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn flipped_byte_in_a_chunk_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let img = make(tmp.path());
    assert!(check(&img).0);
    let index = codec::decode(&fs::read(&img.index_blob).unwrap()).unwrap();
    let victim = 3u32;
    let c = &index.chunks[victim as usize];
    let mut data = fs::read(&img.data_blob).unwrap();
    data[(c.offset + u64::from(c.stored_len) / 2) as usize] ^= 0x55;
    fs::write(&img.data_blob, &data).unwrap();
    let (ok, out) = check(&img);
    assert!(!ok);
    assert!(out.contains(&format!("chunk #{victim} ")), "{out}");
    assert!(out.contains("/dir"), "names a file: {out}");
    // unpack refuses to write wrong bytes
    let u = run(&[
        "unpack",
        &format!("oci:{}:t", img.dir.display()),
        tmp.path().join("u").to_str().unwrap(),
    ]);
    assert!(!u.status.success());
}

#[test]
fn truncated_data_blob_names_the_missing_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let img = make(tmp.path());
    let data = fs::read(&img.data_blob).unwrap();
    fs::write(&img.data_blob, &data[..data.len() / 2]).unwrap();
    let (ok, out) = check(&img);
    assert!(!ok);
    assert!(out.contains("blob truncated"), "{out}");
    assert!(out.contains("chunk #"), "{out}");
}

#[test]
fn corrupt_or_truncated_index_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let img = make(tmp.path());
    let original = fs::read(&img.index_blob).unwrap();

    let mut flipped = original.clone();
    let at = original.len() - 10;
    flipped[at] ^= 0xff;
    fs::write(&img.index_blob, &flipped).unwrap();
    let (ok, out) = check(&img);
    assert!(!ok && out.contains("index"), "{out}");

    fs::write(&img.index_blob, &original[..original.len() / 2]).unwrap();
    let (ok, out) = check(&img);
    assert!(!ok && out.contains("index"), "{out}");

    fs::write(&img.index_blob, &original[..20]).unwrap();
    let (ok, out) = check(&img);
    assert!(!ok && out.contains("header"), "{out}");
}

/// An index whose bytes verify but whose contents are invalid names the entry.
#[test]
fn structurally_invalid_index_names_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let img = make(tmp.path());
    let mut index = codec::decode(&fs::read(&img.index_blob).unwrap()).unwrap();
    // Rename entry 5 to contain a slash by editing the names buffer in place.
    let e = index.entries[5].clone();
    index.names[e.name.start as usize] = b'/';
    let bytes = codec::encode(&index, 3).unwrap();
    let err = codec::decode(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("entry #5") && err.contains("contains /"),
        "{err}"
    );
}
