//! `shoal-lazyfs containerd-config`: makes containerd use the snapshotter for pods. It
//! edits containerd's `config.toml` in place: the proxy plugin `shoal` on the snapshotter's
//! socket, the CRI plugin's `snapshotter = "shoal"`, and `disable_snapshot_annotations =
//! false` (without it CRI passes no image reference, and no lazy mount can be made). The
//! file as it was is kept once as `config.toml.shoal-backup`; `--restore` puts it back
//! (deleting the file when there was none). containerd reads the file only at start.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{Error, IoContext, Result};

pub const BACKUP_SUFFIX: &str = ".shoal-backup";
/// Content of the backup when containerd had no config file at all.
const NO_FILE: &str = "# shoal-lazyfs containerd-config: there was no config file\n";
pub const PLUGIN: &str = "shoal";

/// Writes the settings into `config` (creating it as a version 2 file when missing).
pub fn install(config: &Path, socket: &Path) -> Result<()> {
    // `shoal-peer containerd-check --patch` (the peer's init container) may edit the same
    // file at the same time: both hold this lock around their read-modify-write.
    let _lock = lock(config)?;
    let text = match std::fs::read_to_string(config) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", config.display()), e)),
    };
    let backup = backup_path(config);
    if !backup.exists() {
        let original = text.clone().unwrap_or_else(|| NO_FILE.to_string());
        std::fs::write(&backup, original).ctx(|| format!("writing {}", backup.display()))?;
    }
    let edited = edit(text.as_deref().unwrap_or("version = 2\n"), socket)
        .map_err(|e| Error::Invalid(format!("{}: {e}", config.display())))?;
    let tmp = config.with_extension("toml.shoal-tmp");
    std::fs::write(&tmp, edited).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, config).ctx(|| format!("replacing {}", config.display()))
}

/// Puts the backup back. Without a backup there is nothing to undo.
pub fn restore(config: &Path) -> Result<bool> {
    let backup = backup_path(config);
    let original = match std::fs::read_to_string(&backup) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("reading {}", backup.display()), e)),
    };
    if original == NO_FILE {
        match std::fs::remove_file(config) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}", config.display()), e))
            }
            _ => {}
        }
        std::fs::remove_file(&backup).ctx(|| format!("removing {}", backup.display()))?;
    } else {
        std::fs::rename(&backup, config).ctx(|| format!("restoring {}", config.display()))?;
    }
    Ok(true)
}

/// The edit lock shared with `shoal-peer containerd-check --patch` (`config.toml.shoal-lock`,
/// `flock`); released when the returned file drops.
fn lock(config: &Path) -> Result<std::fs::File> {
    let mut path = config.as_os_str().to_owned();
    path.push(".shoal-lock");
    let path = PathBuf::from(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)
        .ctx(|| format!("locking {}", path.display()))?;
    Ok(f)
}

fn backup_path(config: &Path) -> PathBuf {
    let mut p = config.as_os_str().to_owned();
    p.push(BACKUP_SUFFIX);
    PathBuf::from(p)
}

/// The config text with the snapshotter wired in; everything else is kept (comments are
/// not: the backup has them).
pub fn edit(text: &str, socket: &Path) -> std::result::Result<String, String> {
    let mut doc: Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let version = doc.get("version").and_then(Value::as_integer).unwrap_or(1);
    // Version 1 files (the default when `version` is absent) name plugins by short id.
    let cri_id = match version {
        2 => "io.containerd.grpc.v1.cri",
        1 => "cri",
        v => return Err(format!("config version {v} is not supported (1 or 2)")),
    };
    let socket = socket
        .to_str()
        .ok_or_else(|| format!("socket path {} is not UTF-8", socket.display()))?;
    let proxy = table_at(&mut doc, &["proxy_plugins", PLUGIN])?;
    proxy.insert("type".into(), Value::String("snapshot".into()));
    proxy.insert("address".into(), Value::String(socket.into()));
    let containerd = table_at(&mut doc, &["plugins", cri_id, "containerd"])?;
    containerd.insert("snapshotter".into(), Value::String(PLUGIN.into()));
    containerd.insert("disable_snapshot_annotations".into(), Value::Boolean(false));
    toml::to_string(&doc).map_err(|e| format!("writing TOML: {e}"))
}

fn table_at<'a>(doc: &'a mut Table, path: &[&str]) -> std::result::Result<&'a mut Table, String> {
    let mut t = doc;
    for (n, key) in path.iter().enumerate() {
        let v = t
            .entry(key.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        t = v
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", path[..=n].join(".")))?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(doc: &'a Table, path: &[&str]) -> &'a Value {
        let mut v = doc.get(path[0]).unwrap();
        for k in &path[1..] {
            v = v.get(k).unwrap();
        }
        v
    }

    #[test]
    fn version_2_keeps_other_settings() {
        let text = "version = 2\nroot = \"/r\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p:1\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n";
        let out: Table = edit(text, Path::new("/run/s.sock"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(out["root"].as_str(), Some("/r"));
        let cri = ["plugins", "io.containerd.grpc.v1.cri"];
        assert_eq!(
            get(&out, &[cri[0], cri[1], "sandbox_image"]).as_str(),
            Some("p:1")
        );
        assert_eq!(
            get(&out, &[cri[0], cri[1], "containerd", "snapshotter"]).as_str(),
            Some("shoal")
        );
        assert_eq!(
            get(
                &out,
                &[cri[0], cri[1], "containerd", "disable_snapshot_annotations"]
            )
            .as_bool(),
            Some(false)
        );
        assert_eq!(
            get(&out, &["proxy_plugins", "shoal", "address"]).as_str(),
            Some("/run/s.sock")
        );
        assert_eq!(
            get(&out, &["proxy_plugins", "shoal", "type"]).as_str(),
            Some("snapshot")
        );
    }

    #[test]
    fn version_1_uses_the_short_plugin_id_and_bad_files_are_refused() {
        let out: Table = edit("", Path::new("/s")).unwrap().parse().unwrap();
        assert_eq!(
            get(&out, &["plugins", "cri", "containerd", "snapshotter"]).as_str(),
            Some("shoal")
        );
        assert!(edit("version = 3", Path::new("/s")).is_err());
        assert!(edit("[proxy_plugins\n", Path::new("/s")).is_err());
        assert!(edit("proxy_plugins = 1", Path::new("/s"))
            .unwrap_err()
            .contains("proxy_plugins"));
    }

    #[test]
    fn install_backs_up_once_and_restore_undoes_it() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config.toml");
        // No file before: restore removes the one install created.
        install(&cfg, Path::new("/s")).unwrap();
        assert!(std::fs::read_to_string(&cfg).unwrap().contains("shoal"));
        assert!(restore(&cfg).unwrap());
        assert!(!cfg.exists());
        assert!(!restore(&cfg).unwrap(), "nothing left to undo");
        // An existing file comes back byte for byte, also after two installs.
        let original = "# mine\nversion = 2\n";
        std::fs::write(&cfg, original).unwrap();
        install(&cfg, Path::new("/s")).unwrap();
        install(&cfg, Path::new("/s2")).unwrap();
        assert!(std::fs::read_to_string(&cfg).unwrap().contains("/s2"));
        assert!(restore(&cfg).unwrap());
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), original);
    }
}
