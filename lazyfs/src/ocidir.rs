//! An OCI image layout directory (`oci:DIR:TAG`): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`. Tags are `org.opencontainers.image.ref.name` annotations.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shoal_common::Digest;

use crate::error::{Error, IoContext, Result};
use crate::media;
use crate::store::{BlobSink, BlobSource, RawManifest};

pub struct OciDir {
    dir: PathBuf,
    tag: Option<String>,
}

impl OciDir {
    pub fn new(dir: PathBuf, tag: Option<String>) -> Self {
        OciDir { dir, tag }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(d.hex())
    }

    fn index_json(&self) -> Result<Value> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::manifest(path.display().to_string(), e.to_string()))
    }

    fn init(&self) -> Result<()> {
        let blobs = self.dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).ctx(|| format!("creating {}", blobs.display()))?;
        let layout = self.dir.join("oci-layout");
        if !layout.exists() {
            fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .ctx(|| format!("writing {}", layout.display()))?;
        }
        Ok(())
    }
}

impl BlobSource for OciDir {
    fn describe(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn reference(&self) -> Option<String> {
        self.tag.clone()
    }

    fn manifest(&self, reference: Option<&str>) -> Result<RawManifest> {
        let reference = reference.map(str::to_string).or_else(|| self.tag.clone());
        let what = || {
            format!(
                "{}:{}",
                BlobSource::describe(self),
                reference.as_deref().unwrap_or("")
            )
        };
        let (digest, media_type) = match reference.as_deref().map(|r| (r, r.parse::<Digest>())) {
            Some((_, Ok(d))) => (d, None),
            other => {
                let index = self.index_json()?;
                let manifests = index
                    .get("manifests")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let tag = other.map(|(r, _)| r);
                let found: Vec<&Value> = manifests
                    .iter()
                    .filter(|m| match tag {
                        Some(t) => {
                            m.pointer("/annotations/org.opencontainers.image.ref.name")
                                .and_then(Value::as_str)
                                == Some(t)
                        }
                        None => true,
                    })
                    .collect();
                let m = match found.as_slice() {
                    [one] => *one,
                    [] => return Err(Error::manifest(what(), "no such tag in index.json")),
                    _ => {
                        return Err(Error::manifest(
                            what(),
                            "several manifests match; name a tag",
                        ))
                    }
                };
                let digest = m
                    .get("digest")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::manifest(what(), "descriptor without digest"))?
                    .parse::<Digest>()
                    .map_err(|e| Error::manifest(what(), e.to_string()))?;
                (
                    digest,
                    m.get("mediaType")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
            }
        };
        let bytes = crate::store::read_blob(self, &digest, 16 << 20)?;
        let media_type = media_type.or_else(|| {
            serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
                v.get("mediaType")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        });
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|e| Error::Blob {
            digest: *digest,
            reason: format!("{}: {e}", path.display()),
        })?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let mut f = File::open(&path).map_err(|e| Error::Blob {
            digest: *digest,
            reason: format!("{}: {e}", path.display()),
        })?;
        f.seek(SeekFrom::Start(offset))
            .ctx(|| format!("reading {}", path.display()))?;
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        f.take(len)
            .read_to_end(&mut out)
            .ctx(|| format!("reading {}", path.display()))?;
        Ok(out)
    }
}

impl BlobSink for OciDir {
    fn describe(&self) -> String {
        BlobSource::describe(self)
    }

    fn staging_dir(&self) -> PathBuf {
        // Inside the layout so blobs can be moved into place with a hard link.
        let _ = self.init();
        self.dir.join("blobs")
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_path(digest).is_file())
    }

    fn put_blob(&self, digest: &Digest, _size: u64, path: &Path) -> Result<()> {
        self.init()?;
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(());
        }
        if fs::hard_link(path, &dest).is_err() {
            let tmp = dest.with_extension("partial");
            fs::copy(path, &tmp)
                .ctx(|| format!("copying {} to {}", path.display(), tmp.display()))?;
            fs::rename(&tmp, &dest).ctx(|| format!("renaming {}", tmp.display()))?;
        }
        Ok(())
    }

    fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest> {
        self.init()?;
        let digest = Digest::of(bytes);
        let dest = self.blob_path(&digest);
        write_atomic(&dest, bytes)?;
        let tag = self.tag.clone().unwrap_or_else(|| "latest".to_string());
        let mut index = if self.dir.join("index.json").is_file() {
            self.index_json()?
        } else {
            json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": []})
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                Error::manifest(
                    self.dir.join("index.json").display().to_string(),
                    "no manifests array",
                )
            })?;
        manifests.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                != Some(tag.as_str())
        });
        manifests.push(json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
            "annotations": {media::ANN_REF_NAME: tag},
        }));
        let out = serde_json::to_vec(&index).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(&self.dir.join("index.json"), &out)?;
        Ok(digest)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("shoal-tmp");
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming {}", tmp.display()))
}
