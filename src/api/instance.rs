//! `/nacos/v1/ns/instance*`: register, deregister, update, patch, detail,
//! beat and list.

use std::net::{IpAddr, SocketAddr};

use super::validate::*;
use super::{Action, Subscription};
use crate::http::params::Params;
use crate::store::instance::{InstanceAddr, InstanceSpec};
use crate::store::service::ListVariant;
use crate::store::{BeatInfo, InstanceChange, Op};

/// Weight bounds, as Nacos.
const WEIGHT_MAX: f64 = 10_000.0;

fn change(p: &Params) -> Checked<InstanceChange> {
    Ok(InstanceChange {
        weight: opt_float(p, "weight", 0.0, WEIGHT_MAX)?,
        healthy: opt_bool(p, "healthy")?,
        enabled: opt_enabled(p)?,
        ephemeral: opt_bool(p, "ephemeral")?,
        metadata: opt_metadata(p, "metadata")?,
    })
}

pub fn register(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let addr = instance_addr(p)?;
    let c = change(p)?;
    let spec = InstanceSpec {
        addr,
        weight: c.weight.unwrap_or(1.0),
        healthy: c.healthy.unwrap_or(true),
        enabled: c.enabled.unwrap_or(true),
        ephemeral: c.ephemeral.unwrap_or(true),
        metadata: c.metadata.unwrap_or_default(),
    };
    Ok(Action::Op(Op::Register { svc, spec }, None))
}

pub fn deregister(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let addr = instance_addr(p)?;
    let persistent = opt_bool(p, "ephemeral")? == Some(false);
    Ok(Action::Op(
        Op::Deregister {
            svc,
            addr,
            persistent,
        },
        None,
    ))
}

pub fn update(p: &Params, user_agent: &str) -> Checked<Action> {
    let svc = service_id(p)?;
    let addr = instance_addr(p)?;
    let change = change(p)?;
    // The Java client expects an error for an absent instance; the other
    // SDKs use PUT as an upsert.
    let must_exist = user_agent.contains("Nacos-Java-Client");
    Ok(Action::Op(
        Op::Update {
            svc,
            addr,
            change,
            must_exist,
        },
        None,
    ))
}

pub fn patch(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let addr = instance_addr(p)?;
    let change = change(p)?;
    Ok(Action::Op(Op::Patch { svc, addr, change }, None))
}

pub fn get(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let addr = instance_addr(p)?;
    Ok(Action::Op(Op::GetInstance { svc, addr }, None))
}

/// The fields of a `beat` JSON that the server uses.
#[derive(serde::Deserialize, Default)]
struct BeatJson {
    ip: Option<String>,
    port: Option<serde_json::Value>,
    cluster: Option<String>,
    weight: Option<f64>,
    ephemeral: Option<bool>,
    metadata: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

pub fn beat(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let json: Option<BeatJson> = match p.get("beat") {
        Some(raw) => Some(
            serde_json::from_str(raw)
                .map_err(|e| invalid("beat", raw, &format!("not a beat JSON: {e}")))?,
        ),
        None => None,
    };
    let from_beat = json.as_ref();
    let ip_raw = match from_beat
        .and_then(|b| b.ip.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(v) => v.to_string(),
        None => required(p, "ip")?.to_string(),
    };
    let port_raw = match from_beat.and_then(|b| b.port.as_ref()) {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(invalid("beat", &other.to_string(), "port must be a number")),
        None => required(p, "port")?.to_string(),
    };
    // The beat JSON's `cluster` wins: it is the only place the Python and
    // Node.js SDKs name the cluster.
    let cluster_v = match from_beat
        .and_then(|b| b.cluster.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(c) => cluster("beat.cluster", c)?,
        None => match p.get("clusterName") {
            Some(c) => cluster("clusterName", c)?,
            None => DEFAULT_CLUSTER.to_string(),
        },
    };
    let addr = InstanceAddr {
        ip: ip("ip", &ip_raw)?,
        port: port("port", &port_raw)?,
        cluster: cluster_v,
    };
    let beat = match json {
        None => None,
        Some(b) => {
            let weight = b.weight.unwrap_or(1.0);
            if !(0.0..=WEIGHT_MAX).contains(&weight) {
                return Err(invalid(
                    "beat",
                    &weight.to_string(),
                    "weight must be in 0..10000",
                ));
            }
            let mut metadata = crate::store::instance::Metadata::new();
            for (k, v) in b.metadata.unwrap_or_default() {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                metadata.insert(k, s);
            }
            Some(BeatInfo {
                weight,
                ephemeral: b.ephemeral.unwrap_or(true),
                metadata,
            })
        }
    };
    Ok(Action::Op(Op::Beat { svc, addr, beat }, None))
}

pub fn list(p: &Params, peer: SocketAddr) -> Checked<Action> {
    let svc = service_id(p)?;
    let clusters = p.get("clusters").unwrap_or("").to_string();
    for c in clusters.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        cluster("clusters", c)?;
    }
    let healthy_only = opt_bool(p, "healthyOnly")?.unwrap_or(false);
    let udp_port = opt_u64(p, "udpPort", 0, 65_535)?.unwrap_or(0) as u16;
    let client_ip: IpAddr = match p.get("clientIP") {
        Some(v) => v
            .parse()
            .map_err(|_| invalid("clientIP", v, "not an IP address"))?,
        None => peer.ip(),
    };
    let subscription = (udp_port > 0).then(|| Subscription {
        addr: SocketAddr::new(client_ip, udp_port),
        clusters: clusters.clone(),
    });
    let cache_millis = if subscription.is_some() {
        10_000
    } else {
        3_000
    };
    Ok(Action::Op(
        Op::List {
            svc,
            variant: ListVariant {
                clusters,
                healthy_only,
                cache_millis,
            },
        },
        subscription,
    ))
}
