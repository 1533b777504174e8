//! `shoal-peer get`: downloads a URL through the local peer daemon into a file, with a
//! progress bar. The file appears only complete and verified: bytes go to a temporary file
//! beside it that is renamed at the end and deleted on any failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_common::api::ErrorBody;
use shoal_common::task::parse_download_url;
use shoal_common::{Digest, Sha256Hasher};
use url::Url;

use crate::error::{Error, Result};
use crate::source::http::error_chain;

#[derive(Debug, Clone)]
pub struct GetOptions {
    pub url: String,
    pub output: PathBuf,
    pub digest: Option<Digest>,
    /// The local daemon's mirror/API address.
    pub peer: Url,
    pub progress: bool,
}

#[derive(Debug)]
pub struct GetSummary {
    pub bytes: u64,
    pub elapsed: Duration,
    pub digest: Digest,
}

/// Removes the temporary file unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    output.with_file_name(format!(".{name}.shoal-{}.part", std::process::id()))
}

pub async fn get(opts: GetOptions) -> Result<GetSummary> {
    let url = parse_download_url(&opts.url)?;
    if opts.output.as_os_str().is_empty() || opts.output.is_dir() {
        return Err(Error::BadRequest(format!(
            "output {:?} must be a file path",
            opts.output
        )));
    }
    let mut api = opts
        .peer
        .join("/api/v1/download")
        .map_err(|e| Error::BadRequest(format!("peer address {}: {e}", opts.peer)))?;
    api.query_pairs_mut().append_pair("url", url.as_str());
    if let Some(d) = &opts.digest {
        api.query_pairs_mut().append_pair("digest", &d.to_string());
    }
    let started = Instant::now();
    let peer_err = |message: String| Error::Parent {
        peer: opts.peer.to_string(),
        message,
        reason: shoal_common::api::FailReason::Unreachable,
        fault: crate::error::ParentFault::Other,
    };
    let resp = reqwest::Client::new()
        .get(api)
        .send()
        .await
        .map_err(|e| peer_err(format!("is the daemon running? {}", error_chain(&e))))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let msg = match resp.json::<ErrorBody>().await {
            Ok(b) => b.message,
            Err(_) => "no details".into(),
        };
        return Err(Error::DownloadFailed {
            task: shoal_common::TaskId::for_download(&url, opts.digest),
            message: format!("HTTP {status}: {msg}"),
        });
    }
    let total = resp.content_length();
    let bar = if opts.progress {
        let bar = ProgressBar::new(total.unwrap_or(0));
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    let tmp_path = temp_path(&opts.output);
    let mut guard = TempFile(Some(tmp_path.clone()));
    let mut out = std::fs::File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
    let mut hasher = Sha256Hasher::new();
    let mut written = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| peer_err(format!("download interrupted: {}", error_chain(&e))))?;
        hasher.update(&chunk);
        out.write_all(&chunk).map_err(|e| Error::io(&tmp_path, e))?;
        written += chunk.len() as u64;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    if let Some(t) = total {
        if written != t {
            return Err(peer_err(format!(
                "download ended after {written} of {t} bytes"
            )));
        }
    }
    let digest = hasher.finish();
    if let Some(expected) = opts.digest {
        if digest != expected {
            return Err(Error::BlobDigest {
                task: shoal_common::TaskId::Content(expected),
                expected,
                actual: digest,
            });
        }
    }
    out.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
    drop(out);
    std::fs::rename(&tmp_path, &opts.output).map_err(|e| Error::io(&opts.output, e))?;
    guard.0 = None;
    Ok(GetSummary {
        bytes: written,
        elapsed: started.elapsed(),
        digest,
    })
}
