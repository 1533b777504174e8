//! The snapshotter's metadata: every snapshot by key (active, view) or name (committed),
//! its parent, labels and the numbered directory holding its files.
//!
//! It is one small JSON file rewritten atomically on every change: containerd keeps its own
//! record of snapshots, so this only has to survive a restart of the snapshotter (it must
//! find the lazy mounts it made and the directories it owns), and a node holds at most a
//! few thousand snapshots.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result, SnapshotCode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// What a committed snapshot made without a download holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lazy {
    /// The lazyfs index layer: its directory is the FUSE mount of the whole image.
    Index {
        /// `HOST/REPO@sha256:…` of the image manifest the mount serves.
        image: String,
        /// Where the mount serves its metrics.
        metrics: Option<std::net::SocketAddr>,
    },
    /// A lazyfs data layer: its chunks are read through the index layer's mount, so the
    /// directory stays empty and is left out of overlay lower directories.
    Data,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// Name of the parent snapshot ("" for none).
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    #[serde(default)]
    pub lazy: Option<Lazy>,
}

#[derive(Default, Serialize, Deserialize)]
struct Table {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// The metadata table and the file it is kept in.
pub struct Store {
    file: PathBuf,
    table: Table,
}

impl Store {
    /// Loads `file`, or starts empty when it does not exist yet.
    pub fn open(file: &Path) -> Result<Store> {
        let table = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Invalid(format!(
                    "snapshotter metadata {}: {e} (move it away to start empty)",
                    file.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        };
        Ok(Store {
            file: file.to_path_buf(),
            table,
        })
    }

    pub fn get(&self, key: &str) -> Result<&Record> {
        self.table
            .snapshots
            .get(key)
            .ok_or_else(|| Error::snapshot(key, SnapshotCode::NotFound, "no such snapshot"))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.table.snapshots.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.table.snapshots.iter()
    }

    /// Checks that a new snapshot `key` on `parent` may be created and returns its id.
    pub fn check_new(&self, key: &str, parent: &str) -> Result<u64> {
        if key.is_empty() {
            return Err(Error::snapshot(
                key,
                SnapshotCode::InvalidArgument,
                "empty key",
            ));
        }
        if self.contains(key) {
            return Err(Error::snapshot(
                key,
                SnapshotCode::AlreadyExists,
                "already exists",
            ));
        }
        if !parent.is_empty() {
            let p = self.get(parent)?;
            if p.kind != Kind::Committed {
                return Err(Error::snapshot(
                    parent,
                    SnapshotCode::FailedPrecondition,
                    "parent is not committed",
                ));
            }
        }
        Ok(self.table.next_id + 1)
    }

    /// Adds a snapshot whose id came from [`Store::check_new`] and saves.
    pub fn insert(&mut self, key: &str, record: Record) -> Result<()> {
        self.table.next_id = self.table.next_id.max(record.id);
        self.table.snapshots.insert(key.to_string(), record);
        self.save()
    }

    /// The parent chain of `key`, nearest first (not including `key`).
    pub fn ancestors(&self, key: &str) -> Result<Vec<&Record>> {
        self.ancestors_of_parent(&self.get(key)?.parent)
    }

    /// `parent` and its own parent chain, nearest first ("" is none).
    pub fn ancestors_of_parent(&self, parent: &str) -> Result<Vec<&Record>> {
        let key = parent;
        let mut out = Vec::new();
        let mut parent = parent.to_string();
        while !parent.is_empty() {
            let p = self.get(&parent)?;
            out.push(p);
            if out.len() > self.table.snapshots.len() {
                return Err(Error::snapshot(
                    key,
                    SnapshotCode::FailedPrecondition,
                    "parent chain loops",
                ));
            }
            parent = p.parent.clone();
        }
        Ok(out)
    }

    /// Turns active snapshot `key` into committed snapshot `name`.
    pub fn commit(&mut self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        let record = self.get(key)?;
        if record.kind != Kind::Active {
            return Err(Error::snapshot(
                key,
                SnapshotCode::FailedPrecondition,
                "only an active snapshot can be committed",
            ));
        }
        if self.contains(name) {
            return Err(Error::snapshot(
                name,
                SnapshotCode::AlreadyExists,
                "already exists",
            ));
        }
        let mut record = self
            .table
            .snapshots
            .remove(key)
            .ok_or_else(|| Error::snapshot(key, SnapshotCode::NotFound, "no such snapshot"))?;
        record.kind = Kind::Committed;
        record.labels.extend(labels);
        record.updated = SystemTime::now();
        self.table.snapshots.insert(name.to_string(), record);
        self.save()
    }

    /// Removes `key` from the table (the caller removes its files) and saves. A snapshot
    /// that is the parent of another cannot go.
    pub fn remove(&mut self, key: &str) -> Result<Record> {
        self.check_remove(key)?;
        let record = self
            .table
            .snapshots
            .remove(key)
            .ok_or_else(|| Error::snapshot(key, SnapshotCode::NotFound, "no such snapshot"))?;
        self.save()?;
        Ok(record)
    }

    /// The record of `key` if it may be removed (exists, and no snapshot is built on it).
    pub fn check_remove(&self, key: &str) -> Result<Record> {
        let record = self.get(key)?;
        if let Some((child, _)) = self.table.snapshots.iter().find(|(_, r)| r.parent == key) {
            return Err(Error::snapshot(
                key,
                SnapshotCode::FailedPrecondition,
                format!("snapshot {child:?} depends on it"),
            ));
        }
        Ok(record.clone())
    }

    /// Sets the metrics address of a lazy index snapshot after a remount.
    pub fn set_lazy(&mut self, key: &str, lazy: Lazy) -> Result<()> {
        if let Some(r) = self.table.snapshots.get_mut(key) {
            r.lazy = Some(lazy);
        }
        self.save()
    }

    /// Applies containerd's `Update`: `paths` empty replaces all labels; `labels` does too;
    /// `labels.NAME` sets or (absent from `labels`) deletes one label.
    pub fn update_labels(
        &mut self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Record> {
        let record = self
            .table
            .snapshots
            .get_mut(key)
            .ok_or_else(|| Error::snapshot(key, SnapshotCode::NotFound, "no such snapshot"))?;
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            record.labels = labels;
        } else {
            for path in paths {
                let Some(name) = path.strip_prefix("labels.") else {
                    return Err(Error::snapshot(
                        key,
                        SnapshotCode::InvalidArgument,
                        format!("cannot update field {path:?}"),
                    ));
                };
                match labels.get(name) {
                    Some(v) => record.labels.insert(name.to_string(), v.clone()),
                    None => record.labels.remove(name),
                };
            }
        }
        record.updated = SystemTime::now();
        let out = record.clone();
        self.save()?;
        Ok(out)
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.table)
            .map_err(|e| Error::Invalid(format!("encoding snapshotter metadata: {e}")))?;
        let tmp = self.file.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        };
        write().ctx(|| format!("writing {}", self.file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, kind: Kind, parent: &str) -> Record {
        Record {
            id,
            kind,
            parent: parent.into(),
            labels: HashMap::new(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            lazy: None,
        }
    }

    #[test]
    fn lifecycle_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meta.json");
        let mut s = Store::open(&file).unwrap();
        let id = s.check_new("a", "").unwrap();
        s.insert("a", record(id, Kind::Active, "")).unwrap();
        s.commit("base", "a", HashMap::from([("x".into(), "1".into())]))
            .unwrap();
        let id = s.check_new("b", "base").unwrap();
        assert_eq!(id, 2);
        s.insert("b", record(id, Kind::Active, "base")).unwrap();

        let mut s = Store::open(&file).unwrap();
        assert_eq!(s.get("base").unwrap().kind, Kind::Committed);
        assert_eq!(s.get("base").unwrap().labels["x"], "1");
        assert_eq!(s.ancestors("b").unwrap()[0].id, 1);
        // A parent cannot go before its child; an unknown key is NotFound.
        let Err(Error::Snapshot { code, .. }) = s.remove("base") else {
            panic!("removed a parent")
        };
        assert_eq!(code, SnapshotCode::FailedPrecondition);
        s.remove("b").unwrap();
        s.remove("base").unwrap();
        let Err(Error::Snapshot { code, .. }) = s.remove("base") else {
            panic!("removed twice")
        };
        assert_eq!(code, SnapshotCode::NotFound);
        assert_eq!(s.check_new("c", "").unwrap(), 3, "ids are never reused");
    }

    #[test]
    fn new_snapshots_need_a_committed_parent_and_a_free_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.json")).unwrap();
        s.insert("a", record(1, Kind::Active, "")).unwrap();
        let code = |r: Result<u64>| match r {
            Err(Error::Snapshot { code, .. }) => code,
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        };
        assert_eq!(code(s.check_new("a", "")), SnapshotCode::AlreadyExists);
        assert_eq!(
            code(s.check_new("b", "a")),
            SnapshotCode::FailedPrecondition
        );
        assert_eq!(code(s.check_new("b", "zz")), SnapshotCode::NotFound);
        assert_eq!(code(s.check_new("", "")), SnapshotCode::InvalidArgument);
    }

    #[test]
    fn label_updates_follow_field_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("m.json")).unwrap();
        let mut r = record(1, Kind::Committed, "");
        r.labels = HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        s.insert("k", r).unwrap();
        let new = HashMap::from([("a".into(), "9".into())]);
        let r = s
            .update_labels("k", new.clone(), &["labels.a".into(), "labels.b".into()])
            .unwrap();
        assert_eq!(r.labels, new, "a set, b deleted");
        assert!(s.update_labels("k", new, &["parent".into()]).is_err());
    }

    #[test]
    fn corrupt_metadata_is_an_error_not_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(&file, b"{not json").unwrap();
        let err = Store::open(&file).err().expect("corrupt file accepted");
        assert!(err.to_string().contains("move it away"), "{err}");
    }
}
