//! The image commands: `convert`, `inspect`, `check`, `unpack`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use shoal_common::ByteSize;
use shoal_lazyfs::artifact::Form;
use shoal_lazyfs::convert::{convert, ConvertOptions, Dictionary, Input};
use shoal_lazyfs::store::{open_sink, open_source};
use shoal_lazyfs::{ChunkParams, ImageRef, LazyImage, RegistryOptions};
use shoal_runtime::Exit;

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Registry host (HOST or HOST:PORT) to reach over plain http; repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Pull through the local Shoal peer's mirror endpoint (e.g. http://127.0.0.1:65001).
    #[arg(long, value_name = "URL", env = "SHOAL_PEER")]
    peer: Option<String>,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure.clone(),
            peer: self.peer.clone(),
            no_fallback: false,
        }
    }
}

#[derive(Args)]
pub struct ConvertArgs {
    src: String,
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Smallest chunk FastCDC cuts inside a file.
    #[arg(long, default_value = "64KiB", env = "SHOAL_LAZYFS_MIN_CHUNK")]
    min_chunk: ByteSize,
    /// Target average chunk size.
    #[arg(long, default_value = "256KiB", env = "SHOAL_LAZYFS_AVG_CHUNK")]
    avg_chunk: ByteSize,
    /// Largest chunk.
    #[arg(long, default_value = "1MiB", env = "SHOAL_LAZYFS_MAX_CHUNK")]
    max_chunk: ByteSize,
    /// zstd level for chunks (-7..=22).
    #[arg(
        long,
        default_value_t = 3,
        allow_negative_numbers = true,
        env = "SHOAL_LAZYFS_LEVEL"
    )]
    level: i32,
    /// An earlier lazyfs image whose chunks are referenced instead of stored again.
    #[arg(long, value_name = "REF")]
    chunk_dict: Option<String>,
    /// File listing paths (one per line) whose data goes first, for prefetching.
    #[arg(long, value_name = "FILE")]
    prefetch_list: Option<PathBuf>,
    /// Keep modification times (they make builds of equal trees differ).
    #[arg(long)]
    keep_mtime: bool,
    /// Write the original OCI artifact form (Shoal media types, lazyfs-only config),
    /// which older readers understand, instead of a runnable OCI image.
    #[arg(long)]
    artifact: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    src: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Also list every entry.
    #[arg(long)]
    tree: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    src: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct UnpackArgs {
    src: String,
    outdir: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn open_lazy(
    src: &str,
    registry: &RegistryArgs,
) -> anyhow::Result<(Box<dyn shoal_lazyfs::BlobSource>, LazyImage)> {
    let r = ImageRef::parse(src)?;
    let source = open_source(&r, &registry.options())?;
    let image = LazyImage::open(source.as_ref()).with_context(|| format!("opening {r}"))?;
    Ok((source, image))
}

pub fn convert_cmd(args: ConvertArgs) -> anyhow::Result<Exit> {
    let ConvertArgs {
        src,
        dst,
        registry,
        min_chunk,
        avg_chunk,
        max_chunk,
        level,
        chunk_dict,
        prefetch_list,
        keep_mtime,
        artifact,
        quiet,
    } = args;
    let size =
        |b: ByteSize, what: &str| u32::try_from(b.0).with_context(|| format!("{what} too large"));
    let params = ChunkParams {
        min: size(min_chunk, "--min-chunk")?,
        avg: size(avg_chunk, "--avg-chunk")?,
        max: size(max_chunk, "--max-chunk")?,
        level,
    };
    let opts = registry.options();
    let source = match ImageRef::parse(&src)? {
        ImageRef::Dir(p) => Input::Dir(p),
        r => Input::Image(open_source(&r, &opts)?),
    };
    let dst_ref = ImageRef::parse(&dst)?;
    let sink = open_sink(&dst_ref, &opts)?;
    let dict = match chunk_dict {
        Some(d) => {
            let (source, image) = open_lazy(&d, &registry).context("loading --chunk-dict")?;
            if let Err(e) = &image.index {
                bail!("--chunk-dict {d}: {e}");
            }
            Some(Dictionary { source, image })
        }
        None => None,
    };
    let prefetch = match prefetch_list {
        Some(f) => std::fs::read(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .collect(),
        None => Vec::new(),
    };
    let report = convert(
        &source,
        sink.as_ref(),
        &ConvertOptions {
            params,
            keep_mtime,
            prefetch,
            dict,
            progress: !quiet,
            form: if artifact {
                Form::Artifact
            } else {
                Form::Image
            },
        },
    )
    .with_context(|| format!("converting {src} to {dst}"))?;
    for p in &report.prefetch_missing {
        eprintln!("warning: prefetch path {p} is not a regular file in the image");
    }
    let s = &report.stats;
    let secs = report.total_time.as_secs_f64().max(1e-9);
    eprintln!(
        "{} entries, {} bytes of file data in {:.2}s ({:.0} MB/s); {} new chunks ({} bytes, {} compressed), {} chunks ({} bytes) from the dictionary",
        report.entries,
        s.input_bytes,
        secs,
        s.input_bytes as f64 / secs / 1e6,
        s.new_chunks,
        s.new_bytes,
        s.new_compressed_bytes,
        s.dict_chunks,
        s.dict_bytes
    );
    println!("{}", report.manifest_digest);
    Ok(Exit::Ok)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<Exit> {
    let (_source, image) = open_lazy(&args.src, &args.registry)?;
    let index = image.index.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", shoal_lazyfs::inspect::summary(&image, index));
    if args.tree {
        print!("{}", shoal_lazyfs::inspect::tree_listing(index));
    }
    Ok(Exit::Ok)
}

pub fn check(args: CheckArgs) -> anyhow::Result<Exit> {
    let (source, image) = open_lazy(&args.src, &args.registry)?;
    let report = shoal_lazyfs::check::check(source.as_ref(), &image);
    for p in &report.problems {
        println!("BAD {p}");
    }
    println!(
        "{} blobs and {} chunks verified, {} problems",
        report.blobs_ok,
        report.chunks_ok,
        report.problems.len()
    );
    Ok(if report.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

pub fn unpack(args: UnpackArgs) -> anyhow::Result<Exit> {
    let (source, image) = open_lazy(&args.src, &args.registry)?;
    let index = image.index.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let outdir = &args.outdir;
    let report = shoal_lazyfs::unpack::unpack(source.as_ref(), index, outdir)?;
    if report.chown_failed > 0 {
        eprintln!(
            "warning: could not set the owner of {} entries (not root?)",
            report.chown_failed
        );
    }
    eprintln!(
        "{} entries, {} bytes written to {}",
        report.entries,
        report.bytes,
        outdir.display()
    );
    Ok(Exit::Ok)
}
