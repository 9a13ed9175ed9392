//! Our small HTTP/1.1 client for peer traffic: one pool of keep-alive
//! connections per peer on each shard, over monoio and httparse. Every
//! request carries the cluster token. Bounded: connections per peer,
//! waiters per peer, response bytes, connect and request time.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::request::{FORWARDED_HEADER, TOKEN_HEADER};

/// Connecting to a peer gives up after this long.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// A peer request (write, read of the answer) gives up after this long.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Open connections per peer on one shard.
pub const PEER_CONNECTIONS_MAX: usize = 32;
/// Requests waiting for a free connection to one peer on one shard; past
/// it a request fails at once (the caller treats it like a timeout).
pub const PEER_WAITERS_MAX: usize = 4_096;
/// Largest answer read from a peer (a snapshot of a big registry).
pub const RESPONSE_BYTES_MAX: usize = 2 * 1024 * 1024 * 1024 - 1;
/// Answers this large keep the read buffer as their body (no copy).
const ZERO_COPY_BODY_MIN_BYTES: usize = 1024 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("too many requests waiting for a connection")]
    Busy,
    #[error("bad peer address {0}")]
    BadAddress(String),
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A peer's answer.
#[derive(Debug, Clone)]
pub struct PeerReply {
    pub status: u16,
    pub json: bool,
    pub body: Bytes,
}

/// One request to a peer.
pub struct PeerRequest<'a> {
    pub method: &'a str,
    /// Path and query.
    pub target: &'a str,
    /// Form or JSON body (`json` says which).
    pub body: &'a [u8],
    pub json: bool,
    /// Marks a client write forwarded to the owner.
    pub forwarded: bool,
    /// The client's own User-Agent, for a forwarded write (its quirks
    /// depend on it); never used for trust.
    pub user_agent: Option<&'a str>,
    /// Overrides `REQUEST_TIMEOUT_MS` (snapshot transfers).
    pub timeout_ms: Option<u64>,
}

impl<'a> PeerRequest<'a> {
    /// A peer-protocol call with a JSON body and the default timeout.
    pub fn json(method: &'a str, target: &'a str, body: &'a [u8]) -> PeerRequest<'a> {
        PeerRequest {
            method,
            target,
            body,
            json: true,
            forwarded: false,
            user_agent: None,
            timeout_ms: None,
        }
    }
}

#[derive(Default)]
struct Pool {
    idle: Vec<TcpStream>,
    open: usize,
    waiters: VecDeque<oneshot::Sender<()>>,
}

/// The pools of one shard, one per peer address.
pub struct PeerClient {
    token: String,
    pools: RefCell<HashMap<String, Pool>>,
}

/// A connection taken from a pool; given back only after a clean exchange.
struct Lease {
    stream: Option<TcpStream>,
}

impl PeerClient {
    pub fn new(token: &str) -> PeerClient {
        PeerClient {
            token: token.to_string(),
            pools: RefCell::new(HashMap::new()),
        }
    }

    /// Sends one request to `peer` (`ip:port`) and reads the answer.
    pub async fn send(&self, peer: &str, req: &PeerRequest<'_>) -> Result<PeerReply, PeerError> {
        let addr: SocketAddr = peer
            .parse()
            .map_err(|_| PeerError::BadAddress(peer.to_string()))?;
        let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(REQUEST_TIMEOUT_MS));
        let mut lease = match monoio::time::timeout(timeout, self.acquire(peer, addr)).await {
            Ok(l) => l?,
            Err(_) => return Err(PeerError::Timeout),
        };
        let head = self.head(peer, req);
        let exchange = exchange(lease.stream.as_mut().expect("leased"), head, req.body);
        let result = match monoio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout),
        };
        match &result {
            Ok((_, true)) => self.release(peer, lease.stream.take()),
            _ => self.release(peer, None),
        }
        result.map(|(r, _)| r)
    }

    fn head(&self, peer: &str, req: &PeerRequest<'_>) -> Vec<u8> {
        let mut h = Vec::with_capacity(256 + req.target.len());
        h.extend_from_slice(req.method.as_bytes());
        h.push(b' ');
        h.extend_from_slice(req.target.as_bytes());
        h.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        h.extend_from_slice(peer.as_bytes());
        h.extend_from_slice(b"\r\nUser-Agent: ");
        h.extend_from_slice(req.user_agent.unwrap_or("distro-registry").as_bytes());
        h.extend_from_slice(b"\r\n");
        h.extend_from_slice(TOKEN_HEADER.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(self.token.as_bytes());
        h.extend_from_slice(b"\r\n");
        if req.forwarded {
            h.extend_from_slice(FORWARDED_HEADER.as_bytes());
            h.extend_from_slice(b": 1\r\n");
        }
        let ct: &[u8] = if req.json {
            b"application/json"
        } else {
            b"application/x-www-form-urlencoded"
        };
        h.extend_from_slice(b"Content-Type: ");
        h.extend_from_slice(ct);
        h.extend_from_slice(b"\r\nContent-Length: ");
        h.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
        h.extend_from_slice(b"\r\n\r\n");
        h
    }

    async fn acquire(&self, peer: &str, addr: SocketAddr) -> Result<Lease, PeerError> {
        loop {
            let wait = {
                let mut pools = self.pools.borrow_mut();
                let pool = pools.entry(peer.to_string()).or_default();
                if let Some(s) = pool.idle.pop() {
                    return Ok(Lease { stream: Some(s) });
                }
                if pool.open < PEER_CONNECTIONS_MAX {
                    pool.open += 1;
                    None
                } else {
                    if pool.waiters.len() >= PEER_WAITERS_MAX {
                        return Err(PeerError::Busy);
                    }
                    let (tx, rx) = oneshot::channel();
                    pool.waiters.push_back(tx);
                    Some(rx)
                }
            };
            match wait {
                Some(rx) => {
                    // Woken when a connection is given back or closed.
                    let _ = rx.await;
                }
                None => {
                    let connect = monoio::time::timeout(
                        Duration::from_millis(CONNECT_TIMEOUT_MS),
                        TcpStream::connect(addr),
                    )
                    .await;
                    let result = match connect {
                        Ok(Ok(s)) => {
                            let _ = s.set_nodelay(true);
                            Ok(Lease { stream: Some(s) })
                        }
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            Err(PeerError::Refused)
                        }
                        Ok(Err(e)) => Err(PeerError::Io(e)),
                        Err(_) => Err(PeerError::Timeout),
                    };
                    if result.is_err() {
                        self.release(peer, None);
                    }
                    return result;
                }
            }
        }
    }

    /// Gives a connection back (Some) or counts a closed one (None), and
    /// wakes one waiter.
    fn release(&self, peer: &str, stream: Option<TcpStream>) {
        let mut pools = self.pools.borrow_mut();
        let Some(pool) = pools.get_mut(peer) else {
            return;
        };
        match stream {
            Some(s) => pool.idle.push(s),
            None => pool.open = pool.open.saturating_sub(1),
        }
        while let Some(w) = pool.waiters.pop_front() {
            if w.send(()).is_ok() {
                break;
            }
        }
    }

    /// Closes the idle connections to `peer` (it left or restarted).
    pub fn forget(&self, peer: &str) {
        if let Some(pool) = self.pools.borrow_mut().get_mut(peer) {
            let n = pool.idle.len();
            pool.idle.clear();
            pool.open = pool.open.saturating_sub(n);
        }
    }
}

/// Writes the request and reads one response. Returns the reply and
/// whether the connection may be reused.
async fn exchange(
    stream: &mut TcpStream,
    head: Vec<u8>,
    body: &[u8],
) -> Result<(PeerReply, bool), PeerError> {
    let mut out = head;
    out.extend_from_slice(body);
    let (res, _) = stream.write_all(out).await;
    res?;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut sized = false;
    loop {
        match parse_response(&buf)? {
            Parsed::Done(head, reuse) => return Ok((head.reply(buf), reuse)),
            // Room for the whole answer at once: a big snapshot is read
            // without a copy per doubling.
            Parsed::Need(total) if !sized => {
                sized = true;
                buf.reserve(total.saturating_sub(buf.len()));
            }
            _ => {}
        }
        if buf.len() > RESPONSE_BYTES_MAX {
            return Err(PeerError::BadResponse("response too large"));
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES.max(buf.len()));
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res? {
            0 => return Err(PeerError::BadResponse("connection closed")),
            _ => continue,
        }
    }
}

/// A parsed response head and where its body lies in the buffer.
struct Head {
    status: u16,
    json: bool,
    body: std::ops::Range<usize>,
}

impl Head {
    fn reply(self, buf: Vec<u8>) -> PeerReply {
        let body = if self.body.len() >= ZERO_COPY_BODY_MIN_BYTES {
            // Hand the read buffer itself over instead of a copy.
            Bytes::from(buf).slice(self.body)
        } else {
            Bytes::copy_from_slice(&buf[self.body])
        };
        PeerReply {
            status: self.status,
            json: self.json,
            body,
        }
    }
}

/// What `parse_response` found.
enum Parsed {
    /// The response, and whether the connection may be reused.
    Done(Head, bool),
    /// The head is incomplete.
    Head,
    /// The head is complete; the whole response is this many bytes.
    Need(usize),
}

/// A complete response in `buf`, or what is still missing.
fn parse_response(buf: &[u8]) -> Result<Parsed, PeerError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Head),
        Err(_) => return Err(PeerError::BadResponse("unparsable head")),
    };
    let status = resp.code.unwrap_or(0);
    let mut len = None;
    let mut json = false;
    let mut keep = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("content-type") {
            json = h.value.starts_with(b"application/json");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let Some(len) = len else {
        return Err(PeerError::BadResponse("no content-length"));
    };
    if len > RESPONSE_BYTES_MAX {
        return Err(PeerError::BadResponse("response too large"));
    }
    if buf.len() < head_len + len {
        return Ok(Parsed::Need(head_len + len));
    }
    // Anything past the body would be an answer we never asked for.
    let reusable = keep && buf.len() == head_len + len;
    let head = Head {
        status,
        json,
        body: head_len..head_len + len,
    };
    Ok(Parsed::Done(head, reusable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_and_partial_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let done = |b: &[u8]| match parse_response(b).unwrap() {
            Parsed::Done(head, reuse) => (head.reply(b.to_vec()), reuse),
            _ => panic!("incomplete"),
        };
        let (reply, reuse) = done(r);
        assert_eq!(reply.status, 200);
        assert!(reply.json);
        assert_eq!(&reply.body[..], b"{}");
        assert!(reuse);
        assert!(matches!(parse_response(&r[..r.len() - 1]), Ok(Parsed::Need(n)) if n == r.len()));
        assert!(matches!(parse_response(&r[..10]), Ok(Parsed::Head)));
        let close = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (reply, reuse) = done(close);
        assert_eq!(reply.status, 403);
        assert!(!reuse);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
