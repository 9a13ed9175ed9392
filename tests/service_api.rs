//! `/nacos/v1/ns/service*`, operator, cluster and health endpoints.

mod common;
use common::*;

#[test]
fn service_create_get_update_delete() {
    let n = Node::start(&[]);
    let r = n.req(
        "POST",
        &format!("{NS}/service?serviceName=cat&protectThreshold=0.5&metadata=team%3Dx"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = n.req("POST", &format!("{NS}/service?serviceName=cat"), "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("already exists"), "{}", r.body);
    let s = n.json(&format!("{NS}/service?serviceName=cat"));
    assert_eq!(s["name"], "cat");
    assert_eq!(s["groupName"], "DEFAULT_GROUP");
    assert_eq!(s["namespaceId"], "public");
    assert_eq!(s["protectThreshold"], 0.5);
    assert_eq!(s["metadata"]["team"], "x");
    assert_eq!(s["selector"]["type"], "none");
    let r = n.req(
        "PUT",
        &format!("{NS}/service?serviceName=cat&protectThreshold=0.1&selector=%7B%22type%22%3A%22label%22%2C%22expression%22%3A%22%22%7D"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let s = n.json(&format!("{NS}/service?serviceName=cat"));
    assert_eq!(s["protectThreshold"], 0.1);
    assert_eq!(s["metadata"]["team"], "x", "metadata kept when not given");
    assert_eq!(s["selector"]["type"], "label");
    // The service's protect threshold reaches the list.
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=cat&ip=10.0.0.1&port=1"),
        "",
    );
    let s = n.json(&format!("{NS}/service?serviceName=cat"));
    assert_eq!(s["clusters"][0]["name"], "DEFAULT");
    // Not empty: cannot delete.
    let r = n.req("DELETE", &format!("{NS}/service?serviceName=cat"), "");
    assert_eq!(r.status, 400, "{}", r.body);
    n.req(
        "DELETE",
        &format!("{NS}/instance?serviceName=cat&ip=10.0.0.1&port=1"),
        "",
    );
    let r = n.req("DELETE", &format!("{NS}/service?serviceName=cat"), "");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(n.get(&format!("{NS}/service?serviceName=cat")).status, 404);
    assert_eq!(
        n.req("DELETE", &format!("{NS}/service?serviceName=cat"), "")
            .status,
        404
    );
    assert_eq!(
        n.req("PUT", &format!("{NS}/service?serviceName=cat"), "")
            .status,
        404
    );
}

#[test]
fn service_bad_input() {
    let n = Node::start(&[]);
    for (method, q, want) in [
        (
            "POST",
            "protectThreshold=0.5",
            "Param 'serviceName' is required.",
        ),
        (
            "POST",
            "serviceName=a&protectThreshold=2",
            "Param 'protectThreshold' is invalid",
        ),
        (
            "POST",
            "serviceName=a&protectThreshold=x",
            "Param 'protectThreshold' is invalid",
        ),
        (
            "POST",
            "serviceName=a&selector=%7B%7D",
            "Param 'selector' is invalid",
        ),
        (
            "POST",
            "serviceName=a&metadata=%5B1%5D",
            "Param 'metadata' is invalid",
        ),
        ("GET", "groupName=x", "Param 'serviceName' is required."),
    ] {
        let r = n.req(method, &format!("{NS}/service?{q}"), "");
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body.starts_with(want), "{q}: {}", r.body);
    }
    assert_eq!(
        n.get(&format!("{NS}/service?serviceName=a")).status,
        404,
        "nothing created"
    );
    for (q, want) in [
        ("pageSize=10", "Param 'pageNo' is required."),
        ("pageNo=1", "Param 'pageSize' is required."),
        ("pageNo=0&pageSize=10", "Param 'pageNo' is invalid"),
        ("pageNo=1&pageSize=x", "Param 'pageSize' is invalid"),
    ] {
        let r = n.get(&format!("{NS}/service/list?{q}"));
        assert_eq!(r.status, 400, "{q}");
        assert!(r.body.starts_with(want), "{q}: {}", r.body);
    }
}

#[test]
fn service_list_pages_over_all_cores() {
    let n = Node::start(&["--cores", "2"]);
    for i in 0..25 {
        n.req(
            "POST",
            &format!("{NS}/instance?serviceName=s{i:02}&ip=10.0.0.1&port=1"),
            "",
        );
    }
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=other&groupName=g&ip=10.0.0.1&port=1"),
        "",
    );
    let p1 = n.json(&format!("{NS}/service/list?pageNo=1&pageSize=10"));
    assert_eq!(p1["count"], 25);
    let names: Vec<String> = p1["doms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        (0..10).map(|i| format!("s{i:02}")).collect::<Vec<_>>()
    );
    let p3 = n.json(&format!("{NS}/service/list?pageNo=3&pageSize=10"));
    assert_eq!(p3["doms"].as_array().unwrap().len(), 5);
    let p9 = n.json(&format!("{NS}/service/list?pageNo=9&pageSize=10"));
    assert_eq!(p9["doms"].as_array().unwrap().len(), 0);
    let g = n.json(&format!(
        "{NS}/service/list?pageNo=1&pageSize=10&groupName=g"
    ));
    assert_eq!(g["doms"], serde_json::json!(["other"]));
}

#[test]
fn operator_cluster_and_health() {
    let n = Node::start(&[]);
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=a&ip=10.0.0.1&port=1"),
        "",
    );
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=a&ip=10.0.0.2&port=1"),
        "",
    );
    let m = n.json(&format!("{NS}/operator/metrics"));
    assert_eq!(m["status"], "UP");
    assert_eq!(m["serviceCount"], 1);
    assert_eq!(m["instanceCount"], 2);
    assert_eq!(m["responsibleInstanceCount"], 2);
    for k in ["cpu", "load", "mem"] {
        assert!(m[k].is_number(), "{k}");
    }
    let s = n.json(&format!("{NS}/operator/servers"));
    assert_eq!(s["servers"][0]["address"], n.addr.to_string());
    assert_eq!(s["servers"][0]["state"], "UP");
    let c = n.json("/nacos/v1/core/cluster/nodes");
    assert_eq!(c["code"], 200);
    assert_eq!(c["data"][0]["port"], n.addr.port());
    let d = n.json(&format!("{NS}/operator/distro/server?serviceName=a"));
    assert_eq!(d["responsibleServer"], n.addr.to_string());
    for path in [
        "/nacos/v1/console/health/liveness",
        "/nacos/v1/console/health/readiness",
    ] {
        let r = n.get(path);
        assert_eq!((r.status, r.body.as_str()), (200, "OK"), "{path}");
    }
    let r = n.get("/nacos/v1/ns/unknown");
    assert_eq!(r.status, 404);
    let r = n.req("DELETE", "/nacos/v1/ns/instance/list?serviceName=a", "");
    assert_eq!(r.status, 405);
    let r = n.req("GET", "/nacos/v1/ns/instance/beat", "");
    assert_eq!(r.status, 405);
    assert!(n
        .get(&format!("{NS}/instance/list?serviceName=a"))
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

#[test]
fn prometheus_metrics() {
    let n = Node::start(&["--cores", "2"]);
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=a&ip=10.0.0.1&port=1"),
        "",
    );
    n.get(&format!("{NS}/instance/list?serviceName=a"));
    n.get(&format!(
        "{NS}/instance/list?serviceName=a&port=x&healthyOnly=nope"
    ));
    let body = n.get("/metrics").body;
    for needle in [
        "registry_instances 1",
        "registry_services 1",
        "registry_requests_total{endpoint=\"instance_register\",code=\"200\"} 1",
        "registry_requests_total{endpoint=\"instance_list\",code=\"200\"} 1",
        "registry_requests_total{endpoint=\"instance_list\",code=\"400\"} 1",
        "# TYPE registry_request_duration_seconds histogram",
        "registry_request_duration_seconds_count{endpoint=\"instance_list\"} 2",
        "registry_request_duration_seconds_bucket{endpoint=\"instance_register\",le=\"+Inf\"} 1",
        "registry_shard_services{shard=\"0\"}",
        "registry_shard_instances{shard=\"1\"}",
        "registry_shard_inbox_depth{shard=\"1\"} 0",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
}
