//! Merging two copies of a service's records (docs/distro.md): per key,
//! the record with the higher version wins, tombstones included. The merge
//! is commutative, associative and idempotent, so replicas that receive
//! the same writes in any order, any number of times, end up equal.

use std::collections::HashMap;
use std::hash::Hash;

use super::hlc::Version;

/// A record that carries its version; a tombstone is a record too.
pub trait Versioned: Clone {
    fn version(&self) -> Version;
}

/// Merges `incoming` into `local`; returns how many keys changed.
pub fn merge_into<K, R, S>(
    local: &mut HashMap<K, R, S>,
    incoming: impl IntoIterator<Item = (K, R)>,
) -> usize
where
    K: Eq + Hash,
    R: Versioned,
    S: std::hash::BuildHasher,
{
    let mut changed = 0;
    for (k, r) in incoming {
        match local.get(&k) {
            Some(mine) if mine.version() >= r.version() => {}
            _ => {
                local.insert(k, r);
                changed += 1;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: a value or a tombstone (`None`), with its version.
    #[derive(Debug, Clone, PartialEq)]
    struct Rec {
        value: Option<u32>,
        version: Version,
    }

    impl Versioned for Rec {
        fn version(&self) -> Version {
            self.version
        }
    }

    fn rec(value: Option<u32>, hlc: u64, writer: u64) -> Rec {
        Rec {
            value,
            version: Version { hlc, writer },
        }
    }

    type Copy = HashMap<u8, Rec>;

    fn merged(a: &Copy, b: &Copy) -> Copy {
        let mut out = a.clone();
        merge_into(&mut out, b.clone());
        out
    }

    /// Deterministic pseudo-random copies over a few keys and writers.
    fn random_copy(seed: &mut u64) -> Copy {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let mut c = Copy::new();
        for _ in 0..(next() % 6) {
            let key = (next() % 4) as u8;
            let (hlc, writer) = (next() % 5, next() % 3);
            // Equal versions always carry equal content: a writer issues
            // each timestamp once, for one write (a value or a tombstone).
            let id = hlc * 10 + writer + u64::from(key) * 100;
            let value = (id % 3 != 0).then_some(id as u32);
            c.insert(key, rec(value, hlc, writer));
        }
        c
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            let (a, b, c) = (
                random_copy(&mut seed),
                random_copy(&mut seed),
                random_copy(&mut seed),
            );
            assert_eq!(merged(&a, &b), merged(&b, &a), "commutative");
            assert_eq!(
                merged(&merged(&a, &b), &c),
                merged(&a, &merged(&b, &c)),
                "associative"
            );
            assert_eq!(merged(&a, &a), a, "idempotent");
        }
    }

    #[test]
    fn newer_tombstone_beats_older_value_and_newer_value_beats_older_tombstone() {
        let mut local: Copy = [(1, rec(Some(5), 10, 0))].into();
        assert_eq!(merge_into(&mut local, [(1, rec(None, 11, 1))]), 1);
        assert_eq!(local[&1].value, None, "deregistered");
        assert_eq!(
            merge_into(&mut local, [(1, rec(Some(5), 10, 0))]),
            0,
            "an old copy does not resurrect it"
        );
        assert_eq!(local[&1].value, None);
        assert_eq!(
            merge_into(&mut local, [(1, rec(Some(7), 12, 2))]),
            1,
            "registered again later"
        );
        assert_eq!(local[&1].value, Some(7));
    }

    #[test]
    fn writes_on_both_sides_of_a_partition_are_all_kept() {
        let mut left: Copy = [(1, rec(Some(1), 10, 0))].into();
        let mut right: Copy = [(2, rec(Some(2), 10, 1))].into();
        let l0 = left.clone();
        merge_into(&mut left, right.clone());
        merge_into(&mut right, l0);
        assert_eq!(left, right);
        assert_eq!(left.len(), 2, "whole-list last-writer-wins would keep one");
    }
}
