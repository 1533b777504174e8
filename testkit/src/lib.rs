//! Test support shared by every Shoal crate's tests (and by `shoal-bench`), so that each
//! helper exists once:
//!
//! - [`ports`]: free loopback ports.
//! - [`limits`]: the open-files limit, and a child's limits and peak memory from `/proc`.
//! - [`processes`]: child processes killed on drop, readiness waits, workspace binaries.
//! - [`registry`]: Debian's `docker-registry` on loopback, open or with htpasswd/token auth.
//! - [`proxies`]: TCP/HTTP proxies between a client and a server: one that counts (and can be
//!   stalled or gated), one that logs each HTTP exchange, and one that injects faults.
//! - [`metrics`]: reading the Prometheus text format.
//! - [`blobs`]: deterministic pseudo-random bytes and sha256 digests of data and files.
//! - [`tmpfs`]: a small tmpfs that fills up, for disk-full tests (root only).
//!
//! Everything here panics on setup failures: a test that cannot build its world should fail
//! loudly with the reason, not return an error nobody reads.

pub mod blobs;
pub mod limits;
pub mod metrics;
pub mod ports;
pub mod processes;
pub mod proxies;
pub mod registry;
pub mod tmpfs;

pub use blobs::{assert_file_digest, compressible_blob, random_blob, sha256_file};
pub use limits::{open_files_limit, peak_rss, proc_status_bytes, raise_open_files};
pub use metrics::{metric_sum, metric_value, parse_metrics, sum_of, Sample};
pub use ports::free_port;
pub use processes::{hermetic_env, http_get, http_status, workspace_bin, Daemon};
pub use proxies::{CountingProxy, Exchange, Fault, FaultPlan, FaultProxy, HttpLog, Trigger};
pub use registry::{Registry, RegistryAuth};
pub use tmpfs::Tmpfs;
