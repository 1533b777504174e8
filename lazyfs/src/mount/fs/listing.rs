//! Directory listings for `readdir`/`readdirplus`, resumable at any offset.

use fuser::{FileType, INodeNo};

use super::attr::file_type;
use crate::index::{Index, Kind};

/// `.`, `..` and the children of directory entry `entry` (FUSE inode `ino`), from position
/// `offset` on, each with the offset of the item after it. Starts at `offset` without walking
/// what comes before, so listing a large directory in many small replies stays linear.
pub(super) fn dir_listing(
    index: &Index,
    entry: u32,
    ino: INodeNo,
    offset: u64,
) -> impl Iterator<Item = (u64, DirItem<'_>)> + '_ {
    let parent_inode = index
        .entry(entry)
        .and_then(|e| index.entry(e.parent))
        .map_or(ino.0, |p| u64::from(p.inode) + 1);
    let dot = |ino, name: &'static [u8]| DirItem {
        ino,
        kind: FileType::Directory,
        name,
    };
    let dots = [(1, dot(ino, b".")), (2, dot(INodeNo(parent_inode), b".."))];
    let children = index.children(entry);
    // Offsets 0 and 1 are the dots; child `i` of the range is at `2 + i`.
    let first = u64::from(children.start)
        .saturating_add(offset.saturating_sub(2))
        .min(u64::from(children.end));
    // `first` lies within `children`, whose bounds are u32s.
    let first = u32::try_from(first).unwrap_or(children.end);
    let items = (first..children.end).filter_map(move |child| {
        let e = index.entry(child)?;
        let kind = index.inode(e.inode).map_or(Kind::File, |i| i.kind);
        Some((
            u64::from(child - children.start) + 3,
            DirItem {
                ino: INodeNo(u64::from(e.inode) + 1),
                kind: file_type(kind),
                name: index.name(e),
            },
        ))
    });
    dots.into_iter()
        .skip(usize::try_from(offset.min(2)).unwrap_or(2))
        .chain(items)
}

pub(super) struct DirItem<'a> {
    pub(super) ino: INodeNo,
    pub(super) kind: FileType,
    pub(super) name: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{build, BuildOptions};
    use crate::index::{ChunkParams, ROOT_ENTRY};

    /// A directory read in replies that stop anywhere resumes where the last one ended: every
    /// offset handed out gives exactly the rest of the listing.
    #[test]
    fn a_listing_resumes_at_any_offset() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("creating the tree");
        for i in 0..12 {
            std::fs::write(src.join(format!("f{i:02}")), [i as u8]).expect("writing a file");
        }
        let (tree, _) = crate::dirsrc::read_dir_tree(&src).expect("reading the tree");
        let progress = |_| {};
        let built = build(
            &tree,
            &BuildOptions {
                params: ChunkParams::default(),
                prefetch: Vec::new(),
                dict: None,
                spool: None,
                progress: &progress,
            },
            tempfile::tempfile().expect("a temp file"),
        )
        .expect("building the index");
        let index = built.index;
        let root = INodeNo(1);
        let names = |offset| -> Vec<(u64, Vec<u8>)> {
            dir_listing(&index, ROOT_ENTRY, root, offset)
                .map(|(next, item)| (next, item.name.to_vec()))
                .collect()
        };
        let all = names(0);
        let mut expected: Vec<Vec<u8>> = vec![b".".to_vec(), b"..".to_vec()];
        expected.extend((0..12).map(|i| format!("f{i:02}").into_bytes()));
        expected.push(b"sub".to_vec());
        let got: Vec<Vec<u8>> = all.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(got, expected);
        let nexts: Vec<u64> = all.iter().map(|(next, _)| *next).collect();
        assert_eq!(nexts, (1..=expected.len() as u64).collect::<Vec<_>>());
        for (i, (next, _)) in all.iter().enumerate() {
            assert_eq!(names(*next), all[i + 1..], "resuming at {next}");
        }
        assert!(names(1000).is_empty());
    }
}
