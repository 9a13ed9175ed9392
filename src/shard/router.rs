//! Which core of this node owns a service.
//!
//! The hash is deliberately unrelated to the Distro ownership hash: a node
//! of an N-node cluster only owns services whose `distro_hash % N` equals
//! its index, so reusing that hash modulo the core count would leave some
//! cores with nothing whenever N and the core count share a factor.

/// FNV-1a 64 over the bytes, then the murmur3 finaliser so that the low
/// bits (which `%` uses) depend on every input bit.
pub fn shard_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The shard (core index) that owns the service with this full key
/// (`namespace##group@@service`).
pub fn shard_of(full_key: &str, cores: usize) -> usize {
    debug_assert!(cores > 0);
    (shard_hash(full_key) % cores as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distro::hash::distro_hash;

    const SERVICES: usize = 10_000;

    /// Per-core counts of the services node 0 owns in an `nodes`-node
    /// cluster, spread with `place`.
    fn spread(nodes: usize, cores: usize, place: impl Fn(&str, &str) -> usize) -> Vec<usize> {
        let mut counts = vec![0usize; cores];
        for i in 0..SERVICES {
            let grouped = format!("DEFAULT_GROUP@@service-{i}");
            if !(distro_hash(&grouped) as usize).is_multiple_of(nodes) {
                continue;
            }
            let full = format!("public##{grouped}");
            counts[place(&full, &grouped)] += 1;
        }
        counts
    }

    fn within(counts: &[usize], tolerance: f64) -> bool {
        let total: usize = counts.iter().sum();
        let even = total as f64 / counts.len() as f64;
        counts
            .iter()
            .all(|&c| (c as f64 - even).abs() <= even * tolerance)
    }

    #[test]
    fn owned_services_spread_evenly_over_cores() {
        for nodes in [1, 2, 3, 5] {
            for cores in [2, 4, 8] {
                let counts = spread(nodes, cores, |full, _| shard_of(full, cores));
                assert!(
                    within(&counts, 0.25),
                    "nodes={nodes} cores={cores}: {counts:?} not within 25% of even"
                );
            }
        }
    }

    #[test]
    fn distro_hash_modulo_cores_would_not_spread() {
        let mut failing = Vec::new();
        for nodes in [1, 2, 3, 5] {
            for cores in [2, 4, 8] {
                let counts = spread(nodes, cores, |_, grouped| {
                    distro_hash(grouped) as usize % cores
                });
                if !within(&counts, 0.25) {
                    failing.push((nodes, cores));
                }
            }
        }
        // With 2 nodes, node 0 only owns even hashes: odd cores stay empty.
        assert!(failing.contains(&(2, 2)), "{failing:?}");
        assert!(failing.contains(&(2, 4)), "{failing:?}");
    }
}
