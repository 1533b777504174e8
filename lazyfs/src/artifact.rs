//! The OCI manifest wrapping a lazyfs image: a config blob, then the index followed by the
//! data blobs, in index order, as layers. It comes in two [`Form`]s: a runnable image
//! (what containerd can pull) and the original artifact; readers accept both.
//!
//! Manifest and config are serialized from our own structs with sorted maps so their bytes
//! (and so the manifest digest) are reproducible too.

mod config;

pub use config::{
    config_blob, host_architecture, make_config, parse_config, Chunking, Compression, Config,
    ConfigStats,
};

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

/// The two shapes a lazyfs image's manifest and config take (FORMAT.md §1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Form {
    /// A runnable OCI image: containerd's CRI plugin pulls and runs it, with the lazyfs
    /// snapshotter mounting its layers lazily.
    #[default]
    Image,
    /// The original OCI artifact (`convert --artifact`): what older readers understand.
    Artifact,
}

impl Form {
    pub fn config_type(self) -> &'static str {
        match self {
            Form::Image => media::IMAGE_CONFIG,
            Form::Artifact => media::CONFIG,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Form::Image => media::INDEX_LAYER,
            Form::Artifact => media::INDEX,
        }
    }

    pub fn data_type(self) -> &'static str {
        match self {
            Form::Image => media::DATA_LAYER,
            Form::Artifact => media::DATA,
        }
    }

    /// Which form `manifest` (of the image `what`) is in, told by its first layer.
    pub fn of(manifest: &Manifest, what: &str) -> Result<Form> {
        let first = manifest.layers.first().map(|l| l.media_type.as_str());
        let form = [Form::Image, Form::Artifact]
            .into_iter()
            .find(|f| first == Some(f.index_type()))
            .ok_or_else(|| {
                Error::manifest(
                    what,
                    format!(
                        "first layer {} is not a lazyfs index (not a lazyfs image?)",
                        first.unwrap_or("(none)")
                    ),
                )
            })?;
        if manifest.config.media_type != form.config_type() {
            return Err(Error::manifest(
                what,
                format!(
                    "config media type {} is not {}",
                    manifest.config.media_type,
                    form.config_type()
                ),
            ));
        }
        Ok(form)
    }

    fn layer(self, digest: &Digest, size: u64, role: &str) -> Descriptor {
        let media_type = if role == "index" {
            self.index_type()
        } else {
            self.data_type()
        };
        let mut d = descriptor(media_type, digest, size, role);
        if self == Form::Image {
            d.annotations
                .insert(media::ANN_SNAPSHOT_ROLE.to_string(), role.to_string());
        }
        d
    }
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

/// Manifest bytes for a config blob, an index blob and its data blobs (in index order).
pub fn make_manifest(
    form: Form,
    config: (&Digest, u64),
    index: (&Digest, u64),
    blobs: &[BlobRef],
) -> Result<Vec<u8>> {
    let mut layers = vec![form.layer(index.0, index.1, "index")];
    layers.extend(blobs.iter().map(|b| form.layer(&b.digest, b.size, "data")));
    let m = Manifest {
        schema_version: 2,
        media_type: media::MANIFEST.into(),
        artifact_type: match form {
            Form::Image => String::new(),
            Form::Artifact => media::ARTIFACT.into(),
        },
        config: descriptor(form.config_type(), config.0, config.1, ""),
        layers,
        annotations: BTreeMap::from([(media::ANN_VERSION.to_string(), "1".to_string())]),
    };
    serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))
}

/// A lazyfs image as read back from a source. `index` is `Err` when the index blob does not
/// verify or parse; `check` reports that instead of stopping.
pub struct LazyImage {
    pub form: Form,
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
        let form = Form::of(&manifest, &what())?;
        let index_desc = manifest
            .layers
            .first()
            .ok_or_else(|| Error::manifest(what(), "no layers"))?;
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
            reason: crate::error::with_causes(&e),
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
                check_blob_list(form, &manifest, &ix)?;
                Ok(ix)
            })
        };
        Ok(LazyImage {
            form,
            manifest_digest: fetched.digest,
            manifest,
            index_digest,
            index_bytes,
            index,
        })
    }

    /// Our build description, with the source image's config (see [`Config::image_config`]).
    pub fn config(&self, src: &dyn BlobSource) -> Result<Config> {
        let d: Digest = self
            .manifest
            .config
            .digest
            .parse()
            .map_err(|e: shoal_common::ParseError| Error::manifest("config", e.to_string()))?;
        let bytes = read_blob(src, &d, 16 << 20)?;
        parse_config(self.form, &self.manifest, &bytes)
    }
}

/// The manifest's data layers must be exactly the index's blob table.
fn check_blob_list(form: Form, manifest: &Manifest, index: &Index) -> Result<()> {
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
        if l.digest != b.digest.to_string() || l.size != b.size {
            return Err(Error::manifest(
                format!("layer #{}", n + 1),
                format!(
                    "{} ({} bytes) differs from index blob #{n} {} ({} bytes)",
                    l.digest, l.size, b.digest, b.size
                ),
            ));
        }
        if l.media_type != form.data_type() {
            return Err(Error::manifest(
                format!("layer #{}", n + 1),
                format!("media type {} is not {}", l.media_type, form.data_type()),
            ));
        }
    }
    Ok(())
}
