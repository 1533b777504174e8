//! Media types of the blobs named by manifests this mirror served. A blob request carries
//! only a digest; the manifest that named it says what it is, and blobs meant to be read by
//! range (lazyfs data) get small pieces ([`shoal_common::PieceLayout::for_blob`]). Every
//! client reads a manifest through the mirror before its blobs (containerd, the lazy mount), so
//! the peer knows the type whenever it matters; when it does not, the supernode's layout (set by
//! whichever peer registered the task first) still makes every peer cut the blob the same way.

use serde::Deserialize;
use shoal_common::Digest;

/// Blobs remembered; each entry is a digest and a short string.
const CAPACITY: u64 = 100_000;

pub struct MediaTypes {
    known: moka::sync::Cache<Digest, std::sync::Arc<str>>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

impl Default for MediaTypes {
    fn default() -> Self {
        MediaTypes {
            known: moka::sync::Cache::new(CAPACITY),
        }
    }
}

impl MediaTypes {
    /// Records the layers' media types of an image manifest; anything else (an index, a
    /// malformed body) is ignored: it only costs the blob its default layout.
    pub fn learn(&self, manifest: &[u8]) {
        let Ok(m) = serde_json::from_slice::<Manifest>(manifest) else {
            return;
        };
        for layer in m.layers {
            if let (Ok(digest), false) =
                (layer.digest.parse::<Digest>(), layer.media_type.is_empty())
            {
                self.known.insert(digest, layer.media_type.into());
            }
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<String> {
        self.known.get(digest).map(|m| m.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_layer_types_and_ignores_garbage() {
        let d = Digest::of(b"data");
        let m = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.shoal.lazyfs.data.v1","digest":"{d}","size":4}},{{"digest":"bad"}}]}}"#
        );
        let t = MediaTypes::default();
        t.learn(m.as_bytes());
        assert_eq!(
            t.get(&d).as_deref(),
            Some("application/vnd.shoal.lazyfs.data.v1")
        );
        // A runnable lazyfs image: config and index are ordinary descriptors, the data
        // layer's type is what gives its blob small pieces.
        let (index, data) = (Digest::of(b"index"), Digest::of(b"data2"));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{index}","size":5}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.shoal.lazyfs.index.v1+zstd","digest":"{index}","size":5,"annotations":{{"containerd.io/snapshot/shoal.lazyfs.role":"index"}}}},{{"mediaType":"application/vnd.oci.image.layer.shoal.lazyfs.data.v1","digest":"{data}","size":5,"annotations":{{"containerd.io/snapshot/shoal.lazyfs.role":"data"}}}}]}}"#
        );
        t.learn(m.as_bytes());
        let layout = |d: &Digest| {
            shoal_common::PieceLayout::for_blob(64 << 20, t.get(d).as_deref()).piece_size
        };
        assert_eq!(layout(&data), 16 << 10);
        assert_eq!(layout(&index), 1 << 20);
        for garbage in [&b"not json"[..], b"{\"layers\":7}", b"[]", b""] {
            t.learn(garbage);
        }
        assert_eq!(t.get(&Digest::of(b"other")), None);
    }
}
