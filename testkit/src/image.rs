//! Test images: built with `umoci` (one layer per file set), pushed with `skopeo`, and read
//! back through a mirror as an OCI client would.

use std::path::Path;
use std::process::Command;

use shoal_common::Digest;

use crate::http;

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every one of `tools` (absolute paths) is installed.
pub fn tools_present(tools: &[&str]) -> bool {
    tools.iter().all(|p| Path::new(p).exists())
}

/// Builds an OCI layout under `dir` with one layer per entry of `layers` (each a file name and
/// its content, added at the root) and returns the `DIR:TAG` reference.
pub fn build_image(dir: &Path, layers: &[(&str, &[u8])]) -> String {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let image_ref = format!("{}:t", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image_ref]));
    for (name, data) in layers {
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image_ref])
            .arg(&bundle));
        std::fs::write(bundle.join("rootfs").join(name), data).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image_ref])
            .arg(&bundle));
    }
    image_ref
}

/// `skopeo copy oci:LAYOUT docker://DEST` over plain http, with `user:password` if given.
pub fn push_image(image_ref: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    run(cmd
        .arg(format!("oci:{image_ref}"))
        .arg(format!("docker://{dest}")));
}

/// What a client got for one request: status, `WWW-Authenticate`, body (or the read error).
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub challenge: Option<String>,
    pub body: Result<Vec<u8>, String>,
}

impl Fetched {
    /// Panics unless this is a 200 whose body is exactly `expected`.
    pub fn assert_bytes(&self, expected: &[u8], what: &str) {
        assert_eq!(self.status, 200, "{what}: {self:?}");
        let body = self.body.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(body == expected, "{what}: bytes differ");
    }

    /// Panics unless this is a 401 or 403 with an OCI error body (never the content).
    pub fn assert_refused(&self, what: &str) {
        assert!(
            self.status == 401 || self.status == 403,
            "{what}: expected 401/403, got {}",
            self.status
        );
        let body = self.body.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
        let json: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what}: body is not an OCI error ({e})"));
        let code = json["errors"][0]["code"].as_str().unwrap_or_default();
        assert!(
            code == "UNAUTHORIZED" || code == "DENIED",
            "{what}: OCI code {code}"
        );
    }
}

/// `GET base/v2/REPO/{manifests|blobs}/REF?ns=NS` with an optional `Authorization`.
pub async fn fetch(url: &str, auth: Option<&str>, accept: Option<&str>) -> Fetched {
    let mut req = http().get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("{e:?}"));
    Fetched {
        status,
        challenge,
        body,
    }
}

/// Accept header of an OCI or Docker client asking for a single-platform manifest.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The config and layer digests a manifest names, config first.
pub fn manifest_blobs(manifest: &[u8]) -> Vec<Digest> {
    let m: serde_json::Value = serde_json::from_slice(manifest).expect("manifest JSON");
    let mut out = vec![m["config"]["digest"]
        .as_str()
        .expect("config digest")
        .parse()
        .unwrap()];
    for l in m["layers"].as_array().expect("layers") {
        out.push(l["digest"].as_str().unwrap().parse().unwrap());
    }
    out
}
