use super::*;

fn svc(name: &str) -> ServiceId {
    ServiceId::new("public", "DEFAULT_GROUP", name)
}

fn addr(ip: &str, port: u16) -> InstanceAddr {
    InstanceAddr {
        ip: ip.into(),
        port,
        cluster: "DEFAULT".into(),
    }
}

fn spec(ip: &str, port: u16, metadata: &[(&str, &str)]) -> InstanceSpec {
    InstanceSpec {
        addr: addr(ip, port),
        weight: 1.0,
        healthy: true,
        enabled: true,
        ephemeral: true,
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn list(store: &mut Store, name: &str, healthy_only: bool, now: u64) -> serde_json::Value {
    let op = Op::List {
        svc: svc(name),
        variant: ListVariant {
            clusters: String::new(),
            healthy_only,
            cache_millis: 3000,
        },
    };
    serde_json::from_slice(&store.apply(op, now).reply.body).unwrap()
}

fn store() -> Store {
    Store::new(Timeouts::default(), 100, 0)
}

#[test]
fn register_then_list_then_deregister() {
    let mut s = store();
    let a = s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    assert!(a.changed);
    assert_eq!(a.reply.body, "ok");
    let l = list(&mut s, "a", false, 1_001);
    assert_eq!(
        l["hosts"][0]["instanceId"],
        "10.0.0.1#80#DEFAULT#DEFAULT_GROUP@@a"
    );
    assert_eq!(
        s.counts(),
        Counts {
            services: 1,
            instances: 1
        }
    );
    let d = s.apply(
        Op::Deregister {
            svc: svc("a"),
            addr: addr("10.0.0.1", 80),
        },
        2_000,
    );
    assert!(d.changed);
    assert_eq!(
        list(&mut s, "a", false, 2_001)["hosts"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(s.counts().instances, 0);
}

#[test]
fn list_cache_is_invalidated_by_a_change() {
    let mut s = store();
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    let first = list(&mut s, "a", false, 1_001);
    assert_eq!(
        first,
        list(&mut s, "a", false, 1_002),
        "served from the cache"
    );
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.2", 80, &[]),
        },
        1_003,
    );
    assert_eq!(
        list(&mut s, "a", false, 1_004)["hosts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn silent_instance_turns_unhealthy_then_is_deleted() {
    let mut s = store();
    let meta = [
        (instance::META_BEAT_TIMEOUT, "1000"),
        (instance::META_DELETE_TIMEOUT, "2000"),
    ];
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.1", 80, &meta),
        },
        0,
    );
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.2", 80, &meta),
        },
        0,
    );
    let mut changed = Vec::new();
    // The second instance keeps beating.
    for t in (0..=2_500).step_by(100) {
        s.apply(
            Op::Beat {
                svc: svc("a"),
                addr: addr("10.0.0.2", 80),
                beat: None,
            },
            t,
        );
        s.expire(t, &mut changed);
        if t == 1_500 {
            let l = list(&mut s, "a", false, t);
            let hosts = l["hosts"].as_array().unwrap();
            assert_eq!(hosts.len(), 2);
            assert_eq!(hosts[0]["healthy"], false, "{l}");
            assert_eq!(hosts[1]["healthy"], true);
        }
    }
    let l = list(&mut s, "a", false, 2_500);
    let hosts = l["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{l}");
    assert_eq!(hosts[0]["ip"], "10.0.0.2");
    assert_eq!(changed.len(), 2, "one change for unhealthy, one for delete");
}

#[test]
fn beat_revives_and_unknown_light_beat_gets_20404() {
    let mut s = store();
    let r = s.apply(
        Op::Beat {
            svc: svc("a"),
            addr: addr("10.0.0.1", 80),
            beat: None,
        },
        0,
    );
    assert_eq!(r.reply.body, r#"{"clientBeatInterval":5000,"code":20404}"#);
    assert_eq!(s.counts().instances, 0);
    let beat = BeatInfo {
        weight: 2.0,
        ephemeral: true,
        metadata: Metadata::new(),
    };
    let r = s.apply(
        Op::Beat {
            svc: svc("a"),
            addr: addr("10.0.0.1", 80),
            beat: Some(beat),
        },
        0,
    );
    assert!(r.changed);
    assert_eq!(
        r.reply.body,
        r#"{"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true}"#
    );
    assert_eq!(list(&mut s, "a", false, 1)["hosts"][0]["weight"], 2.0);
}

#[test]
fn persistent_instances_never_expire() {
    let mut s = store();
    let mut p = spec("10.0.0.1", 80, &[]);
    p.ephemeral = false;
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: p,
        },
        0,
    );
    let mut changed = Vec::new();
    s.expire(1_000_000, &mut changed);
    assert!(changed.is_empty());
    assert_eq!(s.timers_armed(), 0);
    assert_eq!(s.counts().instances, 1);
}

#[test]
fn protect_threshold_returns_all_as_healthy() {
    let mut s = store();
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        0,
    );
    let mut sick = spec("10.0.0.2", 80, &[]);
    sick.healthy = false;
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: sick,
        },
        0,
    );
    assert_eq!(
        list(&mut s, "a", true, 1)["hosts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.apply(
        Op::UpdateService {
            svc: svc("a"),
            change: ServiceChange {
                protect_threshold: Some(0.6),
                ..Default::default()
            },
        },
        2,
    );
    let l = list(&mut s, "a", true, 3);
    assert_eq!(l["reachProtectionThreshold"], true);
    assert_eq!(l["hosts"].as_array().unwrap().len(), 2);
    assert!(l["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["healthy"] == true));
}
