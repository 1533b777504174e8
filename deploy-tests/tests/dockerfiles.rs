//! The Dockerfiles copy files that exist, and the binaries they ship and the chart runs are the
//! workspace's `[[bin]]` targets.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use support::workspace_root;

/// `Dockerfile` and `Dockerfile.*` at the root and under `docker/`.
fn dockerfiles(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [root.to_path_buf(), root.join("docker")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "Dockerfile" || name.starts_with("Dockerfile.") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// `[[bin]]` names of every workspace member.
fn workspace_bins(root: &Path) -> BTreeSet<String> {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let mut bins = BTreeSet::new();
    for m in members {
        let path = root.join(m.as_str().unwrap()).join("Cargo.toml");
        let crate_manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for b in crate_manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            bins.insert(b["name"].as_str().unwrap().to_owned());
        }
    }
    bins
}

/// Instructions with backslash continuations joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
        } else {
            cur.push_str(t);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
        }
    }
    out
}

#[test]
fn dockerfile_sources_exist_and_binaries_are_the_workspaces() {
    let root = workspace_root();
    let files = dockerfiles(&root);
    assert!(!files.is_empty(), "no Dockerfile in the repository");
    let bins = workspace_bins(&root);
    for must in ["shoal-peer", "shoal-supernode", "shoal-lazyfs"] {
        assert!(
            bins.contains(must),
            "{must} is not a [[bin]] of the workspace: {bins:?}"
        );
    }

    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut shipped = BTreeSet::new();
        for ins in instructions(&text) {
            let Some(rest) = ins.strip_prefix("COPY ") else {
                continue;
            };
            let mut words: Vec<&str> = rest.split_whitespace().collect();
            let from_stage = words.iter().any(|w| w.starts_with("--from="));
            words.retain(|w| !w.starts_with("--"));
            assert!(words.len() >= 2, "{}: bad COPY: {ins}", file.display());
            let sources = &words[..words.len() - 1];
            for src in sources {
                if from_stage {
                    // Binaries copied out of the builder: must be workspace binaries.
                    let name = src.rsplit('/').next().unwrap();
                    assert!(
                        bins.contains(name),
                        "{}: COPY --from ships {name}, not a workspace binary",
                        file.display()
                    );
                    shipped.insert(name.to_owned());
                } else {
                    assert!(
                        root.join(src).exists(),
                        "{}: COPY source {src} does not exist",
                        file.display()
                    );
                }
            }
        }
        assert!(
            !shipped.is_empty(),
            "{}: the final stage copies no binaries",
            file.display()
        );
        // Binaries built in the builder must be the ones copied (cp target/release/NAME).
        for word in text.split_whitespace() {
            if let Some(name) = word.strip_prefix("target/release/") {
                assert!(bins.contains(name), "{}: builds {name}?", file.display());
            }
        }
        assert!(
            !text.contains("FROM rust") || text.matches("FROM ").count() >= 2,
            "{}: multi-stage, no toolchain in the final image",
            file.display()
        );
    }
}

#[test]
fn chart_runs_workspace_binaries() {
    let root = workspace_root();
    let bins = workspace_bins(&root);
    let dir = root.join("helm/shoal/templates");
    let mut seen = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            if word.starts_with("shoal-") && bins.contains(word) {
                seen.insert(word.to_owned());
            }
        }
    }
    for must in ["shoal-peer", "shoal-supernode", "shoal-lazyfs"] {
        assert!(
            seen.contains(must),
            "the chart does not run {must} (a workspace binary)"
        );
    }
}
