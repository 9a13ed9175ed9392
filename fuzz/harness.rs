//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (libFuzzer, `cargo fuzz run`) and `tests/fuzz_corpus.rs` (replays the
//! seed corpus and every crash found, in the normal test suite). Each
//! takes arbitrary bytes, drives the real parsing and validation code and
//! the real `Store`, and asserts what must hold whatever a client or a
//! peer sends: no panic, a well-formed answer, and a refused request
//! changes nothing. See `docs/fuzzing.md`.

use std::net::SocketAddr;

use distro_registry::api::{self, route, Action, Endpoint, NodeInfo};
use distro_registry::distro::hlc;
use distro_registry::http::request::{parse, Limits, Method, Parsed, Request};
use distro_registry::store::datum::Datum;
use distro_registry::store::instance::{InstanceAddr, InstanceSpec, Metadata, Timeouts};
use distro_registry::store::service::ServiceId;
use distro_registry::store::{Op, Store};

/// The server's default limits, with smaller bodies so that the fuzzer
/// reaches the 413 paths.
const LIMITS: Limits = Limits {
    header_bytes_max: 8192,
    body_bytes_max: 4096,
    peer_body_bytes_max: 16384,
};

/// Requests framed out of one input at most (a pipelined connection).
const REQUESTS_PER_INPUT_MAX: usize = 32;

/// A fixed time, far from 0 and from the end of the HLC's range.
const NOW_MS: u64 = 1_700_000_000_000;

fn node() -> NodeInfo {
    NodeInfo {
        advertise: "127.0.0.1:8848".parse().expect("literal address"),
    }
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().expect("literal address")
}

/// A store holding one service (`DEFAULT_GROUP@@fz`) with one instance
/// (`1.1.1.1:80` in cluster `c1`, weight 2, metadata `k=v`), the target
/// that fuzzed requests mostly miss and sometimes hit.
fn seeded_store() -> Store {
    let mut store = Store::new(Timeouts::default(), 100, NOW_MS);
    store.set_writer(1);
    let mut metadata = Metadata::new();
    metadata.insert("k".to_string(), "v".to_string());
    let op = Op::Register {
        svc: seeded_service(),
        spec: InstanceSpec {
            addr: seeded_addr(),
            weight: 2.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata,
        },
    };
    assert_eq!(store.apply(op, NOW_MS).reply.status, 200);
    store
}

fn seeded_service() -> ServiceId {
    ServiceId::new("public", "DEFAULT_GROUP", "fz")
}

fn seeded_addr() -> InstanceAddr {
    InstanceAddr {
        ip: "1.1.1.1".to_string(),
        port: 80,
        cluster: "c1".to_string(),
    }
}

/// Everything a store replicates, in a stable order: two stores with equal
/// fingerprints hold the same data.
fn fingerprint(store: &Store) -> Vec<Datum> {
    let mut all = store.snapshot();
    all.sort_by(|a, b| (&a.namespace, &a.group, &a.name).cmp(&(&b.namespace, &b.group, &b.name)));
    all
}

/// Applies what a request turned into, as a shard would, and checks the
/// answer: JSON answers parse, and an op refused with a 4xx leaves the
/// store as it was.
fn apply_action(store: &mut Store, action: Action) {
    match action {
        Action::Reply(reply) => check_reply(reply.status, reply.is_json(), &reply.body),
        Action::Op(op, _) => {
            let before = fingerprint(store);
            let applied = store.apply(op, NOW_MS);
            check_reply(
                applied.reply.status,
                applied.reply.is_json(),
                &applied.reply.body,
            );
            if applied.reply.status >= 400 {
                assert!(!applied.changed, "a refused op reported a change");
                assert!(
                    before == fingerprint(store),
                    "a refused op changed the store"
                );
            }
        }
        Action::ServiceList { page_size, .. } => assert!(page_size > 0),
        Action::OperatorMetrics | Action::Metrics | Action::Peer | Action::Login => {}
    }
}

fn check_reply(status: u16, json: bool, body: &[u8]) {
    assert!((200..600).contains(&status), "status {status}");
    if json {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
            panic!(
                "invalid JSON answer ({e}): {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// Target `http_request`: raw bytes from a connection. Frames requests one
/// after another (pipelining), routes and handles each, applies its op.
pub fn http_request(data: &[u8]) {
    let mut store = seeded_store();
    let mut buf = data;
    for _ in 0..REQUESTS_PER_INPUT_MAX {
        match parse(buf, LIMITS) {
            Parsed::Complete(req, used) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "used {used} of {}",
                    buf.len()
                );
                let body_max = LIMITS.peer_body_bytes_max.max(LIMITS.body_bytes_max);
                assert!(req.body.len() <= body_max);
                // A request is framed from its own bytes alone.
                match parse(&buf[..used], LIMITS) {
                    Parsed::Complete(_, again) => assert_eq!(again, used),
                    other => panic!("the request's own bytes framed as {other:?}"),
                }
                let endpoint = route(req.method, req.path);
                let action = api::handle(endpoint, &req, client(), &node());
                apply_action(&mut store, action);
                buf = &buf[used..];
            }
            Parsed::Partial => {
                assert!(
                    buf.len() <= LIMITS.header_bytes_max + LIMITS.peer_body_bytes_max + 64 * 1024
                );
                break;
            }
            Parsed::Error(status, _) => {
                assert!(
                    matches!(status, 400 | 411 | 413 | 431),
                    "error status {status}"
                );
                break;
            }
        }
    }
}

/// Target `api_params`: a query string and a form body for any endpoint.
/// The first byte picks the endpoint, the second whether the caller is
/// the Java client; the rest is `query \n body`.
pub fn api_params(data: &[u8]) {
    let [which, agent, rest @ ..] = data else {
        return;
    };
    let endpoint = Endpoint::ALL[*which as usize % Endpoint::ALL.len()];
    let (query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let req = Request {
        method: Method::Get,
        path: "/",
        query: &query,
        body: body.into(),
        form_body: true,
        keep_alive: true,
        user_agent: if agent & 1 == 1 {
            "Nacos-Java-Client:v1.4.6"
        } else {
            "fuzz"
        },
        token: None,
        forwarded: false,
        access_token: None,
    };
    let mut store = seeded_store();
    let action = api::handle(endpoint, &req, client(), &node());
    apply_action(&mut store, action);
}

/// Target `beat_json`: the `beat` parameter of a heartbeat. Whatever it
/// says, a beat never changes a known instance's cluster, weight or
/// metadata (SPEC 2).
pub fn beat_json(data: &[u8]) {
    let beat: String = form_urlencoded::byte_serialize(data).collect();
    for query in [
        format!("serviceName=fz&beat={beat}"),
        format!("serviceName=fz&ip=1.1.1.1&port=80&clusterName=c1&beat={beat}"),
    ] {
        let req = Request {
            method: Method::Put,
            path: "/nacos/v1/ns/instance/beat",
            query: &query,
            body: (&[][..]).into(),
            form_body: true,
            keep_alive: true,
            user_agent: "fuzz",
            token: None,
            forwarded: false,
            access_token: None,
        };
        let mut store = seeded_store();
        let action = api::handle(Endpoint::InstanceBeat, &req, client(), &node());
        apply_action(&mut store, action);
        let svc = store
            .service(seeded_service().full_key())
            .expect("seeded service");
        let inst = svc
            .instances
            .get(seeded_addr().key().as_str())
            .expect("a beat never removes an instance");
        assert_eq!(inst.weight, 2.0);
        assert_eq!(inst.cluster(), "c1");
        assert_eq!(inst.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(inst.metadata.len(), 1);
    }
}

/// Target `datum_batch`: the body of `PUT /nacos/v1/ns/distro/datum`, a
/// peer's replication batch. Merging is idempotent (the same batch twice
/// changes nothing the second time), and a local write after a merge is
/// versioned after everything merged (a version from too far in the
/// future is refused rather than taken in).
pub fn datum_batch(data: &[u8]) {
    let Ok(datums) = serde_json::from_slice::<Vec<Datum>>(data) else {
        return;
    };
    let mut store = seeded_store();
    // The newest version a merge may take in (versions too far ahead of
    // the local clock are refused, `hlc::DRIFT_MAX_MS`).
    let newest = datums
        .iter()
        .flat_map(|d| {
            let records = d.instances.iter().map(|r| r.version);
            records.chain([d.fields.version]).chain(d.deleted)
        })
        .filter(|v| hlc::acceptable(v.hlc, NOW_MS))
        .max();
    for d in datums.clone() {
        store.merge(d, NOW_MS);
    }
    let once = fingerprint(&store);
    for d in datums {
        assert!(
            !store.merge(d, NOW_MS),
            "merging a datum twice changed something"
        );
    }
    assert!(
        once == fingerprint(&store),
        "merging a batch twice changed the store"
    );
    // A write after the merge wins over every merged version.
    let op = Op::Register {
        svc: seeded_service(),
        spec: InstanceSpec {
            addr: seeded_addr(),
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Metadata::new(),
        },
    };
    assert_eq!(store.apply(op, NOW_MS).reply.status, 200);
    let written = store
        .datum(seeded_service().full_key())
        .and_then(|d| {
            d.instances
                .into_iter()
                .find(|r| r.key == seeded_addr().key())
        })
        .expect("just written")
        .version;
    if let Some(newest) = newest {
        assert!(
            written > newest,
            "local write {written:?} not after merged {newest:?}"
        );
    }
}

/// Target `grpc_payload`: bytes as a gRPC client sends them (a framed
/// message) or as a bare `Payload`. Framing never hands out more than the
/// limit; a payload that decodes encodes back to itself; its JSON body,
/// read as each naming request, is either refused with an error response
/// that parses, or turned into commands that the real `Store` applies
/// without panicking (and a refused one changes nothing).
pub fn grpc_payload(data: &[u8]) {
    use distro_registry::grpc::{codec, naming};
    const MAX: usize = 4096;
    let mut buf = data.to_vec();
    while let Ok(Some(m)) = codec::next_message(&mut buf, MAX) {
        assert!(m.len() <= MAX);
    }
    let Ok(p) = codec::decode(data) else {
        return;
    };
    assert_eq!(codec::decode(&codec::encode(&p)).as_ref(), Ok(&p));
    let r = match naming::RequestJson::parse(&p.body) {
        Ok(r) => r,
        Err(e) => {
            let body = naming::error("", naming::BAD_GATEWAY, &e);
            serde_json::from_slice::<serde_json::Value>(&body).expect("error JSON");
            return;
        }
    };
    let conn = std::sync::Arc::new(distro_registry::store::instance::Lease {
        holder: String::new(),
        boot: 0,
        serial: 1,
    });
    for kind in [
        "InstanceRequest",
        "BatchInstanceRequest",
        "PersistentInstanceRequest",
        "ServiceQueryRequest",
        "SubscribeServiceRequest",
        "ServiceListRequest",
        p.kind.as_str(),
    ] {
        let mut store = seeded_store();
        let before = fingerprint(&store);
        match naming::naming(kind, &r) {
            Err((code, msg)) => {
                let body = naming::error(&r.request_id(), code, &msg);
                serde_json::from_slice::<serde_json::Value>(&body).expect("error JSON");
                assert_eq!(
                    fingerprint(&store),
                    before,
                    "a refused request changed the store"
                );
            }
            Ok(naming::Naming::Publish { svc, specs, .. }) => {
                let n = specs.len();
                let applied = store.apply(
                    Op::Publish {
                        svc: svc.clone(),
                        conn: conn.clone(),
                        specs,
                        release: Vec::new(),
                    },
                    NOW_MS,
                );
                assert_eq!(applied.reply.status, 200);
                if n > 0 {
                    assert!(store.service(svc.full_key()).is_some());
                }
            }
            Ok(naming::Naming::Persistent { op, .. }) => {
                let applied = store.apply(op, NOW_MS);
                check_reply(
                    applied.reply.status,
                    applied.reply.is_json(),
                    &applied.reply.body,
                );
            }
            Ok(naming::Naming::Query { svc, variant, .. }) => {
                let applied = store.apply(
                    Op::List {
                        svc: svc.clone(),
                        variant,
                    },
                    NOW_MS,
                );
                let info = naming::service_info(&applied.reply.body, &svc, |t| t);
                assert_eq!(info["name"], svc.name());
            }
            Ok(naming::Naming::ServiceList {
                page_no, page_size, ..
            }) => {
                assert!(page_no >= 1 && page_size >= 1);
            }
        }
    }
}

/// The key of the `access_token` target's signer (its seed tokens are
/// signed with it: `fuzz/corpus/access_token/`).
const TOKEN_KEY: [u8; 32] = *b"distro-registry-fuzz-token-key!!";

/// `now` of the token checks, in seconds.
const TOKEN_NOW_S: u64 = 1_700_000_000;

/// An access token as a client sends it (`Authorization: Bearer`, the
/// `accessToken` parameter or gRPC header). The node issues tokens only
/// with `Signer::issue`, so whatever the parser accepts must be exactly a
/// token it issued, for a user and an expiry after now; and a token made
/// from the input's own bytes round-trips, expires at its `exp`, and
/// stops verifying when any one byte of it changes.
pub fn access_token(data: &[u8]) {
    use distro_registry::auth::token::{Signer, TokenError};
    let signer = Signer::from_key(&TOKEN_KEY);
    let text = String::from_utf8_lossy(data);
    match signer.verify(&text, TOKEN_NOW_S) {
        Ok(c) => {
            assert!(c.exp > TOKEN_NOW_S, "accepted an expired token");
            assert_eq!(
                signer.issue(&c.sub, c.exp),
                text,
                "accepted a token the node did not issue"
            );
        }
        Err(TokenError::Expired) => {
            // Only a token of ours can be found expired.
            let parts: Vec<&str> = text.split('.').collect();
            assert_eq!(parts.len(), 3, "expired but not a JWT: {text}");
        }
        Err(_) => {}
    }
    // A token for the input read as (exp, user).
    if data.len() >= 8 {
        let exp = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % (1 << 40);
        let user = String::from_utf8_lossy(&data[8..]);
        let t = signer.issue(&user, exp);
        if t.len() > distro_registry::auth::token::TOKEN_BYTES_MAX {
            assert!(
                signer.verify(&t, 0).is_err(),
                "a token over the limit verified"
            );
            return;
        }
        if exp > TOKEN_NOW_S {
            let c = signer
                .verify(&t, TOKEN_NOW_S)
                .expect("a fresh token verifies");
            assert_eq!((c.sub.as_str(), c.exp), (&*user, exp));
        }
        assert_eq!(signer.verify(&t, exp), Err(TokenError::Expired));
        // One byte changed, at a place the input picks: refused.
        let mut bytes = t.clone().into_bytes();
        let at = data[0] as usize * 7 % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).expect("ASCII token");
        if exp > 0 {
            assert!(
                signer.verify(&changed, exp - 1).is_err(),
                "a token with byte {at} changed verified: {changed}"
            );
        }
        // Another secret never accepts it.
        let other = Signer::from_key(&[0u8; 32]);
        assert!(other.verify(&t, 0).is_err());
    }
}
