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
//! - [`shoal`], [`get`], [`origin`], [`image`], [`swarm`]: Shoal's own daemons, the
//!   `shoal-peer get` client, a registry behind a counting proxy, OCI images, and timed swarms
//!   measured against a fault-free run; [`waits`] and [`scratch`]: bounded waits and where
//!   their files go.
//! - [`scenarios`]: issue 21's fault measurements, shared by the peer's CI tests (loose
//!   bounds) and `shoal-bench faults` (the targets).
//!
//! Everything here panics on setup failures: a test that cannot build its world should fail
//! loudly with the reason, not return an error nobody reads.

pub mod blobs;
pub mod get;
pub mod image;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod ports;
pub mod processes;
pub mod proxies;
pub mod registry;
pub mod scenarios;
pub mod scratch;
pub mod shoal;
pub mod swarm;
pub mod tmpfs;
pub mod waits;

pub use blobs::{assert_file_digest, compressible_blob, random_blob, sha256_file};
pub use limits::{open_files_limit, peak_rss, proc_status_bytes, raise_open_files};
pub use metrics::{metric_sum, metric_value, parse_metrics, sum_of, Sample};
pub use ports::free_port;
pub use processes::{
    bin_in, default_bin_dir, hermetic_env, http_get, http_status, workspace_bin, Daemon,
};
pub use proxies::{CountingProxy, Exchange, Fault, FaultPlan, FaultProxy, HttpLog, Trigger};
pub use registry::{Registry, RegistryAuth};
pub use tmpfs::Tmpfs;
pub use waits::{http, wait_for, with_timeout};
