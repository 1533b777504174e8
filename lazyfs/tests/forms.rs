//! The two forms of a lazyfs image (FORMAT.md §1): the runnable OCI image `convert` writes
//! by default, whose manifest and config containerd's CRI plugin accepts, and the original
//! artifact (`--artifact`), which must keep its exact old shape. Both read back the same.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::{json, Value};
use shoal_common::Digest;
use shoal_lazyfs::store::open_source;
use shoal_lazyfs::{ImageRef, LazyImage, RegistryOptions};

const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const INDEX_LAYER: &str = "application/vnd.oci.image.layer.shoal.lazyfs.index.v1+zstd";
const DATA_LAYER: &str = "application/vnd.oci.image.layer.shoal.lazyfs.data.v1";
const SNAPSHOT_ROLE: &str = "containerd.io/snapshot/shoal.lazyfs.role";

/// What a real image's config holds besides rootfs: runtime settings, history, metadata.
fn source_config() -> Value {
    json!({
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "created": "2024-05-01T10:00:00Z",
        "author": "forms test",
        "config": {
            "Entrypoint": ["/usr/bin/app", "--serve"],
            "Cmd": ["--port", "8080"],
            "Env": ["PATH=/usr/local/bin:/usr/bin", "MODE=production"],
            "User": "1000:1000",
            "WorkingDir": "/srv/app",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.example.name": "app"},
            "StopSignal": "SIGTERM"
        },
        "history": [
            {"created": "2024-05-01T09:00:00Z", "created_by": "ADD base"},
            {"created": "2024-05-01T10:00:00Z", "created_by": "COPY app"},
            {"created": "2024-05-01T10:00:00Z", "created_by": "ENV MODE", "empty_layer": true}
        ]
    })
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..8u64)
        .map(|i| {
            (
                format!("srv/app/f{i}"),
                prng_bytes(i, 20_000 + i as usize * 70_000, i % 2 == 0),
            )
        })
        .collect()
}

/// A two-layer image in the OCI layout `dir` (tag `t`) with [`source_config`].
fn source_image(dir: &Path) {
    let l1: Vec<E> = files()
        .into_iter()
        .map(|(p, d)| E::File(p, 0o644, d))
        .collect();
    let l2 = vec![
        E::Whiteout("srv/app/.wh.f7"),
        E::Symlink("srv/app/current", "f1"),
        E::File("etc/app.conf".into(), 0o600, b"mode=production\n".to_vec()),
    ];
    write_oci_image_with(
        dir,
        "t",
        &[
            (layer_tar(&l1, 1), Comp::Gzip),
            (layer_tar(&l2, 2), Comp::Zstd),
        ],
        source_config(),
    );
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn convert(src: &str, dst: &str, extra: &[&str]) -> String {
    let mut args = vec!["convert", "-q"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[src, dst]);
    run_ok(&args).trim().to_string()
}

#[test]
fn default_output_is_a_runnable_image() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_image(&src);
    let out = tmp.path().join("out");
    let digest = convert(&oci(&src, "t"), &oci(&out, "t"), &[]);
    let s = read_oci_image(&out, "t");
    assert_eq!(digest, Digest::of(&s.manifest_bytes).to_string());

    let m = &s.manifest;
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert!(m.get("artifactType").is_none(), "{m}");
    assert_eq!(m["annotations"], json!({"dev.shoal.lazyfs.version": "1"}));
    assert_eq!(m["config"]["mediaType"], IMAGE_CONFIG);
    assert_eq!(m["config"]["size"], s.config_bytes.len());
    let layers = m["layers"].as_array().unwrap();
    assert!(
        layers.len() >= 2,
        "an index and at least one data blob: {m}"
    );
    for (n, l) in layers.iter().enumerate() {
        let (media_type, role) = if n == 0 {
            (INDEX_LAYER, "index")
        } else {
            (DATA_LAYER, "data")
        };
        assert_eq!(l["mediaType"], media_type, "layer #{n}");
        assert!(media_type.starts_with("application/vnd.oci.image.layer."));
        assert_eq!(
            l["annotations"],
            json!({SNAPSHOT_ROLE: role, "dev.shoal.lazyfs.role": role}),
            "layer #{n}"
        );
    }

    // One diff_id per layer, each the layer's own digest.
    let c = &s.config;
    let layer_digests: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    assert_eq!(c["rootfs"]["type"], "layers");
    let diff_ids = c["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    assert_eq!(diff_ids.iter().collect::<Vec<_>>(), layer_digests);
    // The source's runtime settings and metadata are kept, its history is not.
    let want = source_config();
    assert_eq!(c["config"], want["config"]);
    for k in ["architecture", "variant", "os", "created", "author"] {
        assert_eq!(c[k], want[k], "{k}");
    }
    assert!(c.get("history").is_none(), "{c}");
    // Our description sits under its own key (and does not nest the image config again).
    let d = &c["shoal.lazyfs"];
    assert_eq!(d["format"], "shoal.lazyfs");
    assert_eq!(d["version"], 1);
    assert_eq!(d["chunking"]["avg"], 262_144);
    assert_eq!(d["compression"], json!({"algorithm": "zstd", "level": 3}));
    assert!(d["stats"]["entries"].as_u64().unwrap() > 8, "{d}");
    assert!(d.get("image_config").is_none(), "{d}");
    // Keys are sorted at every level, so re-serializing the parsed value gives the bytes.
    assert_eq!(serde_json::to_vec(c).unwrap(), s.config_bytes);

    run_ok(&["check", &oci(&out, "t")]);
    let inspect = run_ok(&["inspect", &oci(&out, "t")]);
    assert!(inspect.contains("(runnable image)"), "{inspect}");
    // A converted image is not a source for another conversion.
    let again = run(&[
        "convert",
        "-q",
        &oci(&out, "t"),
        &oci(&tmp.path().join("x"), "t"),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already a lazyfs image"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn dir_source_gets_a_minimal_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("bin/tool"), prng_bytes(1, 100_000, true)).unwrap();
    let out = tmp.path().join("out");
    convert(&format!("dir:{}", dir.display()), &oci(&out, "t"), &[]);
    let s = read_oci_image(&out, "t");
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let c = s.config.as_object().unwrap();
    assert_eq!(
        c.keys().map(String::as_str).collect::<Vec<_>>(),
        ["architecture", "config", "os", "rootfs", "shoal.lazyfs"]
    );
    assert_eq!(c["architecture"], host);
    assert_eq!(c["os"], "linux");
    assert_eq!(c["config"], json!({}));
    assert_eq!(
        c["rootfs"]["diff_ids"].as_array().unwrap().len(),
        s.manifest["layers"].as_array().unwrap().len()
    );
    run_ok(&["check", &oci(&out, "t")]);
}

/// The library's view of an image: its form and its config as [`LazyImage::config`] reads it.
fn open(r: &str) -> (shoal_lazyfs::artifact::Form, shoal_lazyfs::artifact::Config) {
    let source = open_source(&ImageRef::parse(r).unwrap(), &RegistryOptions::default()).unwrap();
    let image = LazyImage::open(source.as_ref()).unwrap();
    assert!(image.index.is_ok());
    let config = image.config(source.as_ref()).unwrap();
    (image.form, config)
}

#[test]
fn both_forms_read_back_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_image(&src);
    // Both forms in one layout: they share the index and data blobs.
    let out = tmp.path().join("out");
    let (img, art) = (oci(&out, "img"), oci(&out, "art"));
    let d_img = convert(&oci(&src, "t"), &img, &[]);
    let d_art = convert(&oci(&src, "t"), &art, &["--artifact"]);
    assert_ne!(d_img, d_art);

    let mut trees = Vec::new();
    let mut index_lines = Vec::new();
    for (name, r) in [("img", &img), ("art", &art)] {
        let check = run_ok(&["check", r]);
        assert!(check.contains(", 0 problems"), "{check}");
        let inspect = run_ok(&["inspect", r]);
        index_lines.push(
            inspect
                .lines()
                .filter(|l| l.starts_with("index") || l.starts_with("blob"))
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
        let unpacked = tmp.path().join(format!("unpacked-{name}"));
        run_ok(&["unpack", r, unpacked.to_str().unwrap()]);
        for (p, data) in files().iter().take(7) {
            assert_eq!(&fs::read(unpacked.join(p)).unwrap(), data, "{name}: {p}");
        }
        assert!(!unpacked.join("srv/app/f7").exists(), "{name}: whiteout");
        trees.push(snapshot(&unpacked));
    }
    assert_same_tree(&trees[0], &trees[1]);
    assert_eq!(index_lines[0], index_lines[1]);

    // The library returns the same description from both, and the source's settings.
    use shoal_lazyfs::artifact::Form;
    let (f_img, c_img) = open(&img);
    let (f_art, c_art) = open(&art);
    assert_eq!((f_img, f_art), (Form::Image, Form::Artifact));
    let strip = |c: &shoal_lazyfs::artifact::Config| shoal_lazyfs::artifact::Config {
        image_config: None,
        ..c.clone()
    };
    assert_eq!(strip(&c_img), strip(&c_art));
    let (ic_img, ic_art) = (c_img.image_config.unwrap(), c_art.image_config.unwrap());
    assert_eq!(ic_art, source_config_with_rootfs(&src));
    assert_eq!(ic_img["config"], source_config()["config"]);
    assert!(ic_img.get("shoal.lazyfs").is_none());
}

/// The source config as written into the layout (with its rootfs).
fn source_config_with_rootfs(src: &Path) -> Value {
    read_oci_image(src, "t").config
}

#[test]
fn artifact_flag_writes_the_old_form_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_image(&src);
    let out = tmp.path().join("out");
    let digest = convert(&oci(&src, "t"), &oci(&out, "t"), &["--artifact"]);
    let s = read_oci_image(&out, "t");
    assert_eq!(digest, Digest::of(&s.manifest_bytes).to_string());

    // The config: our struct in field order, the source config (sorted) as image_config.
    let st = &s.config["stats"];
    let expected_config = format!(
        r#"{{"format":"shoal.lazyfs","version":1,"chunking":{{"algorithm":"fastcdc-2020","min":65536,"avg":262144,"max":1048576}},"compression":{{"algorithm":"zstd","level":3}},"stats":{{"entries":{},"inodes":{},"file_bytes":{},"chunks":{}}},"image_config":{}}}"#,
        st["entries"],
        st["inodes"],
        st["file_bytes"],
        st["chunks"],
        serde_json::to_string(&source_config_with_rootfs(&src)).unwrap()
    );
    assert_eq!(
        String::from_utf8(s.config_bytes.clone()).unwrap(),
        expected_config
    );

    // The manifest, byte for byte, from what inspect says the index and blobs are.
    let inspect = run_ok(&["inspect", &oci(&out, "t")]);
    assert!(inspect.contains("(artifact)"), "{inspect}");
    let desc = |line: &str, n: usize| {
        let w: Vec<&str> = line.split_whitespace().collect();
        (
            w[n].to_string(),
            w[n + 1].trim_start_matches('(').to_string(),
        )
    };
    let layer = |media_type: &str, (digest, size): (String, String), role: &str| {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size},"annotations":{{"dev.shoal.lazyfs.role":"{role}"}}}}"#
        )
    };
    let mut layers = Vec::new();
    for line in inspect.lines() {
        if line.starts_with("index") {
            layers.insert(
                0,
                layer(
                    "application/vnd.shoal.lazyfs.index.v1+zstd",
                    desc(line, 1),
                    "index",
                ),
            );
        } else if line.starts_with("blob #") {
            layers.push(layer(
                "application/vnd.shoal.lazyfs.data.v1",
                desc(line, 2),
                "data",
            ));
        }
    }
    assert_eq!(layers.len(), s.manifest["layers"].as_array().unwrap().len());
    let expected_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.shoal.lazyfs.v1","config":{{"mediaType":"application/vnd.shoal.lazyfs.config.v1+json","digest":"{}","size":{}}},"layers":[{}],"annotations":{{"dev.shoal.lazyfs.version":"1"}}}}"#,
        Digest::of(&s.config_bytes),
        s.config_bytes.len(),
        layers.join(",")
    );
    assert_eq!(
        String::from_utf8(s.manifest_bytes.clone()).unwrap(),
        expected_manifest
    );
    // And it is as reproducible as ever.
    let again = convert(
        &oci(&src, "t"),
        &oci(&tmp.path().join("again"), "t"),
        &["--artifact"],
    );
    assert_eq!(again, digest);
}

/// A runnable image whose diff_ids no longer match its layers would fail in containerd;
/// `check` says so, while readers that need only the index still work.
#[test]
fn check_rejects_diff_ids_that_do_not_match_the_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_image(&src);
    let out = tmp.path().join("out");
    convert(&oci(&src, "t"), &oci(&out, "t"), &[]);
    let s = read_oci_image(&out, "t");
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(out.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let mut config = s.config.clone();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let mut manifest = s.manifest.clone();
    manifest["config"]["digest"] = put(&config_bytes).to_string().into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest_bytes);
    let index_path = out.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["digest"] = manifest_digest.to_string().into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let check = run(&["check", &oci(&out, "t")]);
    assert_eq!(check.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("BAD manifest config:") && stdout.contains("diff_ids"),
        "{stdout}"
    );
    run_ok(&[
        "unpack",
        &oci(&out, "t"),
        tmp.path().join("u").to_str().unwrap(),
    ]);
}
