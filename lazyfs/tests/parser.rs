//! The index parser on hostile input: random mutations of a real index never panic, and
//! hand-crafted violations (cycles, bad names, out-of-bounds chunks, forged counts) are
//! rejected with a message naming where.

use std::path::Path;

use shoal_lazyfs::builder::{build, BuildOptions};
use shoal_lazyfs::codec::{decode, decode_body, encode, HEADER_LEN};
use shoal_lazyfs::{ChunkParams, Index};

fn sample_index(dir: &Path) -> Index {
    let src = dir.join("src");
    for i in 0..30u32 {
        let p = src.join(format!("d{}/é{}/f{i}", i % 4, i % 3));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![i as u8; 1000 + i as usize * 9000]).unwrap();
    }
    std::os::unix::fs::symlink("d0", src.join("link")).unwrap();
    std::fs::hard_link(src.join("d1/é1/f1"), src.join("hl")).unwrap();
    let (tree, _) = shoal_lazyfs::dirsrc::read_dir_tree(&src).unwrap();
    let out = tempfile::tempfile().unwrap();
    let progress = |_| {};
    let params = ChunkParams {
        min: 4096,
        avg: 16384,
        max: 65536,
        level: 1,
    };
    build(
        &tree,
        &BuildOptions {
            params,
            prefetch: vec!["d1/é1/f1".as_bytes().to_vec()],
            dict: None,
            spool: None,
            progress: &progress,
        },
        out,
    )
    .unwrap()
    .index
}

fn body_of(blob: &[u8]) -> Vec<u8> {
    zstd::decode_all(&blob[HEADER_LEN..]).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation (shared with the release-mode example that runs millions).
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0x7f, 0x80, 0xff, b'/', b'.'][rng.below(6)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            4 if v.len() > 8 => {
                let a = rng.below(v.len() - 4);
                let b = rng.below(v.len() - 4);
                let chunk: Vec<u8> = v[a..a + 4].to_vec();
                v[b..b + 4].copy_from_slice(&chunk);
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn round_trip_and_lookups() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let blob = encode(&index, 3).unwrap();
    let back = decode(&blob).unwrap();
    assert_eq!(back, index);
    let e = back.resolve(b"d1/\xc3\xa91/f1").expect("lookup");
    let hl = back.resolve(b"hl").unwrap();
    assert_eq!(
        back.entries[e as usize].inode, back.entries[hl as usize].inode,
        "hardlinks share an inode"
    );
    assert_eq!(back.nlink[back.entries[e as usize].inode as usize], 2);
    assert_eq!(back.prefetch, vec![back.entries[e as usize].inode]);
    // byte range → chunks → runs
    let ino = back.entries[back.resolve(b"d0/\xc3\xa91/f28").unwrap() as usize].inode;
    let size = back.inodes[ino as usize].size;
    let all = back.chunks_for_range(ino, 0, size);
    assert_eq!(all.len(), back.file_chunks(ino).len());
    let mid = back.chunks_for_range(ino, size / 2, 1);
    assert_eq!(mid.len(), 1);
    assert!(mid[0].file_offset <= size / 2);
    let runs = back.blob_runs(&all, u64::MAX);
    assert!(runs.len() <= all.len());
    assert_eq!(
        runs.iter().map(|r| r.chunks.len()).sum::<usize>(),
        all.len()
    );
}

#[test]
fn random_mutations_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let blob = encode(&index, 3).unwrap();
    let body = body_of(&blob);
    let mut rng = Rng(0x5eed);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let m = mutate(&mut rng, &body);
        if decode_body(&m).is_ok() {
            accepted += 1;
        }
        let mb = mutate(&mut rng, &blob);
        let _ = decode(&mb);
    }
    eprintln!("{accepted} of 50000 mutated bodies were still valid");
}

#[test]
fn crafted_violations_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let good = sample_index(tmp.path());
    let reject = |ix: &Index, needle: &str| {
        let err = decode(&encode(ix, 1).unwrap()).unwrap_err().to_string();
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    };
    let mut ix = good.clone();
    ix.entries[3].parent = 3;
    reject(&ix, "parent does not precede");

    let mut ix = good.clone();
    let r = ix.entries[4].name.clone();
    ix.names
        .splice(r.start as usize..r.end as usize, b"..".iter().copied());
    ix.entries[4].name = r.start..r.start + 2;
    // keep later names valid by recomputing offsets
    let delta = (r.end - r.start) as i64 - 2;
    for e in ix.entries.iter_mut().skip(5) {
        e.name = (e.name.start as i64 - delta) as u32..(e.name.end as i64 - delta) as u32;
    }
    reject(&ix, "name is . or ..");

    let mut ix = good.clone();
    ix.chunks[0].offset = ix.blobs[0].size;
    reject(&ix, "outside blob");

    let mut ix = good.clone();
    ix.chunks[1].blob = 9;
    reject(&ix, "data blob #9 does not exist");

    let mut ix = good.clone();
    ix.inodes[2].mode = 0o170777;
    reject(&ix, "mode");

    let mut ix = good.clone();
    let last = ix.entries.len() - 1;
    ix.entries.swap(last, last - 1);
    reject(&ix, "entry #");

    let mut ix = good.clone();
    let file = ix
        .inodes
        .iter()
        .position(|i| i.kind == shoal_lazyfs::Kind::File)
        .unwrap();
    ix.prefetch = vec![0];
    let _ = file;
    reject(&ix, "prefetch #0");

    // A forged huge count must not allocate or hang.
    let mut body = Vec::new();
    for v in [65536u64, 262144, 1048576, 6, 0] {
        let mut x = v;
        while x >= 0x80 {
            body.push(x as u8 | 0x80);
            x >>= 7;
        }
        body.push(x as u8);
    }
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let err = decode_body(&body).unwrap_err().to_string();
    assert!(err.contains("exceeds the remaining"), "{err}");
}
