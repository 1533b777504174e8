//! Where images come from and go to. Two small traits hide whether blobs live in an OCI
//! image layout directory or a registry, so conversion, checking and unpacking are written
//! once. Every full-blob read is verified against its digest.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use shoal_common::{Digest, Sha256Hasher};

use crate::error::{Error, Result};
use crate::ocidir::OciDir;
use crate::reference::ImageRef;
use crate::registry::{Registry, RegistryOptions};

/// A manifest as fetched, with the digest of its exact bytes.
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: Digest,
}

pub trait BlobSource: Send + Sync {
    /// For messages.
    fn describe(&self) -> String;
    /// The tag or digest the reference named (`None`: the only image of a layout).
    fn reference(&self) -> Option<String>;
    /// Fetch a manifest (or image index) by tag or digest; `None` means the default.
    fn manifest(&self, reference: Option<&str>) -> Result<RawManifest>;
    /// Stream a whole blob (not verified; wrap in [`VerifyReader`]).
    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;
    /// Exactly `len` bytes at `offset` of a blob; short if the blob is shorter.
    fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>>;
}

pub trait BlobSink {
    fn describe(&self) -> String;
    /// A directory where temporary files can be created cheaply for this destination.
    fn staging_dir(&self) -> PathBuf;
    fn has_blob(&self, digest: &Digest) -> Result<bool>;
    /// Store the file at `path` (already known to hash to `digest`) as a blob.
    fn put_blob(&self, digest: &Digest, size: u64, path: &Path) -> Result<()>;
    /// Store a manifest and point the destination's tag at it.
    fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest>;
}

/// Open a reference for reading (`dir:` references are not blob sources).
pub fn open_source(r: &ImageRef, opts: &RegistryOptions) -> Result<Box<dyn BlobSource>> {
    match r {
        ImageRef::Registry {
            host,
            repo,
            reference,
        } => Ok(Box::new(Registry::new(host, repo, reference, opts)?)),
        ImageRef::OciDir { dir, tag } => Ok(Box::new(OciDir::new(dir.clone(), tag.clone()))),
        ImageRef::Dir(_) => Err(Error::Invalid(format!("{r}: a directory is not an image"))),
    }
}

pub fn open_sink(r: &ImageRef, opts: &RegistryOptions) -> Result<Box<dyn BlobSink>> {
    match r {
        ImageRef::Registry {
            host,
            repo,
            reference,
        } => {
            if reference.starts_with("sha256:") {
                return Err(Error::Invalid(format!(
                    "{r}: a destination needs a tag, not a digest"
                )));
            }
            Ok(Box::new(Registry::new(host, repo, reference, opts)?))
        }
        ImageRef::OciDir { dir, tag } => Ok(Box::new(OciDir::new(
            dir.clone(),
            Some(tag.clone().unwrap_or_else(|| "latest".to_string())),
        ))),
        ImageRef::Dir(_) => Err(Error::Invalid(format!("{r}: dir: can only be a source"))),
    }
}

/// Read a whole blob into memory, refusing more than `limit` bytes and verifying it.
pub fn read_blob(src: &dyn BlobSource, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
    let mut r = VerifyReader::new(src.blob(digest)?, *digest);
    let mut out = Vec::new();
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Blob {
            digest: *digest,
            reason: crate::error::with_causes(&e),
        })?;
    if out.len() as u64 > limit {
        return Err(Error::Blob {
            digest: *digest,
            reason: format!("larger than the {limit}-byte limit"),
        });
    }
    Ok(out)
}

/// Hashes everything read through it and fails the read that reaches end of stream if the
/// digest is wrong, so a consumer can never finish on corrupt data.
pub struct VerifyReader<R> {
    inner: R,
    hasher: Option<Sha256Hasher>,
    want: Digest,
    pub bytes: u64,
}

impl<R: Read> VerifyReader<R> {
    pub fn new(inner: R, want: Digest) -> Self {
        VerifyReader {
            inner,
            hasher: Some(Sha256Hasher::new()),
            want,
            bytes: 0,
        }
    }

    /// Read whatever the consumer left (tar trailers) so the digest covers the whole blob.
    pub fn finish(mut self) -> io::Result<u64> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.bytes)
    }
}

impl<R: Read> Read for VerifyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if let Some(h) = self.hasher.take() {
                let got = h.finish();
                if got != self.want {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("blob content hashes to {got}, expected {}", self.want),
                    ));
                }
            }
            return Ok(0);
        }
        if let (Some(h), Some(data)) = (self.hasher.as_mut(), buf.get(..n)) {
            h.update(data);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_reader_detects_corruption() {
        let data = b"hello".to_vec();
        let good = Digest::of(&data);
        let mut ok = Vec::new();
        VerifyReader::new(&data[..], good)
            .read_to_end(&mut ok)
            .unwrap();
        let mut bad = Vec::new();
        assert!(VerifyReader::new(&b"hellp"[..], good)
            .read_to_end(&mut bad)
            .is_err());
    }
}
