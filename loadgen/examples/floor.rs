//! The floor for `bench/compare.sh` where nginx is not installed: a
//! minimal keep-alive HTTP server on one monoio thread that answers every
//! request with a constant body (`ok`, a 10200 beat answer, or an empty
//! list), doing no work. Usage: `floor 127.0.0.1:18850`.

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const BEAT: &str = r#"{"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true}"#;
const LIST: &str = r#"{"hosts":[]}"#;

fn answer(path: &str) -> &'static str {
    if path.starts_with("/nacos/v1/ns/instance/beat") {
        BEAT
    } else if path.starts_with("/nacos/v1/ns/instance/list") {
        LIST
    } else {
        "ok"
    }
}

async fn serve(mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let mut used = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[used..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let body = answer(req.path.unwrap_or("/"));
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    used += n;
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            let (r, o) = s.write_all(out).await;
            out = o;
            out.clear();
            if r.is_err() {
                return;
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (r, slice) = s.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        if !matches!(r, Ok(n) if n > 0) {
            return;
        }
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18850".into());
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = TcpListener::bind(&addr).expect("bind");
        eprintln!("floor listening on {addr}");
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            monoio::spawn(serve(s));
        }
    });
}
