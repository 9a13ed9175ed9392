//! A minimal HTTP/1.1 client over one keep-alive monoio connection: one
//! request in flight, `Content-Length` framed answers (what Nacos servers
//! send). Small on purpose, so that the generator is not what gets
//! measured.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Largest answer accepted (the list of a very large service).
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("io: {0}")]
    Io(std::io::Error),
    #[error("timeout")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("malformed response")]
    Malformed,
}

impl ClientError {
    /// Error kind as counted in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect(_) => "connect",
            ClientError::Io(_) => "io",
            ClientError::Timeout => "timeout",
            ClientError::Closed => "closed",
            ClientError::Malformed => "malformed",
        }
    }
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A keep-alive connection to one target.
pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    out: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
        let stream = match monoio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ClientError::Connect(e)),
            Err(_) => return Err(ClientError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(READ_CHUNK_BYTES),
            out: Vec::with_capacity(1024),
            timeout,
        })
    }

    /// Sends `method path` (parameters in the query string, as the Python
    /// and Node.js SDKs do) and reads the answer.
    pub async fn request(&mut self, method: &str, path: &str) -> Result<Response, ClientError> {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out
            .extend_from_slice(b"\r\nUser-Agent: distro-loadgen\r\nContent-Length: 0\r\n\r\n");
        let out = std::mem::take(&mut self.out);
        let (res, out) = self.stream.write_all(out).await;
        self.out = out;
        res.map_err(ClientError::Io)?;
        match monoio::time::timeout(self.timeout, self.read_response()).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some((resp, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            if self.buf.len() > RESPONSE_BYTES_MAX {
                return Err(ClientError::Malformed);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES {
                self.buf.reserve(READ_CHUNK_BYTES);
            }
            let buf = std::mem::take(&mut self.buf);
            let len = buf.len();
            let cap = buf.capacity();
            let (res, slice) = self.stream.read(buf.slice_mut(len..cap)).await;
            self.buf = slice.into_inner();
            match res {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }
}

/// Parses one response at the start of `buf`; `None` when incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Response, usize)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ClientError::Malformed),
    };
    let status = r.code.ok_or(ClientError::Malformed)?;
    let mut len = 0usize;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ClientError::Malformed)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Nacos servers answer with Content-Length; chunked answers
            // are not supported by this client.
            return Err(ClientError::Malformed);
        }
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    let body = buf[head..head + len].to_vec();
    Ok(Some((Response { status, body }, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_framed_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let (r, n) = parse(raw).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let (r, _) = parse(&raw[n..]).unwrap().unwrap();
        assert_eq!(r.status, 404);
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
            .unwrap()
            .is_none());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
