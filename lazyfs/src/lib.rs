//! lazyfs: Shoal's seekable, deduplicated, reproducible image format and its converter.
//! The byte layout is specified in `FORMAT.md`; this crate is a map of small modules:
//!
//! Format
//! - [`index`]: the in-memory index and the queries a reader needs (lookup, chunk ranges).
//! - [`codec`]: index bytes ⇄ [`Index`], validating untrusted input.
//! - [`media`]: media types and annotations of both published forms (runnable image, artifact).
//! - [`artifact`]: the manifest and config of either form; opening a lazyfs image.
//!
//! Building
//! - [`tree`]: the filesystem tree assembled before chunking.
//! - [`layer`]: applying OCI layer tars (whiteouts, opaque dirs, hardlinks, xattrs).
//! - [`dirsrc`]: reading a plain directory.
//! - [`image`]: reading a regular container image's manifest and layers.
//! - [`chunker`]: content-defined chunking, dedup, compression, data blob writing.
//! - [`builder`]: tree → index + data blob, deterministically.
//! - [`convert`]: the whole conversion.
//!
//! Storage
//! - [`reference`]: `HOST/REPO:TAG`, `oci:DIR:TAG`, `dir:PATH`.
//! - [`store`]: the [`BlobSource`]/[`BlobSink`] traits and verified reads.
//! - [`ocidir`]: OCI image layout directories.
//! - [`registry`]: images in a registry, as a source and a sink (over `shoal-registry`).
//!
//! Reading back
//! - [`check`]: full verification naming bad chunks and entries.
//! - [`unpack`]: materializing the tree in a directory.
//! - [`inspect`]: statistics and listings.
//! - [`mount`]: the lazy FUSE mount (`shoal-lazyfs mount`).
//! - [`snapshotter`]: containerd's remote snapshotter (`shoal-lazyfs snapshotter`): lazy
//!   images mounted through [`mount`], every other image like containerd's overlayfs.
//!
//! Errors are one enum, [`Error`].

pub mod artifact;
pub mod builder;
pub mod check;
pub mod chunker;
pub mod codec;
pub mod convert;
pub mod dirsrc;
pub mod error;
pub mod image;
pub mod index;
pub mod inspect;
pub mod layer;
pub mod media;
pub mod mount;
pub mod ocidir;
pub mod reference;
pub mod registry;
pub mod snapshotter;
pub mod store;
pub mod tree;
pub mod unpack;

pub use artifact::LazyImage;
pub use error::{Error, Result, SnapshotCode};
pub use index::{ChunkParams, Index, Kind};
pub use reference::ImageRef;
pub use registry::RegistryOptions;
pub use store::{BlobSink, BlobSource};
