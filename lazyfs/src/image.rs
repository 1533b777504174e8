//! Reading a regular container image (OCI or Docker schema 2, single image or multi-platform
//! index) and applying its layers, in order, to a [`Tree`].

use oci_spec::image::{ImageIndex, ImageManifest};
use shoal_common::Digest;

use crate::error::{Error, Result};
use crate::layer::{apply_layer, decompress, Spool};
use crate::media;
use crate::store::{read_blob, BlobSource, RawManifest, VerifyReader};
use crate::tree::Tree;

/// What the source image contributed besides its files.
pub struct SourceImage {
    pub manifest_digest: Digest,
    /// The image's own config (entrypoint, env, ...), kept in the lazyfs config.
    pub config: Option<serde_json::Value>,
    pub layers: Vec<(Digest, u64)>,
}

/// Resolve the reference to one image manifest, choosing this machine's platform from an
/// index.
pub fn resolve_manifest(src: &dyn BlobSource) -> Result<(RawManifest, ImageManifest)> {
    let mut fetched = src.manifest(None)?;
    for _ in 0..2 {
        let is_index = matches!(
            fetched.media_type.as_deref(),
            Some(media::OCI_INDEX) | Some(media::DOCKER_LIST)
        ) || serde_json::from_slice::<serde_json::Value>(&fetched.bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some());
        if !is_index {
            let m = ImageManifest::from_reader(fetched.bytes.as_slice())
                .map_err(|e| Error::manifest(src.describe(), e.to_string()))?;
            return Ok((fetched, m));
        }
        let index = ImageIndex::from_reader(fetched.bytes.as_slice())
            .map_err(|e| Error::manifest(src.describe(), e.to_string()))?;
        let arch = crate::artifact::host_architecture();
        let chosen = index
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == arch
                })
            })
            .or_else(|| index.manifests().first())
            .ok_or_else(|| Error::manifest(src.describe(), "image index lists no manifests"))?;
        fetched = src.manifest(Some(&format!("sha256:{}", chosen.digest().digest())))?;
    }
    Err(Error::manifest(src.describe(), "nested image indexes"))
}

/// Apply every layer of the image to `tree`, verifying each blob's digest.
pub fn read_image(
    src: &dyn BlobSource,
    tree: &mut Tree,
    spool: &mut Spool,
    progress: &dyn Fn(&str),
) -> Result<SourceImage> {
    let (fetched, manifest) = resolve_manifest(src)?;
    // Either form: the artifact's own config type, or a runnable image's lazyfs index layer
    // (whose config type is the ordinary one).
    let lazy_types = [media::CONFIG, media::INDEX, media::INDEX_LAYER];
    let is_lazy = std::iter::once(manifest.config().media_type())
        .chain(manifest.layers().iter().map(|l| l.media_type()))
        .any(|t| lazy_types.contains(&t.to_string().as_str()));
    if is_lazy {
        return Err(Error::Invalid(format!(
            "{} is already a lazyfs image",
            src.describe()
        )));
    }
    let config_digest = descriptor_digest(manifest.config().digest().digest(), src)?;
    let config = read_blob(src, &config_digest, 16 << 20)?;
    let config = serde_json::from_slice(&config).ok();
    let mut layers = Vec::new();
    for (n, layer) in manifest.layers().iter().enumerate() {
        let digest = descriptor_digest(layer.digest().digest(), src)?;
        progress(&format!(
            "layer {}/{} {digest}",
            n + 1,
            manifest.layers().len()
        ));
        let mut verify = VerifyReader::new(src.blob(&digest)?, digest);
        {
            let mut tar = decompress(Box::new(&mut verify as &mut (dyn std::io::Read + Send)))
                .map_err(|e| Error::layer(digest.to_string(), "", e.to_string()))?;
            apply_layer(tree, &digest.to_string(), &mut tar, n as u32 + 1, spool)?;
            // Drain what the tar reader did not need so the digest covers the whole blob.
            std::io::copy(&mut tar, &mut std::io::sink()).map_err(|e| Error::Blob {
                digest,
                reason: e.to_string(),
            })?;
        }
        verify.finish().map_err(|e| Error::Blob {
            digest,
            reason: e.to_string(),
        })?;
        layers.push((digest, layer.size()));
    }
    Ok(SourceImage {
        manifest_digest: fetched.digest,
        config,
        layers,
    })
}

fn descriptor_digest(hex: &str, src: &dyn BlobSource) -> Result<Digest> {
    Digest::from_hex(hex)
        .map_err(|e| Error::manifest(src.describe(), format!("unsupported digest: {e}")))
}
