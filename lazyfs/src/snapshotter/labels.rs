//! Labels containerd sets on `Prepare` (the CRI ones only with CRI's
//! `disable_snapshot_annotations = false`), the one the converter adds to each layer, and
//! the image a lazy layer belongs to.

use std::collections::HashMap;

use crate::reference::ImageRef;

/// The committed snapshot (chain id) containerd will look for after "already exists".
pub const TARGET: &str = "containerd.io/snapshot.ref";
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// `index` or `data`: a layer of a Shoal lazy image.
pub const ROLE: &str = crate::media::ANN_SNAPSHOT_ROLE;

/// `HOST/REPO@sha256:…` of the image a lazy index layer belongs to, from CRI's labels.
pub fn image_of(labels: &HashMap<String, String>) -> std::result::Result<String, String> {
    let need = |name: &str| {
        labels.get(name).cloned().ok_or_else(|| {
            format!(
                "a lazyfs index layer needs the {name} label (containerd's CRI plugin sets it \
                 when disable_snapshot_annotations = false)"
            )
        })
    };
    let image = need(IMAGE_REF)?;
    let digest = need(MANIFEST_DIGEST)?;
    let digest: shoal_common::Digest = digest
        .parse()
        .map_err(|e| format!("{}: {e}", MANIFEST_DIGEST))?;
    // A reference may carry both a tag and a digest; the manifest digest decides.
    let name = image.split('@').next().unwrap_or_default();
    let parsed = ImageRef::parse(name)
        .or_else(|_| ImageRef::parse(&format!("{name}:latest")))
        .map_err(|e| format!("{}: {e}", IMAGE_REF))?;
    match parsed {
        ImageRef::Registry { host, repo, .. } => Ok(format!("{host}/{repo}@{digest}")),
        _ => Err(format!(
            "{}: {image:?} is not a registry reference",
            IMAGE_REF
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_reference_from_cri_labels() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let labels = |r: &str| {
            HashMap::from([
                (IMAGE_REF.to_string(), r.to_string()),
                (MANIFEST_DIGEST.to_string(), d.clone()),
            ])
        };
        assert_eq!(
            image_of(&labels("127.0.0.1:5000/lazy:1")).unwrap(),
            format!("127.0.0.1:5000/lazy@{d}")
        );
        assert_eq!(
            image_of(&labels(&format!("r.io/a/b:t@{d}"))).unwrap(),
            format!("r.io/a/b@{d}")
        );
        assert_eq!(
            image_of(&labels("busybox")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        let mut bad = labels("r.io/x:1");
        bad.insert(MANIFEST_DIGEST.into(), "sha256:zz".into());
        assert!(image_of(&bad).is_err());
        bad.remove(MANIFEST_DIGEST);
        assert!(image_of(&bad)
            .unwrap_err()
            .contains("disable_snapshot_annotations"));
    }
}
