//! An HTTP/1.1-aware TCP proxy that logs every request passing through it (method, target,
//! `Range`) together with what its response carried (status, bytes on the wire, body bytes).
//! Unlike [`super::CountingProxy`] it knows where one message ends and the next begins, so a
//! test can see exactly which byte ranges a client asked for and tell blob bytes from
//! manifests and headers.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::http::{copy_body, read_head, Head, Pass, Tap};
use super::{listen, Stop};

/// One request and its response.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    /// Request target: path and query.
    pub target: String,
    /// The request's `Range` header.
    pub range: Option<String>,
    /// Response status; 0 when no response came.
    pub status: u16,
    /// Every response byte on the wire: head, body, chunk framing.
    pub wire_bytes: u64,
    /// Payload bytes of the response body.
    pub body_bytes: u64,
    /// False when the connection ended before the response did.
    pub complete: bool,
}

impl Exchange {
    /// The digest of a blob request (`…/blobs/<digest>[?…]`).
    pub fn blob(&self) -> Option<&str> {
        let (_, tail) = self.target.split_once("/blobs/")?;
        Some(tail.split(['?', '#']).next().unwrap_or(tail))
    }

    pub fn is_manifest(&self) -> bool {
        self.target.contains("/manifests/")
    }

    /// A `GET` of a blob.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.blob().is_some()
    }

    /// `[start, end)` of a `Range: bytes=A-B` request (the only form the tests send).
    pub fn range_interval(&self) -> Option<(u64, u64)> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        let (a, b) = spec.split_once('-')?;
        let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (b >= a).then_some((a, b + 1))
    }
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<Exchange>>,
    /// Every byte sent back to clients.
    down_bytes: AtomicU64,
    /// Body bytes of responses to blob `GET`s, counted as they pass.
    blob_body_bytes: AtomicU64,
}

/// The proxy; stops accepting when dropped (open connections end with their sockets).
pub struct HttpLog {
    /// `127.0.0.1:PORT` to send requests to.
    pub addr: String,
    shared: Arc<Shared>,
    _stop: Stop,
}

impl HttpLog {
    /// Proxies to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> HttpLog {
        let shared = Arc::new(Shared::default());
        let (sh, upstream) = (shared.clone(), upstream.to_string());
        let (addr, stop) = listen(move |client, _| {
            let Ok(server) = TcpStream::connect(&upstream) else {
                return;
            };
            // Heads and bodies go on as separate writes: without this, Nagle's algorithm
            // holds each body back for the delayed ACK of its head (about 40 ms).
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            let p2 = pending.clone();
            std::thread::spawn(move || forward_requests(BufReader::new(client), server_w, p2));
            forward_responses(BufReader::new(server), client_w, pending, sh.clone());
        });
        HttpLog {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte sent back to clients so far.
    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }

    /// Body bytes of responses to blob `GET`s so far (live, also mid-response).
    pub fn blob_body_bytes(&self) -> u64 {
        self.shared.blob_body_bytes.load(Ordering::SeqCst)
    }

    /// Finished exchanges, in the order their responses ended.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A request seen going up, waiting for its response.
struct Pending {
    method: String,
    target: String,
    range: Option<String>,
}

/// Client → server: forwards requests, noting each before it goes up.
fn forward_requests(
    mut from: BufReader<TcpStream>,
    mut to: TcpStream,
    pending: Arc<Mutex<VecDeque<Pending>>>,
) {
    while let Ok(Some(head)) = read_head(&mut from) {
        let parsed = Head::parse(&head);
        let (method, target) = parsed.request();
        let framing = parsed.request_framing();
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending {
                method,
                target,
                range: parsed.header("range").map(str::to_string),
            });
        if to.write_all(&head).is_err() {
            break;
        }
        if !matches!(copy_body(&mut from, &mut to, framing, &mut Pass), Ok(true)) {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server → client: forwards responses and logs each with its request.
fn forward_responses(
    mut from: BufReader<TcpStream>,
    mut to: TcpStream,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    shared: Arc<Shared>,
) {
    let log = |p: Pending, status, wire_bytes, body_bytes, complete| {
        shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Exchange {
                method: p.method,
                target: p.target,
                range: p.range,
                status,
                wire_bytes,
                body_bytes,
                complete,
            });
    };
    while let Ok(Some(head)) = read_head(&mut from) {
        shared
            .down_bytes
            .fetch_add(head.len() as u64, Ordering::SeqCst);
        if to.write_all(&head).is_err() {
            break;
        }
        let parsed = Head::parse(&head);
        let status = parsed.status();
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response: the final one follows for the same request
        }
        let Some(req) = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        else {
            break; // a response nobody asked for: not HTTP as this proxy knows it
        };
        let framing = parsed.response_framing(&req.method);
        let mut tap = Counts {
            shared: &shared,
            blob_get: req.method == "GET" && req.target.contains("/blobs/"),
            wire: head.len() as u64,
            body: 0,
        };
        let ended = copy_body(&mut from, &mut to, framing, &mut tap);
        let complete = matches!(ended, Ok(true));
        let (wire, body) = (tap.wire, tap.body);
        log(req, status, wire, body, complete);
        if !complete {
            break;
        }
    }
    for p in pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        log(p, 0, 0, 0, false);
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Counts one response's bytes into the proxy's totals as they pass.
struct Counts<'a> {
    shared: &'a Shared,
    blob_get: bool,
    wire: u64,
    body: u64,
}

impl Tap for Counts<'_> {
    fn framing(&mut self, n: u64) {
        self.wire += n;
        self.shared.down_bytes.fetch_add(n, Ordering::SeqCst);
    }

    fn payload(&mut self, bytes: &mut [u8]) -> usize {
        let n = bytes.len() as u64;
        self.framing(n);
        self.body += n;
        if self.blob_get {
            self.shared.blob_body_bytes.fetch_add(n, Ordering::SeqCst);
        }
        bytes.len()
    }
}
