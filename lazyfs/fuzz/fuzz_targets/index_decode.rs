//! Fuzz the index parser. The first byte picks the entry point: the full blob decoder
//! (header, zstd, digest) or the body decoder directly, where nearly all the parsing logic
//! lives and which random bytes can reach without forging a sha256.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let result = if mode & 1 == 0 {
        shoal_lazyfs::codec::decode_body(rest)
    } else {
        shoal_lazyfs::codec::decode(rest)
    };
    if let Ok(index) = result {
        // Whatever parses must be safe to walk.
        for e in 0..index.entries.len() as u32 {
            let _ = index.path(e);
            let _ = index.children(e);
        }
        for ino in 0..index.inodes.len() as u32 {
            let chunks = index.chunks_for_range(ino, 0, u64::MAX);
            let _ = index.blob_runs(&chunks, 1 << 20);
        }
        let _ = index.resolve(b"a/b/c");
        // and re-encodes to something that parses back identically
        if mode & 1 == 0 {
            if let Ok(blob) = shoal_lazyfs::codec::encode(&index, 1) {
                let back = shoal_lazyfs::codec::decode(&blob).expect("re-encoded index must parse");
                assert_eq!(back, index);
            }
        }
    }
});
