//! A parent that stalls without closing its connections, in the middle of a swarm: its
//! children notice within the stall timeout (`parent_stall_timeout`, 1 s by default) instead
//! of the 60 s piece timeout, fetch its pieces elsewhere, and the supernode stops offering it
//! once several children reported it. Two ways to stall, each against a fault-free run of the
//! same swarm measured first:
//! - the parent accepts new requests and never answers them;
//! - the parent stops sending in the middle of a body and holds the connection open.
//!
//! The parent sits behind a [`FaultProxy`] (the supernode is given the proxy's address, with
//! `--advertise-addr`), transparent until the fault is switched on. Its own download is not
//! faulted.

mod support;

use std::time::Duration;

use shoal_testkit::scenarios::stall_parent::stall_parent;
use shoal_testkit::scenarios::SwarmOpts;
use support::*;

/// Loose, for CI machines running other tests at once; the target alone is 1.5 ×.
const BOUND: f64 = 3.0;

/// The swarm (4 peers, a 64 MiB blob, 20 MiB/s each: slow enough that the download lasts
/// several seconds) is [`SwarmOpts::default`], the same `shoal-bench faults` measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_overtake_a_parent_that_stalls_without_closing() {
    with_timeout(Duration::from_secs(300), async {
        let outcome = stall_parent(&SwarmOpts::default()).await;
        for run in [&outcome.hang, &outcome.stall] {
            assert!(run.unfinished_at_fault > 0);
            assert!(
                run.faulted_requests == 0 || run.timeouts >= 1.0,
                "{:?}: requests were faulted but no fetch was abandoned as stalled",
                run.fault
            );
            assert_within(
                &format!("{:?}", run.fault),
                run.survivors,
                outcome.fault_free,
                BOUND,
            );
        }
    })
    .await
}
