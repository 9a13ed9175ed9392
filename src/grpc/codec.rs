//! The three protobuf messages of the Nacos gRPC protocol, by hand
//! (NACOS2.md 1.1), and gRPC's 5-byte message framing. Pure: bytes in,
//! values out.
//!
//! ```proto
//! message Metadata { string type = 3; string clientIp = 8; map<string, string> headers = 7; }
//! message Payload  { Metadata metadata = 2; google.protobuf.Any body = 3; }
//! message Any      { string type_url = 1; bytes value = 2; }
//! ```
//! The decoder takes the fields in any order and skips unknown ones; the
//! body's JSON is `Any.value` (`type_url` is ignored: clients differ).

/// A decoded `Payload`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// `metadata.type`: the request or response class name.
    pub kind: String,
    pub client_ip: String,
    pub headers: Vec<(String, String)>,
    /// `body.value`: the JSON body.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated protobuf")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    LongVarint,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u64),
    #[error("field {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("compressed gRPC messages are not supported (no grpc-encoding is negotiated)")]
    Compressed,
    #[error("gRPC message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or(CodecError::Truncated)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError::LongVarint)
}

/// One field: (number, wire type, the bytes of a length-delimited value).
fn field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(u64, u64, &'a [u8]), CodecError> {
    let key = varint(buf, pos)?;
    let (num, wire) = (key >> 3, key & 7);
    let skip = |pos: &mut usize, n: usize| -> Result<&'a [u8], CodecError> {
        let end = pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = buf.get(*pos..end).ok_or(CodecError::Truncated)?;
        *pos = end;
        Ok(s)
    };
    let value = match wire {
        0 => {
            varint(buf, pos)?;
            &[][..]
        }
        1 => skip(pos, 8)?,
        2 => {
            let n = varint(buf, pos)?;
            let n = usize::try_from(n).map_err(|_| CodecError::Truncated)?;
            skip(pos, n)?
        }
        5 => skip(pos, 4)?,
        w => return Err(CodecError::WireType(w)),
    };
    Ok((num, wire, value))
}

fn string(b: &[u8], name: &'static str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Utf8(name))
}

/// Decodes a `Payload`.
pub fn decode(buf: &[u8]) -> Result<Payload, CodecError> {
    let mut p = Payload::default();
    let mut pos = 0;
    while pos < buf.len() {
        let (num, wire, v) = field(buf, &mut pos)?;
        match (num, wire) {
            (2, 2) => decode_metadata(v, &mut p)?,
            (3, 2) => {
                let mut q = 0;
                while q < v.len() {
                    let (n, w, x) = field(v, &mut q)?;
                    if (n, w) == (2, 2) {
                        p.body = x.to_vec();
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

fn decode_metadata(buf: &[u8], p: &mut Payload) -> Result<(), CodecError> {
    let mut pos = 0;
    while pos < buf.len() {
        let (num, wire, v) = field(buf, &mut pos)?;
        match (num, wire) {
            (3, 2) => p.kind = string(v, "metadata.type")?,
            (8, 2) => p.client_ip = string(v, "metadata.clientIp")?,
            (7, 2) => {
                let (mut k, mut val) = (String::new(), String::new());
                let mut q = 0;
                while q < v.len() {
                    let (n, w, x) = field(v, &mut q)?;
                    match (n, w) {
                        (1, 2) => k = string(x, "metadata.headers key")?,
                        (2, 2) => val = string(x, "metadata.headers value")?,
                        _ => {}
                    }
                }
                p.headers.push((k, val));
            }
            _ => {}
        }
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Encodes a `Payload` of `kind` with a JSON `body` (no headers, no
/// client IP: the server sends none), inside a gRPC message frame.
pub fn encode_framed(kind: &str, body: &[u8]) -> Vec<u8> {
    // Metadata { type = 3 }
    let meta_len = 1 + varint_len(kind.len() as u64) + kind.len();
    // Any { value = 2 }
    let any_len = 1 + varint_len(body.len() as u64) + body.len();
    let payload_len =
        1 + varint_len(meta_len as u64) + meta_len + 1 + varint_len(any_len as u64) + any_len;
    let mut out = Vec::with_capacity(5 + payload_len);
    out.push(0);
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    out.push(0x12);
    put_varint(&mut out, meta_len as u64);
    put_bytes(&mut out, 0x1a, kind.as_bytes());
    out.push(0x1a);
    put_varint(&mut out, any_len as u64);
    put_bytes(&mut out, 0x12, body);
    debug_assert_eq!(out.len(), 5 + payload_len);
    out
}

/// Encodes a full `Payload` (headers and client IP too), unframed: what
/// a client sends; for tests and the load generator.
pub fn encode(p: &Payload) -> Vec<u8> {
    let mut meta = Vec::new();
    put_bytes(&mut meta, 0x1a, p.kind.as_bytes());
    for (k, v) in &p.headers {
        let mut e = Vec::new();
        put_bytes(&mut e, 0x0a, k.as_bytes());
        put_bytes(&mut e, 0x12, v.as_bytes());
        put_bytes(&mut meta, 0x3a, &e);
    }
    if !p.client_ip.is_empty() {
        put_bytes(&mut meta, 0x42, p.client_ip.as_bytes());
    }
    let mut any = Vec::new();
    put_bytes(&mut any, 0x0a, p.kind.as_bytes());
    put_bytes(&mut any, 0x12, &p.body);
    let mut out = Vec::new();
    put_bytes(&mut out, 0x12, &meta);
    put_bytes(&mut out, 0x1a, &any);
    out
}

/// Frames one message: flag 0, big-endian length, the bytes.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Takes the next whole message off the front of `buf` (DATA frames as
/// they came), if one is there. A message over `max` bytes, or one with
/// the compressed flag, is an error: the stream cannot be read on.
pub fn next_message(buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(CodecError::Compressed);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(CodecError::TooLarge(len, max));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let msg = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register as `nacos-sdk-python` 3.2.0 sends it: metadata with a
    /// header, the client IP, `type_url` empty (the tag order of the
    /// Python protobuf runtime: metadata first).
    fn python_register() -> Vec<u8> {
        let body = br#"{"headers":{},"requestId":"","module":"","namespace":"public","serviceName":"orders","groupName":"DEFAULT_GROUP","type":"registerInstance","instance":{"ip":"10.0.0.5","port":8080}}"#;
        let mut meta = Vec::new();
        meta.extend_from_slice(&[0x1a, 15]);
        meta.extend_from_slice(b"InstanceRequest");
        meta.extend_from_slice(&[0x3a, 10, 0x0a, 3]);
        meta.extend_from_slice(b"app");
        meta.extend_from_slice(&[0x12, 3]);
        meta.extend_from_slice(b"web");
        meta.extend_from_slice(&[0x42, 8]);
        meta.extend_from_slice(b"10.0.0.5");
        let mut any = vec![0x12];
        put_varint(&mut any, body.len() as u64);
        any.extend_from_slice(body);
        let mut out = vec![0x12, meta.len() as u8];
        out.extend_from_slice(&meta);
        out.push(0x1a);
        put_varint(&mut out, any.len() as u64);
        out.extend_from_slice(&any);
        out
    }

    #[test]
    fn decodes_a_client_payload() {
        let p = decode(&python_register()).unwrap();
        assert_eq!(p.kind, "InstanceRequest");
        assert_eq!(p.client_ip, "10.0.0.5");
        assert_eq!(p.headers, vec![("app".into(), "web".into())]);
        assert!(p.body.starts_with(br#"{"headers":{}"#));
    }

    #[test]
    fn fields_in_any_order_and_unknown_fields_are_skipped() {
        let mut b = Vec::new();
        // Unknown varint field 9, fixed64 field 10, fixed32 field 11.
        b.extend_from_slice(&[0x48, 0x96, 0x01]);
        b.push(0x51);
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        b.push(0x5d);
        b.extend_from_slice(&[1, 2, 3, 4]);
        // Body before metadata; Any with type_url set (the Rust client).
        let any = {
            let mut a = Vec::new();
            put_bytes(&mut a, 0x0a, b"HealthCheckRequest");
            put_bytes(&mut a, 0x12, b"{}");
            a
        };
        put_bytes(&mut b, 0x1a, &any);
        let meta = {
            let mut m = Vec::new();
            put_bytes(&mut m, 0x42, b"1.2.3.4");
            put_bytes(&mut m, 0x1a, b"HealthCheckRequest");
            m
        };
        put_bytes(&mut b, 0x12, &meta);
        let p = decode(&b).unwrap();
        assert_eq!(p.kind, "HealthCheckRequest");
        assert_eq!(p.client_ip, "1.2.3.4");
        assert_eq!(p.body, b"{}");
    }

    #[test]
    fn encode_and_decode_agree() {
        let p = Payload {
            kind: "SubscribeServiceRequest".into(),
            client_ip: "127.0.0.1".into(),
            headers: vec![("a".into(), "1".into()), ("b".into(), "".into())],
            body: vec![b'x'; 300],
        };
        assert_eq!(decode(&encode(&p)).unwrap(), p);
        let framed = encode_framed("ServerCheckResponse", br#"{"resultCode":200}"#);
        let mut buf = framed.clone();
        let msg = next_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        let got = decode(&msg).unwrap();
        assert_eq!(got.kind, "ServerCheckResponse");
        assert_eq!(got.body, br#"{"resultCode":200}"#);
        // The exact bytes of a small response (golden).
        assert_eq!(
            encode_framed("A", b"{}"),
            vec![0, 0, 0, 0, 11, 0x12, 3, 0x1a, 1, b'A', 0x1a, 4, 0x12, 2, b'{', b'}']
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[0x12, 5, 1]), Err(CodecError::Truncated));
        assert_eq!(decode(&[0x13]), Err(CodecError::WireType(3)));
        assert_eq!(decode(&[0xff; 11]), Err(CodecError::LongVarint));
        let mut meta = Vec::new();
        put_bytes(&mut meta, 0x1a, &[0xff, 0xfe]);
        let mut b = Vec::new();
        put_bytes(&mut b, 0x12, &meta);
        assert_eq!(decode(&b), Err(CodecError::Utf8("metadata.type")));
        // Huge declared length.
        assert_eq!(
            decode(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn framing_limits() {
        let mut buf = vec![0, 0, 0, 0, 3, 1, 2];
        assert_eq!(next_message(&mut buf, 10), Ok(None), "partial");
        buf.push(3);
        assert_eq!(next_message(&mut buf, 10), Ok(Some(vec![1, 2, 3])));
        let mut big = vec![0, 0, 0, 1, 0];
        assert_eq!(
            next_message(&mut big, 255),
            Err(CodecError::TooLarge(256, 255))
        );
        let mut compressed = vec![1, 0, 0, 0, 0];
        assert_eq!(
            next_message(&mut compressed, 10),
            Err(CodecError::Compressed)
        );
    }
}
