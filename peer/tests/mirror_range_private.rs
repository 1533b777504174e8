//! Ranged blob requests (`Range: bytes=…`, what lazy readers send) never leak a private blob:
//! a client without credentials, or with wrong ones, gets 401/403 and not one byte of the
//! blob, whether the peer holds the blob whole, holds only some of its pieces (fetched for an
//! earlier range with valid credentials), or could get its pieces from another peer that holds
//! them. Against a real `docker-registry` with htpasswd (Basic) auth and one with token auth.

mod support;

use std::time::Duration;

use shoal_common::Digest;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Range";
/// Held whole by peer A (not a multiple of the 1 MiB piece size).
const WHOLE: usize = (3 << 20) + 777;
/// Held in part by peer A: only the pieces of [`HELD`].
const PART: usize = (5 << 20) + 333;
/// The range peer A fetches of the `PART` blob with valid credentials: pieces 0 to 2.
const HELD: (u64, u64) = (1_048_000, 2_097_500);
/// Registry bytes one refused request may cost: its 401 answers (about 500 bytes each; a token
/// registry answers twice when the peer retries with a token). Far below one piece (1 MiB).
const REFUSAL_BYTES: u64 = 1024;

/// A private registry behind the counting proxy, its repository and the clients' credentials.
struct Private {
    kind: &'static str,
    origin: Origin,
    repo: &'static str,
    /// Valid credentials (`Authorization` value).
    good: String,
    /// Requests that must be refused: (what, `Authorization` or none).
    bad: Vec<(&'static str, Option<String>)>,
    /// Pushes a blob with credentials the registry accepts.
    push_auth: String,
    _issuer: Option<TokenIssuer>,
}

/// The ranges asked of each blob without valid credentials: (what, `Range`).
fn probes(len: usize) -> Vec<(String, String)> {
    let len = len as u64;
    vec![
        ("first 100 bytes".into(), "bytes=0-99".into()),
        (
            "the range held (pieces 0-2)".into(),
            format!("bytes={}-{}", HELD.0, HELD.1),
        ),
        ("inside held piece 1".into(), "bytes=1048576-1048675".into()),
        (
            "at 4 MiB (piece 4, never fetched; past the end of the whole blob)".into(),
            "bytes=4194304-4194403".to_string(),
        ),
        ("suffix of 100 bytes".into(), "bytes=-100".into()),
        (
            "open-ended tail".into(),
            format!("bytes={}-", len.saturating_sub(500)),
        ),
    ]
}

async fn ranges_never_leak(p: Private) {
    let Private {
        kind,
        origin,
        repo,
        good,
        bad,
        push_auth,
        _issuer,
    } = p;
    let whole = random_blob(500, WHOLE);
    let part = random_blob(501, PART);
    let whole_d = origin
        .registry
        .push_with_auth(repo, &whole, Some(&push_auth))
        .await;
    let part_d = origin
        .registry
        .push_with_auth(repo, &part, Some(&push_auth))
        .await;
    let host = origin.host();

    let supernode = Supernode::start().await;
    let opts = |id: &str| {
        PeerOpts::with_supernode(&supernode)
            .peer_id(id)
            .arg("--insecure-registry")
            .arg(&host)
    };
    let a = Peer::start("peer-a", opts("peer-a")).await;
    let url =
        |peer: &Peer, d: &Digest| format!("{}/v2/{repo}/blobs/{d}?ns={host}", peer.mirror_url());

    // Peer A: `whole` whole, `part` only the pieces of HELD, both with valid credentials.
    fetch(&url(&a, &whole_d), Some(&good), None)
        .await
        .assert_bytes(
            &whole,
            &format!("{kind}: peer A, whole blob with credentials"),
        );
    fetch_range(
        &url(&a, &part_d),
        Some(&good),
        &format!("bytes={}-{}", HELD.0, HELD.1),
    )
    .await
    .assert_range(
        &part,
        HELD.0,
        HELD.1,
        &format!("{kind}: peer A, range of the partly held blob with credentials"),
    );

    // Refused on peer A, whatever the range.
    let denied_before = a
        .metric(
            "shoal_peer_blob_access_checks_total",
            &[("result", "denied")],
        )
        .await;
    let egress_before = origin.egress();
    let mut refusals = 0u32;
    for (blob_what, d, len) in [
        ("held whole", &whole_d, WHOLE),
        ("held in part", &part_d, PART),
    ] {
        for (range_what, range) in probes(len) {
            for (cred_what, auth) in &bad {
                let what = format!(
                    "{kind}: peer A, blob {blob_what}, {range_what} ({range}), {cred_what}"
                );
                fetch_range(&url(&a, d), auth.as_deref(), &range)
                    .await
                    .assert_refused(&what);
                refusals += 1;
            }
        }
    }
    let egress = origin.egress() - egress_before;
    assert!(
        egress <= u64::from(refusals) * REFUSAL_BYTES,
        "{kind}: {refusals} refused ranged requests on peer A made the registry send {egress} \
         bytes (at most {REFUSAL_BYTES} of refusal headers each expected, no piece)"
    );
    let denied = a
        .metric(
            "shoal_peer_blob_access_checks_total",
            &[("result", "denied")],
        )
        .await
        - denied_before;
    let whole_refusals = probes(WHOLE).len() * bad.len();
    assert!(
        denied >= whole_refusals as f64,
        "{kind}: peer A counted {denied} denied access checks for {refusals} refusals \
         ({whole_refusals} of them for the blob it holds whole)"
    );
    // Valid credentials still read a range of the partly held blob that A does not hold yet.
    fetch_range(&url(&a, &part_d), Some(&good), "bytes=3145728-3145827")
        .await
        .assert_range(
            &part,
            3_145_728,
            3_145_827,
            &format!("{kind}: peer A, unheld range with credentials after the refusals"),
        );

    // Peer B holds nothing; its P2P source (peer A) holds `whole` and pieces of `part`.
    let b = Peer::start("peer-b", opts("peer-b")).await;
    let egress_before = origin.egress();
    let mut refusals = 0u32;
    for (blob_what, d, len) in [
        ("held whole by A", &whole_d, WHOLE),
        ("held in part by A", &part_d, PART),
    ] {
        for (range_what, range) in probes(len) {
            for (cred_what, auth) in &bad {
                let what = format!(
                    "{kind}: peer B, blob {blob_what}, {range_what} ({range}), {cred_what}"
                );
                fetch_range(&url(&b, d), auth.as_deref(), &range)
                    .await
                    .assert_refused(&what);
                refusals += 1;
            }
        }
    }
    let egress = origin.egress() - egress_before;
    assert!(
        egress <= u64::from(refusals) * REFUSAL_BYTES,
        "{kind}: {refusals} refused ranged requests on peer B made the registry send {egress} \
         bytes (at most {REFUSAL_BYTES} of refusal headers each expected, no piece)"
    );
    let fetched = b.metric("shoal_peer_download_bytes_total", &[]).await;
    assert_eq!(
        fetched, 0.0,
        "{kind}: peer B downloaded {fetched} bytes (from peers or the registry) for {refusals} \
         refused clients"
    );
    for (blob_what, d) in [("whole", &whole_d), ("part", &part_d)] {
        assert!(
            !supernode.task_has_peer(&d.to_string(), "peer-b").await,
            "{kind}: refused clients made peer B join the task of blob {blob_what} ({d}): {}",
            supernode.tasks().await
        );
    }

    // With credentials peer B serves the range (its pieces may come from peer A); then B holds
    // them itself, and a client without credentials is still refused.
    let range = format!("bytes={}-{}", HELD.0 + 1000, HELD.1 + 1000);
    fetch_range(&url(&b, &part_d), Some(&good), &range)
        .await
        .assert_range(
            &part,
            HELD.0 + 1000,
            HELD.1 + 1000,
            &format!("{kind}: peer B, range with credentials"),
        );
    for (cred_what, auth) in &bad {
        for range in [range.as_str(), "bytes=2097152-2097251"] {
            fetch_range(&url(&b, &part_d), auth.as_deref(), range)
                .await
                .assert_refused(&format!(
                    "{kind}: peer B after fetching {range} with credentials, again {cred_what}"
                ));
        }
    }
    let mut a = a;
    let mut b = b;
    a.assert_running();
    b.assert_running();
}

fn bad_basic() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("no credentials", None),
        ("wrong password", Some(basic_auth(USER, "wrong-password"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn htpasswd_registry_ranges_never_leak() {
    if !tools_present(&["/usr/bin/htpasswd"]) {
        eprintln!("skipping: htpasswd is not installed (apt-get install apache2-utils)");
        return;
    }
    with_timeout(Duration::from_secs(240), async {
        let good = basic_auth(USER, PASSWORD);
        ranges_never_leak(Private {
            kind: "htpasswd",
            origin: Origin::start_htpasswd(USER, PASSWORD).await,
            repo: "private/app",
            good: good.clone(),
            bad: bad_basic(),
            push_auth: good,
            _issuer: None,
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_registry_ranges_never_leak() {
    if !tools_present(&["/usr/bin/openssl"]) {
        eprintln!("skipping: openssl is not installed");
        return;
    }
    with_timeout(Duration::from_secs(240), async {
        let issuer = TokenIssuer::start(USER, PASSWORD).await;
        let origin = Origin::with_registry(issuer.registry().await).await;
        let good = basic_auth(USER, PASSWORD);
        let repo = "private/app";
        let push_auth = issuer.bearer(repo, "pull,push", Some(&good)).await;
        let mut bad = bad_basic();
        bad.push((
            "a bearer token the registry never issued",
            Some("Bearer not-a-jwt".into()),
        ));
        // An anonymous token is valid but has no pull right on private/*.
        let anonymous = issuer.bearer(repo, "pull", None).await;
        bad.push(("an anonymous token", Some(anonymous)));
        ranges_never_leak(Private {
            kind: "token",
            origin,
            repo,
            good,
            bad,
            push_auth,
            _issuer: Some(issuer),
        })
        .await
    })
    .await
}
