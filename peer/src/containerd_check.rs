//! `shoal-peer containerd-check`: verifies that containerd reads the `hosts.toml` files
//! `containerd-config` writes. containerd's CRI plugin only looks at a hosts directory when its
//! registry `config_path` names it; otherwise it ignores the files and pulls straight from the
//! registry, and the node looks healthy while Shoal sees nothing. The chart's init container
//! runs this check so such a node fails loudly (the pod is not Ready, the log names the fix)
//! instead, or, when allowed, adds the setting (containerd reads its config only at start, so
//! it must then be restarted).
//!
//! Where the setting lives depends on the config's `version`:
//! 1 (or none): `[plugins.cri.registry]`; 2: `[plugins."io.containerd.grpc.v1.cri".registry]`;
//! 3 (containerd 2.x): `[plugins."io.containerd.cri.v1.images".registry]`, whose default
//! already lists `/etc/containerd/certs.d`. `config_path` may list several directories
//! separated by `:`.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{Error, Result};

/// The backup of containerd's config before Shoal first edited it (shared with
/// `shoal-lazyfs containerd-config`, which makes the same kind of backup: the first one kept
/// is the original).
pub const BACKUP_SUFFIX: &str = ".shoal-backup";

/// Held (`flock`) around a `--patch` read-modify-write of the config: the snapshotter's init
/// container (`shoal-lazyfs containerd-config`) edits the same file at the same time on a
/// node, and without the lock one edit could drop the other.
pub const LOCK_SUFFIX: &str = ".shoal-lock";

/// containerd 2.x's built-in `config_path` when the file sets none.
const V3_DEFAULT: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// containerd's config file as this process sees it (in the chart: the host's file mounted).
    pub config: PathBuf,
    /// The hosts directory as containerd sees it (a host path).
    pub certs_dir: String,
    /// Add the directory to `config_path` when it is missing, instead of failing.
    pub patch: bool,
}

/// What the check found when containerd does read the directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `config_path` already includes the directory.
    Configured { config_path: String },
    /// The file was changed to include it; containerd must be restarted to read it.
    Patched { config_path: String },
}

/// The registry section of one config version.
struct Section {
    version: i64,
    /// Table path under the root.
    path: &'static [&'static str],
    /// How the section's header is written in a config file.
    header: &'static str,
    default: Option<&'static str>,
}

fn section(version: i64) -> Result<Section> {
    let (path, header, default): (&'static [&'static str], _, _) = match version {
        1 => (
            &["plugins", "cri", "registry"],
            "[plugins.cri.registry]",
            None,
        ),
        2 => (
            &["plugins", "io.containerd.grpc.v1.cri", "registry"],
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]",
            None,
        ),
        3 => (
            &["plugins", "io.containerd.cri.v1.images", "registry"],
            "[plugins.\"io.containerd.cri.v1.images\".registry]",
            Some(V3_DEFAULT),
        ),
        v => {
            return Err(Error::Config(format!(
                "containerd config version {v} is not one this check knows (1, 2 or 3)"
            )))
        }
    };
    Ok(Section {
        version,
        path,
        header,
        default,
    })
}

/// Runs the check on the file; `Err` (with the fix in its message) when containerd would
/// ignore the directory and `patch` is off, or the file cannot be read or understood.
pub fn check(opts: &CheckOptions) -> Result<Verdict> {
    let certs = opts.certs_dir.trim_end_matches('/');
    if !certs.starts_with('/') || certs.contains(':') {
        return Err(Error::Config(format!(
            "--certs-dir {:?} must be an absolute path without ':'",
            opts.certs_dir
        )));
    }
    let file = &opts.config;
    // Only a patch writes; a plain check may run on a read-only mount.
    let _lock = if opts.patch { Some(lock(file)?) } else { None };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(file, e)),
    };
    let mut root: Table = match &text {
        Some(t) => t.parse().map_err(|e| {
            Error::Config(format!(
                "containerd config {} is not valid TOML: {e}",
                file.display()
            ))
        })?,
        // No file: containerd 1.x runs on defaults, which set no config_path.
        None => Table::new(),
    };
    let version = match root.get("version") {
        None => 1,
        Some(Value::Integer(v)) => *v,
        Some(other) => {
            return Err(Error::Config(format!(
                "containerd config {}: `version` must be an integer, not {other}",
                file.display()
            )))
        }
    };
    let sec = section(version)?;
    let registry = lookup(&root, sec.path, file)?;
    let current = match registry.and_then(|r| r.get("config_path")) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(Error::Config(format!(
                "containerd config {}: {} config_path must be a string, not {other}",
                file.display(),
                sec.header
            )))
        }
    };
    let effective = current
        .clone()
        .or_else(|| sec.default.map(str::to_owned))
        .unwrap_or_default();
    if includes(&effective, certs) {
        return Ok(Verdict::Configured {
            config_path: effective,
        });
    }
    let wanted = match current.as_deref() {
        Some(c) if !c.trim().is_empty() => format!("{c}:{certs}"),
        _ => match sec.default {
            Some(d) => format!("{d}:{certs}"),
            None => certs.to_owned(),
        },
    };
    let has_mirrors = registry.is_some_and(|r| r.contains_key("mirrors"));
    let fix = format!(
        "add to {} (config version {}):\n\n{}\n  config_path = \"{wanted}\"\n\nthen restart \
         containerd{}",
        file.display(),
        sec.version,
        sec.header,
        if has_mirrors {
            "; containerd refuses config_path next to `registry.mirrors`: move those mirrors \
             into hosts.toml files first"
        } else {
            ""
        }
    );
    let problem = match &current {
        None => "sets no registry config_path".to_owned(),
        Some(c) => format!("has config_path = {c:?}, which does not include {certs}"),
    };
    if !opts.patch || has_mirrors {
        return Err(Error::Config(format!(
            "containerd ignores Shoal's mirror: {} {problem}, so containerd would pull from \
             registries directly. Fix: {fix}",
            if text.is_some() {
                format!("{}", file.display())
            } else {
                format!("{} does not exist and containerd's default", file.display())
            }
        )));
    }
    if text.is_none() {
        root.insert("version".into(), Value::Integer(2));
    }
    let sec = if text.is_none() { section(2)? } else { sec };
    set(
        &mut root,
        sec.path,
        "config_path",
        Value::String(wanted.clone()),
        file,
    )?;
    write_with_backup(file, text.as_deref(), &root)?;
    Ok(Verdict::Patched {
        config_path: wanted,
    })
}

/// Whether the `:`-separated list names `dir` (trailing slashes ignored).
fn includes(list: &str, dir: &str) -> bool {
    list.split(':')
        .any(|p| p.trim().trim_end_matches('/') == dir)
}

/// The table at `path`, if every step exists; an error when a step is not a table.
fn lookup<'a>(root: &'a Table, path: &[&str], file: &Path) -> Result<Option<&'a Table>> {
    let mut t = root;
    for key in path {
        match t.get(*key) {
            None => return Ok(None),
            Some(Value::Table(next)) => t = next,
            Some(_) => {
                return Err(Error::Config(format!(
                    "containerd config {}: `{key}` must be a table",
                    file.display()
                )))
            }
        }
    }
    Ok(Some(t))
}

fn set(root: &mut Table, path: &[&str], key: &str, value: Value, file: &Path) -> Result<()> {
    let mut t = root;
    for step in path {
        let entry = t
            .entry(step.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        t = match entry {
            Value::Table(next) => next,
            _ => {
                return Err(Error::Config(format!(
                    "containerd config {}: `{step}` must be a table",
                    file.display()
                )))
            }
        };
    }
    t.insert(key.to_owned(), value);
    Ok(())
}

fn suffixed(file: &Path, suffix: &str) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Blocks until this process holds the config's edit lock; released when the file drops.
pub fn lock(config: &Path) -> Result<std::fs::File> {
    if let Some(dir) = config.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let path = suffixed(config, LOCK_SUFFIX);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(&path, e.into()))?;
    Ok(f)
}

/// Keeps the original once (`config.toml.shoal-backup`), then replaces the file atomically.
fn write_with_backup(file: &Path, original: Option<&str>, root: &Table) -> Result<()> {
    let backup = suffixed(file, BACKUP_SUFFIX);
    if let Some(orig) = original {
        if !backup.exists() {
            std::fs::write(&backup, orig).map_err(|e| Error::io(&backup, e))?;
        }
    }
    let text = toml::to_string(root)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", file.display())))?;
    let header = "# config_path added by shoal-peer containerd-check --patch (original kept as \
                  config.toml.shoal-backup)\n";
    let tmp = suffixed(file, ".shoal-tmp");
    std::fs::write(&tmp, format!("{header}{text}")).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| Error::io(file, e))
}

#[cfg(test)]
mod tests;
