//! Helpers shared by the integration tests: building OCI images by hand (exact tar
//! contents), running the binary, snapshotting and comparing directory trees.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal_common::Digest;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal-lazyfs"))
}

/// Run the binary; returns the output (the caller checks status).
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run shoal-lazyfs");
    if !out.status.success() {
        eprintln!(
            "shoal-lazyfs {:?} -> {:?}\nstdout: {}\nstderr: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "shoal-lazyfs {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub use shoal_testkit::blobs::prng_bytes;

/// One entry of a hand-made layer.
pub enum E {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    /// path, mode, uid, gid, xattrs, data
    FileX(
        String,
        u32,
        u32,
        u32,
        Vec<(&'static str, &'static [u8])>,
        Vec<u8>,
    ),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
    CharDev(&'static str, u32, u32),
    Whiteout(&'static str),
    Opaque(&'static str),
}

pub fn layer_tar(entries: &[E], mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let hdr = |kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    };
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                let mut h = hdr(tar::EntryType::Directory, *mode);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, mode, data) => {
                let mut h = hdr(tar::EntryType::Regular, *mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            E::FileX(p, mode, uid, gid, xattrs, data) => {
                let pax: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
                let mut h = hdr(tar::EntryType::Regular, *mode);
                h.set_uid(u64::from(*uid));
                h.set_gid(u64::from(*gid));
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = hdr(tar::EntryType::Symlink, 0o777);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hardlink(p, t) => {
                let mut h = hdr(tar::EntryType::Link, 0o644);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Fifo(p) => {
                let mut h = hdr(tar::EntryType::Fifo, 0o640);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::CharDev(p, ma, mi) => {
                let mut h = hdr(tar::EntryType::Char, 0o600);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Whiteout(p) => {
                let mut h = hdr(tar::EntryType::Regular, 0o644);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Opaque(dir) => {
                let mut h = hdr(tar::EntryType::Regular, 0o644);
                b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), &[][..])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

fn write_blob(dir: &Path, data: &[u8]) -> (String, u64) {
    let d = Digest::of(data);
    let p = dir.join("blobs/sha256").join(d.hex());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    (d.to_string(), data.len() as u64)
}

/// Write an OCI image layout `dir` with tag `tag` holding the given layer tars.
pub fn write_oci_image(dir: &Path, tag: &str, layers: &[(Vec<u8>, Comp)]) {
    write_oci_image_with(dir, tag, layers, serde_json::json!({}));
}

/// [`write_oci_image`] with the config's top-level fields overridden by those of `extra`.
pub fn write_oci_image_with(
    dir: &Path,
    tag: &str,
    layers: &[(Vec<u8>, Comp)],
    extra: serde_json::Value,
) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, comp) in layers {
        diff_ids.push(Digest::of(tar).to_string());
        let (bytes, mt) = match comp {
            Comp::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Comp::Zstd => (
                zstd::encode_all(&tar[..], 1).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let (d, s) = write_blob(dir, &bytes);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": s}));
    }
    let mut config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    for (k, v) in extra.as_object().expect("extra config fields") {
        config[k] = v.clone();
    }
    let (cd, cs) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    let list = index["manifests"].as_array_mut().unwrap();
    list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    list.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// What an OCI layout's tag points at: manifest and config, as bytes and parsed.
pub struct Stored {
    pub manifest_bytes: Vec<u8>,
    pub manifest: serde_json::Value,
    pub config_bytes: Vec<u8>,
    pub config: serde_json::Value,
}

pub fn read_oci_image(dir: &Path, tag: &str) -> Stored {
    let blob = |digest: &serde_json::Value| {
        let d: Digest = digest.as_str().unwrap().parse().unwrap();
        fs::read(dir.join("blobs/sha256").join(d.hex())).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", dir.display()));
    let manifest_bytes = blob(&desc["digest"]);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let config_bytes = blob(&manifest["config"]["digest"]);
    Stored {
        config: serde_json::from_slice(&config_bytes).unwrap(),
        config_bytes,
        manifest,
        manifest_bytes,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Option<String>,
    pub target: Option<String>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For hardlinked files: the smallest path of the group.
    pub link_group: Option<String>,
}

/// Everything below `root` (not `root` itself), keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Info> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), String> = HashMap::new();
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    for p in &paths {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if !md.is_dir() && md.nlink() > 1 {
            groups
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone());
        }
    }
    for p in paths {
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "other"
        };
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&p) {
            for n in names {
                if let Ok(Some(v)) = xattr::get(&p, &n) {
                    xattrs.insert(String::from_utf8_lossy(n.as_bytes()).into_owned(), v);
                }
            }
        }
        out.insert(
            rel,
            Info {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                content: ft
                    .is_file()
                    .then(|| Digest::of(&fs::read(&p).unwrap()).to_string()),
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().to_string_lossy().into_owned()),
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    md.rdev()
                } else {
                    0
                },
                xattrs,
                link_group: (!md.is_dir() && md.nlink() > 1)
                    .then(|| groups[&(md.dev(), md.ino())].clone()),
            },
        );
    }
    out
}

/// Assert two snapshots are equal, printing the first differences readably.
pub fn assert_same_tree(expected: &BTreeMap<String, Info>, actual: &BTreeMap<String, Info>) {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(a) if a != v => {
                diffs.push(format!("differs {k}:\n  expected {v:?}\n  actual   {a:?}"))
            }
            _ => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            diffs.push(format!("unexpected {k}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
