//! An HTTP/1.1 proxy that injects faults, for tests showing that a failing registry or peer
//! never turns into a failed, stalled or corrupted pull.
//!
//! Each request that matches the plan's path filter gets a number (0, 1, 2, … in arrival
//! order across all connections); the plan's [`Trigger`] decides from that number whether
//! the request meets the plan's [`Fault`]. A share of requests is chosen by hashing the
//! number with a seed, so a run can be reproduced. Faults apply to whole exchanges: the
//! request is answered or forwarded whole, and the response is what the fault makes of it.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{copy_body, read_head, Framing, Head, Pass, Tap};
use super::{listen, port_of, Stop};

/// What happens to a faulted exchange.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status (e.g. 503) and an empty body; the upstream never sees the
    /// request. 429 and 503 answers carry `Retry-After: 0`.
    Status(u16),
    /// Answer `429 Too Many Requests` with `Retry-After: SECONDS` (a registry's rate limit).
    Throttle(u64),
    /// Close the client's connection with a TCP reset instead of answering.
    Reset,
    /// Forward the response head and the first `n` body bytes, then close the connection.
    Truncate(u64),
    /// Forward the response head and the first `n` body bytes, then hold the connection open
    /// and silent (a parent that stops answering without closing). `Stall(0)` after the
    /// head; the request itself is forwarded.
    Stall(u64),
    /// Swallow the request: no answer, connection held open.
    Hang,
    /// Forward the response body at no more than this many bytes per second.
    Rate(u64),
    /// Flip (XOR 0xff) every body byte whose offset is a multiple of `n` (from 0).
    Corrupt(u64),
}

/// The status line and `Retry-After` header of a fault answered without the upstream.
fn status_answer(fault: &Fault) -> Option<(u16, String)> {
    match *fault {
        Fault::Throttle(secs) => Some((429, format!("Retry-After: {secs}\r\n"))),
        Fault::Status(c @ (429 | 503)) => Some((c, "Retry-After: 0\r\n".to_owned())),
        Fault::Status(c) => Some((c, String::new())),
        _ => None,
    }
}

/// Which matching requests meet the fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    Never,
    Always,
    /// About `ratio` (0.0 to 1.0) of requests, picked by hashing each request's number with
    /// `seed`: the same seed faults the same numbers.
    Share {
        ratio: f64,
        seed: u64,
    },
    /// The requests with these numbers.
    Requests(Vec<u64>),
    /// The first `n` requests.
    First(u64),
}

impl Trigger {
    fn fires(&self, n: u64) -> bool {
        match self {
            Trigger::Never => false,
            Trigger::Always => true,
            Trigger::Share { ratio, seed } => {
                let h = splitmix(seed ^ splitmix(n));
                (h as f64 / u64::MAX as f64) < *ratio
            }
            Trigger::Requests(list) => list.contains(&n),
            Trigger::First(k) => n < *k,
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fault, when it fires, and on which requests.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub fault: Fault,
    pub trigger: Trigger,
    /// Only requests whose target contains this string are numbered and may be faulted
    /// (e.g. `/blobs/`); others pass untouched.
    pub path_contains: Option<String>,
}

impl FaultPlan {
    /// `fault` on every request.
    pub fn always(fault: Fault) -> FaultPlan {
        Self::new(fault, Trigger::Always)
    }

    pub fn new(fault: Fault, trigger: Trigger) -> FaultPlan {
        FaultPlan {
            fault,
            trigger,
            path_contains: None,
        }
    }

    /// No fault: a transparent proxy.
    pub fn none() -> FaultPlan {
        Self::new(Fault::Status(503), Trigger::Never)
    }

    /// Only requests whose target contains `needle`.
    pub fn on_paths(mut self, needle: &str) -> FaultPlan {
        self.path_contains = Some(needle.to_string());
        self
    }
}

#[derive(Default)]
struct Shared {
    plan: Mutex<Option<FaultPlan>>,
    /// Requests seen (all of them).
    requests: AtomicU64,
    /// Requests that matched the path filter (the next one's number).
    matched: AtomicU64,
    faulted: AtomicU64,
    /// Response bytes sent to clients.
    down_bytes: AtomicU64,
}

/// The proxy; stops accepting when dropped, and connections it holds (stalls, hangs) are
/// released then.
pub struct FaultProxy {
    /// `127.0.0.1:PORT` to send requests to.
    pub addr: String,
    pub port: u16,
    shared: Arc<Shared>,
    _stop: Stop,
}

impl FaultProxy {
    /// Proxies to `upstream` (`HOST:PORT`) under `plan`.
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let shared = Arc::new(Shared {
            plan: Mutex::new(Some(plan)),
            ..Shared::default()
        });
        let (sh, upstream) = (shared.clone(), upstream.to_string());
        let (addr, _stop) = listen(move |client, stopped| serve(client, &upstream, &sh, stopped));
        FaultProxy {
            port: port_of(&addr),
            addr,
            shared,
            _stop,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the plan (numbering goes on): a schedule over time is a test changing plans.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan);
    }

    /// Requests seen so far (faulted or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests faulted so far.
    pub fn faulted(&self) -> u64 {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Response bytes sent to clients so far.
    pub fn bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }
}

/// The fault for the next request with `target`, if it meets one.
fn decide(shared: &Shared, target: &str) -> Option<Fault> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let plan = shared
        .plan
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    if plan
        .path_contains
        .as_deref()
        .is_some_and(|p| !target.contains(p))
    {
        return None;
    }
    let n = shared.matched.fetch_add(1, Ordering::SeqCst);
    if !plan.trigger.fires(n) {
        return None;
    }
    shared.faulted.fetch_add(1, Ordering::SeqCst);
    Some(plan.fault)
}

/// One client connection, one exchange at a time.
fn serve(client: TcpStream, upstream: &str, shared: &Shared, stopped: &AtomicBool) {
    let _ = client.set_nodelay(true);
    let Ok(client_w) = client.try_clone() else {
        return;
    };
    let mut client_w = client_w;
    let mut from_client = BufReader::new(client);
    let mut server: Option<(BufReader<TcpStream>, TcpStream)> = None;
    while let Ok(Some(head)) = read_head(&mut from_client) {
        let req = Head::parse(&head);
        let (method, target) = req.request();
        let fault = decide(shared, &target);
        if let Some((code, retry_after)) = fault.as_ref().and_then(status_answer) {
            let body = copy_body(
                &mut from_client,
                &mut std::io::sink(),
                req.request_framing(),
                &mut Pass,
            );
            if !matches!(body, Ok(true)) {
                return;
            }
            let answer =
                format!("HTTP/1.1 {code} Injected fault\r\nContent-Length: 0\r\n{retry_after}\r\n");
            if client_w.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        match fault {
            Some(Fault::Reset) => {
                reset(&client_w);
                return;
            }
            Some(Fault::Hang) => {
                hold(stopped);
                return;
            }
            _ => {}
        }
        if server.is_none() {
            let Ok(s) = TcpStream::connect(upstream) else {
                return; // the client sees the connection close: upstream down
            };
            let _ = s.set_nodelay(true);
            let Ok(w) = s.try_clone() else { return };
            server = Some((BufReader::new(s), w));
        }
        let Some((server_r, server_w)) = server.as_mut() else {
            return;
        };
        if server_w.write_all(&head).is_err()
            || !matches!(
                copy_body(&mut from_client, server_w, req.request_framing(), &mut Pass),
                Ok(true)
            )
        {
            return;
        }
        // The response, after any interim (1xx) ones.
        let resp_head = loop {
            let Ok(Some(h)) = read_head(server_r) else {
                return;
            };
            let parsed = Head::parse(&h);
            let interim = (100..200).contains(&parsed.status()) && parsed.status() != 101;
            if client_w.write_all(&h).is_err() {
                return;
            }
            shared
                .down_bytes
                .fetch_add(h.len() as u64, Ordering::SeqCst);
            if !interim {
                break parsed;
            }
        };
        let framing = resp_head.response_framing(&method);
        let until_eof = matches!(framing, Framing::UntilEof);
        let mut tap = Faulty {
            fault,
            offset: 0,
            started: Instant::now(),
            shared,
        };
        match copy_body(server_r, &mut client_w, framing, &mut tap) {
            Ok(true) if !until_eof => {}
            Ok(_) => return,
            Err(_) => {
                match tap.fault {
                    Some(Fault::Stall(_)) => hold(stopped),
                    Some(Fault::Truncate(_)) => {
                        let _ = client_w.shutdown(Shutdown::Both);
                    }
                    _ => {}
                }
                return;
            }
        }
        if resp_head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// Applies a response fault to the body's payload as it passes.
struct Faulty<'a> {
    fault: Option<Fault>,
    /// Payload bytes forwarded so far.
    offset: u64,
    started: Instant,
    shared: &'a Shared,
}

impl Tap for Faulty<'_> {
    fn framing(&mut self, n: u64) {
        self.shared.down_bytes.fetch_add(n, Ordering::SeqCst);
    }

    fn payload(&mut self, bytes: &mut [u8]) -> usize {
        let len = bytes.len() as u64;
        let keep = match self.fault {
            Some(Fault::Truncate(n)) | Some(Fault::Stall(n)) => {
                n.saturating_sub(self.offset).min(len)
            }
            Some(Fault::Corrupt(every)) => {
                let every = every.max(1);
                let first = (every - self.offset % every) % every;
                let mut i = first;
                while i < len {
                    bytes[i as usize] ^= 0xff;
                    i += every;
                }
                len
            }
            Some(Fault::Rate(rate)) => {
                // Sleep until the bytes sent so far, these included, fit the rate.
                let due = Duration::from_secs_f64((self.offset + len) as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                    std::thread::sleep(wait);
                }
                len
            }
            _ => len,
        };
        self.offset += keep;
        self.shared.down_bytes.fetch_add(keep, Ordering::SeqCst);
        keep as usize
    }
}

/// Makes closing `stream` send a TCP reset (RST, not FIN): SO_LINGER with a zero timeout.
/// The reset goes out when the caller drops its last handle to the socket.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd we own, a pointer to a live struct of the stated size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Holds the calling connection open and silent until the proxy stops.
fn hold(stopped: &AtomicBool) {
    while !stopped.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
