//! Conversion throughput benchmark.
//!
//! `cargo run --release -p shoal-lazyfs --example bench_convert -- [TREE_DIR] [GIB]`
//!
//! Generates (once) a mixed tree of about GIB GiB — many small files plus some large ones,
//! partially compressible — then converts `dir:TREE_DIR` to an OCI layout and prints MB/s
//! of input. The tree is read from the page cache after the first run (reported as warm).

// `is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use shoal_lazyfs::convert::{convert, ConvertOptions, Input};
use shoal_lazyfs::reference::ImageRef;
use shoal_lazyfs::store::open_sink;
use shoal_lazyfs::{ChunkParams, RegistryOptions};

fn fill(seed: u64, len: usize, out: &mut Vec<u8>) {
    // Blocks of 4 KiB alternate between text-like (compressible) and random bytes.
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    out.clear();
    let words: [&[u8]; 8] = [
        b"container ",
        b"image ",
        b"layer ",
        b"chunk ",
        b"peer ",
        b"shoal ",
        b"fuse ",
        b"\n",
    ];
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if s % 3 == 0 {
            for _ in 0..512 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                out.extend_from_slice(&s.to_le_bytes());
            }
        } else {
            let end = out.len() + 4096;
            while out.len() < end {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                out.extend_from_slice(words[(s % 8) as usize]);
            }
        }
    }
    out.truncate(len);
}

fn generate(root: &Path, gib: f64) -> u64 {
    let target = (gib * (1u64 << 30) as f64) as u64;
    let small_budget = target * 3 / 10;
    let mut total = 0u64;
    let mut buf = Vec::new();
    let mut i = 0u64;
    while total < small_budget {
        let len = 512 + ((i * 7919) % 24_000) as usize;
        let p = root.join(format!("small/d{:03}/s{:02}/f{i}.txt", i % 200, i % 17));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fill(i, len, &mut buf);
        fs::write(&p, &buf).unwrap();
        total += len as u64;
        i += 1;
    }
    let mut j = 0u64;
    while total < target {
        let len = (8 << 20) + ((j * 104_729) % (40 << 20)) as usize;
        let p = root.join(format!("large/g{}/blob{j}.bin", j % 5));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fill(1_000_000 + j, len, &mut buf);
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&buf).unwrap();
        total += len as u64;
        j += 1;
    }
    eprintln!("generated {i} small and {j} large files, {total} bytes");
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/tmp/lazyfs-bench-tree".into()),
    );
    let gib: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.1);
    if !root.join(".complete").exists() {
        let _ = fs::remove_dir_all(&root);
        generate(&root, gib);
        fs::write(root.join(".complete"), b"").unwrap();
    }
    let level: i32 = std::env::var("LEVEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let out = std::env::temp_dir().join("lazyfs-bench-out");
    for run in 0..2 {
        let _ = fs::remove_dir_all(&out);
        let dst = ImageRef::parse(&format!("oci:{}:bench", out.display())).unwrap();
        let sink = open_sink(&dst, &RegistryOptions::default()).unwrap();
        let started = Instant::now();
        let report = convert(
            &Input::Dir(root.clone()),
            sink.as_ref(),
            &ConvertOptions {
                params: ChunkParams {
                    level,
                    ..ChunkParams::default()
                },
                keep_mtime: false,
                prefetch: Vec::new(),
                dict: None,
                progress: false,
                form: Default::default(),
            },
        )
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let s = &report.stats;
        println!(
            "run {run}: {} entries, {:.1} MB input in {:.2} s = {:.0} MB/s (scan {:.2} s, chunk+compress+write {:.2} s); {} chunks, {:.1} MB stored ({:.2}x), index {} bytes",
            report.entries,
            s.input_bytes as f64 / 1e6,
            secs,
            s.input_bytes as f64 / 1e6 / secs,
            report.read_time.as_secs_f64(),
            report.build_time.as_secs_f64(),
            s.new_chunks,
            s.new_compressed_bytes as f64 / 1e6,
            s.input_bytes as f64 / s.new_compressed_bytes.max(1) as f64,
            report.index_size
        );
    }
}
