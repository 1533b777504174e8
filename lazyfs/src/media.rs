//! Media types and annotation keys of a lazyfs artifact. They are part of the format:
//! registries store the artifact as an ordinary OCI manifest, and readers recognise it by
//! these names.

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// `artifactType` of the manifest.
pub const ARTIFACT: &str = "application/vnd.shoal.lazyfs.v1";
/// Config blob: JSON describing how the image was built.
pub const CONFIG: &str = "application/vnd.shoal.lazyfs.config.v1+json";
/// First layer: the index (see FORMAT.md).
pub const INDEX: &str = "application/vnd.shoal.lazyfs.index.v1+zstd";
/// Remaining layers: data blobs of concatenated zstd frames.
pub const DATA: &str = "application/vnd.shoal.lazyfs.data.v1";

pub const ANN_VERSION: &str = "dev.shoal.lazyfs.version";
pub const ANN_ROLE: &str = "dev.shoal.lazyfs.role";
pub const ANN_SOURCE: &str = "dev.shoal.lazyfs.source";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Accept header for manifest requests: every manifest kind we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
