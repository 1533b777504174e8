//! The OCI artifact wrapping a lazyfs image: a manifest whose config is a small JSON blob
//! and whose layers are the index followed by the data blobs, in index order.
//!
//! Manifest and config are serialized from our own structs with sorted maps so their bytes
//! (and so the manifest digest) are reproducible too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_common::Digest;

use crate::error::{Error, Result};
use crate::index::{BlobRef, Index};
use crate::media;
use crate::store::{read_blob, BlobSource};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub chunking: Chunking,
    pub compression: Compression,
    pub stats: ConfigStats,
    /// The source image's config (entrypoint, environment...), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<serde_json::Value>,
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

pub fn descriptor(media_type: &str, digest: &Digest, size: u64, role: &str) -> Descriptor {
    let mut annotations = BTreeMap::new();
    if !role.is_empty() {
        annotations.insert(media::ANN_ROLE.to_string(), role.to_string());
    }
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size,
        annotations,
    }
}

pub fn make_config(index: &Index, image_config: Option<serde_json::Value>) -> Config {
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

/// Manifest bytes for an index blob, its data blobs (in index order) and a config blob.
pub fn make_manifest(
    config: (&Digest, u64),
    index: (&Digest, u64),
    blobs: &[BlobRef],
) -> Result<Vec<u8>> {
    let mut layers = vec![descriptor(media::INDEX, index.0, index.1, "index")];
    layers.extend(
        blobs
            .iter()
            .map(|b| descriptor(media::DATA, &b.digest, b.size, "data")),
    );
    let m = Manifest {
        schema_version: 2,
        media_type: media::MANIFEST.into(),
        artifact_type: media::ARTIFACT.into(),
        config: descriptor(media::CONFIG, config.0, config.1, ""),
        layers,
        annotations: BTreeMap::from([(media::ANN_VERSION.to_string(), "1".to_string())]),
    };
    serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))
}

/// A lazyfs image as read back from a source. `index` is `Err` when the index blob does not
/// verify or parse; `check` reports that instead of stopping.
pub struct LazyImage {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub index_digest: Digest,
    pub index_bytes: Vec<u8>,
    pub index: Result<Index>,
}

impl LazyImage {
    pub fn open(src: &dyn BlobSource) -> Result<Self> {
        let fetched = src.manifest(None)?;
        let what = || src.describe();
        let manifest: Manifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| Error::manifest(what(), e.to_string()))?;
        if manifest.config.media_type != media::CONFIG {
            return Err(Error::manifest(
                what(),
                format!(
                    "config media type {} is not {} (not a lazyfs image?)",
                    manifest.config.media_type,
                    media::CONFIG
                ),
            ));
        }
        let index_desc = manifest
            .layers
            .first()
            .filter(|l| l.media_type == media::INDEX)
            .ok_or_else(|| Error::manifest(what(), "first layer is not a lazyfs index"))?;
        let index_digest: Digest = index_desc
            .digest
            .parse()
            .map_err(|e: shoal_common::ParseError| Error::manifest(what(), e.to_string()))?;
        // Read without verification first so a corrupt index can still be diagnosed.
        let mut index_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(src.blob(&index_digest)?, crate::codec::MAX_BODY + 1),
            &mut index_bytes,
        )
        .map_err(|e| Error::Blob {
            digest: index_digest,
            reason: e.to_string(),
        })?;
        let index = if Digest::of(&index_bytes) != index_digest {
            // Still parse, for a more precise message.
            match crate::codec::decode(&index_bytes) {
                Err(e) => Err(e),
                Ok(_) => Err(Error::Blob {
                    digest: index_digest,
                    reason: "index blob does not match its digest".into(),
                }),
            }
        } else {
            crate::codec::decode(&index_bytes).and_then(|ix| {
                check_blob_list(&manifest, &ix)?;
                Ok(ix)
            })
        };
        Ok(LazyImage {
            manifest_digest: fetched.digest,
            manifest,
            index_digest,
            index_bytes,
            index,
        })
    }

    pub fn config(&self, src: &dyn BlobSource) -> Result<Config> {
        let d: Digest = self
            .manifest
            .config
            .digest
            .parse()
            .map_err(|e: shoal_common::ParseError| Error::manifest("config", e.to_string()))?;
        let bytes = read_blob(src, &d, 16 << 20)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::manifest("config", e.to_string()))
    }
}

/// The manifest's data layers must be exactly the index's blob table.
fn check_blob_list(manifest: &Manifest, index: &Index) -> Result<()> {
    let data = manifest.layers.get(1..).unwrap_or_default();
    if data.len() != index.blobs.len() {
        return Err(Error::manifest(
            "layers",
            format!(
                "{} data layers but the index names {} blobs",
                data.len(),
                index.blobs.len()
            ),
        ));
    }
    for (n, (l, b)) in data.iter().zip(&index.blobs).enumerate() {
        if l.digest != b.digest.to_string() || l.size != b.size || l.media_type != media::DATA {
            return Err(Error::manifest(
                format!("layer #{}", n + 1),
                format!(
                    "{} ({} bytes) differs from index blob #{n} {} ({} bytes)",
                    l.digest, l.size, b.digest, b.size
                ),
            ));
        }
    }
    Ok(())
}
