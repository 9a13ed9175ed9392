//! A minimal Nacos 2.x gRPC naming client for the generator: one h2c
//! connection (hyperium `h2` over monoio's poll-io stream), set up as the
//! real clients do it (`ServerCheckRequest`, then the bi-stream with
//! `ConnectionSetupRequest`, labels `module=naming`), unary requests on
//! it, and a reader on the stream that answers the server's requests
//! (`NotifySubscriberRequest`, `ClientDetectionRequest`) and hands each
//! push to a callback. Payloads come from the node's own codec.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use distro_registry::grpc::codec;
use futures_channel::oneshot;
use monoio::net::TcpStream;
use serde_json::{json, Value};

/// Largest gRPC message accepted (a very large service's push).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A connected, set-up client connection.
pub struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    timeout: Duration,
    next_id: u64,
    /// Ends the stream's reader (`close`).
    stop_reader: Option<oneshot::Sender<()>>,
    reader: Option<monoio::task::JoinHandle<()>>,
    driver: Option<monoio::task::JoinHandle<()>>,
}

/// Called with the number of hosts of each pushed `serviceInfo` (on the
/// connection's thread).
pub type OnPush = Box<dyn Fn(usize)>;

/// What the reader needs of a request from the server: its id and, for a
/// push, the number of hosts. The hosts are skipped, not built: with
/// `Value`, parsing 1,000 subscribers' pushes of a 50-host service took
/// the generator's one thread about as long as the fan-out it measures.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "serviceInfo", default)]
    service_info: Option<Pushed>,
}

#[derive(serde::Deserialize)]
struct Pushed {
    #[serde(default)]
    hosts: Vec<serde::de::IgnoredAny>,
}

fn err(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    if s.contains("timed out") {
        "timeout".into()
    } else {
        format!("grpc: {s}")
    }
}

fn request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://nacos{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("static request")
}

/// Reads whole gRPC messages from a response body until it ends.
async fn messages(body: &mut h2::RecvStream, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    loop {
        if let Some(m) = codec::next_message(buf, MESSAGE_BYTES_MAX).map_err(err)? {
            return Ok(Some(m));
        }
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
            }
            Some(Err(e)) => return Err(err(e)),
            None => return Ok(None),
        }
    }
}

impl GrpcConn {
    /// Connects, checks the server, opens the stream and sets it up.
    /// `on_push` sees every pushed service.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        on_push: OnPush,
    ) -> Result<GrpcConn, String> {
        let tcp = monoio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io = tcp
            .try_into_poll_io()
            .map_err(|(e, _)| format!("poll-io: {e}"))?;
        let (send, conn) = h2::client::handshake(io).await.map_err(err)?;
        let driver = monoio::spawn(async move {
            let _ = conn.await;
        });
        let mut c = GrpcConn {
            send,
            timeout,
            next_id: 0,
            stop_reader: None,
            reader: None,
            driver: Some(driver),
        };
        let (kind, _) = c.unary("ServerCheckRequest", json!({})).await?;
        if kind != "ServerCheckResponse" {
            return Err(format!("grpc: {kind} to ServerCheckRequest"));
        }
        c.open_stream(on_push).await?;
        // Setup is asynchronous on the stream: wait until the node takes
        // requests on this connection.
        for _ in 0..200 {
            let (kind, _) = c.unary("HealthCheckRequest", json!({})).await?;
            if kind == "HealthCheckResponse" {
                return Ok(c);
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        Err("grpc: connection never set up".into())
    }

    async fn open_stream(&mut self, on_push: OnPush) -> Result<(), String> {
        let mut send = self.send.clone().ready().await.map_err(err)?;
        let (resp, mut out) = send
            .send_request(request("/BiRequestStream/requestBiStream"), false)
            .map_err(err)?;
        let setup = json!({
            "headers": {},
            "clientVersion": "distro-loadgen",
            "labels": {"module": "naming", "source": "sdk"},
            "tenant": "",
            "abilityTable": {},
        });
        out.send_data(
            Bytes::from(codec::encode_framed(
                "ConnectionSetupRequest",
                &serde_json::to_vec(&setup).unwrap_or_default(),
            )),
            false,
        )
        .map_err(err)?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        self.stop_reader = Some(stop);
        self.reader = Some(monoio::spawn(async move {
            let Ok(resp) = resp.await else { return };
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            loop {
                let next = monoio::select! {
                    m = messages(&mut body, &mut buf) => m,
                    _ = &mut stopped => return,
                };
                let Ok(Some(m)) = next else { return };
                let Ok(p) = codec::decode(&m) else { continue };
                let Ok(v) = serde_json::from_slice::<Incoming>(&p.body) else {
                    continue;
                };
                let id = v.request_id.as_deref().unwrap_or("").to_string();
                let answer = match p.kind.as_str() {
                    "NotifySubscriberRequest" => {
                        on_push(v.service_info.map_or(0, |i| i.hosts.len()));
                        "NotifySubscriberResponse"
                    }
                    "ClientDetectionRequest" => "ClientDetectionResponse",
                    _ => continue,
                };
                let body = json!({"resultCode": 200, "errorCode": 0, "requestId": id});
                let frame =
                    codec::encode_framed(answer, &serde_json::to_vec(&body).unwrap_or_default());
                if out.send_data(Bytes::from(frame), false).is_err() {
                    return;
                }
            }
        }));
        Ok(())
    }

    /// Closes the connection in order: the stream's reader ends and drops
    /// its halves in its own task, then the connection's driver finishes.
    /// (Leaving them to the runtime's teardown can deadlock: a task
    /// dropped from inside h2's wake-up takes h2's lock again.)
    pub async fn close(self) {
        let GrpcConn {
            send,
            timeout,
            stop_reader,
            reader,
            driver,
            ..
        } = self;
        if let Some(s) = stop_reader {
            let _ = s.send(());
        }
        if let Some(r) = reader {
            r.await;
        }
        drop(send);
        if let Some(d) = driver {
            let _ = monoio::time::timeout(timeout, d).await;
        }
    }

    /// One unary request: the response type and JSON body.
    pub async fn unary(&mut self, kind: &str, mut body: Value) -> Result<(String, Value), String> {
        self.next_id += 1;
        body["requestId"] = self.next_id.to_string().into();
        if body.get("headers").is_none() {
            body["headers"] = json!({});
        }
        let frame = codec::encode_framed(kind, &serde_json::to_vec(&body).unwrap_or_default());
        let call = async {
            let mut send = self.send.clone().ready().await.map_err(err)?;
            let (resp, mut out) = send
                .send_request(request("/Request/request"), false)
                .map_err(err)?;
            out.send_data(Bytes::from(frame), true).map_err(err)?;
            let resp = resp.await.map_err(err)?;
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            let m = messages(&mut body, &mut buf)
                .await?
                .ok_or_else(|| "grpc: no message in the answer".to_string())?;
            let p = codec::decode(&m).map_err(err)?;
            let v: Value = serde_json::from_slice(&p.body).map_err(err)?;
            Ok::<_, String>((p.kind, v))
        };
        monoio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "timeout".to_string())?
    }

    /// A naming request whose answer must be `expect` with resultCode 200.
    pub async fn call(&mut self, kind: &str, body: Value, expect: &str) -> Result<Value, String> {
        let (got, v) = self.unary(kind, body).await?;
        if got != expect {
            let code = v["errorCode"].as_u64().unwrap_or(0);
            return Err(format!("grpc_{got}_{code}"));
        }
        Ok(v)
    }
}

/// An instance as an `InstanceRequest` carries it.
pub fn instance_json(ip: &str, port: u16) -> Value {
    json!({
        "ip": ip, "port": port, "weight": 1.0, "healthy": true, "enabled": true,
        "ephemeral": true, "clusterName": "DEFAULT", "metadata": {},
    })
}
