//! Small HTTP helpers that run *inside* a namespace (`ip netns exec NS shoal-bench internal …`),
//! since the benchmark itself stays in the root namespace, which has no route to the
//! simulated hosts. Also the functions that call them from the outside.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use shoal_common::{Digest, Sha256Hasher};
use tokio::io::AsyncWriteExt;

use crate::cli::{InternalArgs, InternalCommand};
use crate::netns::Namespace;
use crate::processes;
use crate::start_gate;
use crate::tcp_split;

pub async fn main(args: InternalArgs) -> Result<()> {
    if args.gate {
        client()?;
        start_gate::wait_for_go().await?;
    }
    match args.command {
        InternalCommand::Fetch {
            url,
            output,
            digest,
        } => fetch(&url, &output, &digest).await,
        InternalCommand::Push {
            registry,
            repo,
            file,
            digest,
        } => push(&registry, &repo, &file, &digest).await,
        InternalCommand::SplitOrigin {
            listen,
            size,
            nodes,
        } => tcp_split::origin(listen, size, nodes).await,
        InternalCommand::SplitNode {
            index,
            size,
            origin,
            peers,
        } => tcp_split::node(index, size, origin, peers).await,
        InternalCommand::SplitWait { node } => tcp_split::wait(node).await,
        InternalCommand::Drain { url } => drain(&url).await,
        InternalCommand::Exec { argv } => exec(&argv),
        InternalCommand::ReadSet {
            mount,
            source,
            list,
            result,
            timeout,
        } => {
            crate::lazy_cluster_read::main(crate::lazy_cluster_read::ReadSet {
                mount,
                source,
                list,
                result,
                timeout: Duration::from_secs(timeout),
            })
            .await
        }
        InternalCommand::HttpGet { url, quiet } => {
            let body = http_get(&url).await?;
            if !quiet {
                print!("{body}");
            }
            Ok(())
        }
    }
}

/// The process's HTTP client. Building one loads the system's root certificates (several
/// milliseconds of CPU), which a gated client does before the start signal, not on the clock.
pub fn client() -> Result<reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let built = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    Ok(CLIENT.get_or_init(|| built).clone())
}

async fn http_get(url: &str) -> Result<String> {
    let resp = client()?
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await.with_context(|| format!("GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

/// `GET url`, failing unless the status is 2xx; the body is left to the caller.
async fn get_ok(url: &str) -> Result<reqwest::Response> {
    let resp = client()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    Ok(resp)
}

/// Downloads `url` to `output` (via a temporary file renamed at the end), failing unless the
/// bytes have `digest`.
async fn fetch(url: &str, output: &Path, digest: &Digest) -> Result<()> {
    let resp = get_ok(url).await?;
    let tmp = output.with_extension("part");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256Hasher::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading {url}"))?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    let got = hasher.finish();
    if got != *digest {
        let _ = tokio::fs::remove_file(&tmp).await;
        bail!("{url}: got {got}, expected {digest}");
    }
    tokio::fs::rename(&tmp, output).await?;
    Ok(())
}

/// Reads the whole body of `GET url` and drops it; an error unless it is complete (a server
/// that cuts the body short, as the mirror does on a digest mismatch, fails this).
async fn drain(url: &str) -> Result<()> {
    let resp = get_ok(url).await?;
    let expected = resp.content_length();
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        got += chunk.with_context(|| format!("reading {url}"))?.len() as u64;
    }
    match expected {
        Some(len) if len != got => bail!("{url}: body ended after {got} of {len} bytes"),
        None => bail!("{url}: no Content-Length"),
        _ => Ok(()),
    }
}

fn exec(argv: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let (program, args) = argv.split_first().context("exec: no program")?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("exec {}", program.to_string_lossy()))
}

async fn push(registry: &str, repo: &str, file: &Path, digest: &Digest) -> Result<()> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    push_bytes(&client()?, registry, repo, bytes, digest).await
}

/// Monolithic blob upload: `POST /v2/REPO/blobs/uploads/`, then `PUT <Location>&digest=…`;
/// then checks the registry has it.
pub async fn push_bytes(
    client: &reqwest::Client,
    registry: &str,
    repo: &str,
    bytes: Vec<u8>,
    digest: &Digest,
) -> Result<()> {
    let start = format!("{registry}/v2/{repo}/blobs/uploads/");
    let resp = client
        .post(&start)
        .send()
        .await
        .with_context(|| format!("POST {start}"))?;
    if !resp.status().is_success() {
        bail!("POST {start}: HTTP {}", resp.status());
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the registry sent no upload Location")?;
    let base = reqwest::Url::parse(&start)?;
    let mut put = base
        .join(location)
        .with_context(|| format!("bad upload Location {location:?}"))?;
    put.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let resp = client
        .put(put.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("PUT {put}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("PUT {put}: HTTP {status}: {}", body.trim());
    }
    let check = format!("{registry}/v2/{repo}/blobs/{digest}");
    let resp = client.head(&check).send().await?;
    if !resp.status().is_success() {
        bail!("HEAD {check} after the push: HTTP {}", resp.status());
    }
    Ok(())
}

/// The body of `GET url` fetched from inside `ns`.
pub async fn http_text_in(ns: &Namespace, url: &str) -> Result<String> {
    let out = ns
        .tokio_command(processes::self_exe()?)
        .args(["internal", "http-get", url])
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("GET {url} in {}", ns.name()))?;
    if !out.status.success() {
        bail!(
            "in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `GET url` from inside `ns` answers 2xx.
pub async fn http_ok_in(ns: &Namespace, url: &str) -> bool {
    http_text_in(ns, url).await.is_ok()
}
