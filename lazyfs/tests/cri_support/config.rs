//! The containerd configuration of the CRI tests (see `containerd.rs` for why each setting)
//! as pure text, so that `shoal-bench lazy-pod` writes the same configuration (it includes
//! this file with `#[path]`): only `std` here.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// `overlayfs`, or the proxy snapshotter's name (with `proxy_socket`).
    pub snapshotter: String,
    /// The proxy snapshotter's socket (`[proxy_plugins.NAME]`), None for a built-in one.
    pub proxy_socket: Option<PathBuf>,
    /// A reference to a local image whose entrypoint blocks.
    pub sandbox_image: String,
    /// The registry host (`HOST:PORT`) images are named with.
    pub registry_host: String,
    /// The mirror every pull from `registry_host` goes to (`http://127.0.0.1:PORT`).
    pub mirror: String,
}

/// `hosts.toml` for a registry host: `server` is where containerd falls back to (a closed
/// port here), the `[host]` table the mirror it tries first.
pub fn hosts_toml(server: &str, mirror: &str) -> String {
    format!(
        "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The containerd config (see the module doc).
pub fn config_toml(
    dir: &Path,
    sock: &Path,
    certs: &Path,
    runc_root: &Path,
    stream_port: u16,
    opts: &ContainerdOptions,
) -> String {
    let d = dir.display();
    let mut s = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{sock}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    disable_snapshot_annotations = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        sock = sock.display(),
        sandbox = opts.sandbox_image,
        snapshotter = opts.snapshotter,
        runc_root = runc_root.display(),
        certs = certs.display(),
    );
    if let Some(proxy) = &opts.proxy_socket {
        s.push_str(&format!(
            "\n[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{addr}\"\n",
            name = opts.snapshotter,
            addr = proxy.display()
        ));
    }
    s
}
