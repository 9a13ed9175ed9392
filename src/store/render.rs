//! The JSON bodies of the read endpoints, in the shapes Nacos clients parse
//! (SPEC 2.1: the union of the 1.4 and 2.x shapes).

use serde::Serialize;

use super::instance::{InstanceData, Metadata};
use super::service::{ListVariant, ServiceId};
use super::view::ServiceView;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Host<'a> {
    instance_id: String,
    ip: &'a str,
    port: u16,
    weight: f64,
    healthy: bool,
    valid: bool,
    marked: bool,
    enabled: bool,
    ephemeral: bool,
    cluster_name: &'a str,
    service_name: &'a str,
    metadata: &'a Metadata,
    instance_heart_beat_interval: u64,
    instance_heart_beat_time_out: u64,
    ip_delete_timeout: u64,
    instance_id_generator: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    name: &'a str,
    group_name: &'a str,
    clusters: &'a str,
    cache_millis: u32,
    last_ref_time: u64,
    checksum: String,
    #[serde(rename = "allIPs")]
    all_ips: bool,
    reach_protection_threshold: bool,
    valid: bool,
    dom: &'a str,
    #[serde(rename = "useSpecifiedURL")]
    use_specified_url: bool,
    env: &'static str,
    metadata: &'a Metadata,
    hosts: Vec<Host<'a>>,
}

fn host<'a>(inst: &'a InstanceData, grouped: &'a str, healthy: bool) -> Host<'a> {
    Host {
        instance_id: format!("{}#{}", inst.key, grouped),
        ip: inst.ip(),
        port: inst.port(),
        weight: inst.weight,
        healthy,
        valid: healthy,
        marked: false,
        enabled: inst.enabled,
        ephemeral: inst.ephemeral,
        cluster_name: inst.cluster(),
        service_name: grouped,
        metadata: &inst.metadata,
        instance_heart_beat_interval: inst.timeouts.get().beat_interval_ms,
        instance_heart_beat_time_out: inst.timeouts.get().unhealthy_timeout_ms,
        ip_delete_timeout: inst.timeouts.get().delete_timeout_ms,
        instance_id_generator: "simple",
    }
}

fn cluster_filter(clusters: &str) -> Vec<&str> {
    clusters
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The instance list of `service` (None: the service does not exist;
/// its `lastRefTime` is then `now_ms`).
pub fn list_json(
    id: &ServiceId,
    service: Option<&ServiceView>,
    variant: &ListVariant,
    now_ms: u64,
) -> Vec<u8> {
    let grouped = id.grouped();
    let empty = Metadata::new();
    let wanted = cluster_filter(&variant.clusters);
    let mut hosts = Vec::new();
    let mut reach = false;
    let (last_ref, revision, metadata) = match service {
        Some(s) => (s.modified_ms, s.revision, &s.metadata),
        None => (now_ms, 0, &empty),
    };
    if let Some(s) = service {
        // The view's instances are sorted by key.
        let picked: Vec<&InstanceData> = s
            .instances
            .iter()
            .map(|i| &**i)
            .filter(|i| i.enabled)
            .filter(|i| wanted.is_empty() || wanted.contains(&i.cluster()))
            .collect();
        let total = picked.len();
        let healthy = picked.iter().filter(|i| i.healthy).count();
        reach = total > 0 && (healthy as f64 / total as f64) <= s.protect_threshold;
        for inst in picked {
            if reach {
                hosts.push(host(inst, grouped, true));
            } else if !variant.healthy_only || inst.healthy {
                hosts.push(host(inst, grouped, inst.healthy));
            }
        }
    }
    let checksum = format!(
        "{:016x}",
        crate::shard::router::shard_hash(&format!("{}#{revision}", id.full_key()))
    );
    let list = List {
        name: grouped,
        group_name: id.group(),
        clusters: &variant.clusters,
        cache_millis: variant.cache_millis,
        last_ref_time: last_ref,
        checksum,
        all_ips: false,
        reach_protection_threshold: reach,
        valid: true,
        dom: grouped,
        use_specified_url: false,
        env: "",
        metadata,
        hosts,
    };
    serde_json::to_vec(&list).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    service: &'a str,
    ip: &'a str,
    port: u16,
    cluster_name: &'a str,
    weight: f64,
    healthy: bool,
    enabled: bool,
    ephemeral: bool,
    instance_id: String,
    metadata: &'a Metadata,
}

/// `GET /nacos/v1/ns/instance`.
pub fn instance_json(id: &ServiceId, inst: &InstanceData) -> Vec<u8> {
    let grouped = id.grouped();
    let d = Detail {
        instance_id: format!("{}#{}", inst.key, grouped),
        service: grouped,
        ip: inst.ip(),
        port: inst.port(),
        cluster_name: inst.cluster(),
        weight: inst.weight,
        healthy: inst.healthy,
        enabled: inst.enabled,
        ephemeral: inst.ephemeral,
        metadata: &inst.metadata,
    };
    serde_json::to_vec(&d).unwrap_or_default()
}

/// `GET /nacos/v1/ns/service`.
pub fn service_json(s: &ServiceView) -> Vec<u8> {
    let mut clusters: Vec<&str> = s.instances.iter().map(|i| i.cluster()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    let clusters: Vec<serde_json::Value> = clusters
        .into_iter()
        .map(|c| serde_json::json!({"name": c, "healthChecker": {"type": "TCP"}, "metadata": {}}))
        .collect();
    let v = serde_json::json!({
        "namespaceId": s.id.namespace(),
        "groupName": s.id.group(),
        "name": s.id.name(),
        "protectThreshold": s.protect_threshold,
        "metadata": s.metadata,
        "selector": s.selector,
        "clusters": clusters,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}
