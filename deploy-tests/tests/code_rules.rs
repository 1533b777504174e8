//! Workspace rules a reviewer would otherwise check by hand.
//!
//! Every dependency a crate declares is used, in the place its section says: `[dependencies]`
//! by the library or binary sources, `[dev-dependencies]` by tests, benches or `#[cfg(test)]`
//! code, `[build-dependencies]` by `build.rs`. This is what `cargo machete` checks (a crate's
//! name must appear in the code that can use it), written here so that CI needs no extra tool.
//! A dependency needed only for its side effects (a feature switched on for another crate) is
//! listed in `[package.metadata.cargo-machete] ignored`, machete's own convention, which makes
//! the reason visible in the manifest.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy-tests sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text of `files` and of every file they include with `#[path = "…"]` (the bench shares
/// the CRI client with lazyfs's tests that way).
fn text_of(files: &[PathBuf]) -> String {
    let mut pending = files.to_vec();
    let mut seen = std::collections::HashSet::new();
    let mut text = String::new();
    while let Some(f) = pending.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        let body = std::fs::read_to_string(&f).unwrap_or_default();
        for line in body.lines() {
            let included = line
                .trim()
                .strip_prefix("#[path = \"")
                .and_then(|rest| rest.split_once('"'))
                .map(|(rel, _)| rel);
            if let (Some(rel), Some(dir)) = (included, f.parent()) {
                pending.push(dir.join(rel));
            }
        }
        text.push_str(&body);
        text.push('\n');
    }
    text
}

/// Whether `name` (in its Rust spelling) stands in `text` as a whole identifier.
fn mentions(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

fn members(root: &Path) -> Vec<PathBuf> {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|m| root.join(m.as_str().expect("member path")))
        .collect()
}

/// Where code that may use a dependency of `section` lives in the crate at `dir`.
fn code_for(dir: &Path, section: &str) -> String {
    let mut files = Vec::new();
    match section {
        "dependencies" => rust_files(&dir.join("src"), &mut files),
        "build-dependencies" => files.push(dir.join("build.rs")),
        _ => {
            for sub in ["src", "tests", "benches", "examples"] {
                rust_files(&dir.join(sub), &mut files);
            }
        }
    }
    text_of(&files)
}

#[test]
fn every_declared_dependency_is_used() {
    let root = workspace_root();
    let mut unused = Vec::new();
    for dir in members(&root) {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let ignored: Vec<&str> = manifest
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("cargo-machete"))
            .and_then(|m| m.get("ignored"))
            .and_then(|i| i.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            let code = code_for(&dir, section);
            for name in deps.keys() {
                if ignored.contains(&name.as_str()) {
                    continue;
                }
                let rust_name = name.replace('-', "_");
                if !mentions(&code, &rust_name) {
                    unused.push(format!(
                        "{}: [{section}] {name}",
                        dir.strip_prefix(&root).unwrap_or(&dir).display()
                    ));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "dependencies no code of theirs uses (remove them, move them to the section whose code \
         uses them, or list them in [package.metadata.cargo-machete] ignored with a comment):\n{}",
        unused.join("\n")
    );
}

#[test]
fn mentions_needs_a_whole_identifier() {
    assert!(mentions("use tokio::sync;", "tokio"));
    assert!(mentions(
        "#[serde(with = \"humantime_serde\")]",
        "humantime_serde"
    ));
    assert!(!mentions("use tokio_util::sync;", "tokio"));
    assert!(!mentions("my_tokio::x", "tokio"));
}

/// Issue 23's rule for logic files: one concept per module, rarely over ~500 lines. Unit-test
/// files (`tests.rs`, anything under a `tests/` directory) are not logic.
#[test]
fn library_and_binary_files_stay_under_500_lines() {
    const LIMIT: usize = 500;
    let root = workspace_root();
    let mut long = Vec::new();
    for dir in members(&root) {
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            let rel = f.strip_prefix(&root).unwrap_or(&f).to_path_buf();
            let is_test = rel.file_name().is_some_and(|n| n == "tests.rs")
                || rel.components().any(|c| c.as_os_str() == "tests");
            let lines = std::fs::read_to_string(&f)
                .unwrap_or_default()
                .lines()
                .count();
            if !is_test && lines > LIMIT {
                long.push(format!("{} ({lines} lines)", rel.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these along their concepts:\n{}",
        long.join("\n")
    );
}
