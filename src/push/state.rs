//! Push subscribers, coalescing of changes, and acknowledgements, for the
//! services of one shard. No I/O and no clock: the shard's tick calls
//! `due(now)` and sends what comes back.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::api::Subscription;
use crate::store::service::ServiceId;

/// Pushes awaiting an ack, per shard; past it a push is sent without a
/// retry being kept.
pub const PENDING_ACKS_MAX: usize = 65_536;
/// Payloads this large or larger are gzip-compressed.
pub const GZIP_MIN_BYTES: usize = 1024;

/// Timings and limits.
#[derive(Debug, Clone, Copy)]
pub struct PushConfig {
    pub delay_ms: u64,
    pub ack_timeout_ms: u64,
    pub subscriber_ttl_ms: u64,
    pub subscribers_per_service_max: usize,
}

#[derive(Debug, Clone)]
struct Subscriber {
    addr: SocketAddr,
    clusters: String,
    expires_ms: u64,
}

/// A gRPC (2.x) subscriber: a connection on some shard of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcSubscriber {
    /// The shard that holds the connection.
    pub shard: usize,
    /// The connection's serial (`grpc::server::Client::tag`).
    pub conn: u64,
    pub clusters: String,
}

/// A push for a gRPC subscriber: its connection and the list JSON.
#[derive(Debug, Clone)]
pub struct GrpcPush {
    pub to: GrpcSubscriber,
    pub svc: ServiceId,
    pub list_json: Bytes,
}

struct Subscribed {
    svc: ServiceId,
    subscribers: Vec<Subscriber>,
    /// 2.x subscribers: kept until they unsubscribe or their connection
    /// closes (no TTL: the connection is the lease).
    grpc: Vec<GrpcSubscriber>,
    /// When the coalesced push for the latest change is due.
    dirty_due_ms: Option<u64>,
}

struct Pending {
    addr: SocketAddr,
    payload: Bytes,
    /// When to resend, or (after the one resend) when to give up.
    deadline_ms: u64,
    resent: bool,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram {
    pub addr: SocketAddr,
    pub payload: Bytes,
}

/// Counts of what `due` did.
#[derive(Debug, Default, Clone, Copy)]
pub struct DueCounts {
    pub sent: u64,
    pub retried: u64,
}

pub struct PushState {
    config: PushConfig,
    services: HashMap<String, Subscribed>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl PushState {
    pub fn new(config: PushConfig) -> PushState {
        PushState {
            config,
            services: HashMap::new(),
            pending: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn has_subscribers(&self) -> bool {
        !self.services.is_empty()
    }

    pub fn subscriber_count(&self) -> usize {
        self.services
            .values()
            .map(|s| s.subscribers.len() + s.grpc.len())
            .sum()
    }

    /// Adds (`on`) or removes a gRPC subscriber of `svc`; bounded by
    /// `subscribers_per_service_max` (past it the subscription is refused:
    /// returns false).
    pub fn grpc_subscribe(&mut self, svc: &ServiceId, sub: GrpcSubscriber, on: bool) -> bool {
        let max = self.config.subscribers_per_service_max;
        if !on {
            if let Some(s) = self.services.get_mut(svc.full_key()) {
                s.grpc
                    .retain(|g| !(g.shard == sub.shard && g.conn == sub.conn));
                if s.grpc.is_empty() && s.subscribers.is_empty() {
                    self.services.remove(svc.full_key());
                }
            }
            return true;
        }
        let entry = self.entry(svc);
        if let Some(g) = entry
            .grpc
            .iter_mut()
            .find(|g| g.shard == sub.shard && g.conn == sub.conn)
        {
            g.clusters = sub.clusters;
            return true;
        }
        if entry.grpc.len() >= max {
            return false;
        }
        entry.grpc.push(sub);
        true
    }

    fn entry(&mut self, svc: &ServiceId) -> &mut Subscribed {
        self.services
            .entry(svc.full_key().to_string())
            .or_insert_with(|| Subscribed {
                svc: svc.clone(),
                subscribers: Vec::new(),
                grpc: Vec::new(),
                dirty_due_ms: None,
            })
    }

    /// Registers or renews a subscriber (a list query with `udpPort`).
    pub fn subscribe(&mut self, svc: &ServiceId, sub: Subscription, now_ms: u64) {
        let max = self.config.subscribers_per_service_max;
        let expires_ms = now_ms + self.config.subscriber_ttl_ms;
        let entry = self.entry(svc);
        if let Some(s) = entry
            .subscribers
            .iter_mut()
            .find(|s| s.addr == sub.addr && s.clusters == sub.clusters)
        {
            s.expires_ms = expires_ms;
            return;
        }
        if entry.subscribers.len() >= max {
            // Replace the one closest to expiry.
            if let Some(i) =
                (0..entry.subscribers.len()).min_by_key(|i| entry.subscribers[*i].expires_ms)
            {
                entry.subscribers.swap_remove(i);
            }
        }
        entry.subscribers.push(Subscriber {
            addr: sub.addr,
            clusters: sub.clusters,
            expires_ms,
        });
    }

    /// A service changed: schedule one coalesced push if anyone listens.
    pub fn changed(&mut self, full_key: &str, now_ms: u64) {
        if let Some(s) = self.services.get_mut(full_key) {
            if s.dirty_due_ms.is_none() {
                s.dirty_due_ms = Some(now_ms + self.config.delay_ms);
            }
        }
    }

    /// An ack arrived from `from`.
    pub fn ack(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(datagram) else {
            return false;
        };
        if v.get("type").and_then(|t| t.as_str()) != Some("push-ack") {
            return false;
        }
        let id = match v.get("lastRefTime") {
            Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        match id.and_then(|id| self.pending.get(&id).map(|p| (id, p.addr))) {
            Some((id, addr)) if addr.ip() == from.ip() => {
                self.pending.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Everything to send at `now_ms`: coalesced pushes that are due, and
    /// the single resend of pushes not acked in time. `render(svc,
    /// clusters)` gives the service's list JSON for those clusters.
    pub fn due(
        &mut self,
        now_ms: u64,
        mut render: impl FnMut(&ServiceId, &str) -> Bytes,
        out: &mut Vec<Datagram>,
        grpc_out: &mut Vec<GrpcPush>,
    ) -> DueCounts {
        let mut counts = DueCounts::default();
        let mut to_push = Vec::new();
        self.services.retain(|_, s| {
            s.subscribers.retain(|sub| sub.expires_ms > now_ms);
            if s.dirty_due_ms.is_some_and(|d| d <= now_ms) {
                s.dirty_due_ms = None;
                to_push.push((s.svc.clone(), s.subscribers.clone(), s.grpc.clone()));
            }
            !s.subscribers.is_empty() || !s.grpc.is_empty()
        });
        for (svc, subscribers, grpc) in to_push {
            let mut rendered: Vec<(String, Bytes)> = Vec::new();
            for g in grpc {
                let json = match rendered.iter().find(|(c, _)| *c == g.clusters) {
                    Some((_, j)) => j.clone(),
                    None => {
                        let j = render(&svc, &g.clusters);
                        rendered.push((g.clusters.clone(), j.clone()));
                        j
                    }
                };
                grpc_out.push(GrpcPush {
                    to: g,
                    svc: svc.clone(),
                    list_json: json,
                });
                counts.sent += 1;
            }
            for sub in subscribers {
                let json = match rendered.iter().find(|(c, _)| *c == sub.clusters) {
                    Some((_, j)) => j.clone(),
                    None => {
                        let j = render(&svc, &sub.clusters);
                        rendered.push((sub.clusters.clone(), j.clone()));
                        j
                    }
                };
                self.next_id = self.next_id.max(now_ms * 1000) + 1;
                let id = self.next_id;
                let payload = encode(&json, id);
                if self.pending.len() < PENDING_ACKS_MAX {
                    self.pending.insert(
                        id,
                        Pending {
                            addr: sub.addr,
                            payload: payload.clone(),
                            deadline_ms: now_ms + self.config.ack_timeout_ms,
                            resent: false,
                        },
                    );
                }
                out.push(Datagram {
                    addr: sub.addr,
                    payload,
                });
                counts.sent += 1;
            }
        }
        let ack_timeout = self.config.ack_timeout_ms;
        self.pending.retain(|_, p| {
            if p.deadline_ms > now_ms {
                return true;
            }
            if p.resent {
                return false;
            }
            out.push(Datagram {
                addr: p.addr,
                payload: p.payload.clone(),
            });
            counts.retried += 1;
            p.resent = true;
            p.deadline_ms = now_ms + ack_timeout;
            true
        });
        counts
    }
}

/// `{"type":"dom","data":"<list JSON as a string>","lastRefTime":id}`,
/// gzip-compressed from `GZIP_MIN_BYTES`.
pub fn encode(list_json: &[u8], id: u64) -> Bytes {
    let data = serde_json::to_string(&String::from_utf8_lossy(list_json)).unwrap_or_default();
    let body = format!(r#"{{"type":"dom","data":{data},"lastRefTime":{id}}}"#);
    if body.len() < GZIP_MIN_BYTES {
        return Bytes::from(body);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(body.as_bytes()).is_err() {
        return Bytes::from(body);
    }
    gz.finish()
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PushConfig {
        PushConfig {
            delay_ms: 100,
            ack_timeout_ms: 1000,
            subscriber_ttl_ms: 10_000,
            subscribers_per_service_max: 2,
        }
    }

    fn svc() -> ServiceId {
        ServiceId::new("public", "DEFAULT_GROUP", "a")
    }

    fn sub(port: u16) -> Subscription {
        Subscription {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            clusters: String::new(),
        }
    }

    #[test]
    fn coalesces_then_retries_once_unless_acked() {
        let mut p = PushState::new(cfg());
        p.subscribe(&svc(), sub(9000), 0);
        p.subscribe(&svc(), sub(9001), 0);
        p.changed(svc().full_key(), 10);
        p.changed(svc().full_key(), 20);
        let mut out = Vec::new();
        let render = |_: &ServiceId, _: &str| Bytes::from_static(b"{\"hosts\":[]}");
        p.due(50, render, &mut out, &mut Vec::new());
        assert!(out.is_empty(), "not due before the delay");
        let c = p.due(110, render, &mut out, &mut Vec::new());
        assert_eq!(
            (c.sent, out.len()),
            (2, 2),
            "one push per subscriber for two changes"
        );
        let v: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(v["type"], "dom");
        let id = v["lastRefTime"].as_u64().unwrap();
        let ack = format!(r#"{{"type":"push-ack","lastRefTime":"{id}","data":""}}"#);
        assert!(p.ack(out[0].addr, ack.as_bytes()));
        out.clear();
        let c = p.due(1_200, render, &mut out, &mut Vec::new());
        assert_eq!(c.retried, 1, "only the unacked push is resent");
        out.clear();
        let c = p.due(3_000, render, &mut out, &mut Vec::new());
        assert_eq!(c.retried, 0, "resent once only");
    }

    #[test]
    fn subscribers_expire_and_are_bounded() {
        let mut p = PushState::new(cfg());
        for port in 1..=5 {
            p.subscribe(&svc(), sub(port), port as u64);
        }
        assert_eq!(p.subscriber_count(), 2);
        p.changed(svc().full_key(), 10_000);
        let mut out = Vec::new();
        p.due(20_000, |_, _| Bytes::new(), &mut out, &mut Vec::new());
        assert!(out.is_empty());
        assert_eq!(p.subscriber_count(), 0);
    }

    #[test]
    fn grpc_subscribers_get_one_coalesced_push_until_they_leave() {
        let mut p = PushState::new(cfg());
        let g = |conn| GrpcSubscriber {
            shard: 1,
            conn,
            clusters: String::new(),
        };
        assert!(p.grpc_subscribe(&svc(), g(7), true));
        assert!(p.grpc_subscribe(&svc(), g(7), true), "again: no duplicate");
        assert!(p.grpc_subscribe(&svc(), g(8), true));
        assert!(!p.grpc_subscribe(&svc(), g(9), true), "bounded per service");
        p.changed(svc().full_key(), 0);
        p.changed(svc().full_key(), 5);
        let (mut out, mut grpc) = (Vec::new(), Vec::new());
        let c = p.due(100, |_, _| Bytes::from_static(b"{}"), &mut out, &mut grpc);
        assert_eq!((c.sent, out.len(), grpc.len()), (2, 0, 2));
        assert_eq!(grpc[0].to.conn, 7);
        // They stay past the UDP subscriber TTL: the connection is the lease.
        p.grpc_subscribe(&svc(), g(8), false);
        p.changed(svc().full_key(), 50_000);
        grpc.clear();
        p.due(50_100, |_, _| Bytes::new(), &mut out, &mut grpc);
        assert_eq!(grpc.len(), 1);
        assert_eq!(grpc[0].to.conn, 7);
        p.grpc_subscribe(&svc(), g(7), false);
        assert_eq!(p.subscriber_count(), 0);
        assert!(!p.has_subscribers());
    }

    #[test]
    fn large_payloads_are_gzipped() {
        let big = vec![b'x'; 4096];
        let p = encode(&big, 1);
        assert_eq!(&p[..2], &[0x1f, 0x8b]);
        assert!(encode(b"{}", 1).starts_with(b"{"));
    }
}
