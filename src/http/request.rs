//! Framing of one request out of a connection's read buffer.
//!
//! `parse` is pure: given the bytes read so far it says "need more", "here
//! is a request that used N bytes", or "this is an error, answer S and
//! close". Limits are checked before anything is buffered past them.

use std::borrow::Cow;

/// Headers parsed per request; more is a 431.
const HEADERS_MAX: usize = 64;

/// Size limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers.
    pub header_bytes_max: usize,
    /// Decoded body.
    pub body_bytes_max: usize,
    /// Decoded body of a request to a peer endpoint (`/nacos/v1/ns/distro/`):
    /// replication batches and checksum lists are larger than any client's.
    pub peer_body_bytes_max: usize,
}

/// Path prefix of the peer endpoints that take large bodies.
pub const PEER_PATH_PREFIX: &str = "/nacos/v1/ns/distro/";

/// Header carrying the cluster token (SPEC 4.5).
pub const TOKEN_HEADER: &str = "x-distro-token";
/// Header marking a write forwarded by a peer to the owner.
pub const FORWARDED_HEADER: &str = "x-distro-forwarded";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Other,
}

/// One framed request, borrowing from the connection's read buffer (no
/// copy on the hot path; only a chunked body is rebuilt).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: Method,
    /// Path without the query, as sent.
    pub path: &'a str,
    /// Raw query string (after `?`), not decoded.
    pub query: &'a str,
    /// Decoded body (chunked bodies are de-chunked).
    pub body: Cow<'a, [u8]>,
    /// The body is a form (`application/x-www-form-urlencoded`, or no
    /// content type at all).
    pub form_body: bool,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
    /// `User-Agent`, used only for Nacos client quirks, never for trust.
    pub user_agent: &'a str,
    /// The cluster token header, if sent (checked by the caller).
    pub token: Option<&'a [u8]>,
    /// Marked as a write a peer forwarded to this node (trusted only with
    /// the token).
    pub forwarded: bool,
    /// A client's access token from `Authorization: Bearer <token>`, else
    /// from an `accessToken` header (checked only with `--auth`).
    pub access_token: Option<&'a str>,
}

/// What `parse` found.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole request that used this many bytes of the buffer.
    Complete(Request<'a>, usize),
    /// More bytes are needed.
    Partial,
    /// Answer with this status and message, then close.
    Error(u16, &'static str),
}

fn method_of(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        _ => Method::Other,
    }
}

/// Whether the request at the start of `buf` names a peer path (whose
/// bodies may be larger), judged from the request line alone.
pub fn targets_peer_path(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(b"");
    line.split(|b| *b == b' ')
        .nth(1)
        .is_some_and(|t| t.starts_with(PEER_PATH_PREFIX.as_bytes()))
}

/// Frames the first request in `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.header_bytes_max {
                return Parsed::Error(431, "Request Header Fields Too Large");
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(431, "Request Header Fields Too Large")
        }
        Err(_) => return Parsed::Error(400, "Bad Request"),
    };
    if head_len > limits.header_bytes_max {
        return Parsed::Error(431, "Request Header Fields Too Large");
    }
    let version = req.version.unwrap_or(1);
    let method = method_of(req.method.unwrap_or(""));
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = version == 1;
    let mut form_body = true;
    let mut user_agent = "";
    let mut token = None;
    let mut forwarded = false;
    let mut bearer = None;
    let mut token_header = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Parsed::Error(400, "Bad Content-Length");
            };
            if content_length.is_some_and(|c| c != n) {
                return Parsed::Error(400, "Conflicting Content-Length");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.trim() == "chunked" {
                chunked = true;
            } else if v.trim() != "identity" {
                return Parsed::Error(411, "Length Required");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            form_body = v.contains("application/x-www-form-urlencoded");
        } else if name.eq_ignore_ascii_case("user-agent") {
            user_agent = std::str::from_utf8(h.value).unwrap_or("");
        } else if name.eq_ignore_ascii_case(TOKEN_HEADER) {
            token = Some(h.value);
        } else if name.eq_ignore_ascii_case(FORWARDED_HEADER) {
            forwarded = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty());
        } else if name.eq_ignore_ascii_case("accesstoken") {
            token_header = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty());
        }
    }
    if chunked && content_length.is_some() {
        // RFC 9112 6.3: a message with both is a smuggling attempt.
        return Parsed::Error(400, "Content-Length with Transfer-Encoding");
    }
    let rest = &buf[head_len..];
    let body_max = if path.starts_with(PEER_PATH_PREFIX) {
        limits.peer_body_bytes_max
    } else {
        limits.body_bytes_max
    };
    let (body, body_len) = if chunked {
        match dechunk(rest, body_max) {
            Dechunked::Done(body, used) => (Cow::Owned(body), used),
            Dechunked::Partial => return Parsed::Partial,
            Dechunked::TooLarge => return Parsed::Error(413, "Payload Too Large"),
            Dechunked::Bad => return Parsed::Error(400, "Bad chunked body"),
        }
    } else {
        let n = content_length.unwrap_or(0);
        if n > body_max {
            return Parsed::Error(413, "Payload Too Large");
        }
        if rest.len() < n {
            return Parsed::Partial;
        }
        (Cow::Borrowed(&rest[..n]), n)
    };
    let request = Request {
        method,
        path,
        query,
        body,
        form_body,
        keep_alive,
        user_agent,
        token,
        forwarded,
        access_token: bearer.or(token_header),
    };
    Parsed::Complete(request, head_len + body_len)
}

enum Dechunked {
    Done(Vec<u8>, usize),
    Partial,
    TooLarge,
    Bad,
}

/// Decodes a chunked body at the start of `buf`.
fn dechunk(buf: &[u8], body_bytes_max: usize) -> Dechunked {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((start, size))) => (start, size),
            Ok(httparse::Status::Partial) => return Dechunked::Partial,
            Err(_) => return Dechunked::Bad,
        };
        let size = match usize::try_from(size) {
            Ok(s) if body.len().saturating_add(s) <= body_bytes_max => s,
            _ => return Dechunked::TooLarge,
        };
        pos += start;
        if size == 0 {
            // Trailers are not supported: expect the final CRLF.
            if buf.len() < pos + 2 {
                return Dechunked::Partial;
            }
            if &buf[pos..pos + 2] != b"\r\n" {
                return Dechunked::Bad;
            }
            return Dechunked::Done(body, pos + 2);
        }
        if buf.len() < pos + size + 2 {
            return Dechunked::Partial;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Dechunked::Bad;
        }
        pos += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_bytes_max: 8192,
        body_bytes_max: 1024,
        peer_body_bytes_max: 4096,
    };

    #[test]
    fn frames_pipelined_requests() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        let Parsed::Complete(r, n) = parse(raw, LIMITS) else {
            panic!()
        };
        assert_eq!((r.path, r.query), ("/a", "x=1"));
        let Parsed::Complete(r2, n2) = parse(&raw[n..], LIMITS) else {
            panic!()
        };
        assert_eq!(&*r2.body, b"abc");
        assert!(matches!(parse(&raw[n + n2..], LIMITS), Parsed::Partial));
    }

    #[test]
    fn dechunks_and_limits() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let Parsed::Complete(r, n) = parse(raw, LIMITS) else {
            panic!()
        };
        assert_eq!(&*r.body, b"abcde");
        assert_eq!(n, raw.len());
        let big = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        assert!(matches!(parse(big, LIMITS), Parsed::Error(413, _)));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(matches!(parse(te, LIMITS), Parsed::Error(411, _)));
        let garbage = b"\x00\x01 nonsense\r\n\r\n";
        assert!(matches!(parse(garbage, LIMITS), Parsed::Error(400, _)));
    }
}
