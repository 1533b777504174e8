//! Media types and annotation keys of a lazyfs image. They are part of the format:
//! registries store the image as an ordinary OCI manifest, and readers recognise it by
//! these names. An image comes in two forms (FORMAT.md §1): a runnable OCI image (the
//! default) and the original OCI artifact (`convert --artifact`).

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Artifact form: `artifactType` of the manifest.
pub const ARTIFACT: &str = "application/vnd.shoal.lazyfs.v1";
/// Artifact form: config blob, JSON describing how the image was built.
pub const CONFIG: &str = "application/vnd.shoal.lazyfs.config.v1+json";
/// Artifact form: first layer, the index (see FORMAT.md).
pub const INDEX: &str = "application/vnd.shoal.lazyfs.index.v1+zstd";
/// Artifact form: remaining layers, data blobs of concatenated zstd frames.
pub const DATA: &str = "application/vnd.shoal.lazyfs.data.v1";

/// Image form: containerd's CRI plugin only runs images whose config is an OCI (or Docker)
/// image config; it reads entrypoint, environment and the layers' diff_ids from it.
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Image form: the index layer. containerd (1.6) treats only descriptors whose media type
/// starts with `application/vnd.oci.image.layer.` as layers, to be handed to the
/// snapshotter; anything else it downloads whole during the pull as a "non-layer" child,
/// which would defeat lazy loading.
pub const INDEX_LAYER: &str = "application/vnd.oci.image.layer.shoal.lazyfs.index.v1+zstd";
/// Image form: the data layers, for the same reason as [`INDEX_LAYER`].
pub const DATA_LAYER: &str = "application/vnd.oci.image.layer.shoal.lazyfs.data.v1";
/// Image form: the config key holding our build description (what the artifact form's
/// config blob holds), next to the source image's own fields.
pub const CONFIG_KEY: &str = "shoal.lazyfs";

pub const ANN_VERSION: &str = "dev.shoal.lazyfs.version";
pub const ANN_ROLE: &str = "dev.shoal.lazyfs.role";
/// Image form: the layer's role again (`index`, `data`) under a key containerd forwards.
/// containerd passes layer annotations prefixed `containerd.io/snapshot/` to the snapshotter
/// as labels of the snapshot it prepares; the snapshotter sees nothing else of the layer, so
/// this is how it recognises a lazyfs layer.
pub const ANN_SNAPSHOT_ROLE: &str = "containerd.io/snapshot/shoal.lazyfs.role";
pub const ANN_SOURCE: &str = "dev.shoal.lazyfs.source";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Accept header for manifest requests: every manifest kind we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
