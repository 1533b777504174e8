//! Debian's `docker-registry` (the CNCF distribution registry) on a free loopback port: the
//! real upstream every end-to-end test pulls from, open or asking for credentials.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::ports::free_port;
use crate::processes::Daemon;

const BIN: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the registry asks clients for.
#[derive(Clone, Debug, Default)]
pub enum RegistryAuth {
    /// Nothing: anyone may pull and push.
    #[default]
    Open,
    /// Basic credentials from an htpasswd file (`htpasswd -Bbc`, from apache2-utils).
    Htpasswd { user: String, password: String },
    /// Bearer tokens from `realm` (`auth: token`), signed by the key of the certificate in
    /// `cert` (a PEM file).
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

impl RegistryAuth {
    pub fn htpasswd(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Htpasswd {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The YAML `auth:` section, writing the htpasswd file into `dir` if needed.
    fn config(&self, dir: &Path) -> String {
        match self {
            RegistryAuth::Open => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let file = dir.join("htpasswd");
                let out = Command::new("htpasswd")
                    .arg("-Bbc")
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .expect("htpasswd (apt-get install apache2-utils)");
                assert!(out.status.success(), "htpasswd: {out:?}");
                format!(
                    "auth:\n  htpasswd:\n    realm: shoal-tests\n    path: {}\n",
                    file.display()
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                 issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        }
    }
}

/// The registry's YAML configuration: storage under `root`, listening on `addr`, quiet logs,
/// `auth` (an htpasswd file goes into `dir`). `shoal-bench` starts its registries with it too.
pub fn config_yaml(root: &Path, addr: &str, auth: &RegistryAuth, dir: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: {addr}\n  secret: shoal-tests\n{}",
        root.display(),
        auth.config(dir)
    )
}

/// A running registry; killed on drop. Its storage lives in a temp dir it owns, or in the
/// directory given to [`Registry::start_in`].
pub struct Registry {
    pub port: u16,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The storage root (`docker/registry/v2/blobs/sha256/XX/HEX/data` below it).
    pub root: PathBuf,
    daemon: Daemon,
    _dir: Option<TempDir>,
}

impl Registry {
    /// Whether Debian's `docker-registry` is installed (tests that may skip without it ask;
    /// the others let [`Registry::start`] fail with what to install).
    pub fn installed() -> bool {
        Path::new(BIN).exists()
    }

    /// A registry in a temp dir of its own.
    pub fn start(auth: RegistryAuth) -> Registry {
        let dir = crate::scratch::tempdir();
        let mut registry = Self::start_in(dir.path(), auth);
        registry._dir = Some(dir);
        registry
    }

    /// A registry keeping its config, log (`registry.log`) and storage (`registry-data/`)
    /// in `dir`. Returns once `/v2/` answers (200, or 401 when it wants credentials).
    pub fn start_in(dir: &Path, auth: RegistryAuth) -> Registry {
        assert!(
            Self::installed(),
            "{BIN} is missing: apt-get install docker-registry (.ci/run does)"
        );
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let root = dir.join("registry-data");
        let config = dir.join("registry.yml");
        std::fs::write(&config, config_yaml(&root, &addr, &auth, dir))
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn_logged("registry", cmd, &dir.join("registry.log"));
        let ready = match auth {
            RegistryAuth::Open => 200,
            _ => 401,
        };
        daemon.wait_http(&format!("http://{addr}/v2/"), &[ready], READY_TIMEOUT);
        Registry {
            port,
            addr,
            root,
            daemon,
            _dir: None,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the registry stores the blob with this hex digest (tests corrupt or remove it).
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// SIGKILL: the origin goes away.
    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
