//! The filesystem tree a conversion builds before chunking: layers are applied to it in
//! order (or a directory is read into it), then [`crate::builder`] turns it into an index.
//!
//! Nodes live in an arena and directories map names to node ids, so a hardlink is simply
//! two directory entries holding one id, and deleting a name never disturbs other links.
//! Every directory entry remembers the layer ("generation") that wrote it: whiteouts and
//! opaque markers only hide what lower layers wrote, never what their own layer adds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::index::Mtime;

pub type NodeId = u32;
pub const ROOT: NodeId = 0;

/// Where a regular file's bytes are while the tree is being assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Empty,
    /// A range of the conversion's spool file (bytes copied out of a layer tar).
    Spool {
        offset: u64,
        len: u64,
    },
    /// A file of a source directory, read when chunked; `len` is its size at scan time.
    Path {
        path: PathBuf,
        len: u64,
    },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Empty => 0,
            Content::Spool { len, .. } | Content::Path { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub node: NodeId,
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Dir(BTreeMap<Vec<u8>, Child>),
    File(Content),
    Symlink(Vec<u8>),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Option<Mtime>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        Tree {
            nodes: vec![Node {
                meta: Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
                body: Body::Dir(BTreeMap::new()),
            }],
        }
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id as usize)
    }

    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    pub fn dir(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, Child>> {
        match &self.node(id)?.body {
            Body::Dir(children) => Some(children),
            _ => None,
        }
    }

    fn dir_mut(&mut self, id: NodeId) -> Option<&mut BTreeMap<Vec<u8>, Child>> {
        match &mut self.node_mut(id)?.body {
            Body::Dir(children) => Some(children),
            _ => None,
        }
    }

    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.dir(dir)?.get(name).map(|c| c.node)
    }

    /// Look a path up without following symlinks.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        path.iter().try_fold(ROOT, |at, name| self.child(at, name))
    }

    /// Walk to a directory, creating missing (or replacing non-directory) components with
    /// plain `0755 root` directories, as tar extraction does for implicit parents.
    pub fn ensure_dir(&mut self, path: &[Vec<u8>], generation: u32) -> NodeId {
        let mut at = ROOT;
        for name in path {
            at = match self.child(at, name) {
                Some(id) if self.dir(id).is_some() => id,
                _ => {
                    let id = self.add(Node {
                        meta: Meta {
                            mode: 0o755,
                            ..Meta::default()
                        },
                        body: Body::Dir(BTreeMap::new()),
                    });
                    self.link(at, name.clone(), id, generation);
                    id
                }
            };
        }
        at
    }

    /// Bind `name` in `dir` to `node`, replacing whatever was there.
    pub fn link(&mut self, dir: NodeId, name: Vec<u8>, node: NodeId, generation: u32) {
        if let Some(children) = self.dir_mut(dir) {
            children.insert(name, Child { node, generation });
        }
    }

    /// Remove `name` from `dir` if a layer older than `generation` wrote it.
    pub fn whiteout(&mut self, dir: NodeId, name: &[u8], generation: u32) {
        if let Some(children) = self.dir_mut(dir) {
            if children
                .get(name)
                .is_some_and(|c| c.generation < generation)
            {
                children.remove(name);
            }
        }
    }

    /// Hide everything lower layers put in `dir` (an opaque directory).
    pub fn make_opaque(&mut self, dir: NodeId, generation: u32) {
        if let Some(children) = self.dir_mut(dir) {
            children.retain(|_, c| c.generation >= generation);
        }
    }

    /// Drop modification times everywhere (the default: they break reproducibility).
    pub fn clear_mtimes(&mut self) {
        for n in &mut self.nodes {
            n.meta.mtime = None;
        }
    }
}

/// Split a tar or user path into components, dropping `.` and empty parts. `..` is refused
/// rather than resolved: a layer has no business pointing outside its own root.
pub fn split_path(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tree: &mut Tree) -> NodeId {
        tree.add(Node {
            meta: Meta::default(),
            body: Body::File(Content::Empty),
        })
    }

    #[test]
    fn whiteouts_only_hide_lower_layers() {
        let mut t = Tree::new();
        let d = t.ensure_dir(&[b"d".to_vec()], 0);
        let a = file(&mut t);
        t.link(d, b"a".to_vec(), a, 0);
        let b = file(&mut t);
        t.link(d, b"b".to_vec(), b, 1);
        t.make_opaque(d, 1);
        assert!(t.child(d, b"a").is_none());
        assert!(t.child(d, b"b").is_some());
        t.whiteout(d, b"b", 1);
        assert!(t.child(d, b"b").is_some());
        t.whiteout(d, b"b", 2);
        assert!(t.child(d, b"b").is_none());
    }

    #[test]
    fn split() {
        assert_eq!(
            split_path(b"./a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(split_path(b"a/../b").is_none());
        assert!(split_path(b"./").unwrap().is_empty());
    }
}
