//! The TCP split round of `shoal-bench cluster` (`--tcp-split`): the same blob size over the
//! same shaped network, moved by plain TCP on a static schedule, with no hashing, no disk, no
//! scheduler and no HTTP. A reference for reading the P2P figures: what the simulated network
//! and TCP give when the application costs nothing and the schedule is fixed in advance. It
//! is not an upper bound: a static split waits for its slowest stream, which a scheduler that
//! hands out pieces as links free up does not.
//!
//! The schedule reaches the bound on paper: the origin sends node k the k-th 1/N of the blob
//! (all N streams at once, so its uplink is busy from start to end, F/u_s), and node k
//! forwards every byte of its share to the N−1 other nodes as it arrives. Each node's
//! downlink then carries F, its uplink (N−1)/N·F, all concurrently.
//!
//! Processes (each `shoal-bench internal …` inside a namespace):
//! - `split-origin` on the origin host serves the shares;
//! - `split-node` on every node host listens for its peers' streams and, once its local
//!   client says "start", fetches its share and forwards it;
//! - `split-wait` is the timed client: it starts its node and exits when the node has
//!   received F bytes in all.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::cli::ClusterArgs;
use crate::cluster::{Hosts, Setup};
use crate::cluster_round::timed_round;
use crate::netns::ORIGIN_IP;
use crate::processes::{self, Daemon, Daemons};
use crate::report::RoundReport;

/// Port of the origin's share server and of every node's listener.
const ORIGIN_PORT: u16 = 7000;
const NODE_PORT: u16 = 7001;
/// First byte of a connection to a node: a peer's data stream, or the local client.
const KIND_DATA: u8 = b'D';
const KIND_START: u8 = b'S';
/// What a node answers its client once it holds F bytes.
const DONE: u8 = b'K';
const READ_CHUNK: usize = 256 << 10;

/// Byte range `[start, end)` of node `index`'s share: the blob split into `nodes` near-equal
/// parts that add up to `size` exactly.
pub fn share(size: u64, nodes: u32, index: u32) -> (u64, u64) {
    let n = u64::from(nodes.max(1));
    let k = u64::from(index);
    (size * k / n, size * (k + 1) / n)
}

/// Runs the round: daemons up, every node's client timed by `cluster_round`, daemons down.
pub(crate) async fn tcp_split_round(
    args: &ClusterArgs,
    setup: &Setup,
    hosts: &Hosts<'_>,
) -> Result<RoundReport> {
    let size = args.size_mib << 20;
    let nodes = hosts.nodes.len() as u32;
    let exe = processes::self_exe()?;
    let mut daemons = Daemons::default();
    let mut cmd = hosts.origin.ns.command(&exe);
    cmd.args(["internal", "split-origin", "--listen"])
        .arg(format!("{ORIGIN_IP}:{ORIGIN_PORT}"))
        .args(["--size", &size.to_string(), "--nodes", &nodes.to_string()]);
    daemons.push(Daemon::spawn(
        "split-origin",
        cmd,
        &setup.logs.join("split-origin.log"),
    )?);
    let peers: Vec<String> = hosts.nodes.iter().map(|h| h.ip.to_string()).collect();
    for (i, host) in hosts.nodes.iter().enumerate() {
        let mut cmd = host.ns.command(&exe);
        cmd.args(["internal", "split-node", "--index", &i.to_string()])
            .args(["--size", &size.to_string()])
            .arg("--origin")
            .arg(format!("{ORIGIN_IP}:{ORIGIN_PORT}"))
            .args(["--peers", &peers.join(",")]);
        daemons.push(Daemon::spawn(
            &format!("split-node n{}", i + 1),
            cmd,
            &setup.logs.join(format!("split-node-n{}.log", i + 1)),
        )?);
    }
    // Each daemon binds its listener before anything else; give them a moment, then check
    // that none failed to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemons.check_alive()?;
    let round = timed_round(setup, hosts, "tcp-split", |_out| {
        Ok(vec![
            "split-wait".into(),
            "--node".into(),
            format!("127.0.0.1:{NODE_PORT}").into(),
        ])
    })
    .await;
    drop(daemons);
    round
}

/// `internal split-origin`: serves each connecting node its share (the node sends its
/// index as 4 bytes, big-endian), forever.
pub async fn origin(listen: SocketAddr, size: u64, nodes: u32) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let zeros = Bytes::from(vec![0u8; READ_CHUNK]);
    loop {
        let (mut conn, from) = listener.accept().await?;
        let zeros = zeros.clone();
        tokio::spawn(async move {
            let result = async {
                let index = conn.read_u32().await?;
                if index >= nodes {
                    bail!("node index {index} out of range (0..{nodes})");
                }
                let (start, end) = share(size, nodes, index);
                let mut left = end - start;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    conn.write_all(&zeros[..n]).await?;
                    left -= n as u64;
                }
                conn.shutdown().await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                eprintln!("split-origin: {from}: {e:#}");
            }
        });
    }
}

/// `internal split-node`: see the module doc.
pub async fn node(index: u32, size: u64, origin: SocketAddr, peers: Vec<Ipv4Addr>) -> Result<()> {
    let nodes = peers.len() as u32;
    if index >= nodes {
        bail!("node index {index} out of range (0..{nodes})");
    }
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, NODE_PORT))
        .await
        .with_context(|| format!("binding port {NODE_PORT}"))?;
    // Bytes of the blob received so far: its own share and the other nodes' streams.
    let (received, _) = watch::channel(0u64);
    let received = Arc::new(received);
    let started = Arc::new(AtomicBool::new(false));
    loop {
        let (mut conn, from) = listener.accept().await?;
        let received = received.clone();
        let started = started.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            let result = async {
                match conn.read_u8().await? {
                    KIND_DATA => count_stream(&mut conn, &received).await,
                    KIND_START => {
                        if !started.swap(true, Ordering::SeqCst) {
                            let received = received.clone();
                            tokio::spawn(async move {
                                if let Err(e) =
                                    fetch_and_forward(index, origin, &peers, &received).await
                                {
                                    eprintln!("split-node: share: {e:#}");
                                }
                            });
                        }
                        let mut rx = received.subscribe();
                        rx.wait_for(|&r| r >= size).await?;
                        conn.write_u8(DONE).await?;
                        conn.shutdown().await?;
                        Ok(())
                    }
                    other => bail!("unknown connection kind {other:#x}"),
                }
            }
            .await;
            if let Err(e) = result {
                eprintln!("split-node: {from}: {e:#}");
            }
        });
    }
}

async fn count_stream(conn: &mut TcpStream, received: &watch::Sender<u64>) -> Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        received.send_modify(|r| *r += n as u64);
    }
}

/// Fetches this node's share from the origin and passes every chunk to each other node as
/// it arrives (one writer task per node, so that a slow link does not hold the others).
async fn fetch_and_forward(
    index: u32,
    origin: SocketAddr,
    peers: &[Ipv4Addr],
    received: &watch::Sender<u64>,
) -> Result<()> {
    let mut src = connect(origin).await?;
    src.write_u32(index).await?;
    let mut writers = Vec::new();
    let mut senders = Vec::new();
    for (j, ip) in peers.iter().enumerate() {
        if j as u32 == index {
            continue;
        }
        let mut conn = connect(SocketAddr::from((*ip, NODE_PORT))).await?;
        conn.write_u8(KIND_DATA).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        senders.push(tx);
        writers.push(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                conn.write_all(&chunk).await?;
            }
            conn.shutdown().await
        }));
    }
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        let n = src.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        let chunk = buf.split_to(n).freeze();
        received.send_modify(|r| *r += n as u64);
        for tx in &senders {
            // A closed channel means that writer failed; its error is reported below.
            let _ = tx.send(chunk.clone());
        }
    }
    drop(senders);
    for w in writers {
        w.await??;
    }
    Ok(())
}

/// Connects, retrying for a few seconds: the other nodes' listeners may still be starting.
async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let mut tries = 0;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    }
}

/// `internal split-wait`: tells the local node to start and waits until it holds the blob.
pub async fn wait(node: SocketAddr) -> Result<()> {
    let mut conn = connect(node).await?;
    conn.write_u8(KIND_START).await?;
    match conn.read_u8().await {
        Ok(DONE) => Ok(()),
        Ok(other) => bail!("unexpected answer {other:#x} from {node}"),
        Err(e) => Err(e).with_context(|| format!("waiting for {node}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_blob_exactly() {
        for (size, nodes) in [
            (128u64 << 20, 8u32),
            (64 << 20, 16),
            (10, 3),
            (2, 5),
            (0, 4),
        ] {
            let mut next = 0;
            for k in 0..nodes {
                let (start, end) = share(size, nodes, k);
                assert_eq!(start, next, "size {size}, nodes {nodes}, share {k}");
                assert!(end >= start);
                next = end;
            }
            assert_eq!(next, size);
        }
    }
}
