//! Just enough HTTP/1.1 to find where one message ends and the next begins while forwarding
//! bytes unchanged as they arrive (bodies are streamed, not buffered). Requests are expected
//! one at a time per connection (no pipelining), which is how reqwest/hyper and Go's
//! `net/http` speak HTTP/1.1.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;

/// A parsed message head.
pub(super) struct Head {
    /// Request line or status line.
    pub first: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(bytes: &[u8]) -> Head {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Head { first, headers }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// (method, target) of a request line.
    pub fn request(&self) -> (String, String) {
        let mut parts = self.first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        (method, target)
    }

    /// The status of a status line; 0 when there is none.
    pub fn status(&self) -> u16 {
        self.first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// How a request's body is framed (no length: no body).
    pub fn request_framing(&self) -> Framing {
        match self.framing() {
            Framing::UntilEof => Framing::Empty,
            f => f,
        }
    }

    /// How the response to a `method` request is framed.
    pub fn response_framing(&self, method: &str) -> Framing {
        let status = self.status();
        if method == "HEAD" || status == 204 || status == 304 {
            Framing::Empty
        } else {
            self.framing()
        }
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

/// How a body ends.
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilEof,
}

/// Sees a body's bytes as they pass.
pub(super) trait Tap {
    /// Framing bytes (chunk sizes, CRLFs, trailers), forwarded unchanged.
    fn framing(&mut self, _n: u64) {}
    /// Payload bytes about to be forwarded; may change them. Returns how many to forward:
    /// fewer than given cuts the body there ([`copy_body`] then fails with
    /// [`io::ErrorKind::Interrupted`]).
    fn payload(&mut self, _bytes: &mut [u8]) -> usize {
        _bytes.len()
    }
}

/// A tap that only passes bytes on.
pub(super) struct Pass;
impl Tap for Pass {}

/// The next message head (through its empty line); `None` at EOF before one starts.
pub(super) fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Vec<u8>>> {
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

/// Copies up to `n` payload bytes through `tap`; returns how many (fewer at EOF).
fn copy_n(
    r: &mut BufReader<TcpStream>,
    w: &mut dyn Write,
    mut n: u64,
    tap: &mut dyn Tap,
) -> io::Result<u64> {
    let mut copied = 0;
    let mut chunk = Vec::new();
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        chunk.clear();
        chunk.extend_from_slice(&buf[..take]);
        r.consume(take);
        let keep = tap.payload(&mut chunk).min(take);
        w.write_all(&chunk[..keep])?;
        if keep < take {
            return Err(io::ErrorKind::Interrupted.into());
        }
        copied += take as u64;
        n -= take as u64;
    }
    Ok(copied)
}

/// Copies one line (through `\n`).
fn copy_line(
    r: &mut BufReader<TcpStream>,
    w: &mut dyn Write,
    tap: &mut dyn Tap,
) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    w.write_all(&line)?;
    tap.framing(line.len() as u64);
    Ok(line)
}

/// Copies a body through `tap`. `Ok(true)` when the body ended as framed.
pub(super) fn copy_body(
    r: &mut BufReader<TcpStream>,
    w: &mut dyn Write,
    framing: Framing,
    tap: &mut dyn Tap,
) -> io::Result<bool> {
    match framing {
        Framing::Empty => Ok(true),
        Framing::Length(n) => Ok(copy_n(r, w, n, tap)? == n),
        Framing::UntilEof => {
            copy_n(r, w, u64::MAX, tap)?;
            Ok(true)
        }
        Framing::Chunked => loop {
            let line = copy_line(r, w, tap)?;
            let text = String::from_utf8_lossy(&line);
            let hex = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !copy_line(r, w, tap)?
                    .iter()
                    .all(|b| b.is_ascii_whitespace())
                {}
                return Ok(true);
            }
            if copy_n(r, w, size, tap)? < size {
                return Ok(false);
            }
            copy_line(r, w, tap)?; // CRLF after the chunk
        },
    }
}
