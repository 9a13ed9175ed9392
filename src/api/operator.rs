//! Operator and cluster views. A standalone node is its own only member,
//! always UP, and owns every service.

use super::validate::*;
use super::{Action, NodeInfo};
use crate::http::params::Params;
use crate::reply::Reply;

fn member(node: &NodeInfo) -> serde_json::Value {
    serde_json::json!({
        "ip": node.advertise.ip().to_string(),
        "port": node.advertise.port(),
        "address": node.advertise.to_string(),
        "state": "UP",
        "failAccessCnt": 0,
        "extendInfo": {},
    })
}

pub fn servers(node: &NodeInfo) -> Reply {
    Reply::json_value(&serde_json::json!({ "servers": [member(node)] }))
}

pub fn cluster_nodes(node: &NodeInfo) -> Reply {
    Reply::json_value(&serde_json::json!({
        "code": 200, "message": null, "data": [member(node)]
    }))
}

pub fn distro_server(p: &Params, node: &NodeInfo) -> Checked<Action> {
    service_id(p)?;
    Ok(Action::Reply(Reply::json_value(&serde_json::json!({
        "responsibleServer": node.advertise.to_string()
    }))))
}

/// `GET /nacos/v1/ns/operator/metrics`.
pub fn metrics(shared: &crate::shard::Shared) -> Reply {
    use std::sync::atomic::Ordering::Relaxed;
    let sum = |f: fn(&crate::metrics::ShardStats) -> &std::sync::atomic::AtomicU64| -> u64 {
        shared.stats.iter().map(|s| f(s).load(Relaxed)).sum()
    };
    let services = sum(|s| &s.services);
    let instances = sum(|s| &s.instances);
    // A clustered node is responsible for what it owns (refreshed every
    // verify round); a standalone one for everything.
    let (responsible_services, responsible_instances) = match shared.cluster {
        Some(_) => (
            sum(|s| &s.responsible_services),
            sum(|s| &s.responsible_instances),
        ),
        None => (services, instances),
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    Reply::json_value(&serde_json::json!({
        "status": "UP",
        "serviceCount": services,
        "instanceCount": instances,
        "responsibleServiceCount": responsible_services,
        "responsibleInstanceCount": responsible_instances,
        "cpu": (load / cpus).min(1.0),
        "load": load,
        "mem": memory_used_fraction(),
    }))
}

/// 1 - MemAvailable / MemTotal, from /proc/meminfo.
fn memory_used_fraction() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0.0;
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0.0 => 1.0 - avail / total,
        _ => 0.0,
    }
}
