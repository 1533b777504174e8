//! An HTTP/1.1-aware TCP proxy that logs every request passing through it (method, target,
//! `Range`) together with what its response carried (status, bytes on the wire, body bytes).
//! Unlike [`super::CountingProxy`] it knows where one message ends and the next begins, so a
//! test can see exactly which byte ranges a client asked for and tell blob bytes from
//! manifests and headers. Bytes are forwarded unchanged as they arrive (bodies are streamed,
//! not buffered). Requests are expected one at a time per connection (no pipelining), which
//! is how reqwest/hyper and Go's `net/http` speak HTTP/1.1.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    stop: Arc<AtomicBool>,
}

impl HttpLog {
    /// Proxies to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> HttpLog {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP log proxy");
        let addr = listener.local_addr().expect("local addr").to_string();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (shared2, stop2, upstream) = (shared.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                // Heads and bodies go on as separate writes: without this, Nagle's algorithm
                // holds each body back for the delayed ACK of its head (about 40 ms).
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let pending = Arc::new(Mutex::new(VecDeque::new()));
                let p2 = pending.clone();
                std::thread::spawn(move || forward_requests(BufReader::new(client), server_w, p2));
                let sh = shared2.clone();
                std::thread::spawn(move || {
                    forward_responses(BufReader::new(server), client_w, pending, sh)
                });
            }
        });
        HttpLog { addr, shared, stop }
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
        self.shared.log.lock().expect("log lock").clone()
    }
}

impl Drop for HttpLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A request seen going up, waiting for its response.
struct Pending {
    method: String,
    target: String,
    range: Option<String>,
}

/// A parsed message head.
struct Head {
    /// Request line or status line.
    first: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(bytes: &[u8]) -> Head {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Head { first, headers }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn framing(&self) -> Framing {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Framing::Chunked;
        }
        match self.header("content-length").map(str::parse::<u64>) {
            Some(Ok(n)) => Framing::Length(n),
            _ => Framing::UntilEof,
        }
    }
}

enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilEof,
}

/// The next message head (through its empty line); `None` at EOF before one starts.
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut content = false;
    loop {
        let start = head.len();
        if r.read_until(b'\n', &mut head)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let blank = head[start..].iter().all(|b| b.is_ascii_whitespace());
        if blank && content {
            return Ok(Some(head));
        }
        content |= !blank;
        if head.len() > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "head over 1 MiB",
            ));
        }
    }
}

/// Copies up to `n` bytes; returns how many (fewer at EOF), each batch reported to `seen`.
fn copy_n(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    mut n: u64,
    seen: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut copied = 0;
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        w.write_all(&buf[..take])?;
        r.consume(take);
        seen(take as u64);
        copied += take as u64;
        n -= take as u64;
    }
    Ok(copied)
}

/// Copies one line (through `\n`).
fn copy_line(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    wire: &mut dyn FnMut(u64),
) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    w.write_all(&line)?;
    wire(line.len() as u64);
    Ok(line)
}

/// Copies a body; `wire` sees every byte, `payload` the body's payload bytes. `Ok(true)` when
/// the body ended as framed.
fn copy_body(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    framing: Framing,
    wire: &mut dyn FnMut(u64),
    payload: &mut dyn FnMut(u64),
) -> io::Result<bool> {
    let mut both = |n: u64| {
        wire(n);
        payload(n);
    };
    match framing {
        Framing::Empty => Ok(true),
        Framing::Length(n) => Ok(copy_n(r, w, n, &mut both)? == n),
        Framing::UntilEof => {
            copy_n(r, w, u64::MAX, &mut both)?;
            Ok(true)
        }
        Framing::Chunked => loop {
            let line = copy_line(r, w, wire)?;
            let text = String::from_utf8_lossy(&line);
            let hex = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !copy_line(r, w, wire)?
                    .iter()
                    .all(|b| b.is_ascii_whitespace())
                {}
                return Ok(true);
            }
            let mut both = |n: u64| {
                wire(n);
                payload(n);
            };
            if copy_n(r, w, size, &mut both)? < size {
                return Ok(false);
            }
            copy_line(r, w, wire)?; // CRLF after the chunk
        },
    }
}

/// Client → server: forwards requests, noting each before it goes up.
fn forward_requests(
    mut from: BufReader<TcpStream>,
    mut to: TcpStream,
    pending: Arc<Mutex<VecDeque<Pending>>>,
) {
    while let Ok(Some(head)) = read_head(&mut from) {
        let parsed = Head::parse(&head);
        let mut parts = parsed.first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let framing = match parsed.framing() {
            Framing::UntilEof => Framing::Empty, // a request without a length has no body
            f => f,
        };
        pending.lock().expect("pending lock").push_back(Pending {
            method,
            target,
            range: parsed.header("range").map(str::to_string),
        });
        if to.write_all(&head).is_err() {
            break;
        }
        if !matches!(
            copy_body(&mut from, &mut to, framing, &mut |_| {}, &mut |_| {}),
            Ok(true)
        ) {
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
        shared.log.lock().expect("log lock").push(Exchange {
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
        let status: u16 = parsed
            .first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response: the final one follows for the same request
        }
        let Some(req) = pending.lock().expect("pending lock").pop_front() else {
            break; // a response nobody asked for: not HTTP as this proxy knows it
        };
        let framing = if req.method == "HEAD" || status == 204 || status == 304 {
            Framing::Empty
        } else {
            parsed.framing()
        };
        let blob_get = req.method == "GET" && req.target.contains("/blobs/");
        let (mut wire, mut body) = (head.len() as u64, 0u64);
        let ended = copy_body(
            &mut from,
            &mut to,
            framing,
            &mut |n| {
                wire += n;
                shared.down_bytes.fetch_add(n, Ordering::SeqCst);
            },
            &mut |n| {
                body += n;
                if blob_get {
                    shared.blob_body_bytes.fetch_add(n, Ordering::SeqCst);
                }
            },
        );
        let complete = matches!(ended, Ok(true));
        log(req, status, wire, body, complete);
        if !complete {
            break;
        }
    }
    for p in pending.lock().expect("pending lock").drain(..) {
        log(p, 0, 0, 0, false);
    }
    let _ = to.shutdown(Shutdown::Write);
}
