//! The config blob of a lazyfs image, in either form.
//!
//! The artifact form's config is our build description alone ([`Config`]). The image form's
//! config is what containerd needs to run the image: the source image's config (entrypoint,
//! environment, user...) with `rootfs.diff_ids` naming our layers, and our description under
//! [`media::CONFIG_KEY`]. Both are serialized from sorted maps (serde_json is built without
//! `preserve_order`, so `Value` objects are `BTreeMap`s) and fixed structs, so equal inputs
//! give equal bytes.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shoal_common::Digest;

use super::{Form, Manifest};
use crate::error::{Error, Result};
use crate::index::{BlobRef, Index};
use crate::media;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub chunking: Chunking,
    pub compression: Compression,
    pub stats: ConfigStats,
    /// The source image's config (entrypoint, environment...), when there was one. Read
    /// back from an image-form image, it is the runnable config without our description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chunking {
    pub algorithm: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigStats {
    pub entries: u64,
    pub inodes: u64,
    pub file_bytes: u64,
    pub chunks: u64,
}

pub fn make_config(index: &Index, image_config: Option<Value>) -> Config {
    Config {
        format: "shoal.lazyfs".into(),
        version: 1,
        chunking: Chunking {
            algorithm: "fastcdc-2020".into(),
            min: index.params.min,
            avg: index.params.avg,
            max: index.params.max,
        },
        compression: Compression {
            algorithm: "zstd".into(),
            level: index.params.level,
        },
        stats: ConfigStats {
            entries: index.entries.len() as u64,
            inodes: index.inodes.len() as u64,
            file_bytes: index.file_bytes(),
            chunks: index.chunks.len() as u64,
        },
        image_config,
    }
}

/// The config blob's bytes for an image whose layers are the index and then `blobs`.
pub fn config_blob(
    form: Form,
    config: &Config,
    index: &Digest,
    blobs: &[BlobRef],
) -> Result<Vec<u8>> {
    match form {
        // The struct itself, fields in declaration order: the bytes older versions wrote.
        Form::Artifact => serde_json::to_vec(config),
        Form::Image => runnable_config(config, index, blobs).and_then(|v| serde_json::to_vec(&v)),
    }
    .map_err(|e| Error::Invalid(format!("serializing the config: {e}")))
}

fn runnable_config(
    config: &Config,
    index: &Digest,
    blobs: &[BlobRef],
) -> serde_json::Result<Value> {
    let mut out = match &config.image_config {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    // A `dir:` source has no config; containerd needs at least the platform.
    out.entry("architecture")
        .or_insert_with(|| host_architecture().into());
    out.entry("os").or_insert_with(|| "linux".into());
    out.entry("config").or_insert_with(|| json!({}));
    // The source's history describes its own layers, which are gone.
    out.remove("history");
    // One diff_id per layer: containerd insists on the counts matching and derives the
    // chain ids naming the snapshots from them. Our layers are not tars, so their
    // "uncompressed digest" is the blob digest itself.
    let diff_ids: Vec<String> = std::iter::once(index.to_string())
        .chain(blobs.iter().map(|b| b.digest.to_string()))
        .collect();
    out.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let description = Config {
        image_config: None,
        ..config.clone()
    };
    out.insert(media::CONFIG_KEY.into(), serde_json::to_value(description)?);
    Ok(Value::Object(out))
}

/// This machine's architecture in OCI (Go) naming, as image platforms spell it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Parse a config blob of an image of `form` into our description plus the image config.
/// An image-form config must also name the manifest's layers as its diff_ids, since
/// containerd would refuse it otherwise.
pub fn parse_config(form: Form, manifest: &Manifest, bytes: &[u8]) -> Result<Config> {
    let bad = |reason: String| Error::manifest("config", reason);
    match form {
        Form::Artifact => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string())),
        Form::Image => {
            let mut value: Map<String, Value> =
                serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            check_diff_ids(manifest, &value)?;
            let description = value
                .remove(media::CONFIG_KEY)
                .ok_or_else(|| bad(format!("no {:?} key", media::CONFIG_KEY)))?;
            let mut config: Config = serde_json::from_value(description)
                .map_err(|e| bad(format!("{}: {e}", media::CONFIG_KEY)))?;
            config.image_config = Some(Value::Object(value));
            Ok(config)
        }
    }
}

fn check_diff_ids(manifest: &Manifest, config: &Map<String, Value>) -> Result<()> {
    let rootfs = config.get("rootfs");
    let diff_ids: Option<Vec<&str>> = rootfs
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .and_then(|ids| ids.iter().map(Value::as_str).collect());
    let layers: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
    let is_layers = rootfs.and_then(|r| r.get("type")).and_then(Value::as_str) == Some("layers");
    match diff_ids {
        Some(ids) if is_layers && ids == layers => Ok(()),
        _ => Err(Error::manifest(
            "config",
            format!(
                "rootfs {} does not name the {} manifest layers as its diff_ids",
                rootfs.map_or_else(|| "(missing)".to_string(), Value::to_string),
                layers.len()
            ),
        )),
    }
}
