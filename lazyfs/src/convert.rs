//! `convert`: source (image or directory) → tree → index + data blob → lazyfs image (either
//! [`Form`]) at the destination. The pieces are independent modules; this one only sequences
//! them and reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use shoal_common::Digest;

use crate::artifact::{config_blob, make_config, make_manifest, Form, LazyImage};
use crate::builder::{build, content_bytes, BuildOptions};
use crate::chunker::{ChunkDict, ChunkStats};
use crate::error::{Error, IoContext, Result};
use crate::index::ChunkParams;
use crate::layer::Spool;
use crate::media;
use crate::store::{BlobSink, BlobSource, VerifyReader};
use crate::tree::Tree;

/// What a conversion reads: an image (from a registry or an OCI layout) or a plain directory.
pub enum Input {
    Image(Box<dyn BlobSource>),
    Dir(std::path::PathBuf),
}

/// An earlier lazyfs image whose chunks may be referenced instead of stored again.
pub struct Dictionary {
    pub source: Box<dyn BlobSource>,
    pub image: LazyImage,
}

pub struct ConvertOptions {
    pub params: ChunkParams,
    pub keep_mtime: bool,
    pub prefetch: Vec<Vec<u8>>,
    pub dict: Option<Dictionary>,
    pub progress: bool,
    /// Runnable image (the default) or the original artifact.
    pub form: Form,
}

#[derive(Debug)]
pub struct ConvertReport {
    pub manifest_digest: Digest,
    pub index_digest: Digest,
    pub index_size: u64,
    pub data_blob: Option<(Digest, u64)>,
    pub dict_blobs: usize,
    pub entries: usize,
    pub inodes: usize,
    pub stats: ChunkStats,
    pub prefetch_missing: Vec<String>,
    pub read_time: Duration,
    pub build_time: Duration,
    pub total_time: Duration,
}

pub fn convert(src: &Input, dst: &dyn BlobSink, opts: &ConvertOptions) -> Result<ConvertReport> {
    let started = Instant::now();
    let staging = dst.staging_dir();
    let mut spool = Spool::new(&staging)?;
    let spinner = if opts.progress {
        let s = ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(200));
        s
    } else {
        ProgressBar::hidden()
    };
    let (mut tree, image_config) = match src {
        Input::Dir(path) => {
            spinner.set_message(format!("scanning {}", path.display()));
            let (tree, skipped) = crate::dirsrc::read_dir_tree(path)?;
            if skipped > 0 {
                tracing::warn!(skipped, "skipped sockets and other unrepresentable files");
            }
            (tree, None)
        }
        Input::Image(img) => {
            let mut tree = Tree::new();
            let info = crate::image::read_image(img.as_ref(), &mut tree, &mut spool, &|m| {
                spinner.set_message(m.to_string())
            })?;
            (tree, info.config)
        }
    };
    spinner.finish_and_clear();
    if !opts.keep_mtime {
        tree.clear_mtimes();
    }
    let read_time = started.elapsed();

    let dict = match &opts.dict {
        Some(d) => {
            let index = d
                .image
                .index
                .as_ref()
                .map_err(|e| Error::Invalid(format!("chunk dictionary: {e}")))?;
            Some(Arc::new(ChunkDict::from_index(index)))
        }
        None => None,
    };
    let total = content_bytes(&tree);
    let bar = if opts.progress {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let data_file = crate::builder::staging_file(&staging)?;
    let build_started = Instant::now();
    let progress = |n: u64| bar.inc(n);
    let built = build(
        &tree,
        &BuildOptions {
            params: opts.params,
            prefetch: opts.prefetch.clone(),
            dict,
            spool: Some(spool.file()),
            progress: &progress,
        },
        data_file
            .reopen()
            .ctx(|| "reopening the data blob".to_string())?,
    )?;
    bar.finish_and_clear();
    let build_time = build_started.elapsed();
    drop(spool);

    let index_bytes = crate::codec::encode(&built.index, 19)?;
    let index_digest = Digest::of(&index_bytes);
    let index_file = write_staged(&staging, &index_bytes)?;
    let config = make_config(&built.index, image_config);
    let config_bytes = config_blob(opts.form, &config, &index_digest, &built.index.blobs)?;
    let config_digest = Digest::of(&config_bytes);
    let config_file = write_staged(&staging, &config_bytes)?;
    let manifest = make_manifest(
        opts.form,
        (&config_digest, config_bytes.len() as u64),
        (&index_digest, index_bytes.len() as u64),
        &built.index.blobs,
    )?;

    // Dictionary blobs the destination lacks are copied from the dictionary's source.
    for b in &built.dict_blobs {
        if dst.has_blob(&b.digest)? {
            continue;
        }
        let d = opts
            .dict
            .as_ref()
            .ok_or_else(|| Error::Invalid("dictionary blobs without a dictionary".into()))?;
        let tmp = crate::builder::staging_file(&staging)?;
        let mut w = tmp
            .reopen()
            .ctx(|| "staging a dictionary blob".to_string())?;
        let mut r = VerifyReader::new(d.source.blob(&b.digest)?, b.digest);
        std::io::copy(&mut r, &mut w).map_err(|e| Error::Blob {
            digest: b.digest,
            reason: e.to_string(),
        })?;
        dst.put_blob(&b.digest, b.size, tmp.path())?;
    }
    if let Some(b) = &built.data_blob {
        dst.put_blob(&b.digest, b.size, data_file.path())?;
    }
    dst.put_blob(&index_digest, index_bytes.len() as u64, index_file.path())?;
    dst.put_blob(
        &config_digest,
        config_bytes.len() as u64,
        config_file.path(),
    )?;
    let manifest_digest = dst.put_manifest(&manifest, media::MANIFEST)?;

    Ok(ConvertReport {
        manifest_digest,
        index_digest,
        index_size: index_bytes.len() as u64,
        data_blob: built.data_blob.as_ref().map(|b| (b.digest, b.size)),
        dict_blobs: built.dict_blobs.len(),
        entries: built.index.entries.len(),
        inodes: built.index.inodes.len(),
        stats: built.stats,
        prefetch_missing: built.prefetch_missing,
        read_time,
        build_time,
        total_time: started.elapsed(),
    })
}

fn write_staged(dir: &std::path::Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let mut f = crate::builder::staging_file(dir)?;
    std::io::Write::write_all(&mut f, bytes).ctx(|| format!("writing {}", f.path().display()))?;
    Ok(f)
}
