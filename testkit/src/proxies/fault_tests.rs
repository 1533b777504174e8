//! The fault proxy against a scripted upstream, one fault at a time.

use std::io::{BufRead, Read};
use std::net::TcpListener;

use super::*;
use crate::blobs::random_blob;

const LEN: usize = 50_000;

/// An upstream answering every `GET` with `LEN` bytes (chunked for `/chunked…`), keep-alive;
/// returns its address and a count of the requests it saw.
fn upstream() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while let Ok(Some(head)) = read_head(&mut r) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (_, target) = Head::parse(&head).request();
                    let body = random_blob(1, LEN);
                    let ok = if target.starts_with("/chunked") {
                        let (a, b) = body.split_at(LEN / 2);
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                            a.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(a);
                        out.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
                        out.extend_from_slice(b);
                        out.extend_from_slice(b"\r\n0\r\n\r\n");
                        w.write_all(&out)
                    } else {
                        w.write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").as_bytes(),
                        )
                        .and_then(|_| w.write_all(&body))
                    };
                    if ok.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A keep-alive client connection.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// What a request got: status and body, or the error that ended it.
#[derive(Debug)]
enum Got {
    Answer(u16, Vec<u8>),
    /// The connection ended (or timed out) after this many body bytes.
    Broken(std::io::ErrorKind, usize),
}

impl Client {
    fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn get(&mut self, target: &str) -> Got {
        let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
        if let Err(e) = self.w.write_all(req.as_bytes()) {
            return Got::Broken(e.kind(), 0);
        }
        let head = match read_head(&mut self.r) {
            Ok(Some(h)) => Head::parse(&h),
            Ok(None) => return Got::Broken(std::io::ErrorKind::UnexpectedEof, 0),
            Err(e) => return Got::Broken(e.kind(), 0),
        };
        let mut body = Vec::new();
        let want = match head.response_framing("GET") {
            Framing::Length(n) => n as usize,
            Framing::Chunked => {
                // Test bodies are small: read chunk lines and data.
                loop {
                    let mut line = String::new();
                    if let Err(e) = self.r.read_line(&mut line) {
                        return Got::Broken(e.kind(), body.len());
                    }
                    let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0; n + 2];
                    if let Err(e) = self.r.read_exact(&mut chunk) {
                        return Got::Broken(e.kind(), body.len());
                    }
                    if n == 0 {
                        return Got::Answer(head.status(), body);
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            }
            _ => 0,
        };
        let mut buf = [0u8; 8192];
        while body.len() < want {
            match self.r.read(&mut buf) {
                Ok(0) => return Got::Broken(std::io::ErrorKind::UnexpectedEof, body.len()),
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) => return Got::Broken(e.kind(), body.len()),
            }
        }
        Got::Answer(head.status(), body)
    }
}

fn proxy(plan: FaultPlan) -> (FaultProxy, Arc<AtomicU64>) {
    let (up, seen) = upstream();
    (FaultProxy::start(&up, plan), seen)
}

#[test]
fn passes_exchanges_through_on_one_connection() {
    let (p, seen) = proxy(FaultPlan::none());
    let mut c = Client::connect(&p.addr);
    for target in ["/a", "/chunked", "/b"] {
        match c.get(target) {
            Got::Answer(200, body) => assert!(body == random_blob(1, LEN), "{target}"),
            other => panic!("{target}: {other:?}"),
        }
    }
    assert_eq!((p.requests(), p.faulted()), (3, 0));
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert!(p.bytes() > 3 * LEN as u64);
}

#[test]
fn answers_a_seeded_share_with_503() {
    let trigger = Trigger::Share {
        ratio: 0.3,
        seed: 42,
    };
    let expected: Vec<bool> = (0..100).map(|n| trigger.fires(n)).collect();
    let hits = expected.iter().filter(|f| **f).count();
    assert!((15..=45).contains(&hits), "about 30 % fire: {hits}");
    let (p, seen) = proxy(FaultPlan::new(Fault::Status(503), trigger));
    let mut c = Client::connect(&p.addr);
    for (n, fault) in expected.iter().enumerate() {
        match (c.get("/x"), fault) {
            (Got::Answer(503, body), true) => assert!(body.is_empty()),
            (Got::Answer(200, body), false) => assert_eq!(body.len(), LEN),
            (got, _) => panic!("request {n}: {got:?}, fault expected: {fault}"),
        }
    }
    assert_eq!(p.faulted(), hits as u64);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        100 - hits as u64,
        "503s never go up"
    );
}

#[test]
fn resets_the_connection() {
    let (p, _) = proxy(FaultPlan::always(Fault::Reset));
    match Client::connect(&p.addr).get("/x") {
        Got::Broken(kind, 0) => assert_eq!(kind, std::io::ErrorKind::ConnectionReset),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cuts_bodies_short() {
    let (p, _) = proxy(FaultPlan::always(Fault::Truncate(1000)));
    match Client::connect(&p.addr).get("/x") {
        Got::Broken(std::io::ErrorKind::UnexpectedEof, 1000) => {}
        other => panic!("{other:?}"),
    }
    match Client::connect(&p.addr).get("/chunked") {
        Got::Broken(std::io::ErrorKind::UnexpectedEof, _) => {}
        other => panic!("{other:?}"),
    }
}

/// Whether `got` is a request left unanswered after `body` bytes (the read timed out).
fn timed_out_after(got: &Got, body: usize) -> bool {
    matches!(got, Got::Broken(kind, n) if *n == body && matches!(
        kind,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

#[test]
fn stalls_mid_body_and_hangs_without_closing() {
    let (p, _) = proxy(FaultPlan::always(Fault::Stall(10)));
    let got = Client::connect(&p.addr).get("/x");
    assert!(timed_out_after(&got, 10), "{got:?}");
    p.set_plan(FaultPlan::always(Fault::Hang));
    let got = Client::connect(&p.addr).get("/x");
    assert!(timed_out_after(&got, 0), "{got:?}");
}

#[test]
fn slows_to_a_rate() {
    let (p, _) = proxy(FaultPlan::always(Fault::Rate(100_000)));
    let mut c = Client::connect(&p.addr);
    c.r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    match c.get("/x") {
        Got::Answer(200, body) => assert_eq!(body.len(), LEN),
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "{LEN} B at 100 kB/s took {took:?}"
    );
}

#[test]
fn corrupts_chosen_bytes_of_scheduled_blob_requests() {
    let plan = FaultPlan::new(Fault::Corrupt(4096), Trigger::Requests(vec![1])).on_paths("/blobs/");
    let (p, _) = proxy(plan);
    let mut c = Client::connect(&p.addr);
    let want = random_blob(1, LEN);
    for (target, corrupt) in [
        ("/blobs/0", false),
        ("/manifests/x", false),
        ("/blobs/1", true),
        ("/chunked/blobs/2", false),
    ] {
        let Got::Answer(200, body) = c.get(target) else {
            panic!("{target}");
        };
        let bad: Vec<usize> = (0..LEN).filter(|&i| body[i] != want[i]).collect();
        if corrupt {
            let every: Vec<usize> = (0..LEN).step_by(4096).collect();
            assert_eq!(bad, every, "{target}");
        } else {
            assert!(bad.is_empty(), "{target}: {} bad bytes", bad.len());
        }
    }
    assert_eq!((p.requests(), p.faulted()), (4, 1));
}
