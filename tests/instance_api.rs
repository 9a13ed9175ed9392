//! `/nacos/v1/ns/instance*` through real HTTP against the real binary.

mod common;
use common::*;

fn hosts(node: &Node, q: &str) -> Vec<serde_json::Value> {
    node.json(&format!("{NS}/instance/list?{q}"))["hosts"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn register_list_detail_deregister() {
    let n = Node::start(&[]);
    let r = n.req(
        "POST",
        &format!("{NS}/instance?serviceName=orders&ip=10.0.0.1&port=8080&weight=2.5&metadata=%7B%22v%22%3A%221%22%7D"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    // Form body instead of the query string.
    let r = n.req(
        "POST",
        &format!("{NS}/instance"),
        "serviceName=orders&ip=10.0.0.2&port=8080&clusterName=c2&healthy=FALSE&metadata=k%3Dv%2Cx%3Dy",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    let l = n.json(&format!("{NS}/instance/list?serviceName=orders"));
    assert_eq!(l["name"], "DEFAULT_GROUP@@orders");
    assert_eq!(l["dom"], "DEFAULT_GROUP@@orders");
    assert_eq!(l["groupName"], "DEFAULT_GROUP");
    assert_eq!(l["cacheMillis"], 3000);
    assert_eq!(l["reachProtectionThreshold"], false);
    let h = l["hosts"].as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        h[0]["instanceId"],
        "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
    );
    assert_eq!(h[0]["weight"], 2.5);
    assert_eq!(h[0]["metadata"]["v"], "1");
    assert_eq!(h[0]["instanceHeartBeatInterval"], 5000);
    assert_eq!(h[0]["instanceHeartBeatTimeOut"], 15000);
    assert_eq!(h[0]["ipDeleteTimeout"], 30000);
    assert_eq!(h[1]["clusterName"], "c2");
    assert_eq!(h[1]["healthy"], false);
    assert_eq!(h[1]["metadata"]["x"], "y");

    // clusters filter and healthyOnly.
    assert_eq!(hosts(&n, "serviceName=orders&clusters=c2").len(), 1);
    assert_eq!(hosts(&n, "serviceName=orders&clusters=DEFAULT,c2").len(), 2);
    assert_eq!(hosts(&n, "serviceName=orders&clusters=nope").len(), 0);
    let healthy = hosts(&n, "serviceName=orders&healthyOnly=true");
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0]["ip"], "10.0.0.1");

    // Detail.
    let d = n.json(&format!(
        "{NS}/instance?serviceName=orders&ip=10.0.0.2&port=8080&clusterName=c2"
    ));
    assert_eq!(d["instanceId"], "10.0.0.2#8080#c2#DEFAULT_GROUP@@orders");
    assert_eq!(d["service"], "DEFAULT_GROUP@@orders");
    let r = n.get(&format!(
        "{NS}/instance?serviceName=orders&ip=10.0.0.2&port=8080"
    ));
    assert_eq!(r.status, 404, "wrong cluster: {}", r.body);

    // Deregister, twice: ok both times.
    for _ in 0..2 {
        let r = n.req(
            "DELETE",
            &format!("{NS}/instance?serviceName=orders&ip=10.0.0.1&port=8080"),
            "",
        );
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    }
    let h = hosts(&n, "serviceName=orders");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["ip"], "10.0.0.2");
}

#[test]
fn missing_service_lists_empty_and_grouped_names_work() {
    let n = Node::start(&[]);
    let l = n.json(&format!(
        "{NS}/instance/list?serviceName=ghost&groupName=g1"
    ));
    assert_eq!(l["name"], "g1@@ghost");
    assert_eq!(l["hosts"].as_array().unwrap().len(), 0);
    // `group@@name` in serviceName wins over groupName.
    let r = n.req(
        "POST",
        &format!("{NS}/instance?serviceName=g2%40%40pay&groupName=ignored&ip=1.1.1.1&port=1"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(hosts(&n, "serviceName=pay&groupName=g2").len(), 1);
    assert_eq!(hosts(&n, "serviceName=pay").len(), 0, "other group");
    assert_eq!(
        hosts(&n, "serviceName=pay&groupName=g2&namespaceId=other").len(),
        0,
        "other namespace"
    );
}

#[test]
fn update_and_patch() {
    let n = Node::start(&[]);
    let reg = format!("{NS}/instance?serviceName=s&ip=10.0.0.1&port=80&metadata=a%3D1");
    assert_eq!(n.req("POST", &reg, "").status, 200);
    // PUT changes only what it names (weight), metadata stays.
    let r = n.req(
        "PUT",
        &format!("{NS}/instance?serviceName=s&ip=10.0.0.1&port=80&weight=7"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let h = hosts(&n, "serviceName=s");
    assert_eq!(h[0]["weight"], 7.0);
    assert_eq!(h[0]["metadata"]["a"], "1");
    // PUT of an absent instance: upsert, but not for the Java client.
    let put_new = format!("{NS}/instance?serviceName=s&ip=10.0.0.2&port=80");
    let mut s = n.connect();
    send(
        &mut s,
        "PUT",
        &put_new,
        "",
        &[("User-Agent", "Nacos-Java-Client:v1.4.1")],
    );
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("instance not exist"), "{}", r.body);
    assert_eq!(hosts(&n, "serviceName=s").len(), 1, "nothing created");
    assert_eq!(n.req("PUT", &put_new, "").status, 200);
    assert_eq!(hosts(&n, "serviceName=s").len(), 2);
    // PATCH: only supplied fields; `enabled=false` hides it from lists.
    let r = n.req(
        "PATCH",
        &format!("{NS}/instance?serviceName=s&ip=10.0.0.2&port=80&enabled=false"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let h = hosts(&n, "serviceName=s");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["ip"], "10.0.0.1");
    // `enable` (the Python SDK's spelling) works too.
    let r = n.req(
        "PATCH",
        &format!("{NS}/instance?serviceName=s&ip=10.0.0.2&port=80&enable=True"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(hosts(&n, "serviceName=s").len(), 2);
    let r = n.req(
        "PATCH",
        &format!("{NS}/instance?serviceName=s&ip=10.0.0.3&port=80&weight=1"),
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (400, "instance not found"));
}

#[test]
fn beats() {
    let n = Node::start(&[]);
    // Unknown instance, light beat: 20404 and nothing registered.
    let r = n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.0.0.1&port=80"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["code"], 20404);
    assert_eq!(r.json()["clientBeatInterval"], 5000);
    assert_eq!(hosts(&n, "serviceName=b").len(), 0);
    // Unknown instance with a beat JSON: registered from the beat, in the
    // beat's cluster.
    let beat = r#"{"ip":"10.0.0.1","port":80,"cluster":"c9","serviceName":"DEFAULT_GROUP@@b","weight":3.0,"metadata":{"m":"1"},"scheduled":true,"period":5000}"#;
    let q = format!(
        "{NS}/instance/beat?serviceName=DEFAULT_GROUP%40%40b&beat={}",
        urlencode(beat)
    );
    let r = n.req("PUT", &q, "");
    assert_eq!(
        r.json(),
        serde_json::json!({"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true})
    );
    let h = hosts(&n, "serviceName=b");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["clusterName"], "c9");
    assert_eq!(h[0]["weight"], 3.0);
    assert_eq!(h[0]["metadata"]["m"], "1");
    // A beat for the known instance with other weight/metadata changes
    // nothing but its liveness.
    let beat2 = r#"{"ip":"10.0.0.1","port":80,"cluster":"c9","weight":9.0,"metadata":{}}"#;
    let q = format!("{NS}/instance/beat?serviceName=b&beat={}", urlencode(beat2));
    assert_eq!(n.req("PUT", &q, "").json()["code"], 10200);
    let h = hosts(&n, "serviceName=b");
    assert_eq!(h[0]["weight"], 3.0);
    assert_eq!(h[0]["metadata"]["m"], "1");
    // Light beat with the cluster as a parameter.
    let r = n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.0.0.1&port=80&clusterName=c9"),
        "",
    );
    assert_eq!(r.json()["code"], 10200);
    // An unhealthy instance becomes healthy with a beat.
    n.req(
        "PATCH",
        &format!("{NS}/instance?serviceName=b&ip=10.0.0.1&port=80&clusterName=c9&healthy=false"),
        "",
    );
    assert_eq!(
        hosts(&n, "serviceName=b")[0]["healthy"],
        true,
        "protect threshold: all unhealthy are listed healthy"
    );
    assert_eq!(
        n.json(&format!("{NS}/instance/list?serviceName=b"))["reachProtectionThreshold"],
        true
    );
    n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.0.0.1&port=80&clusterName=c9"),
        "",
    );
    let l = n.json(&format!("{NS}/instance/list?serviceName=b"));
    assert_eq!(l["reachProtectionThreshold"], false);
    assert_eq!(l["hosts"][0]["healthy"], true);
    // The beat interval follows the instance's preserved metadata.
    n.req("POST", &format!("{NS}/instance?serviceName=b&ip=10.0.0.5&port=80&metadata=preserved.heart.beat.interval%3D1234"), "");
    let r = n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.0.0.5&port=80"),
        "",
    );
    assert_eq!(r.json()["clientBeatInterval"], 1234);
}

#[test]
fn bad_input_is_400_naming_the_parameter_and_changes_nothing() {
    let n = Node::start(&[]);
    let base = "serviceName=v&ip=10.0.0.1&port=80";
    assert_eq!(
        n.req("POST", &format!("{NS}/instance?{base}"), "").status,
        200
    );
    let before = n.get(&format!("{NS}/instance/list?serviceName=v")).body;
    let cases: &[(&str, &str, &str)] = &[
        (
            "POST",
            "ip=10.0.0.1&port=80",
            "Param 'serviceName' is required.",
        ),
        ("POST", "serviceName=v&port=80", "Param 'ip' is required."),
        (
            "POST",
            "serviceName=v&ip=10.0.0.1",
            "Param 'port' is required.",
        ),
        (
            "POST",
            "serviceName=v&ip=10.0.0.1&port=",
            "Param 'port' is required.",
        ),
        (
            "POST",
            "serviceName=v&ip=10.0.0.1&port=abc",
            "Param 'port' is invalid",
        ),
        (
            "POST",
            "serviceName=v&ip=10.0.0.1&port=70000",
            "Param 'port' is invalid",
        ),
        (
            "POST",
            "serviceName=v&ip=10.0.0.1&port=0",
            "Param 'port' is invalid",
        ),
        (
            "POST",
            "serviceName=v&ip=999.0.0.1&port=80",
            "Param 'ip' is invalid",
        ),
        (
            "POST",
            "serviceName=v&ip=host.example&port=80",
            "Param 'ip' is invalid",
        ),
        (
            "POST",
            &format!("{base}&weight=-1"),
            "Param 'weight' is invalid",
        ),
        (
            "POST",
            &format!("{base}&weight=10001"),
            "Param 'weight' is invalid",
        ),
        (
            "POST",
            &format!("{base}&healthy=maybe"),
            "Param 'healthy' is invalid",
        ),
        (
            "POST",
            &format!("{base}&metadata=%7Bbroken"),
            "Param 'metadata' is invalid",
        ),
        (
            "POST",
            &format!("{base}&metadata=novalue"),
            "Param 'metadata' is invalid",
        ),
        (
            "POST",
            &format!("{base}&clusterName=a%20b"),
            "Param 'clusterName' is invalid",
        ),
        (
            "POST",
            "serviceName=bad%20name&ip=10.0.0.1&port=80",
            "Param 'serviceName' is invalid",
        ),
        (
            "POST",
            "serviceName=%40%40x&ip=10.0.0.1&port=80",
            "Param 'serviceName' is invalid",
        ),
        (
            "PUT",
            &format!("{base}&weight=x"),
            "Param 'weight' is invalid",
        ),
        (
            "PATCH",
            &format!("{base}&enabled=nope"),
            "Param 'enabled' is invalid",
        ),
        (
            "DELETE",
            "serviceName=v&ip=10.0.0.1",
            "Param 'port' is required.",
        ),
        (
            "DELETE",
            &format!("{base}&ephemeral=maybe"),
            "Param 'ephemeral' is invalid",
        ),
    ];
    for (method, q, want) in cases {
        let r = n.req(method, &format!("{NS}/instance?{q}"), "");
        assert_eq!(r.status, 400, "{method} {q}: {}", r.body);
        assert!(
            r.body.starts_with(want),
            "{method} {q}: got {:?}, want {want:?}",
            r.body
        );
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
    let beat_cases: &[(&str, &str)] = &[
        ("serviceName=v&beat=%7Bnot", "Param 'beat' is invalid"),
        ("serviceName=v&ip=10.0.0.1", "Param 'port' is required."),
        ("ip=10.0.0.1&port=80", "Param 'serviceName' is required."),
    ];
    for (q, want) in beat_cases {
        let r = n.req("PUT", &format!("{NS}/instance/beat?{q}"), "");
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body.starts_with(want), "{q}: {}", r.body);
    }
    let list_cases: &[(&str, &str)] = &[
        (
            "serviceName=v&healthyOnly=yes",
            "Param 'healthyOnly' is invalid",
        ),
        ("serviceName=v&udpPort=70000", "Param 'udpPort' is invalid"),
        (
            "serviceName=v&udpPort=1&clientIP=nope",
            "Param 'clientIP' is invalid",
        ),
        ("groupName=g", "Param 'serviceName' is required."),
    ];
    for (q, want) in list_cases {
        let r = n.get(&format!("{NS}/instance/list?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body.starts_with(want), "{q}: {}", r.body);
    }
    let after = n.get(&format!("{NS}/instance/list?serviceName=v")).body;
    assert_eq!(before, after, "a rejected write changed the registry");
}

#[test]
fn services_spread_over_cores_answer_from_any_core() {
    let n = Node::start(&["--cores", "2"]);
    for i in 0..40 {
        let r = n.req(
            "POST",
            &format!("{NS}/instance?serviceName=svc{i}&ip=10.0.0.{i}&port=80"),
            "",
        );
        assert_eq!(r.status, 200);
    }
    for i in 0..40 {
        let h = hosts(&n, &format!("serviceName=svc{i}"));
        assert_eq!(h.len(), 1);
        assert_eq!(h[0]["ip"], format!("10.0.0.{i}"));
    }
    let m = n.get("/metrics").body;
    let shard_services: Vec<u64> = m
        .lines()
        .filter(|l| l.starts_with("registry_shard_services{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(shard_services.len(), 2);
    assert_eq!(shard_services.iter().sum::<u64>(), 40);
    assert!(shard_services.iter().all(|c| *c > 0), "{shard_services:?}");
    let cross: u64 = m
        .lines()
        .find(|l| l.starts_with("registry_cross_core_messages_total "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(cross > 0, "some requests must have crossed cores");
}

/// The Java 1.x client's shape: a form body with a charset in the content
/// type, a grouped `serviceName` plus `groupName`, extra parameters the
/// server ignores, and its User-Agent.
#[test]
fn java_client_request_shape() {
    let n = Node::start(&[]);
    let mut s = n.connect();
    let body = "groupName=DEFAULT_GROUP&metadata=%7B%22preserved.register.source%22%3A%22SPRING_CLOUD%22%7D&namespaceId=public&port=8080&app=unknown&enable=true&healthy=true&clusterName=DEFAULT&ip=192.168.1.10&weight=1.0&ephemeral=true&serviceName=DEFAULT_GROUP%40%40order-service&encoding=UTF-8";
    let raw = format!(
        "POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded;charset=UTF-8\r\nUser-Agent: Nacos-Java-Client:v1.4.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut s, raw.as_bytes()).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let h = hosts(
        &n,
        "serviceName=DEFAULT_GROUP%40%40order-service&groupName=DEFAULT_GROUP",
    );
    assert_eq!(h.len(), 1);
    assert_eq!(
        h[0]["metadata"]["preserved.register.source"],
        "SPRING_CLOUD"
    );
    assert_eq!(h[0]["serviceName"], "DEFAULT_GROUP@@order-service");
}
