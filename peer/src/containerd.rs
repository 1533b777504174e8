//! `shoal-peer containerd-config`: writes containerd `hosts.toml` files (one directory per
//! registry under `certs.d`) that point containerd at the local mirror for pulls and resolves;
//! containerd falls back to the registry itself when the mirror fails. An existing
//! `hosts.toml` is backed up once to `hosts.toml.shoal-backup`; `--restore` puts it back.
//!
//! With `all_registries`, `_default/hosts.toml` sends every registry without a directory of
//! its own through the mirror too: it has no `server` line (containerd falls back to the
//! registry named in the image reference), only the mirror as a host.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const BACKUP_SUFFIX: &str = ".shoal-backup";
/// The directory containerd reads for registries that have none of their own.
pub const DEFAULT_DIR: &str = "_default";
const HEADER: &str =
    "# Written by shoal-peer containerd-config; `shoal-peer containerd-config --restore` \
                      undoes it.\n";

#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    pub registries: Vec<String>,
    pub config_path: PathBuf,
    pub mirror: String,
    pub insecure: bool,
    /// Also write `_default/hosts.toml` (every registry not listed goes through the mirror).
    pub all_registries: bool,
}

impl ContainerdOptions {
    /// The directory names under `config_path` to write, each checked.
    fn dirs(&self) -> Result<Vec<&str>> {
        let mut dirs = Vec::new();
        for r in &self.registries {
            check_registry(r)?;
            dirs.push(r.as_str());
        }
        if self.all_registries {
            dirs.push(DEFAULT_DIR);
        }
        Ok(dirs)
    }
}

/// The `hosts.toml` text for one registry directory (`_default`: no `server` line).
pub fn hosts_toml(registry: &str, mirror: &str, insecure: bool) -> String {
    let host = format!("[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    if registry == DEFAULT_DIR {
        return format!("{HEADER}{host}");
    }
    let server = if registry == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else if insecure {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    };
    format!("{HEADER}server = \"{server}\"\n\n{host}")
}

fn check_registry(r: &str) -> Result<()> {
    if !crate::upstream::valid_host(r) || r.contains("..") {
        return Err(Error::Config(format!(
            "registry {r:?} must be a host or host:port"
        )));
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes the files; returns the paths written.
pub fn write(opts: &ContainerdOptions) -> Result<Vec<PathBuf>> {
    if !opts.mirror.starts_with("http://") && !opts.mirror.starts_with("https://") {
        return Err(Error::Config(format!(
            "mirror {:?} must be an http(s) URL",
            opts.mirror
        )));
    }
    let mut written = Vec::new();
    for r in opts.dirs()? {
        let dir = opts.config_path.join(r);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let file = dir.join("hosts.toml");
        let backup = dir.join(format!("hosts.toml{BACKUP_SUFFIX}"));
        let text = hosts_toml(r, opts.mirror.trim_end_matches('/'), opts.insecure);
        if file.exists() && !backup.exists() {
            let old = std::fs::read_to_string(&file).map_err(io(&file))?;
            if !old.starts_with("# Written by shoal-peer") {
                std::fs::copy(&file, &backup).map_err(io(&backup))?;
            }
        }
        let tmp = dir.join("hosts.toml.shoal-tmp");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))?;
        written.push(file);
    }
    Ok(written)
}

/// Puts backups back (or removes our files when there was none).
pub fn restore(opts: &ContainerdOptions) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for r in opts.dirs()? {
        let dir = opts.config_path.join(r);
        let file = dir.join("hosts.toml");
        let backup = dir.join(format!("hosts.toml{BACKUP_SUFFIX}"));
        if backup.exists() {
            std::fs::rename(&backup, &file).map_err(io(&file))?;
            done.push(file);
        } else if file.exists() {
            let old = std::fs::read_to_string(&file).map_err(io(&file))?;
            if old.starts_with("# Written by shoal-peer") {
                std::fs::remove_file(&file).map_err(io(&file))?;
                let _ = std::fs::remove_dir(&dir);
                done.push(file);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_backs_up_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ContainerdOptions {
            registries: vec!["docker.io".into(), "127.0.0.1:5000".into()],
            config_path: dir.path().to_path_buf(),
            mirror: "http://127.0.0.1:65001".into(),
            insecure: true,
            all_registries: true,
        };
        let existing = dir.path().join("docker.io/hosts.toml");
        std::fs::create_dir_all(existing.parent().unwrap()).unwrap();
        std::fs::write(&existing, "server = \"https://mine\"\n").unwrap();
        write(&opts).unwrap();
        write(&opts).unwrap(); // twice: the backup stays the original
        let text = std::fs::read_to_string(&existing).unwrap();
        assert!(text.contains("server = \"https://registry-1.docker.io\""));
        assert!(text.contains("[host.\"http://127.0.0.1:65001\"]"));
        assert!(text.contains("capabilities = [\"pull\", \"resolve\"]"));
        let local = std::fs::read_to_string(dir.path().join("127.0.0.1:5000/hosts.toml")).unwrap();
        assert!(local.contains("server = \"http://127.0.0.1:5000\""));
        let default = std::fs::read_to_string(dir.path().join("_default/hosts.toml")).unwrap();
        assert!(
            !default.contains("server"),
            "_default has no server: {default}"
        );
        assert!(default.contains(
            "[host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]"
        ));
        let parsed: toml::Table = default.parse().expect("_default/hosts.toml is TOML");
        assert!(parsed.contains_key("host"));
        restore(&opts).unwrap();
        assert!(!dir.path().join("_default/hosts.toml").exists());
        assert_eq!(
            std::fs::read_to_string(&existing).unwrap(),
            "server = \"https://mine\"\n"
        );
        assert!(!dir.path().join("127.0.0.1:5000/hosts.toml").exists());
        let bad = ContainerdOptions {
            registries: vec!["../etc".into()],
            ..opts
        };
        assert!(write(&bad).is_err());
    }
}
