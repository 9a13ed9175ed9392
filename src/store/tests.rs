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
            persistent: false,
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
fn one_expiry_timer_a_service_still_expires_each_instance_on_time() {
    let mut s = store();
    // A long-lived instance arms the service's timer far ahead...
    let long = [
        (instance::META_BEAT_TIMEOUT, "60000"),
        (instance::META_DELETE_TIMEOUT, "90000"),
    ];
    s.apply(
        Op::Register {
            svc: svc("a"),
            spec: spec("10.0.0.1", 80, &long),
        },
        0,
    );
    // ...and many short-lived ones register after it.
    let short = [
        (instance::META_BEAT_TIMEOUT, "1000"),
        (instance::META_DELETE_TIMEOUT, "2000"),
    ];
    for i in 0..50 {
        s.apply(
            Op::Register {
                svc: svc("a"),
                spec: spec(&format!("10.0.1.{i}"), 80, &short),
            },
            100,
        );
    }
    assert!(
        s.timers_armed() <= 2,
        "one live timer and one stale: {}",
        s.timers_armed()
    );
    let healthy = |s: &mut Store, t| {
        let l = list(s, "a", false, t);
        l["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["healthy"] == true)
            .count()
    };
    let mut changed = Vec::new();
    s.expire(1_000, &mut changed);
    assert!(changed.is_empty());
    assert_eq!(healthy(&mut s, 1_000), 51);
    s.expire(1_100, &mut changed);
    assert_eq!(changed.len(), 1, "one change for the service");
    assert_eq!(
        healthy(&mut s, 1_100),
        1,
        "the short ones are unhealthy at 1 s silent"
    );
    s.expire(2_000, &mut changed);
    assert_eq!(s.counts().instances, 51);
    s.expire(2_100, &mut changed);
    assert_eq!(s.counts().instances, 1, "deleted at 2 s silent");
    assert_eq!(healthy(&mut s, 2_100), 1);
    assert!(
        s.timers_armed() <= 2,
        "the long one's timer (and the stale one at the same deadline)"
    );
    // The long one goes too, on its own deadlines (alone, it shows as
    // healthy under the protect threshold: count the changes).
    let before = changed.len();
    s.expire(60_000 - 1, &mut changed);
    assert_eq!(changed.len(), before);
    s.expire(60_000, &mut changed);
    assert_eq!(changed.len(), before + 1, "unhealthy at 60 s silent");
    s.expire(90_000, &mut changed);
    assert_eq!(s.counts().instances, 0);
    assert_eq!(s.timers_armed(), 0);
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

// --- replication: datums, versions, tombstones ---

fn node(writer: u64) -> Store {
    let mut s = store();
    s.set_writer(writer);
    s
}

fn ips(store: &mut Store, name: &str, now: u64) -> Vec<String> {
    list(store, name, false, now)["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["ip"].as_str().unwrap().to_string())
        .collect()
}

fn sync(from: &Store, to: &mut Store, name: &str, now: u64) -> bool {
    let d = from.datum(svc(name).full_key()).expect("datum");
    // Through the wire format, as peers will exchange it.
    let wire = serde_json::to_vec(&d).unwrap();
    to.merge(serde_json::from_slice(&wire).unwrap(), now)
}

#[test]
fn a_datum_carries_instances_to_a_replica_once() {
    let (mut a, mut b) = (node(1), node(2));
    a.apply(
        Op::Register {
            svc: svc("r"),
            spec: spec("10.0.0.1", 80, &[("k", "v")]),
        },
        1_000,
    );
    assert!(sync(&a, &mut b, "r", 1_001));
    assert_eq!(ips(&mut b, "r", 1_002), ["10.0.0.1"]);
    assert_eq!(
        list(&mut b, "r", false, 1_002)["hosts"][0]["metadata"]["k"],
        "v"
    );
    assert!(
        !sync(&a, &mut b, "r", 1_003),
        "merging the same datum again changes nothing"
    );
    assert_eq!(a.datum(svc("r").full_key()), b.datum(svc("r").full_key()));
}

#[test]
fn tombstones_delete_on_replicas_and_old_copies_do_not_resurrect() {
    let (mut a, mut b) = (node(1), node(2));
    a.apply(
        Op::Register {
            svc: svc("r"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    let before_delete = a.datum(svc("r").full_key()).unwrap();
    sync(&a, &mut b, "r", 1_001);
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("r"),
            addr: addr("10.0.0.1", 80),
        },
        2_000,
    );
    assert!(sync(&a, &mut b, "r", 2_001));
    assert!(ips(&mut b, "r", 2_002).is_empty());
    assert_eq!(b.counts().instances, 0);
    assert!(
        !b.merge(before_delete, 2_003),
        "a stale copy must not bring it back"
    );
    assert!(ips(&mut b, "r", 2_004).is_empty());
    // Registered again later: newer than the tombstone, so it comes back.
    a.apply(
        Op::Register {
            svc: svc("r"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        3_000,
    );
    sync(&a, &mut b, "r", 3_001);
    assert_eq!(ips(&mut b, "r", 3_002), ["10.0.0.1"]);
}

#[test]
fn writes_on_both_sides_are_all_kept() {
    let (mut a, mut b) = (node(1), node(2));
    a.apply(
        Op::Register {
            svc: svc("p"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    b.apply(
        Op::Register {
            svc: svc("p"),
            spec: spec("10.0.0.2", 80, &[]),
        },
        1_000,
    );
    let da = a.datum(svc("p").full_key()).unwrap();
    sync(&b, &mut a, "p", 1_001);
    b.merge(da, 1_001);
    assert_eq!(ips(&mut a, "p", 1_002), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(
        a.datum(svc("p").full_key()),
        b.datum(svc("p").full_key()),
        "replicas converge"
    );
}

#[test]
fn a_replica_orders_its_writes_after_what_it_merged() {
    let (mut a, mut b) = (node(1), node(2));
    // a's clock is 10 s ahead of b's.
    a.apply(
        Op::Register {
            svc: svc("c"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        11_000,
    );
    sync(&a, &mut b, "c", 1_000);
    // b deregisters with its slow clock: still newer than a's register.
    b.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("c"),
            addr: addr("10.0.0.1", 80),
        },
        1_001,
    );
    assert!(sync(&b, &mut a, "c", 11_002));
    assert!(
        ips(&mut a, "c", 11_003).is_empty(),
        "the later delete wins despite the clock skew"
    );
}

#[test]
fn tombstones_are_purged_after_their_ttl() {
    let mut a = node(1);
    a.apply(
        Op::Register {
            svc: svc("t"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        0,
    );
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("t"),
            addr: addr("10.0.0.1", 80),
        },
        1_000,
    );
    assert_eq!(a.tombstones(), 1);
    let ttl = TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    let mut changed = Vec::new();
    a.expire(1_000 + ttl - 1, &mut changed);
    assert_eq!(a.tombstones(), 1, "kept for the whole TTL");
    a.expire(1_000 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 0);
}

#[test]
fn service_deletes_replicate_and_lose_to_later_writes() {
    let (mut a, mut b) = (node(1), node(2));
    let create = Op::CreateService {
        svc: svc("s"),
        change: ServiceChange {
            protect_threshold: Some(0.5),
            ..Default::default()
        },
    };
    a.apply(create, 1_000);
    sync(&a, &mut b, "s", 1_001);
    assert!(b
        .service(svc("s").full_key())
        .is_some_and(|s| s.protect_threshold == 0.5));
    a.apply(Op::DeleteService { svc: svc("s") }, 2_000);
    assert!(sync(&a, &mut b, "s", 2_001));
    assert!(b.service(svc("s").full_key()).is_none());
    // A register after the delete (here on b) recreates the service there,
    // and the old service tombstone from a does not remove it again.
    b.apply(
        Op::Register {
            svc: svc("s"),
            spec: spec("10.0.0.9", 80, &[]),
        },
        3_000,
    );
    let tomb = a.datum(svc("s").full_key()).unwrap();
    assert!(tomb.deleted.is_some());
    assert!(!b.merge(tomb, 3_001));
    assert_eq!(ips(&mut b, "s", 3_002), ["10.0.0.9"]);
}

#[test]
fn a_new_owner_gives_every_instance_a_full_timeout() {
    let meta = [
        (instance::META_BEAT_TIMEOUT, "1000"),
        (instance::META_DELETE_TIMEOUT, "2000"),
    ];
    let (mut old_owner, mut new_owner) = (node(1), node(2));
    old_owner.apply(
        Op::Register {
            svc: svc("g"),
            spec: spec("10.0.0.1", 80, &meta),
        },
        0,
    );
    old_owner.apply(
        Op::Register {
            svc: svc("other"),
            spec: spec("10.0.0.2", 80, &meta),
        },
        0,
    );
    // The replica got its copy long ago; the client kept beating to the
    // old owner, which then died at t = 5 s.
    sync(&old_owner, &mut new_owner, "g", 100);
    sync(&old_owner, &mut new_owner, "other", 100);
    let refreshed = new_owner.grant_ownership_grace(5_000, |grouped| grouped == "DEFAULT_GROUP@@g");
    assert_eq!(refreshed, 1, "only the newly owned service");
    let mut changed = Vec::new();
    new_owner.expire(5_900, &mut changed);
    assert_eq!(ips(&mut new_owner, "g", 5_900), ["10.0.0.1"]);
    assert_eq!(
        list(&mut new_owner, "g", false, 5_900)["hosts"][0]["healthy"],
        true,
        "not expired by a stale lastBeat"
    );
    // Without beats to the new owner, the normal timeouts run from then on.
    new_owner.expire(7_100, &mut changed);
    assert!(ips(&mut new_owner, "g", 7_100).is_empty());
}

#[test]
fn cached_checksums_always_equal_the_exported_datums() {
    let mut a = node(1);
    let same = |a: &Store, name: &str| {
        let k = svc(name).full_key().to_string();
        assert_eq!(a.checksum(&k), a.datum(&k).map(|d| d.checksum()), "{name}");
        a.checksum(&k)
    };
    for (i, ip) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
        a.apply(
            Op::Register {
                svc: svc("c"),
                spec: spec(ip, 80, &[]),
            },
            i as u64,
        );
    }
    let s1 = same(&a, "c");
    assert_eq!(same(&a, "c"), s1, "cached value reused");
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("c"),
            addr: addr("10.0.0.2", 80),
        },
        1_000,
    );
    let s2 = same(&a, "c");
    assert_ne!(s1, s2, "a tombstone changes the checksum");
    let ttl = TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    // Purging the tombstone changes it again (and the cache notices).
    let mut changed = Vec::new();
    a.apply(
        Op::Register {
            svc: svc("p"),
            spec: InstanceSpec {
                ephemeral: false,
                ..spec("10.0.1.1", 80, &[])
            },
        },
        0,
    );
    // Expiry (instances deleted, tombstones left) and then the purge of
    // the deregister's tombstone: each changes the checksum.
    a.expire(1_000 + ttl, &mut changed);
    let s3 = same(&a, "c");
    assert_ne!(s2, s3);
    // Service tombstones too.
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("p"),
            addr: addr("10.0.1.1", 80),
        },
        60_000,
    );
    let r = a.apply(Op::DeleteService { svc: svc("p") }, 60_001);
    assert_eq!(r.reply.status, 200);
    let k = svc("p").full_key().to_string();
    assert!(a.datum(&k).unwrap().deleted.is_some());
    same(&a, "p");
    assert_eq!(same(&a, "never"), None);
}

#[test]
fn snapshot_json_parses_as_datums() {
    let mut a = node(1);
    for (name, ip) in [("x", "10.0.0.1"), ("x", "10.0.0.2"), ("y", "10.0.0.3")] {
        a.apply(
            Op::Register {
                svc: svc(name),
                spec: spec(ip, 80, &[("zone", "a\"b")]),
            },
            5,
        );
    }
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("x"),
            addr: addr("10.0.0.2", 80),
        },
        6,
    );
    a.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("y"),
            addr: addr("10.0.0.3", 80),
        },
        7,
    );
    a.apply(Op::DeleteService { svc: svc("y") }, 8);
    let mut out = vec![b'['];
    a.write_snapshot(&mut out, true, |_| true);
    out.push(b']');
    let mut parsed: Vec<datum::Datum> = serde_json::from_slice(&out).unwrap();
    let mut expected = a.snapshot();
    parsed.sort_by(|p, q| p.name.cmp(&q.name));
    expected.sort_by(|p, q| p.name.cmp(&q.name));
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed, expected);
    // A filtered part holds just what the filter keeps.
    let mut part = vec![b'['];
    let x = svc("x").full_key().to_string();
    a.write_snapshot(&mut part, true, |k| k == x);
    part.push(b']');
    let part: Vec<datum::Datum> = serde_json::from_slice(&part).unwrap();
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].name, "x");
}

#[test]
fn verify_drops_only_what_the_source_alone_wrote_before_its_round() {
    use crate::distro::hlc::pack;
    // Source node 1 (writers 1<<8 | shard), replica node 2.
    let mut source = node(1 << 8);
    let mut replica = node(2 << 8);
    let reg = |s: &mut Store, name: &str, ip: &str, t: u64| {
        s.apply(
            Op::Register {
                svc: svc(name),
                spec: spec(ip, 80, &[]),
            },
            t,
        );
    };
    reg(&mut source, "only-source", "10.0.0.1", 1_000);
    reg(&mut source, "mixed", "10.0.0.2", 1_000);
    reg(&mut source, "late", "10.0.0.3", 9_000);
    for name in ["only-source", "mixed", "late"] {
        let k = svc(name).full_key().to_string();
        replica.merge(source.datum(&k).unwrap(), 1_500);
    }
    // The replica itself wrote into "mixed".
    reg(&mut replica, "mixed", "10.0.0.9", 2_000);
    let round = pack(5_000, 0);
    // The source listed none of them (it forgot them).
    let dropped = replica.drop_unlisted(1, 8, round, |_| true, |_| false);
    let dropped: Vec<&str> = dropped.iter().map(|k| &**k).collect();
    assert_eq!(dropped, [svc("only-source").full_key()]);
    assert!(
        replica.datum(svc("mixed").full_key()).is_some(),
        "has our own write"
    );
    assert!(
        replica.datum(svc("late").full_key()).is_some(),
        "newer than the round"
    );
    // Listed services, and services another node owns, are never dropped.
    reg(&mut source, "listed", "10.0.0.4", 1_000);
    let k = svc("listed").full_key().to_string();
    replica.merge(source.datum(&k).unwrap(), 1_500);
    assert!(replica
        .drop_unlisted(1, 8, round, |_| true, |key| key == k)
        .is_empty());
    assert!(replica
        .drop_unlisted(1, 8, round, |_| false, |_| false)
        .is_empty());
    assert_eq!(replica.counts().services, 3);
}

#[test]
fn a_deregister_before_the_registration_arrives_still_wins() {
    // Node a registered; node b hears the deregister before a's copy.
    let (mut a, mut b) = (node(1), node(2));
    a.apply(
        Op::Register {
            svc: svc("early"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    let r = b.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("early"),
            addr: addr("10.0.0.1", 80),
        },
        2_000,
    );
    assert!(r.changed, "a tombstone is written");
    // The service is hidden on b: not listed, not found.
    assert!(b.service_names("public", "DEFAULT_GROUP").is_empty());
    let got = b.apply(Op::GetService { svc: svc("early") }, 2_001);
    assert_eq!(got.reply.status, 404);
    // a's older registration arrives: the instance stays gone.
    let k = svc("early").full_key().to_string();
    b.merge(a.datum(&k).unwrap(), 2_500);
    assert!(ips(&mut b, "early", 2_600).is_empty());
    // and a learns the deregister.
    a.merge(b.datum(&k).unwrap(), 2_700);
    assert!(ips(&mut a, "early", 2_800).is_empty());
    // A later registration makes the service visible again.
    b.apply(
        Op::Register {
            svc: svc("early"),
            spec: spec("10.0.0.2", 80, &[]),
        },
        3_000,
    );
    assert_eq!(b.service_names("public", "DEFAULT_GROUP"), ["early"]);
}

#[test]
fn an_old_tombstones_purge_leaves_a_newer_tombstone_alone() {
    let mut a = node(1);
    let dereg = |a: &mut Store, t| {
        a.apply(
            Op::Register {
                svc: svc("p"),
                spec: spec("10.0.0.1", 80, &[]),
            },
            t,
        );
        a.apply(
            Op::Deregister {
                persistent: false,
                svc: svc("p"),
                addr: addr("10.0.0.1", 80),
            },
            t + 1,
        );
    };
    let ttl = TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    dereg(&mut a, 1_000);
    dereg(&mut a, 20_000);
    let mut changed = Vec::new();
    // The first tombstone's purge time: the second one must survive it.
    a.expire(1_001 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 1);
    a.expire(20_001 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 0);
}

#[test]
fn tombstones_of_one_service_are_each_purged_at_their_own_time() {
    let mut a = node(1);
    let dereg = |a: &mut Store, ip: &str, t| {
        a.apply(
            Op::Register {
                svc: svc("p"),
                spec: spec(ip, 80, &[]),
            },
            t,
        );
        a.apply(
            Op::Deregister {
                persistent: false,
                svc: svc("p"),
                addr: addr(ip, 80),
            },
            t,
        );
    };
    let ttl = TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    // Later tombstones first, then an earlier-due one: it arms a new timer.
    dereg(&mut a, "10.0.0.1", 5_000);
    dereg(&mut a, "10.0.0.2", 9_000);
    let mut changed = Vec::new();
    a.expire(4_000 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 2);
    a.expire(5_000 + ttl - 1, &mut changed);
    assert_eq!(a.tombstones(), 2);
    a.expire(5_000 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 1, "the first at its time, the second kept");
    a.expire(9_000 + ttl - 1, &mut changed);
    assert_eq!(a.tombstones(), 1);
    a.expire(9_000 + ttl, &mut changed);
    assert_eq!(a.tombstones(), 0);
    assert_eq!(a.purge_timers.len(), 0);
}

#[test]
fn versions_too_far_in_the_future_are_refused_and_arrive_later() {
    let (mut a, mut b) = (node(1), node(2));
    let skew = crate::distro::hlc::DRIFT_MAX_MS + 1_000;
    // a's clock runs more than the drift bound ahead of b's.
    a.apply(
        Op::Register {
            svc: svc("f"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000 + skew,
    );
    assert!(!sync(&a, &mut b, "f", 1_000), "refused: nothing changed");
    assert!(ips(&mut b, "f", 1_001).is_empty());
    assert_eq!(b.future_versions_refused(), 1);
    // b's own writes are not pushed past the bound by what it refused.
    b.apply(
        Op::Register {
            svc: svc("f"),
            spec: spec("10.0.0.2", 80, &[]),
        },
        1_002,
    );
    let mine = b.datum(svc("f").full_key()).unwrap().instances[0].version;
    assert!(crate::distro::hlc::physical_ms(mine.hlc) <= 1_002);
    // Once b's clock is within the bound, the record merges.
    assert!(sync(&a, &mut b, "f", 2_000));
    assert_eq!(ips(&mut b, "f", 2_001), vec!["10.0.0.1", "10.0.0.2"]);
}

#[test]
fn a_version_at_the_end_of_the_clock_range_does_not_wrap_local_writes() {
    // Found by the datum-batch fuzz target's check (with a seed added by
    // hand): observing hlc u64::MAX wrapped
    // the clock to 0, so every later local write lost to older records.
    let mut b = node(2);
    b.apply(
        Op::Register {
            svc: svc("w"),
            spec: spec("10.0.0.1", 80, &[]),
        },
        1_000,
    );
    let mut d = b.datum(svc("w").full_key()).unwrap();
    d.instances[0].version = Version {
        hlc: u64::MAX,
        writer: 7,
    };
    assert!(!b.merge(d, 1_001));
    b.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("w"),
            addr: addr("10.0.0.1", 80),
        },
        1_002,
    );
    assert!(
        ips(&mut b, "w", 1_003).is_empty(),
        "the local deregister wins"
    );
}

#[test]
fn connection_bound_instances_never_expire_and_are_released_only_by_their_connection() {
    let mut s = store();
    let c1 = lease("", 0, 1);
    let c2 = lease("", 0, 2);
    let publish = |s: &mut Store,
                   conn: &Arc<Lease>,
                   specs: Vec<InstanceSpec>,
                   release: Vec<InstanceAddr>,
                   now| {
        s.apply(
            Op::Publish {
                svc: svc("g"),
                conn: conn.clone(),
                specs,
                release,
            },
            now,
        )
    };
    assert!(publish(&mut s, &c1, vec![spec("10.0.0.1", 1, &[])], vec![], 0).changed);
    // No beats for far longer than the delete timeout: still there, healthy.
    let mut changed = Vec::new();
    for t in (0..120_000).step_by(100) {
        s.expire(t, &mut changed);
    }
    assert!(changed.is_empty());
    assert_eq!(ips(&mut s, "g", 120_000), ["10.0.0.1"]);
    assert_eq!(
        list(&mut s, "g", true, 120_000)["hosts"][0]["healthy"],
        true
    );
    // A publish replaces the connection's earlier instance.
    publish(
        &mut s,
        &c1,
        vec![spec("10.0.0.2", 2, &[])],
        vec![addr("10.0.0.1", 1)],
        120_001,
    );
    assert_eq!(ips(&mut s, "g", 120_002), ["10.0.0.2"]);
    // Another connection takes 10.0.0.2 over: c1's release leaves it alone.
    publish(&mut s, &c2, vec![spec("10.0.0.2", 2, &[])], vec![], 120_003);
    let r = publish(&mut s, &c1, vec![], vec![addr("10.0.0.2", 2)], 120_004);
    assert!(!r.changed);
    assert_eq!(ips(&mut s, "g", 120_005), ["10.0.0.2"]);
    // An HTTP register makes it beat-owned: c2's release leaves it too, and
    // it expires without beats like any other.
    s.apply(
        Op::Register {
            svc: svc("g"),
            spec: spec("10.0.0.2", 2, &[]),
        },
        120_006,
    );
    assert!(!publish(&mut s, &c2, vec![], vec![addr("10.0.0.2", 2)], 120_007).changed);
    for t in (120_100..200_000).step_by(100) {
        s.expire(t, &mut changed);
    }
    assert_eq!(ips(&mut s, "g", 200_000), Vec::<String>::new());
    // Released instances leave tombstones: a late older copy stays dead.
    publish(&mut s, &c1, vec![spec("10.0.0.3", 3, &[])], vec![], 200_001);
    assert!(publish(&mut s, &c1, vec![], vec![addr("10.0.0.3", 3)], 200_002).changed);
    let d = s.datum(svc("g").full_key()).unwrap();
    assert!(d
        .instances
        .iter()
        .any(|r| r.key == "10.0.0.3#3#DEFAULT" && r.deleted));
}

// --- connection-bound instances in a cluster (leases) ---

use instance::{Lease, LeasePolicy};
use std::sync::Arc;

fn lease(holder: &str, boot: u64, serial: u64) -> Arc<Lease> {
    Arc::new(Lease {
        holder: holder.into(),
        boot,
        serial,
    })
}

fn publish_on(s: &mut Store, conn: &Arc<Lease>, ip: &str, now: u64) {
    s.apply(
        Op::Publish {
            svc: svc("c"),
            conn: conn.clone(),
            specs: vec![spec(ip, 1, &[])],
            release: vec![],
        },
        now,
    );
}

fn policy(me: &str, boot: u64, gone: &[&str]) -> LeasePolicy {
    LeasePolicy {
        me: me.into(),
        boot,
        gone: gone.iter().map(|g| g.to_string()).collect(),
    }
}

#[test]
fn a_lease_travels_with_its_record_and_keeps_the_replica_from_expiring_it() {
    let mut a = node(0 << 8);
    let mut b = node(1 << 8);
    a.set_lease_policy(policy("a", 7, &[]), 0);
    b.set_lease_policy(policy("b", 9, &[]), 0);
    publish_on(&mut a, &lease("a", 7, 3), "10.0.0.1", 1_000);
    assert!(sync(&a, &mut b, "c", 1_001));
    let d = b.datum(svc("c").full_key()).unwrap();
    assert_eq!(d.instances[0].lease.as_ref().unwrap().holder, "a");
    let wire = serde_json::to_value(&d.instances[0]).unwrap();
    assert_eq!(wire.as_array().unwrap().len(), 12, "{wire}");
    assert_eq!(wire[11], serde_json::json!(["a", 7, 3]));
    // The replica owns the service and expires silent instances: not this.
    let mut changed = Vec::new();
    for t in (1_000..120_000).step_by(100) {
        b.expire(t, &mut changed);
    }
    assert_eq!(ips(&mut b, "c", 120_000), ["10.0.0.1"]);
}

#[test]
fn an_eleven_element_record_from_an_older_peer_still_reads_as_unbound() {
    let r: datum::InstanceRecord =
        serde_json::from_str(r#"["10.0.0.1",1,"DEFAULT",1.0,true,true,true,{},5,1,false]"#)
            .unwrap();
    assert_eq!(r.lease, None);
    assert_eq!(r.key, "10.0.0.1#1#DEFAULT");
    assert_eq!(
        serde_json::to_value(&r).unwrap().as_array().unwrap().len(),
        11
    );
}

#[test]
fn a_gone_holders_instances_are_retired_and_a_reconnect_elsewhere_outlives_the_retirement() {
    let mut a = node(0 << 8);
    let mut b = node(1 << 8);
    let mut c = node(2 << 8);
    for (s, me) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        s.set_lease_policy(policy(me, 1, &[]), 0);
    }
    publish_on(&mut a, &lease("a", 1, 1), "10.0.0.1", 1_000);
    sync(&a, &mut b, "c", 1_001);
    sync(&a, &mut c, "c", 1_001);
    // a dies; c hears of it first, while the client reconnects to b.
    publish_on(&mut b, &lease("b", 1, 5), "10.0.0.1", 5_000);
    let retired = c.set_lease_policy(policy("c", 1, &["a"]), 20_000);
    assert_eq!(retired, [svc("c").full_key().to_string()]);
    assert!(ips(&mut c, "c", 20_000).is_empty(), "a's leftover retired");
    // Both orders of arrival end with b's record, everywhere.
    assert!(sync(&b, &mut c, "c", 20_001));
    assert_eq!(ips(&mut c, "c", 20_002), ["10.0.0.1"]);
    b.set_lease_policy(policy("b", 1, &["a"]), 20_003);
    assert!(
        !sync(&c, &mut b, "c", 20_004),
        "the retirement is older than b's record"
    );
    assert_eq!(ips(&mut b, "c", 20_005), ["10.0.0.1"]);
    assert_eq!(
        b.datum(svc("c").full_key()).unwrap().checksum(),
        c.datum(svc("c").full_key()).unwrap().checksum()
    );
    // Retirements made independently are one and the same record.
    let mut d = node(3 << 8);
    d.set_lease_policy(policy("d", 1, &[]), 0);
    sync(&a, &mut d, "c", 1_002);
    d.set_lease_policy(policy("d", 1, &["a"]), 20_000);
    let mut e = node(4 << 8);
    sync(&a, &mut e, "c", 1_002);
    e.set_lease_policy(policy("e", 1, &["a"]), 21_000);
    assert_eq!(
        d.datum(svc("c").full_key()).unwrap().checksum(),
        e.datum(svc("c").full_key()).unwrap().checksum()
    );
    // A gone holder's record arriving later is retired on arrival.
    let mut f = node(5 << 8);
    f.set_lease_policy(policy("f", 1, &["a"]), 0);
    sync(&a, &mut f, "c", 20_000);
    assert!(ips(&mut f, "c", 20_001).is_empty());
}

#[test]
fn a_node_keeps_its_live_connections_records_against_a_retirement_and_retires_its_old_incarnations()
{
    let mut a = node(0 << 8);
    let mut b = node(1 << 8);
    a.set_lease_policy(policy("a", 1, &[]), 0);
    b.set_lease_policy(policy("b", 1, &[]), 0);
    publish_on(&mut a, &lease("a", 1, 1), "10.0.0.1", 1_000);
    sync(&a, &mut b, "c", 1_001);
    // A partition: b thinks a gone and retires; healed, a hears of it.
    b.set_lease_policy(policy("b", 1, &["a"]), 15_000);
    assert!(ips(&mut b, "c", 15_000).is_empty());
    sync(&b, &mut a, "c", 16_000);
    assert_eq!(
        ips(&mut a, "c", 16_001),
        ["10.0.0.1"],
        "a's client is connected"
    );
    assert_eq!(a.take_reasserted(), [svc("c").full_key().to_string()]);
    b.set_lease_policy(policy("b", 1, &[]), 16_002);
    assert!(sync(&a, &mut b, "c", 16_003));
    assert_eq!(ips(&mut b, "c", 16_004), ["10.0.0.1"], "back on b");
    // a restarts (boot 2): its snapshot from b holds boot 1's record,
    // whose connection died with it.
    let mut a2 = node(0 << 8);
    a2.set_lease_policy(policy("a", 2, &[]), 30_000);
    sync(&b, &mut a2, "c", 30_001);
    assert!(ips(&mut a2, "c", 30_002).is_empty());
    assert_eq!(
        a2.take_reasserted(),
        [svc("c").full_key().to_string()],
        "to tell b"
    );
    assert!(sync(&a2, &mut b, "c", 30_003));
    assert!(ips(&mut b, "c", 30_004).is_empty());
}

#[test]
fn room_goes_when_instances_and_tombstones_do() {
    let mut s = store();
    for i in 0..1_000u16 {
        let spec = spec(&format!("10.0.{}.{}", i / 256, i % 256), 80, &[]);
        s.apply(
            Op::Register {
                svc: svc("big"),
                spec,
            },
            1_000,
        );
    }
    let key = svc("big").full_key().to_string();
    let full = s.service(&key).unwrap().instances.capacity();
    assert!(full >= 1_000);
    for i in 0..1_000u16 {
        let addr = addr(&format!("10.0.{}.{}", i / 256, i % 256), 80);
        s.apply(
            Op::Deregister {
                persistent: false,
                svc: svc("big"),
                addr,
            },
            2_000,
        );
    }
    let svc_now = s.service(&key).unwrap();
    assert!(
        svc_now.instances.capacity() <= ROOM_SLACK * ROOM_KEEP,
        "instances: {}",
        svc_now.instances.capacity()
    );
    assert_eq!(svc_now.tombstones.len(), 1_000);
    // Past the tombstone TTL, the tombstones and their queue go too.
    let mut changed = Vec::new();
    s.expire(2_000 + s.tombstone_ttl_ms + 1, &mut changed);
    let svc_now = s.service(&key).unwrap();
    assert_eq!(svc_now.tombstones.len(), 0);
    assert!(
        svc_now.tombstones.capacity() <= ROOM_SLACK * ROOM_KEEP,
        "tombstones: {}",
        svc_now.tombstones.capacity()
    );
    assert_eq!(s.purge_timers.len(), 0, "purge timers");
}

fn reg(s: &mut Store, name: &str, spec: InstanceSpec, now: u64) {
    s.apply(
        Op::Register {
            svc: svc(name),
            spec,
        },
        now,
    );
}

/// A store that read `rows` back (`unbind`: as a standalone node does).
fn restored(rows: &journal::MemoryRows, now: u64, unbind: bool) -> Store {
    let mut s = store();
    for saved in rows.saved() {
        s.restore(saved.into_datum().unwrap(), now, unbind);
    }
    s
}

/// A store restarted from `rows`, as a standalone node is.
fn restarted(rows: &journal::MemoryRows, now: u64) -> Store {
    let mut s = restored(rows, now, true);
    s.observe_saved_clock(journal::resume_clock(rows.clock, rows.wall_ms), now);
    s.enable_journal();
    s
}

fn save(s: &mut Store, rows: &mut journal::MemoryRows, now: u64) -> Option<journal::Changes> {
    let c = s.take_changes()?;
    rows.save(&c, now);
    Some(c)
}

#[test]
fn the_journal_saves_each_record_once_in_its_latest_state() {
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    for port in [1, 1, 1, 2] {
        reg(&mut s, "a", spec("10.0.0.1", port, &[]), 1_000);
    }
    assert!(!s.journal_durable(), "ephemeral changes are saved behind");
    let c = save(&mut s, &mut rows, 1_000).unwrap();
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].instances.len(), 2, "one row per instance");
    assert!(c.services[0].row.is_some(), "the new service's own row");
    assert!(s.take_changes().is_none(), "nothing left");
    // A persistent write asks for a synced save.
    let mut p = spec("10.0.0.9", 1, &[]);
    p.ephemeral = false;
    reg(&mut s, "a", p, 1_001);
    assert!(s.journal_durable());
    save(&mut s, &mut rows, 1_001);
    assert!(!s.journal_durable());
    // A deregister saves a tombstone; its purge deletes the row.
    s.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("a"),
            addr: addr("10.0.0.1", 2),
        },
        1_002,
    );
    save(&mut s, &mut rows, 1_002);
    assert_eq!(rows.instances.len(), 3);
    // Purged within one expiry tick (100 ms here) after its TTL.
    let later = 1_002 + TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms + 100;
    s.expire(later, &mut Vec::new());
    save(&mut s, &mut rows, later);
    assert!(
        !rows
            .instances
            .keys()
            .any(|(_, _, _, k)| k.starts_with("10.0.0.1#2#")),
        "purged"
    );
}

#[test]
fn a_restart_from_saved_rows_brings_back_what_was_saved() {
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    let mut p = spec("10.0.0.9", 1, &[("k", "v")]);
    p.ephemeral = false;
    reg(&mut s, "a", p, 1_000);
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 1_000);
    reg(&mut s, "a", spec("10.0.0.2", 1, &[]), 1_000);
    s.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("a"),
            addr: addr("10.0.0.2", 1),
        },
        1_000,
    );
    let change = ServiceChange {
        protect_threshold: Some(0.5),
        ..Default::default()
    };
    s.apply(
        Op::CreateService {
            svc: svc("b"),
            change,
        },
        1_000,
    );
    s.apply(
        Op::CreateService {
            svc: svc("c"),
            change: ServiceChange::default(),
        },
        1_000,
    );
    s.apply(Op::DeleteService { svc: svc("c") }, 1_000);
    save(&mut s, &mut rows, 1_000);
    // An unsaved change is lost with the process.
    reg(&mut s, "a", spec("10.0.0.3", 1, &[]), 1_000);
    let before = s.datum(svc("a").full_key()).unwrap();

    let mut r = restarted(&rows, 50_000);
    assert_eq!(ips(&mut r, "a", 50_000), vec!["10.0.0.1", "10.0.0.9"]);
    let d = r.datum(svc("a").full_key()).unwrap();
    let old: Vec<_> = before
        .instances
        .iter()
        .filter(|i| !i.ip.ends_with(".3"))
        .collect();
    assert_eq!(
        d.instances.iter().collect::<Vec<_>>(),
        old,
        "versions and tombstones too"
    );
    assert_eq!(
        r.service(svc("b").full_key()).unwrap().protect_threshold,
        0.5
    );
    assert!(r.service(svc("c").full_key()).is_none());
    assert!(
        r.datum(svc("c").full_key()).unwrap().deleted.is_some(),
        "its tombstone"
    );
    // Restored ephemeral instances are heard from the restart: a full timeout.
    let mut changed = Vec::new();
    r.expire(
        50_000 + Timeouts::default().unhealthy_timeout_ms - 100,
        &mut changed,
    );
    assert!(changed.is_empty());
    // New versions are above the saved ones.
    r.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("a"),
            addr: addr("10.0.0.9", 1),
        },
        50_000,
    );
    let tomb = r.datum(svc("a").full_key()).unwrap();
    let nine = tomb.instances.iter().find(|i| i.ip == "10.0.0.9").unwrap();
    assert!(nine.deleted && nine.version > before.max_version());
}

#[test]
fn a_clustered_restart_drops_old_records_its_peers_do_not_confirm() {
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 1_000);
    reg(&mut s, "a", spec("10.0.0.2", 1, &[]), 1_000);
    save(&mut s, &mut rows, 1_000);
    let peer = s.datum(svc("a").full_key()).unwrap();
    // Down for long: the peers deleted .2 and purged its tombstone.
    let now = 1_000_000;
    let mut r = restored(&rows, now, false);
    assert_eq!(r.hold_back_restored(now), 2);
    let mut confirm = peer.clone();
    confirm.instances.retain(|i| i.ip == "10.0.0.1");
    r.merge(confirm, now);
    assert_eq!(r.settle_restored(true, now), 1);
    assert_eq!(ips(&mut r, "a", now), vec!["10.0.0.1"]);
    // When no peer served a snapshot (the whole cluster restarting), all stay.
    let mut r = restored(&rows, now, false);
    r.hold_back_restored(now);
    assert_eq!(r.settle_restored(false, now), 0);
    assert_eq!(ips(&mut r, "a", now).len(), 2);
}

fn persistent(ip: &str) -> InstanceSpec {
    let mut p = spec(ip, 1, &[]);
    p.ephemeral = false;
    p
}

fn dereg(s: &mut Store, name: &str, ip: &str, now: u64) {
    s.apply(
        Op::Deregister {
            persistent: false,
            svc: svc(name),
            addr: addr(ip, 1),
        },
        now,
    );
}

/// The tombstones `s` keeps for service `name`: (ip, ephemeral).
fn tombs(s: &Store, name: &str) -> Vec<(String, bool)> {
    let d = s.datum(svc(name).full_key()).unwrap();
    d.instances
        .iter()
        .filter(|r| r.deleted)
        .map(|r| (r.ip.clone(), r.ephemeral))
        .collect()
}

#[test]
fn persistent_tombstones_outlive_ephemeral_ones_here_on_replicas_and_on_disk() {
    let (mut a, mut b) = (node(1), node(2));
    a.enable_journal();
    let mut rows = journal::MemoryRows::default();
    reg(&mut a, "t", persistent("10.0.0.9"), 1_000);
    reg(&mut a, "t", spec("10.0.0.1", 1, &[]), 1_000);
    dereg(&mut a, "t", "10.0.0.9", 2_000);
    dereg(&mut a, "t", "10.0.0.1", 2_000);
    save(&mut a, &mut rows, 2_000);
    assert!(sync(&a, &mut b, "t", 2_000));
    let both = vec![
        ("10.0.0.1".to_string(), true),
        ("10.0.0.9".to_string(), false),
    ];
    assert_eq!(tombs(&b, "t"), both, "the replica knows each one's kind");
    let mut c = restored(&rows, 2_000, false);
    assert_eq!(tombs(&c, "t"), both, "and so does the saved row");

    let short = 2_000 + TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    for s in [&mut a, &mut b, &mut c] {
        s.expire(short, &mut Vec::new());
        assert_eq!(tombs(s, "t"), vec![("10.0.0.9".to_string(), false)]);
        s.expire(2_000 + PERSISTENT_TOMBSTONE_TTL_MS - 1, &mut Vec::new());
        assert_eq!(s.tombstones(), 1, "kept for the whole long TTL");
        s.expire(2_000 + PERSISTENT_TOMBSTONE_TTL_MS, &mut Vec::new());
        assert_eq!(s.tombstones(), 0);
    }
    assert_eq!(a.tombstones_purged_early(), 0);
}

#[test]
fn service_tombstones_are_kept_as_long_as_persistent_ones() {
    let mut a = node(1);
    a.apply(
        Op::CreateService {
            svc: svc("s"),
            change: ServiceChange::default(),
        },
        1_000,
    );
    a.apply(Op::DeleteService { svc: svc("s") }, 2_000);
    a.expire(2_000 + PERSISTENT_TOMBSTONE_TTL_MS - 1, &mut Vec::new());
    assert!(a.datum(svc("s").full_key()).unwrap().deleted.is_some());
    a.expire(2_000 + PERSISTENT_TOMBSTONE_TTL_MS, &mut Vec::new());
    assert!(a.datum(svc("s").full_key()).is_none());
}

#[test]
fn past_the_cap_the_oldest_persistent_tombstones_go_early_and_are_counted() {
    let mut a = node(1);
    a.set_persistent_tombstones_max(2);
    for (i, ip) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].into_iter().enumerate() {
        reg(&mut a, "t", persistent(ip), 1_000);
        dereg(&mut a, "t", ip, 2_000 + i as u64);
    }
    a.expire(3_000, &mut Vec::new());
    let left: Vec<String> = tombs(&a, "t").into_iter().map(|t| t.0).collect();
    assert_eq!(left, vec!["10.0.0.2", "10.0.0.3"], "the oldest went");
    assert_eq!(a.tombstones_purged_early(), 1);
}

#[test]
fn a_clustered_restart_keeps_its_unreplicated_persistent_writes_within_the_long_ttl() {
    // Acknowledged while cut off from its peers, then down for 44 s
    // (simulation seed 1268): no peer has it, no peer deleted it.
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    reg(&mut s, "a", persistent("10.0.0.9"), 1_000);
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 1_000);
    save(&mut s, &mut rows, 1_000);
    let now = 45_000;
    let mut r = restored(&rows, now, false);
    assert_eq!(r.hold_back_restored(now), 1, "only the ephemeral one");
    assert_eq!(r.settle_restored(true, now), 1);
    assert_eq!(ips(&mut r, "a", now), vec!["10.0.0.9"]);
    // Down for longer than the long TTL: held back too.
    let now = 1_000 + PERSISTENT_TOMBSTONE_TTL_MS;
    let mut r = restored(&rows, now, false);
    assert_eq!(r.hold_back_restored(now), 2);
}

#[test]
fn a_merge_says_when_the_peers_copy_was_older_than_this_one() {
    let (mut a, mut b) = (node(1), node(2));
    reg(&mut a, "r", spec("10.0.0.1", 1, &[]), 1_000);
    assert!(sync(&a, &mut b, "r", 1_000));
    let old = a.datum(svc("r").full_key()).unwrap();
    dereg(&mut a, "r", "10.0.0.1", 2_000);
    assert!(sync(&a, &mut b, "r", 2_000));
    // The same copy again: nothing older.
    let same = b.datum(svc("r").full_key()).unwrap();
    assert_eq!(a.merge_from_peer(same, 2_001), (false, false));
    // A cut-off peer's copy from before the deregister: older.
    assert_eq!(b.merge_from_peer(old.clone(), 2_001), (false, true));
    assert_eq!(ips(&mut b, "r", 2_001), Vec::<String>::new());
    // Fields: a copy without the service's fields is older too.
    a.apply(
        Op::UpdateService {
            svc: svc("r"),
            change: ServiceChange {
                protect_threshold: Some(0.5),
                ..Default::default()
            },
        },
        3_000,
    );
    let mut before_fields = a.datum(svc("r").full_key()).unwrap();
    before_fields.fields.version = Version::default();
    assert_eq!(a.merge_from_peer(before_fields, 3_001), (false, true));
    // A copy of a deleted service that predates the delete.
    let mut c = node(3);
    c.apply(
        Op::CreateService {
            svc: svc("gone"),
            change: ServiceChange::default(),
        },
        1_000,
    );
    let live = c.datum(svc("gone").full_key()).unwrap();
    c.apply(Op::DeleteService { svc: svc("gone") }, 2_000);
    assert_eq!(c.merge_from_peer(live, 2_001), (false, true));
}

/// Rows keyed by version: after every save the saved rows are exactly the
/// records held (one row per instance or tombstone, under its version),
/// whatever happened to them in between.
#[test]
fn saved_rows_are_exactly_the_records_held_under_their_versions() {
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    let check = |s: &Store, rows: &journal::MemoryRows, when: &str| {
        let mut held: Vec<(u64, u64, String, String)> = Vec::new();
        for name in ["a", "b"] {
            if let Some(d) = s.datum(svc(name).full_key()) {
                let k = svc(name).full_key().to_string();
                for r in d.instances {
                    held.push((r.version.hlc, r.version.writer, k.clone(), r.key));
                }
            }
        }
        held.sort();
        let saved: Vec<_> = rows.instances.keys().cloned().collect();
        assert_eq!(saved, held, "{when}");
    };
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 1_000);
    reg(&mut s, "a", persistent("10.0.0.2"), 1_000);
    reg(&mut s, "b", spec("10.0.0.3", 1, &[]), 1_000);
    save(&mut s, &mut rows, 1_000);
    check(&s, &rows, "registered");
    // Changed twice between two saves: one row, the latest.
    reg(&mut s, "a", spec("10.0.0.1", 1, &[("k", "1")]), 2_000);
    reg(&mut s, "a", spec("10.0.0.1", 1, &[("k", "2")]), 2_001);
    s.expire(
        2_000 + Timeouts::default().unhealthy_timeout_ms,
        &mut Vec::new(),
    );
    save(&mut s, &mut rows, 2_002);
    check(&s, &rows, "updated and turned unhealthy");
    // Deregistered: the tombstone's row replaces the record's.
    dereg(&mut s, "a", "10.0.0.1", 3_000);
    dereg(&mut s, "a", "10.0.0.2", 3_000);
    save(&mut s, &mut rows, 3_000);
    check(&s, &rows, "deregistered");
    // Registered again before the tombstone's row was saved over.
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 4_000);
    dereg(&mut s, "a", "10.0.0.1", 4_001);
    reg(&mut s, "a", spec("10.0.0.1", 1, &[]), 4_002);
    save(&mut s, &mut rows, 4_002);
    check(&s, &rows, "re-registered");
    // The ephemeral tombstones purged.
    let later = 4_002 + TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    s.expire(later, &mut Vec::new());
    save(&mut s, &mut rows, later);
    check(&s, &rows, "purged");
    // A service deleted whole, then created again in the same save.
    dereg(&mut s, "b", "10.0.0.3", later);
    s.apply(Op::DeleteService { svc: svc("b") }, later + 1);
    reg(&mut s, "b", spec("10.0.0.4", 1, &[]), later + 2);
    save(&mut s, &mut rows, later + 2);
    check(&s, &rows, "service deleted and created again");
    assert!(rows.instance_keys(svc("b").full_key()) == vec!["10.0.0.4#1#DEFAULT"]);
    // And what was saved comes back the same.
    let r = restored(&rows, later + 3, true);
    for name in ["a", "b"] {
        assert_eq!(
            r.datum(svc(name).full_key()).map(|d| d.instances),
            s.datum(svc(name).full_key()).map(|d| d.instances),
            "{name} after a restart"
        );
    }
}

#[test]
fn of_two_saved_rows_of_one_instance_the_newer_is_read_back_and_the_older_deleted() {
    let mut s = store();
    s.enable_journal();
    let mut rows = journal::MemoryRows::default();
    reg(&mut s, "a", spec("10.0.0.1", 1, &[("k", "old")]), 1_000);
    save(&mut s, &mut rows, 1_000);
    let old = rows.clone();
    reg(&mut s, "a", spec("10.0.0.1", 1, &[("k", "new")]), 2_000);
    save(&mut s, &mut rows, 2_000);
    // An older build's leftover: the first row again beside the second.
    rows.instances.extend(old.instances);
    let mut g = journal::Regroup::new(Default::default());
    for ((h, w, sv, i), v) in &rows.instances {
        g.instance((*h, *w, sv, i), v);
    }
    let (services, leftovers) = g.finish(|_| {});
    assert_eq!((services, leftovers.len()), (1, 1));
    let r = restored(&rows, 3_000, true);
    let d = r.datum(svc("a").full_key()).unwrap();
    assert_eq!(d.instances.len(), 1);
    assert_eq!(
        d.instances[0].metadata.get("k").map(String::as_str),
        Some("new")
    );
}

#[test]
fn instance_rows_read_back_as_the_records_they_were() {
    let mut s = store();
    s.enable_journal();
    reg(
        &mut s,
        "a",
        spec("10.0.0.1", 1, &[("k", "v"), ("zone", "z1")]),
        1_000,
    );
    let mut p = spec("10.0.0.2", 8080, &[]);
    p.ephemeral = false;
    p.weight = 2.5;
    reg(&mut s, "a", p, 1_000);
    publish_on(&mut s, &lease("10.1.1.1:8848", 7, 3), "10.0.0.3", 1_000);
    reg(&mut s, "a", spec("10.0.0.4", 1, &[]), 1_000);
    s.apply(
        Op::Deregister {
            persistent: false,
            svc: svc("a"),
            addr: addr("10.0.0.4", 1),
        },
        1_000,
    );
    let c = s.take_changes().unwrap();
    let rows: Vec<_> = c
        .services
        .iter()
        .flat_map(|sc| sc.instances.iter().map(|(k, r)| (sc.key.clone(), k, r)))
        .collect();
    assert_eq!(rows.len(), 4);
    for (svc_key, key, row) in rows {
        let mut bytes = Vec::new();
        row.encode(&mut bytes);
        let back = journal::decode_instance(key, row.version(), &bytes).unwrap();
        let held = s.datum(&svc_key).unwrap();
        let want = held.instances.iter().find(|r| *r.key == **key).unwrap();
        if want.deleted {
            // A tombstone keeps its address, version and kind only.
            assert!(back.deleted && back.ephemeral == want.ephemeral, "{back:?}");
            assert_eq!(
                (&back.ip, back.port, back.version),
                (&want.ip, want.port, want.version)
            );
        } else {
            assert_eq!(&back, want);
        }
        // Garbage and a key that is no address are errors, not records.
        assert!(journal::decode_instance(key, row.version(), &bytes[..1]).is_err());
        assert!(journal::decode_instance("no-address", row.version(), &bytes).is_err());
    }
    let bound = s.datum(svc("c").full_key()).unwrap().instances[0].clone();
    assert_eq!(bound.lease.as_ref().map(|l| l.serial), Some(3));
}

#[test]
fn row_keys_read_back_and_sort_as_their_versions() {
    let mut bytes = Vec::new();
    for key in [
        (1, 2, "public##DEFAULT_GROUP@@a", "10.0.0.1#80#DEFAULT"),
        (u64::MAX, 0, "ns##g@@服务#x", ""),
        (0, u64::MAX, "", "10.0.0.1#1#c"),
    ] {
        journal::row_key_bytes(key, &mut bytes);
        assert_eq!(journal::parse_row_key(&bytes), Some(key));
        for cut in 0..20 {
            assert_eq!(journal::parse_row_key(&bytes[..cut]), None, "{cut} bytes");
        }
    }
    // A length past the end, and bytes that are not UTF-8.
    journal::row_key_bytes((1, 1, "abc", "d"), &mut bytes);
    bytes[19] = 200;
    assert_eq!(journal::parse_row_key(&bytes), None);
    journal::row_key_bytes((1, 1, "abc", "d"), &mut bytes);
    bytes[20] = 0xff;
    assert_eq!(journal::parse_row_key(&bytes), None);
    // Bytes sort as (hlc, writer) do, whatever the names.
    let versions = [(1, 9), (2, 0), (2, 1), (256, 0), (1 << 40, 5)];
    let mut keys: Vec<Vec<u8>> = versions
        .iter()
        .rev()
        .map(|&(h, w)| {
            let mut b = Vec::new();
            journal::row_key_bytes((h, w, if h % 2 == 0 { "zz" } else { "a" }, "k"), &mut b);
            b
        })
        .collect();
    keys.sort();
    let sorted: Vec<(u64, u64)> = keys
        .iter()
        .map(|b| {
            let k = journal::parse_row_key(b).unwrap();
            (k.0, k.1)
        })
        .collect();
    assert_eq!(sorted, versions);
}

#[test]
fn a_view_keeps_a_list_from_its_second_read_within_the_budget() {
    use super::view::{ListBudget, ServiceView};
    let mut s = store();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        s.apply(
            Op::Register {
                svc: svc("a"),
                spec: spec(ip, 80, &[]),
            },
            1_000,
        );
    }
    let variant = ListVariant {
        clusters: String::new(),
        healthy_only: false,
        cache_millis: 3000,
    };
    let service = s.service(svc("a").full_key()).unwrap();
    let budget: &'static ListBudget = Box::leak(Box::new(ListBudget::new(1 << 20)));
    let view = ServiceView::of_in(service, budget);
    let first = view.list(&variant);
    let hosts = |b: &bytes::Bytes| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["hosts"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(hosts(&first), 3);
    assert_eq!(
        (view.kept_bytes(), budget.used()),
        (0, 0),
        "read once: not kept"
    );
    let second = view.list(&variant);
    assert_eq!(second, first);
    assert_eq!(
        (view.kept_bytes(), budget.used()),
        (first.len(), first.len())
    );
    let third = view.list(&variant);
    assert_eq!(third.as_ptr(), second.as_ptr(), "the kept body");

    // A budget with no room for a second body: the list is still served,
    // rendered each time, and nothing more is counted.
    let tight: &'static ListBudget = Box::leak(Box::new(ListBudget::new(first.len() + 10)));
    let a = ServiceView::of_in(service, tight);
    let b = ServiceView::of_in(service, tight);
    a.list(&variant);
    a.list(&variant);
    b.list(&variant);
    let refused = b.list(&variant);
    assert_eq!(refused, first);
    assert_eq!((a.kept_bytes(), b.kept_bytes()), (first.len(), 0));
    assert_eq!(tight.used(), first.len());
    drop(a);
    assert_eq!(tight.used(), 0, "a dropped view gives its bytes back");
    drop(view);
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_instance_reads_its_address_from_its_key() {
    let mut s = store();
    for (ip, port, cluster) in [("10.0.0.1", 80, "DEFAULT"), ("fe80::1", 8080, "c.1-x_y")] {
        let mut sp = spec(ip, port, &[]);
        sp.addr.cluster = cluster.into();
        s.apply(
            Op::Register {
                svc: svc("a"),
                spec: sp,
            },
            1_000,
        );
        let key = format!("{ip}#{port}#{cluster}");
        let i = s
            .service(svc("a").full_key())
            .unwrap()
            .instances
            .get(key.as_str())
            .unwrap();
        assert_eq!((i.ip(), i.port(), i.cluster()), (ip, port, cluster));
    }
    let l = list(&mut s, "a", false, 1_001);
    let shown: Vec<(String, u64, String)> = l["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["ip"].as_str().unwrap().to_string(),
                h["port"].as_u64().unwrap(),
                h["clusterName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        shown.contains(&("fe80::1".into(), 8080, "c.1-x_y".into())),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("10.0.0.1".into(), 80, "DEFAULT".into())),
        "{shown:?}"
    );
}

#[test]
fn instance_timeouts_are_kept_in_32_bits() {
    use super::instance::{PackedTimeouts, Timeouts};
    let t = Timeouts {
        beat_interval_ms: 1_000,
        unhealthy_timeout_ms: 3_000,
        delete_timeout_ms: 7_200_000,
    };
    assert_eq!(PackedTimeouts::from(t).get(), t);
    let huge = Timeouts {
        delete_timeout_ms: 1 << 40,
        ..t
    };
    assert_eq!(
        PackedTimeouts::from(huge).get().delete_timeout_ms,
        u64::from(u32::MAX),
        "49 days at most"
    );
    assert_eq!(std::mem::size_of::<PackedTimeouts>(), 12);
}

#[test]
fn a_deregister_of_an_instance_not_held_here_leaves_a_long_tombstone() {
    // Whatever kind the request says: a persistent copy acknowledged by a
    // node that crashed before it replicated comes back with that node,
    // possibly long after a short tombstone was purged (seed 29747).
    for said_persistent in [true, false] {
        let (mut a, mut b) = (node(1), node(2));
        reg(&mut a, "p", persistent("10.0.0.9"), 1_000);
        let old = a.datum(svc("p").full_key()).unwrap();
        // b has not heard of it yet when the deregister reaches it.
        b.apply(
            Op::Deregister {
                svc: svc("p"),
                addr: addr("10.0.0.9", 1),
                persistent: said_persistent,
            },
            2_000,
        );
        assert_eq!(tombs(&b, "p"), vec![("10.0.0.9".to_string(), false)]);
        let short = 2_000 + TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
        b.expire(short, &mut Vec::new());
        // The copy from before the deregister arrives late.
        b.merge_from_peer(old, short + 1);
        assert!(
            ips(&mut b, "p", short + 1).is_empty(),
            "the long tombstone keeps it deleted (said persistent: {said_persistent})"
        );
    }
}

#[test]
fn deregistering_again_an_ephemeral_instance_deleted_here_keeps_the_short_tombstone() {
    let mut b = node(2);
    reg(&mut b, "e", spec("10.0.0.8", 1, &[]), 1_000);
    for t in [2_000, 3_000] {
        b.apply(
            Op::Deregister {
                svc: svc("e"),
                addr: addr("10.0.0.8", 1),
                persistent: false,
            },
            t,
        );
        assert_eq!(tombs(&b, "e"), vec![("10.0.0.8".to_string(), true)]);
    }
    let short = 3_000 + TOMBSTONE_VERIFY_ROUNDS_MS + Timeouts::default().delete_timeout_ms;
    b.expire(short + 1_000, &mut Vec::new());
    assert!(tombs(&b, "e").is_empty(), "purged at the short TTL");
}

#[test]
fn a_view_finds_each_of_its_instances_by_key_and_no_other() {
    let mut s = store();
    for i in 0..300u32 {
        let mut sp = spec(&format!("10.1.{}.{}", i / 256, i % 256), 80, &[]);
        if i % 3 == 0 {
            sp.addr.cluster = "c1".into();
        }
        s.apply(
            Op::Register {
                svc: svc("many"),
                spec: sp,
            },
            1_000,
        );
    }
    let service = s.service(svc("many").full_key()).unwrap();
    let view = super::view::ServiceView::of(service);
    for key in service.instances.keys() {
        assert_eq!(view.instance(key).map(|i| &*i.key), Some(&**key));
    }
    for absent in [
        "10.1.0.0#81#DEFAULT",
        "10.1.0.1#80#c1",
        "",
        "#",
        "10.9.9.9#80#DEFAULT",
    ] {
        assert!(view.instance(absent).is_none(), "{absent}");
    }
}
