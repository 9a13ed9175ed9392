//! The verify round's comparison (SPEC 4.4): a peer sends the checksums of
//! the services it owns; the receiver fetches those whose checksum differs
//! from its own copy, or that it does not have. Pure.

/// Keys to fetch from the source: listed with a checksum that differs
/// from `mine(key)`, or unknown here. Sorted, deduplicated.
pub fn keys_to_fetch(theirs: &[(String, u64)], mine: impl Fn(&str) -> Option<u64>) -> Vec<String> {
    let mut out: Vec<String> = theirs
        .iter()
        .filter(|(k, sum)| mine(k) != Some(*sum))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instance::{InstanceAddr, InstanceSpec, Timeouts};
    use crate::store::service::ServiceId;
    use crate::store::{Op, Store};

    fn register(s: &mut Store, name: &str, ip: &str, now: u64) {
        let spec = InstanceSpec {
            addr: InstanceAddr {
                ip: ip.into(),
                port: 80,
                cluster: "DEFAULT".into(),
            },
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            metadata: Default::default(),
        };
        s.apply(
            Op::Register {
                svc: ServiceId::new("public", "DEFAULT_GROUP", name),
                spec,
            },
            now,
        );
    }

    #[test]
    fn differing_and_missing_services_are_fetched_until_replicas_agree() {
        let key = |n: &str| {
            ServiceId::new("public", "DEFAULT_GROUP", n)
                .full_key()
                .to_string()
        };
        let mut owner = Store::new(Timeouts::default(), 100, 0);
        owner.set_writer(1);
        let mut replica = Store::new(Timeouts::default(), 100, 0);
        replica.set_writer(2);
        register(&mut owner, "a", "10.0.0.1", 1_000);
        register(&mut owner, "b", "10.0.0.2", 1_000);
        replica.merge(owner.datum(&key("a")).unwrap(), 1_001);
        register(&mut owner, "a", "10.0.0.3", 2_000); // a changed since
        let sums: Vec<(String, u64)> = ["a", "b"]
            .iter()
            .map(|n| (key(n), owner.datum(&key(n)).unwrap().checksum()))
            .collect();
        fn sum(r: &Store, k: &str) -> Option<u64> {
            r.datum(k).map(|d| d.checksum())
        }
        let fetch = keys_to_fetch(&sums, |k| sum(&replica, k));
        assert_eq!(fetch, vec![key("a"), key("b")]);
        for k in fetch {
            replica.merge(owner.datum(&k).unwrap(), 2_001);
        }
        assert!(
            keys_to_fetch(&sums, |k| sum(&replica, k)).is_empty(),
            "in sync after one round"
        );
    }
}
