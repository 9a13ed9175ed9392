//! Response framing into a connection's output buffer.

use crate::reply::Reply;

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a whole response to `out`. `head_only` drops the body (HEAD).
pub fn write(out: &mut Vec<u8>, reply: &Reply, keep_alive: bool, head_only: bool) {
    write_head(out, reply, keep_alive);
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
}

/// Appends the status line and headers only; the caller sends the body.
pub fn write_head(out: &mut Vec<u8>, reply: &Reply, keep_alive: bool) {
    let content_type = reply.kind.content_type();
    let mut len_buf = itoa::Buffer::new();
    let mut status_buf = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status_buf.format(reply.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(reply.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(len_buf.format(reply.body.len()).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}
