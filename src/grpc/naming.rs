//! The JSON bodies of the Nacos 2.x requests and responses (NACOS2.md 2-3),
//! and the turning of a naming request into the validated command the HTTP
//! API builds for the same thing (`api::instance`, `api::validate`): one
//! command path, two front ends. Pure: no I/O, no clock.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::validate::{self, Checked, DEFAULT_GROUP, DEFAULT_NAMESPACE};
use crate::api::Action;
use crate::http::params::Params;
use crate::reply::Reply;
use crate::store::instance::InstanceSpec;
use crate::store::service::{ListVariant, ServiceId};
use crate::store::Op;

/// Nacos error codes (`NacosException`).
pub const SERVER_ERROR: u32 = 500;
pub const BAD_REQUEST: u32 = 400;
pub const UNREGISTERED: u32 = 301;
pub const NO_HANDLER: u32 = 302;
pub const BAD_GATEWAY: u32 = 502;
pub const OVER_THRESHOLD: u32 = 503;

/// An instance as the clients send it; every field optional, nulls
/// accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstanceJson {
    pub ip: Option<String>,
    pub port: Option<u32>,
    pub weight: Option<f64>,
    pub healthy: Option<bool>,
    pub enabled: Option<bool>,
    pub ephemeral: Option<bool>,
    pub cluster_name: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// Every field any naming request carries (they share one shape).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestJson {
    pub request_id: Option<Value>,
    pub namespace: Option<String>,
    pub service_name: Option<String>,
    pub group_name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub instance: Option<InstanceJson>,
    pub instances: Option<Vec<InstanceJson>>,
    pub cluster: Option<String>,
    pub clusters: Option<String>,
    /// `healthOnly` is the Python client's spelling.
    #[serde(alias = "healthOnly")]
    pub healthy_only: Option<bool>,
    pub subscribe: Option<bool>,
    pub page_no: Option<u64>,
    pub page_size: Option<u64>,
    pub labels: Option<Map<String, Value>>,
    pub tenant: Option<String>,
    pub headers: Option<Map<String, Value>>,
}

impl RequestJson {
    pub fn parse(body: &[u8]) -> Result<RequestJson, String> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(RequestJson::default());
        }
        serde_json::from_slice(body).map_err(|e| format!("malformed request JSON: {e}"))
    }

    /// A string of the request's JSON `headers`, if not empty.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()?
            .get(name)?
            .as_str()
            .filter(|v| !v.is_empty())
    }

    /// The request id as a string (`""` when absent).
    pub fn request_id(&self) -> String {
        match &self.request_id {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    /// `""` and absent are the default namespace, `public`.
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            None | Some("") => DEFAULT_NAMESPACE,
            Some(n) => n,
        }
    }

    fn service_pairs(&self) -> Vec<(String, String)> {
        let mut p = vec![("namespaceId".to_string(), self.namespace().to_string())];
        if let Some(s) = &self.service_name {
            p.push(("serviceName".into(), s.clone()));
        }
        if let Some(g) = &self.group_name {
            p.push(("groupName".into(), g.clone()));
        }
        p
    }

    /// The service, validated as the HTTP API validates `serviceName`.
    pub fn service(&self) -> Checked<ServiceId> {
        validate::service_id(&Params::from_pairs(self.service_pairs()))
    }
}

/// An instance of `svc`, validated as an HTTP register is.
fn instance_spec(r: &RequestJson, i: &InstanceJson) -> Checked<(ServiceId, InstanceSpec)> {
    let mut p = r.service_pairs();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            p.push((k.to_string(), v));
        }
    };
    put("ip", i.ip.clone());
    put("port", i.port.map(|v| v.to_string()));
    put("weight", i.weight.map(|v| v.to_string()));
    put("healthy", i.healthy.map(|v| v.to_string()));
    put("enabled", i.enabled.map(|v| v.to_string()));
    // A gRPC instance is ephemeral unless persistent is asked for by type.
    put("ephemeral", i.ephemeral.map(|v| v.to_string()));
    put(
        "clusterName",
        i.cluster_name.clone().filter(|c| !c.is_empty()),
    );
    put(
        "metadata",
        i.metadata
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(|m| Value::Object(m.clone()).to_string()),
    );
    match crate::api::instance::register(&Params::from_pairs(p))? {
        Action::Op(Op::Register { svc, spec }, _) => Ok((svc, spec)),
        _ => Err(Reply::text(500, "register did not build a register")),
    }
}

/// What a naming request needs done.
#[derive(Debug)]
pub enum Naming {
    /// Publish these instances of the service for the connection
    /// (register: one; batch: the list; deregister: none). `kind` is the
    /// request's `type`, echoed in the response.
    Publish {
        svc: ServiceId,
        specs: Vec<InstanceSpec>,
        batch: bool,
        kind: String,
    },
    /// A persistent instance: a plain register or deregister, as 1.x.
    Persistent { op: Op, kind: String },
    /// The current list; `subscribe` records (true) or drops (false) the
    /// connection's subscription, None for a plain query.
    Query {
        svc: ServiceId,
        variant: ListVariant,
        subscribe: Option<bool>,
    },
    ServiceList {
        namespace: String,
        group: String,
        page_no: usize,
        page_size: usize,
    },
}

fn bad(msg: impl Into<String>) -> (u32, String) {
    (BAD_REQUEST, msg.into())
}

fn reply_msg(r: Reply) -> (u32, String) {
    (BAD_REQUEST, String::from_utf8_lossy(&r.body).into_owned())
}

/// Turns a naming request of `kind` into what it needs; an error is
/// (errorCode, message) for an `ErrorResponse`.
pub fn naming(kind: &str, r: &RequestJson) -> Result<Naming, (u32, String)> {
    match kind {
        "InstanceRequest" => {
            let t = r.kind.clone().unwrap_or_default();
            let svc = r.service().map_err(reply_msg)?;
            match t.as_str() {
                "registerInstance" => {
                    let i = r
                        .instance
                        .as_ref()
                        .ok_or_else(|| bad("instance is required"))?;
                    if i.ephemeral == Some(false) {
                        return Err(bad(
                            "a persistent instance is registered with PersistentInstanceRequest",
                        ));
                    }
                    let (_, spec) = instance_spec(r, i).map_err(reply_msg)?;
                    Ok(Naming::Publish {
                        svc,
                        specs: vec![spec],
                        batch: false,
                        kind: t,
                    })
                }
                "deregisterInstance" => Ok(Naming::Publish {
                    svc,
                    specs: Vec::new(),
                    batch: false,
                    kind: t,
                }),
                other => Err(bad(format!("unsupported instance request type {other:?}"))),
            }
        }
        "BatchInstanceRequest" => {
            let t = r.kind.clone().unwrap_or_default();
            let svc = r.service().map_err(reply_msg)?;
            let list = r.instances.as_deref().unwrap_or_default();
            let specs = match t.as_str() {
                "batchRegisterInstance" => list
                    .iter()
                    .map(|i| instance_spec(r, i).map(|(_, s)| s))
                    .collect::<Checked<Vec<_>>>()
                    .map_err(reply_msg)?,
                // Deregistering the batch: the connection publishes nothing.
                "batchDeregisterInstance" => Vec::new(),
                other => return Err(bad(format!("unsupported batch request type {other:?}"))),
            };
            Ok(Naming::Publish {
                svc,
                specs,
                batch: true,
                kind: t,
            })
        }
        "PersistentInstanceRequest" => {
            let t = r.kind.clone().unwrap_or_default();
            let i = r
                .instance
                .as_ref()
                .ok_or_else(|| bad("instance is required"))?;
            let (svc, mut spec) = instance_spec(r, i).map_err(reply_msg)?;
            spec.ephemeral = false;
            let op = match t.as_str() {
                "registerInstance" => Op::Register { svc, spec },
                "deregisterInstance" => Op::Deregister {
                    svc,
                    addr: spec.addr,
                    persistent: true,
                },
                other => return Err(bad(format!("unsupported instance request type {other:?}"))),
            };
            Ok(Naming::Persistent { op, kind: t })
        }
        "ServiceQueryRequest" | "SubscribeServiceRequest" => {
            let svc = r.service().map_err(reply_msg)?;
            let query = kind == "ServiceQueryRequest";
            let clusters = if query { &r.cluster } else { &r.clusters };
            Ok(Naming::Query {
                svc,
                variant: ListVariant {
                    clusters: clusters.clone().unwrap_or_default().trim().to_string(),
                    healthy_only: query && r.healthy_only.unwrap_or(false),
                    cache_millis: 10_000,
                },
                subscribe: (!query).then(|| r.subscribe.unwrap_or(true)),
            })
        }
        "ServiceListRequest" => {
            let group = r
                .group_name
                .clone()
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| DEFAULT_GROUP.to_string());
            let page_no = r.page_no.unwrap_or(1).max(1) as usize;
            let page_size = r.page_size.unwrap_or(10).clamp(1, 10_000) as usize;
            Ok(Naming::ServiceList {
                namespace: r.namespace().to_string(),
                group,
                page_no,
                page_size,
            })
        }
        other => Err((NO_HANDLER, format!("no handler for request type {other:?}"))),
    }
}

/// A response body: `resultCode`, `errorCode`, `message` and `requestId`
/// always (strings, never null: NACOS2.md 8), plus `extra`.
pub fn response(request_id: &str, extra: Value) -> Vec<u8> {
    let mut m = match extra {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("resultCode".into(), json!(200));
    m.insert("errorCode".into(), json!(0));
    m.entry("message").or_insert(json!(""));
    m.insert("requestId".into(), json!(request_id));
    m.insert("success".into(), json!(true));
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// An `ErrorResponse` body.
pub fn error(request_id: &str, code: u32, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resultCode": SERVER_ERROR,
        "errorCode": code,
        "message": message,
        "requestId": request_id,
        "success": false,
    }))
    .unwrap_or_default()
}

/// A 1.x list body (`store::render::list_json`) as a 2.x `ServiceInfo`:
/// `name` is the plain name, `groupName` the group, hosts unchanged (each
/// with `serviceName` = `group@@name`), `allIps` and an empty `checksum`
/// added. The `lastRefTime` sent is `ref_time(the list's own)` (the caller
/// keeps it strictly increasing per service on a connection).
pub fn service_info(list_json: &[u8], svc: &ServiceId, ref_time: impl FnOnce(u64) -> u64) -> Value {
    let mut v: Value = serde_json::from_slice(list_json).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("name".into(), json!(svc.name()));
        m.insert("groupName".into(), json!(svc.group()));
        m.insert("checksum".into(), json!(""));
        m.insert("allIps".into(), json!(false));
        m.insert("cacheMillis".into(), json!(10_000));
        for k in ["dom", "useSpecifiedURL", "env", "allIPs"] {
            m.remove(k);
        }
        let own = m.get("lastRefTime").and_then(Value::as_u64).unwrap_or(0);
        m.insert("lastRefTime".into(), json!(ref_time(own)));
        m.entry("hosts").or_insert(json!([]));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> RequestJson {
        RequestJson::parse(json.as_bytes()).unwrap()
    }

    /// The register the Rust `nacos-sdk` 0.8.3 sends (explicit nulls, no
    /// `module`, a numeric-string request id).
    const RUST_REGISTER: &str = r#"{"type":"registerInstance","instance":{"instanceId":null,"ip":"10.0.0.5","port":8080,"weight":2.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":null,"metadata":{"zone":"a"}},"headers":{},"requestId":"7","namespace":"public","serviceName":"orders","groupName":"DEFAULT_GROUP"}"#;

    #[test]
    fn a_register_becomes_a_validated_publish() {
        let r = req(RUST_REGISTER);
        assert_eq!(r.request_id(), "7");
        match naming("InstanceRequest", &r).unwrap() {
            Naming::Publish {
                svc, specs, kind, ..
            } => {
                assert_eq!(svc.full_key(), "public##DEFAULT_GROUP@@orders");
                assert_eq!(kind, "registerInstance");
                assert_eq!(specs.len(), 1);
                assert_eq!(specs[0].addr.key(), "10.0.0.5#8080#DEFAULT");
                assert_eq!(specs[0].weight, 2.0);
                assert_eq!(specs[0].metadata.get("zone").map(String::as_str), Some("a"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_refused_with_the_http_api_reasons() {
        let no_ip = req(r#"{"type":"registerInstance","serviceName":"s","instance":{"port":1}}"#);
        let (code, msg) = naming("InstanceRequest", &no_ip).unwrap_err();
        assert_eq!(code, BAD_REQUEST);
        assert!(msg.contains("'ip'"), "{msg}");
        let bad_port = req(
            r#"{"type":"registerInstance","serviceName":"s","instance":{"ip":"1.2.3.4","port":70000}}"#,
        );
        assert!(naming("InstanceRequest", &bad_port)
            .unwrap_err()
            .1
            .contains("port"));
        let no_svc = req(r#"{"type":"registerInstance","instance":{"ip":"1.2.3.4","port":1}}"#);
        assert!(naming("InstanceRequest", &no_svc)
            .unwrap_err()
            .1
            .contains("serviceName"));
        let odd = req(r#"{"type":"explode","serviceName":"s"}"#);
        assert!(naming("InstanceRequest", &odd)
            .unwrap_err()
            .1
            .contains("explode"));
        assert_eq!(naming("NoSuchRequest", &odd).unwrap_err().0, NO_HANDLER);
        assert!(RequestJson::parse(b"{not json").is_err());
        assert!(
            RequestJson::parse(b"").is_ok(),
            "an empty body is no fields"
        );
    }

    #[test]
    fn namespaces_empty_and_public_are_one() {
        let a = req(r#"{"namespace":"","serviceName":"s"}"#);
        let b = req(r#"{"namespace":"public","serviceName":"s"}"#);
        assert_eq!(a.service().unwrap(), b.service().unwrap());
    }

    #[test]
    fn queries_take_the_python_spelling_and_subscribe_defaults_to_true() {
        let q = req(r#"{"serviceName":"s","cluster":"a","healthOnly":true}"#);
        match naming("ServiceQueryRequest", &q).unwrap() {
            Naming::Query {
                variant, subscribe, ..
            } => {
                assert!(variant.healthy_only);
                assert_eq!(variant.clusters, "a");
                assert_eq!(subscribe, None);
            }
            other => panic!("{other:?}"),
        }
        let s = req(r#"{"serviceName":"s","clusters":""}"#);
        match naming("SubscribeServiceRequest", &s).unwrap() {
            Naming::Query { subscribe, .. } => assert_eq!(subscribe, Some(true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_carry_every_field_as_strings_where_clients_insist() {
        let v: Value = serde_json::from_slice(&response("", json!({"type": "x"}))).unwrap();
        assert_eq!(v["resultCode"], 200);
        assert_eq!(v["errorCode"], 0);
        assert_eq!(v["message"], "");
        assert_eq!(v["requestId"], "");
        assert_eq!(v["type"], "x");
        let e: Value =
            serde_json::from_slice(&error("9", UNREGISTERED, "Connection is unregistered."))
                .unwrap();
        assert_eq!(
            e,
            json!({"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","requestId":"9","success":false})
        );
    }

    #[test]
    fn a_list_becomes_a_service_info() {
        let svc = ServiceId::new("public", "G", "orders");
        let list = crate::store::render::list_json(
            &svc,
            None,
            &ListVariant {
                clusters: String::new(),
                healthy_only: false,
                cache_millis: 10_000,
            },
            5,
        );
        let v = service_info(&list, &svc, |own| {
            assert_eq!(own, 5, "the list's own time is handed over");
            42
        });
        assert_eq!(v["name"], "orders");
        assert_eq!(v["groupName"], "G");
        assert_eq!(v["clusters"], "");
        assert_eq!(v["checksum"], "");
        assert_eq!(v["lastRefTime"], 42);
        assert_eq!(v["hosts"], json!([]));
        for k in ["cacheMillis", "reachProtectionThreshold", "valid", "allIps"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
