//! The mount tests' fixture: a three-layer image (whiteouts, an opaque directory, hardlinks
//! within and across layers, xattrs, special files, mtimes) converted into a real registry,
//! its expected tree unpacked, its index parsed, and a real peer in front of the registry.
//! Also the check of the `docs/metrics.md` lazyfs section against a live scrape.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use shoal_lazyfs::store::open_source;
use shoal_lazyfs::{ImageRef, Index, LazyImage, RegistryOptions};

use super::{MountProc, PeerProc, Registry, RegistryAuth};
use crate::common::*;

pub const MIB: usize = 1 << 20;

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub registry: Registry,
    pub peer: PeerProc,
    /// `ADDR/lazy/img:t`
    pub image: String,
    /// The image's tree as `shoal-lazyfs unpack` writes it.
    pub expected: PathBuf,
    pub index: Index,
    pub index_size: u64,
}

impl Fixture {
    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Mount with the usual test flags (peer, insecure registry, own cache, no prefetch).
    pub fn mount(&self, name: &str, extra: &[&str]) -> MountProc {
        let mp = self.path(name);
        let cache = self.path(&format!("{name}-cache"));
        let mut args = vec![
            "--peer",
            self.peer.mirror.as_str(),
            "--insecure-registry",
            self.registry.addr.as_str(),
        ];
        if !extra.contains(&"--prefetch") {
            args.extend(["--prefetch", "none"]);
        }
        let cache = cache.to_string_lossy().into_owned();
        if !extra.contains(&"--cache-dir") {
            args.extend(["--cache-dir", cache.as_str()]);
        }
        args.extend_from_slice(extra);
        MountProc::start(self.tmp.path(), name, &self.image, &mp, &args)
    }

    /// Compressed bytes of a file's chunks.
    pub fn file_csize(&self, path: &str) -> u64 {
        let e = self.index.resolve(path.as_bytes()).expect("path in index");
        let ino = self.index.entries[e as usize].inode;
        self.index
            .file_chunks(ino)
            .iter()
            .map(|fc| u64::from(self.index.chunks[fc.chunk as usize].stored_len))
            .sum()
    }
}

pub fn can_mount() -> bool {
    if !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: needs root and /dev/fuse");
        return false;
    }
    if !Registry::installed() {
        eprintln!("SKIP: docker-registry is not installed");
        return false;
    }
    true
}

/// Three layers: a base tree, an update with whiteouts, an opaque directory, a cross-layer
/// hardlink and overwritten files, and a layer adding xattrs and special files.
pub fn image_layers() -> Vec<(Vec<u8>, Comp)> {
    let mut base = vec![
        E::Dir("etc", 0o755),
        E::File("etc/hostname".into(), 0o644, b"base\n".to_vec()),
        E::File("etc/passwd".into(), 0o644, prng_bytes(1, 1500, true)),
        E::Dir("usr", 0o755),
        E::Dir("usr/bin", 0o755),
        E::File(
            "usr/bin/big".into(),
            0o755,
            prng_bytes(2, 3 * MIB + 12345, false),
        ),
        E::Symlink("usr/bin/sh", "big"),
        E::Hardlink("usr/bin/big-hl", "usr/bin/big"),
        E::Dir("usr/lib", 0o755),
        E::Dir("var", 0o755),
        E::Dir("var/cache", 0o755),
        E::File("var/cache/old".into(), 0o644, b"old".to_vec()),
        E::Dir("root", 0o700),
        E::File("root/.profile".into(), 0o600, b"PS1=#\n".to_vec()),
    ];
    for i in 0..24u64 {
        base.push(E::File(
            format!("usr/lib/lib{i}.so"),
            0o644,
            prng_bytes(100 + i, 5_000 + (i as usize) * 17_000, i % 3 == 0),
        ));
    }
    let update = vec![
        E::Whiteout("usr/lib/.wh.lib3.so"),
        E::File("etc/hostname".into(), 0o644, b"updated\n".to_vec()),
        E::Opaque("var/cache"),
        E::File("var/cache/new".into(), 0o644, b"new".to_vec()),
        E::Dir("opt", 0o755),
        E::Dir("opt/app", 0o750),
        E::File(
            "opt/app/app.bin".into(),
            0o750,
            prng_bytes(7, 700_000, false),
        ),
        E::File(
            "opt/app/small.txt".into(),
            0o644,
            prng_bytes(8, 96_000, false),
        ),
        E::Hardlink("opt/app/lib1-hl.so", "usr/lib/lib1.so"),
    ];
    let extras = vec![
        E::Dir("home", 0o755),
        E::FileX(
            "home/user/notes".into(),
            0o640,
            1000,
            1001,
            vec![("user.color", b"blue"), ("user.empty-ish", b"x")],
            prng_bytes(9, 40_000, true),
        ),
        E::FileX(
            "home/user/victim".into(),
            0o644,
            1000,
            1000,
            vec![],
            prng_bytes(10, 150_000, false),
        ),
        E::Fifo("run-fifo"),
        E::CharDev("dev-null", 1, 3),
        E::Symlink("home/user/abs", "/etc/hostname"),
    ];
    vec![
        (layer_tar(&base, 1_600_000_000), Comp::Gzip),
        (layer_tar(&update, 1_650_000_000), Comp::Zstd),
        (layer_tar(&extras, 1_700_000_000), Comp::None),
    ]
}

pub fn setup() -> Option<Fixture> {
    if !can_mount() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start_in(tmp.path(), RegistryAuth::Open);
    let src = tmp.path().join("src-oci");
    write_oci_image(&src, "t", &image_layers());
    let image = format!("{}/lazy/img:t", registry.addr);
    run_ok(&[
        "convert",
        "-q",
        "--keep-mtime",
        &format!("oci:{}:t", src.display()),
        &image,
        "--insecure-registry",
        &registry.addr,
    ]);
    let expected = tmp.path().join("expected");
    run_ok(&[
        "unpack",
        &image,
        expected.to_str().unwrap(),
        "--insecure-registry",
        &registry.addr,
    ]);
    let opts = RegistryOptions {
        insecure: vec![registry.addr.clone()],
        ..Default::default()
    };
    let source = open_source(&ImageRef::parse(&image).unwrap(), &opts).unwrap();
    let lazy = LazyImage::open(source.as_ref()).unwrap();
    let index_size = lazy.index_bytes.len() as u64;
    let index = lazy.index.unwrap();
    let peer = PeerProc::start(tmp.path(), &registry.addr);
    Some(Fixture {
        tmp,
        registry,
        peer,
        image,
        expected,
        index,
        index_size,
    })
}

/// Stat fields the snapshot does not cover: size (non-directories), mtime, nlink.
pub fn stat_fields(root: &Path) -> BTreeMap<String, (u64, i64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let size = if md.is_dir() { 0 } else { md.size() };
            out.insert(rel, (size, md.mtime(), md.mtime_nsec(), md.nlink()));
        }
    }
    out
}

/// docs/metrics.md's lazyfs rows: name → (type, after first use).
pub fn catalogued_lazyfs_metrics() -> BTreeMap<String, (String, bool)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = fs::read_to_string(doc).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let name = cells[0].trim().trim_matches('`');
        if !name.starts_with("shoal_lazyfs_") {
            continue;
        }
        assert_eq!(cells.len(), 5, "row needs 5 cells: {line}");
        out.insert(
            name.to_string(),
            (cells[1].trim().to_string(), cells[4].trim() == "yes"),
        );
    }
    assert!(out.len() >= 5, "docs/metrics.md has no lazyfs section");
    out
}

pub fn check_metrics_catalogue(scrape: &str) {
    let exposed: BTreeMap<String, String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| n.starts_with("shoal_lazyfs_"))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect();
    let cat = catalogued_lazyfs_metrics();
    for (name, kind) in &exposed {
        let (ckind, _) = cat
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exposed but not in docs/metrics.md"));
        assert_eq!(ckind, kind, "type of {name}");
    }
    for (name, (_, after_first_use)) in &cat {
        assert!(
            *after_first_use || exposed.contains_key(name),
            "{name} is catalogued but not exposed"
        );
    }
}
