//! Read views (issue 11): on a node with more shards than this machine has
//! cores, reads and beats that land on a shard other than their service's
//! owner are answered there from the owner's published view, without
//! weaker semantics. Every request goes over its own connection, so that
//! requests spread over the shards (SO_REUSEPORT picks one per connection).

mod common;
use common::*;
use std::time::{Duration, Instant};

const SHARDS: &str = "4";
/// Services per test: with 4 shards, three in four requests land on a
/// shard that does not own the service.
const SERVICES: usize = 16;

fn hosts(n: &Node, svc: &str) -> Vec<serde_json::Value> {
    n.json(&format!("{NS}/instance/list?serviceName={svc}"))["hosts"]
        .as_array()
        .unwrap()
        .clone()
}

fn metric(n: &Node, name: &str) -> f64 {
    n.metric(name)
}

fn beat(n: &Node, svc: &str, ip: &str, json: bool) -> serde_json::Value {
    let q = if json {
        let b = format!(
            r#"{{"ip":"{ip}","port":80,"cluster":"DEFAULT","serviceName":"DEFAULT_GROUP@@{svc}","weight":2.0,"metadata":{{}}}}"#
        );
        format!(
            "{NS}/instance/beat?serviceName={svc}&beat={}",
            urlencode(&b)
        )
    } else {
        format!("{NS}/instance/beat?serviceName={svc}&ip={ip}&port=80")
    };
    let r = n.req("PUT", &q, "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn every_acknowledged_write_is_read_through_any_shard() {
    let n = Node::start(&["--cores", SHARDS]);
    for round in 0..12 {
        for s in 0..SERVICES {
            let svc = format!("ryw{s}");
            // Read first, so that views exist to go stale.
            hosts(&n, &svc);
            let ip = format!("10.0.{round}.{s}");
            let r = n.req(
                "POST",
                &format!("{NS}/instance?serviceName={svc}&ip={ip}&port=80&weight=1"),
                "",
            );
            assert_eq!(r.status, 200, "{}", r.body);
            for _ in 0..3 {
                let h = hosts(&n, &svc);
                assert_eq!(h.len(), round + 1, "{svc} after round {round}: {h:?}");
                assert!(h.iter().any(|i| i["ip"] == ip), "{svc}: {ip} missing");
            }
            // An update, seen by the detail through other connections.
            let w = round + 2;
            let r = n.req(
                "PUT",
                &format!("{NS}/instance?serviceName={svc}&ip={ip}&port=80&weight={w}"),
                "",
            );
            assert_eq!(r.status, 200, "{}", r.body);
            for _ in 0..3 {
                let d = n.json(&format!("{NS}/instance?serviceName={svc}&ip={ip}&port=80"));
                assert_eq!(d["weight"], w as f64, "{svc} {ip}: {d}");
            }
            // A service change, seen by the service get.
            let t = format!("0.{}", round + 1);
            let r = n.req(
                "PUT",
                &format!("{NS}/service?serviceName={svc}&protectThreshold={t}"),
                "",
            );
            assert_eq!(r.status, 200, "{}", r.body);
            for _ in 0..3 {
                let g = n.json(&format!("{NS}/service?serviceName={svc}"));
                assert_eq!(g["protectThreshold"], t.parse::<f64>().unwrap(), "{g}");
            }
        }
    }
    // A deregister, seen at once everywhere too.
    for s in 0..SERVICES {
        let svc = format!("ryw{s}");
        let r = n.req(
            "DELETE",
            &format!("{NS}/instance?serviceName={svc}&ip=10.0.0.{s}&port=80"),
            "",
        );
        assert_eq!(r.status, 200);
        for _ in 0..3 {
            assert!(hosts(&n, &svc)
                .iter()
                .all(|i| i["ip"] != format!("10.0.0.{s}")));
            let d = n.get(&format!(
                "{NS}/instance?serviceName={svc}&ip=10.0.0.{s}&port=80"
            ));
            assert_eq!(d.status, 404, "{}", d.body);
        }
    }
    assert!(
        metric(&n, "registry_read_view_hits_total") > 100.0,
        "reads were answered from views"
    );
}

/// Instances that beat only through shards that do not own them stay
/// healthy well past their unhealthy timeout; a silent one still expires.
#[test]
fn beats_answered_from_views_keep_instances_alive() {
    let n = Node::start(&["--cores", SHARDS, "--expiry-tick-ms", "20"]);
    let meta = "preserved.heart.beat.timeout%3D600%2Cpreserved.ip.delete.timeout%3D1200%2Cpreserved.heart.beat.interval%3D100";
    for s in 0..SERVICES {
        for ip in ["10.1.0.1", "10.1.0.2"] {
            let r = n.req(
                "POST",
                &format!("{NS}/instance?serviceName=live{s}&ip={ip}&port=80&metadata={meta}"),
                "",
            );
            assert_eq!(r.status, 200);
        }
        hosts(&n, &format!("live{s}"));
    }
    let hits_before = metric(&n, "registry_read_view_hits_total");
    let start = Instant::now();
    // 10.1.0.1 beats every ~100 ms for 3 s (5 unhealthy timeouts);
    // 10.1.0.2 is silent.
    // Once the silent one is gone (1.2 s), nothing but beats happens: the
    // lists must not change at all (a beat that did not reach the owner
    // in time would show as a turn to unhealthy and back).
    let mut settled: Option<Vec<serde_json::Value>> = None;
    while start.elapsed() < Duration::from_millis(3_500) {
        let round = Instant::now();
        for s in 0..SERVICES {
            let b = beat(&n, &format!("live{s}"), "10.1.0.1", false);
            assert_eq!(b["code"], 10200, "{b}");
        }
        if settled.is_none() && start.elapsed() > Duration::from_millis(1_600) {
            settled = Some(
                (0..SERVICES)
                    .map(|s| {
                        n.json(&format!("{NS}/instance/list?serviceName=live{s}"))["lastRefTime"]
                            .clone()
                    })
                    .collect(),
            );
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
    }
    let now: Vec<serde_json::Value> = (0..SERVICES)
        .map(|s| n.json(&format!("{NS}/instance/list?serviceName=live{s}"))["lastRefTime"].clone())
        .collect();
    assert_eq!(
        settled.unwrap(),
        now,
        "only beats happened: no list changed"
    );
    for s in 0..SERVICES {
        let h = hosts(&n, &format!("live{s}"));
        assert_eq!(
            h.len(),
            1,
            "live{s}: the silent one is gone, the beating one stays: {h:?}"
        );
        assert_eq!(h[0]["ip"], "10.1.0.1");
        assert_eq!(h[0]["healthy"], true, "live{s}: {h:?}");
    }
    let hits = metric(&n, "registry_read_view_hits_total") - hits_before;
    assert!(
        hits > 100.0,
        "most beats were answered by non-owner shards from views: {hits}"
    );
    assert!(metric(&n, "registry_cross_core_batches_total") > 0.0);
}

/// A beat for an instance deleted a moment before re-creates it from its
/// beat JSON; a light one gets 20404 and creates nothing. On every shard.
#[test]
fn deleted_then_beaten_instances_come_back_only_from_beat_json() {
    let n = Node::start(&["--cores", SHARDS]);
    for s in 0..SERVICES {
        let svc = format!("gone{s}");
        for attempt in 0..3 {
            let ip = format!("10.2.{attempt}.{s}");
            let reg = format!("{NS}/instance?serviceName={svc}&ip={ip}&port=80");
            assert_eq!(n.req("POST", &reg, "").status, 200);
            hosts(&n, &svc); // a view with the instance in it
            assert_eq!(beat(&n, &svc, &ip, false)["code"], 10200);
            assert_eq!(n.req("DELETE", &reg, "").status, 200);
            let b = beat(&n, &svc, &ip, false);
            assert_eq!(
                b["code"], 20404,
                "{svc} {ip}: a light beat after the delete: {b}"
            );
            assert!(hosts(&n, &svc).iter().all(|i| i["ip"] != ip));
            let b = beat(&n, &svc, &ip, true);
            assert_eq!(b["code"], 10200, "{b}");
            let h = hosts(&n, &svc);
            let back: Vec<_> = h.iter().filter(|i| i["ip"] == ip).collect();
            assert_eq!(
                back.len(),
                1,
                "{svc} {ip} re-created from its beat JSON: {h:?}"
            );
            assert_eq!(back[0]["weight"], 2.0);
            assert_eq!(n.req("DELETE", &reg, "").status, 200);
        }
    }
}

#[test]
fn unknown_light_beats_get_20404_on_every_shard_and_change_nothing() {
    let n = Node::start(&["--cores", SHARDS]);
    for s in 0..SERVICES {
        let r = n.req(
            "POST",
            &format!("{NS}/instance?serviceName=known{s}&ip=10.3.0.1&port=80"),
            "",
        );
        assert_eq!(r.status, 200);
        hosts(&n, &format!("known{s}"));
    }
    let services = metric(&n, "registry_services");
    for _ in 0..3 {
        for s in 0..SERVICES {
            // An unknown instance of a known service, and an unknown service.
            let b = beat(&n, &format!("known{s}"), "10.3.9.9", false);
            assert_eq!(b["code"], 20404, "{b}");
            let b = beat(&n, &format!("unknown{s}"), "10.3.0.1", false);
            assert_eq!(b["code"], 20404, "{b}");
            // The known instance still answers 10200.
            assert_eq!(
                beat(&n, &format!("known{s}"), "10.3.0.1", false)["code"],
                10200
            );
        }
    }
    assert_eq!(metric(&n, "registry_services"), services);
    assert_eq!(metric(&n, "registry_instances"), SERVICES as f64);
    for s in 0..SERVICES {
        assert_eq!(hosts(&n, &format!("known{s}")).len(), 1);
    }
}

/// A beat answered from a view reaches the owner before any write the
/// client makes after it: a PATCH to unhealthy right after a beat stays.
#[test]
fn a_write_after_a_beat_is_not_overtaken_by_it() {
    let n = Node::start(&["--cores", SHARDS]);
    for s in 0..SERVICES {
        for ip in ["10.4.0.1", "10.4.0.2"] {
            let r = n.req(
                "POST",
                &format!("{NS}/instance?serviceName=order{s}&ip={ip}&port=80"),
                "",
            );
            assert_eq!(r.status, 200);
        }
    }
    for round in 0..2 {
        for s in 0..SERVICES {
            let svc = format!("order{s}");
            let patch = |healthy: bool| {
                let r = n.req(
                    "PATCH",
                    &format!(
                        "{NS}/instance?serviceName={svc}&ip=10.4.0.1&port=80&healthy={healthy}"
                    ),
                    "",
                );
                assert_eq!(r.status, 200, "{}", r.body);
            };
            patch(true);
            hosts(&n, &svc);
            std::thread::sleep(Duration::from_millis(60)); // a view for beats
            assert_eq!(beat(&n, &svc, "10.4.0.1", false)["code"], 10200);
            patch(false);
            // Whatever shard the beat was answered on, it came first: no
            // late beat revives the instance, even after the longest
            // wait a lazily sent beat has (one tick, at most 100 ms).
            std::thread::sleep(Duration::from_millis(150));
            let h = hosts(&n, &svc);
            let one = h.iter().find(|i| i["ip"] == "10.4.0.1").unwrap();
            assert_eq!(one["healthy"], false, "round {round} {svc}: {h:?}");
        }
    }
}

/// A list is kept for its next read once it has been read twice at one
/// revision, and let go when the service changes (`registry_list_cache_bytes`).
#[test]
fn lists_are_kept_from_their_second_read_and_let_go_on_a_change() {
    let n = Node::start(&["--cores", "1"]);
    let cached = |n: &Node| metric(n, "registry_list_cache_bytes");
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let r = n.req(
            "POST",
            &format!("{NS}/instance?serviceName=kept&ip={ip}&port=80"),
            "",
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(cached(&n), 0.0);
    let first = n.get(&format!("{NS}/instance/list?serviceName=kept")).body;
    assert_eq!(cached(&n), 0.0, "read once");
    let second = n.get(&format!("{NS}/instance/list?serviceName=kept")).body;
    assert_eq!(second, first);
    assert_eq!(cached(&n), first.len() as f64, "read twice: kept");
    let r = n.req(
        "DELETE",
        &format!("{NS}/instance?serviceName=kept&ip=10.0.0.2&port=80"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(cached(&n), 0.0, "the change let it go");
    assert_eq!(hosts(&n, "kept").len(), 1);
}
