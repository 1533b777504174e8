//! Helpers shared by the deployment tests.
#![allow(dead_code)]

use std::path::PathBuf;

#[allow(unused_imports)] // each test file uses a different subset
pub use shoal_testkit::{free_port, workspace_bin as bin};

/// The workspace root (this crate lives in `deploy-tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A `GET` of `path` on 127.0.0.1:`port`: (status, body), or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    shoal_testkit::http_get(&format!("http://127.0.0.1:{port}{path}"))
}
