//! Every JSON answer of the client API, walked: a map-typed field is a
//! JSON object whether it holds entries or not (Java clients read it into
//! a `Map`, Go clients into `map[string]string`; an array there breaks
//! them), and arrays appear only where Nacos has lists.

mod common;
use common::*;

/// Fields that Nacos types as maps (or objects).
const MAP_FIELDS: [&str; 5] = [
    "metadata",
    "extendInfo",
    "selector",
    "healthChecker",
    "clusterMap",
];
/// Fields that are lists.
const LIST_FIELDS: [&str; 5] = ["hosts", "doms", "clusters", "servers", "data"];

/// Checks `v` and everything under it; returns how many map fields it saw.
fn walk(v: &serde_json::Value, path: &str, answer: &str) -> usize {
    let mut maps = 0;
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{path}.{k}");
                if MAP_FIELDS.contains(&k.as_str()) {
                    assert!(x.is_object(), "{answer}: {here} is {x}, not an object");
                    maps += 1;
                }
                if x.is_array() {
                    assert!(
                        LIST_FIELDS.contains(&k.as_str()),
                        "{answer}: {here} is an array ({x}); only {LIST_FIELDS:?} are lists"
                    );
                }
                maps += walk(x, &here, answer);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                maps += walk(x, &format!("{path}[{i}]"), answer);
            }
        }
        _ => {}
    }
    maps
}

fn json_of(n: &Node, method: &str, path: &str) -> serde_json::Value {
    let r = n.req(method, path, "");
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.body))
}

#[test]
fn map_fields_are_objects_in_every_json_answer() {
    let n = Node::start(&[]);
    // Without metadata, and with it; a service created bare, one with fields.
    for (svc, extra) in [
        ("bare", ""),
        ("rich", "&metadata=%7B%22zone%22%3A%22a%22%7D"),
    ] {
        for ip in ["10.0.0.1", "10.0.0.2"] {
            let r = n.req(
                "POST",
                &format!("{NS}/instance?serviceName={svc}&ip={ip}&port=80{extra}"),
                "",
            );
            assert_eq!(r.body, "ok");
        }
    }
    assert_eq!(
        n.req("POST", &format!("{NS}/service?serviceName=empty"), "")
            .body,
        "ok"
    );
    assert_eq!(
        n.req(
            "POST",
            &format!("{NS}/service?serviceName=fields&metadata=k%3Dv&protectThreshold=0.5"),
            "",
        )
        .body,
        "ok"
    );
    let mut answers: Vec<(String, &str)> = Vec::new();
    for svc in ["bare", "rich", "empty", "fields", "absent"] {
        for q in ["", "&clusters=DEFAULT", "&healthyOnly=true"] {
            answers.push((format!("{NS}/instance/list?serviceName={svc}{q}"), "GET"));
        }
    }
    for svc in ["bare", "rich", "empty", "fields"] {
        answers.push((format!("{NS}/service?serviceName={svc}"), "GET"));
    }
    for svc in ["bare", "rich"] {
        answers.push((
            format!("{NS}/instance?serviceName={svc}&ip=10.0.0.1&port=80"),
            "GET",
        ));
        answers.push((
            format!("{NS}/instance/beat?serviceName={svc}&ip=10.0.0.1&port=80"),
            "PUT",
        ));
    }
    answers.push((format!("{NS}/service/list?pageNo=1&pageSize=10"), "GET"));
    answers.push((format!("{NS}/operator/metrics"), "GET"));
    answers.push((format!("{NS}/operator/servers"), "GET"));
    answers.push(("/nacos/v1/core/cluster/nodes".to_string(), "GET"));
    answers.push((
        format!("{NS}/operator/distro/server?serviceName=bare"),
        "GET",
    ));
    let mut maps = 0;
    for (path, method) in &answers {
        let v = json_of(&n, method, path);
        maps += walk(&v, "$", &format!("{method} {path}"));
    }
    // The walk saw the empty maps it is about: list and host metadata,
    // service metadata and selector, members' extendInfo.
    assert!(maps > 40, "only {maps} map fields seen");
    let list = json_of(&n, "GET", &format!("{NS}/instance/list?serviceName=bare"));
    assert_eq!(list["metadata"], serde_json::json!({}));
    assert_eq!(list["hosts"][0]["metadata"], serde_json::json!({}));
    let rich = json_of(&n, "GET", &format!("{NS}/instance/list?serviceName=rich"));
    assert_eq!(
        rich["hosts"][0]["metadata"],
        serde_json::json!({"zone": "a"})
    );
    let svc = json_of(&n, "GET", &format!("{NS}/service?serviceName=empty"));
    assert_eq!(svc["metadata"], serde_json::json!({}));
    let svc = json_of(&n, "GET", &format!("{NS}/service?serviceName=fields"));
    assert_eq!(svc["metadata"], serde_json::json!({"k": "v"}));
}
