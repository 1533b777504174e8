//! Applying OCI layer tars to a [`Tree`]: whiteouts (`.wh.NAME`), opaque directories
//! (`.wh..wh..opq`), hardlinks (also to files of earlier layers), PAX xattrs and ids, and
//! gzip, zstd or plain compression (recognised by magic bytes, so a mislabelled media type
//! does not matter). File contents are copied to a [`Spool`] so nothing stays in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use crate::error::{Error, IoContext, Result};
use crate::index::Mtime;
use crate::tree::{split_path, Body, Content, Meta, Node, Tree};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// An append-only temporary file holding file contents taken out of layers.
pub struct Spool {
    file: File,
    len: u64,
}

impl Spool {
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir)
            .ctx(|| format!("creating spool file in {}", dir.display()))?;
        Ok(Spool { file, len: 0 })
    }

    /// Copy exactly `len` bytes from `r` to the end of the spool.
    pub fn append(&mut self, r: &mut dyn Read, len: u64) -> io::Result<Content> {
        if len == 0 {
            return Ok(Content::Empty);
        }
        let offset = self.len;
        let mut w = io::BufWriter::with_capacity(1 << 20, &self.file);
        let copied = io::copy(&mut r.take(len), &mut w)?;
        w.flush()?;
        drop(w);
        self.len += copied;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar entry shorter than its header",
            ));
        }
        Ok(Content::Spool { offset, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Undo a layer's compression, whatever its media type says.
pub fn decompress<'a>(r: Box<dyn Read + Send + 'a>) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Apply one (already decompressed) layer tar. `generation` must grow with each layer.
pub fn apply_layer(
    tree: &mut Tree,
    layer: &str,
    tar: &mut dyn Read,
    generation: u32,
    spool: &mut Spool,
) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().ctx(|| format!("reading layer {layer}"))?;
    for entry in entries {
        let mut entry = entry.ctx(|| format!("reading layer {layer}"))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let err = |reason: String| Error::layer(layer, shown.clone(), reason);
        apply_entry(tree, &mut entry, &raw_path, generation, spool).map_err(|e| match e {
            Error::Io { context, source } => err(format!("{context}: {source}")),
            Error::Layer { reason, .. } => err(reason),
            other => other,
        })?;
    }
    Ok(())
}

fn apply_entry(
    tree: &mut Tree,
    entry: &mut tar::Entry<'_, &mut dyn Read>,
    raw_path: &[u8],
    generation: u32,
    spool: &mut Spool,
) -> Result<()> {
    let bad = |reason: &str| Error::layer("", String::from_utf8_lossy(raw_path), reason);
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let mut path = split_path(raw_path).ok_or_else(|| bad("path contains .."))?;
    let Some(name) = path.pop() else {
        // The root itself ("./"): only its metadata matters.
        if kind.is_dir() {
            let meta = read_meta(entry)?;
            if let Some(root) = tree.node_mut(crate::tree::ROOT) {
                root.meta = meta;
            }
        }
        return Ok(());
    };
    if name == OPAQUE {
        let dir = tree.ensure_dir(&path, generation);
        tree.make_opaque(dir, generation);
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        if hidden.starts_with(WHITEOUT) {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk, ...) has no meaning here
        }
        if let Some(dir) = tree.lookup(&path).filter(|&d| tree.dir(d).is_some()) {
            tree.whiteout(dir, hidden, generation);
        }
        return Ok(());
    }
    crate::codec::validate_name(&name).map_err(bad)?;
    let parent = tree.ensure_dir(&path, generation);

    if kind == tar::EntryType::Link {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| bad("hardlink without a target"))?
            .into_owned();
        let target_path = split_path(&target).ok_or_else(|| bad("hardlink target contains .."))?;
        let node = tree.lookup(&target_path).ok_or_else(|| {
            bad(&format!(
                "hardlink target {:?} does not exist",
                String::from_utf8_lossy(&target)
            ))
        })?;
        if tree.dir(node).is_some() {
            return Err(bad("hardlink to a directory"));
        }
        tree.link(parent, name, node, generation);
        return Ok(());
    }

    let meta = read_meta(entry)?;
    let body = match kind {
        tar::EntryType::Directory => {
            // An existing directory keeps its children; only its metadata changes.
            if let Some(existing) = tree.child(parent, &name).filter(|&d| tree.dir(d).is_some()) {
                if let Some(n) = tree.node_mut(existing) {
                    n.meta = meta;
                }
                tree.link(parent, name, existing, generation);
                return Ok(());
            }
            Body::Dir(Default::default())
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let len = entry.size();
            Body::File(
                spool
                    .append(entry, len)
                    .ctx(|| "copying file contents".to_string())?,
            )
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad("symlink without a target"))?
                .into_owned();
            if target.is_empty() || target.contains(&0) || target.len() > crate::codec::MAX_TARGET {
                return Err(bad("symlink target empty, too long or contains NUL"));
            }
            Body::Symlink(target)
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            if kind == tar::EntryType::Char {
                Body::CharDev(major, minor)
            } else {
                Body::BlockDev(major, minor)
            }
        }
        tar::EntryType::Fifo => Body::Fifo,
        other => return Err(bad(&format!("unsupported tar entry type {other:?}"))),
    };
    let id = tree.add(Node { meta, body });
    tree.link(parent, name, id, generation);
    Ok(())
}

/// Mode, owner, mtime and xattrs of an entry, with PAX records overriding the header.
fn read_meta(entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode().map(|m| m & 0o7777).unwrap_or(0o644),
        uid: h
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0),
        gid: h
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0),
        mtime: h.mtime().ok().map(|s| Mtime {
            sec: i64::try_from(s).unwrap_or(i64::MAX),
            nsec: 0,
        }),
        xattrs: Default::default(),
    };
    let Some(pax) = entry
        .pax_extensions()
        .ctx(|| "reading PAX header".to_string())?
    else {
        return Ok(meta);
    };
    for ext in pax {
        let ext = ext.ctx(|| "reading PAX header".to_string())?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            // POSIX: an empty PAX value deletes the keyword, so an empty xattr cannot be
            // expressed in a layer (Go's archive/tar, and so umoci and containerd, agree).
            if value.is_empty() {
                meta.xattrs.remove(name);
                continue;
            }
            if !name.is_empty()
                && name.len() <= crate::codec::MAX_XATTR_NAME
                && value.len() <= crate::codec::MAX_XATTR_VALUE
            {
                meta.xattrs.insert(name.to_vec(), value.to_vec());
            }
            continue;
        }
        let text = std::str::from_utf8(value).unwrap_or("");
        match key {
            b"uid" => meta.uid = text.parse().unwrap_or(meta.uid),
            b"gid" => meta.gid = text.parse().unwrap_or(meta.gid),
            b"mtime" => meta.mtime = parse_pax_time(text).or(meta.mtime),
            _ => {}
        }
    }
    Ok(meta)
}

fn parse_pax_time(text: &str) -> Option<Mtime> {
    let (sec, frac) = text.split_once('.').unwrap_or((text, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(Mtime { sec, nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time("12.5"),
            Some(Mtime {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_pax_time("-3"), Some(Mtime { sec: -3, nsec: 0 }));
        assert_eq!(parse_pax_time("x"), None);
    }
}
