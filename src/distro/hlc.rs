//! Hybrid logical clock and versions (docs/distro.md, "Versions and
//! merge"). A timestamp packs physical milliseconds (high 48 bits) and a
//! logical counter (low 16 bits), so comparing the `u64`s compares
//! (physical, logical). Time is a parameter; nothing here reads a clock.

/// Bits of the logical counter.
const LOGICAL_BITS: u32 = 16;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

pub fn pack(physical_ms: u64, logical: u64) -> u64 {
    (physical_ms << LOGICAL_BITS) | (logical & LOGICAL_MAX)
}

pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

pub fn logical(ts: u64) -> u64 {
    ts & LOGICAL_MAX
}

/// How far ahead of the local wall clock a version received from a peer
/// may be. A version further ahead comes from a peer whose clock has gone
/// wrong, or from a corrupt message: observing it would push every later
/// local write into the future, and one near the end of the range wrapped
/// the clock round to 0, so that local writes lost to everything (found by
/// the datum-batch fuzz target's check, with a seed added by hand). Such versions are not taken in (`Store::merge`).
pub const DRIFT_MAX_MS: u64 = 60_000;

/// Whether a version's timestamp may be taken in at local time `wall_ms`.
pub fn acceptable(ts: u64, wall_ms: u64) -> bool {
    physical_ms(ts) <= wall_ms.saturating_add(DRIFT_MAX_MS)
}

/// One writer's clock.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A timestamp for a local event (a write), later than every timestamp
    /// this clock has issued or observed.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        let wall = pack(wall_ms, 0);
        self.last = if wall > self.last {
            wall
        } else {
            Self::next(self.last)
        };
        self.last
    }

    /// Takes in a timestamp seen on a message, so that later local events
    /// order after it. Returns the clock's new value.
    /// A remote timestamp beyond `DRIFT_MAX_MS` is ignored.
    pub fn observe(&mut self, remote: u64, wall_ms: u64) -> u64 {
        if !acceptable(remote, wall_ms) {
            return self.last;
        }
        let wall = pack(wall_ms, 0);
        let max = self.last.max(remote);
        self.last = if wall > max { wall } else { Self::next(max) };
        self.last
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next timestamp after `ts`; a full logical counter moves the
    /// physical part on by a millisecond rather than wrapping.
    fn next(ts: u64) -> u64 {
        if logical(ts) == LOGICAL_MAX {
            pack(physical_ms(ts) + 1, 0)
        } else {
            ts + 1
        }
    }
}

/// The version of a record: when (HLC) and who (node and shard) wrote it.
/// The derived order compares `hlc` first, then `writer`: a total order,
/// so every node picks the same winner.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Version {
    pub hlc: u64,
    pub writer: u64,
}

/// Set in the writer of a retirement: the tombstone every node writes, on
/// its own, for a connection-bound record whose holder is gone. No node
/// writes with it otherwise (writer ids are `node id << 8 | shard`, node
/// ids below 2^55).
pub const RETIRED_WRITER_BIT: u64 = 1 << 63;
/// Shard id bits in a writer id: writer = node id << 8 | shard.
pub const WRITER_SHARD_BITS: u32 = 8;
/// Set in the node id of an IPv6 member (whose id is a hash).
const IPV6_NODE_BIT: u64 = 1 << 54;

/// A member's node id (issue 14): derived from its advertised address
/// alone, so it is the same before and after any change of the member
/// list and across restarts, and two members never share one. An IPv4
/// `ip:port` is exact: `ip << 16 | port` (below 2^48; at least 2^40 for
/// any routable address, far above the old position-based ids). An IPv6
/// address is a 54-bit FNV-1a hash of its text with bit 54 set (a cluster
/// whose members' ids collide is refused: `colliding_ids`). A standalone
/// node writes with node id 0. None for text that is not `ip:port`.
pub fn node_id(address: &str) -> Option<u64> {
    match address.parse::<std::net::SocketAddr>().ok()? {
        std::net::SocketAddr::V4(a) => {
            Some(u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port()))
        }
        std::net::SocketAddr::V6(a) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in a.to_string().bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            Some(IPV6_NODE_BIT | (h & (IPV6_NODE_BIT - 1)))
        }
    }
}

/// The writer id of one shard of a node.
pub fn writer_id(node_id: u64, shard: usize) -> u64 {
    node_id << WRITER_SHARD_BITS | shard as u64
}

/// The node id a writer id names.
pub fn node_of(writer: u64) -> u64 {
    (writer & !RETIRED_WRITER_BIT) >> WRITER_SHARD_BITS
}

/// Two members of a list whose node ids are the same (only possible for
/// IPv6 hashes), if any.
pub fn colliding_ids(members: &[String]) -> Option<(String, String)> {
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            if node_id(a).is_some() && node_id(a) == node_id(b) {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
}

/// Old writer ids (stores of format 1) named a member by its position in
/// the sorted member list: `position << 8 | shard`, bit 31 for a
/// retirement. Rewrites such a writer into the address-derived form,
/// taking the positions from `sorted` (the list the node was started
/// with, as every node had to be); writers already in the new form, and
/// positions past the list, are kept.
pub fn upgrade_legacy_writer(writer: u64, sorted: &[String]) -> u64 {
    const LEGACY_RETIRED: u64 = 1 << 31;
    if writer >= 1 << 32 {
        return writer;
    }
    let position = ((writer & !LEGACY_RETIRED) >> WRITER_SHARD_BITS) as usize;
    let Some(node) = sorted.get(position).and_then(|a| node_id(a)) else {
        return writer;
    };
    let shard = writer & ((1 << WRITER_SHARD_BITS) - 1);
    let retired = if writer & LEGACY_RETIRED != 0 {
        RETIRED_WRITER_BIT
    } else {
        0
    };
    node << WRITER_SHARD_BITS | shard | retired
}

impl Version {
    /// The version of the tombstone that retires a record of this version:
    /// just above it and below anything written later, and the same on
    /// every node, so that independent retirements agree and a register
    /// made after the record (the client reconnected elsewhere) wins.
    pub fn retired(self) -> Version {
        Version {
            hlc: self.hlc,
            writer: self.writer | RETIRED_WRITER_BIT,
        }
    }

    pub fn is_retirement(self) -> bool {
        self.writer & RETIRED_WRITER_BIT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_the_wall_clock_stalls_or_steps_back() {
        let mut c = Hlc::default();
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(900); // the wall clock stepped back
        let e = c.tick(1001);
        assert!(a < b && b < d && d < e, "{a} {b} {d} {e}");
        assert_eq!(physical_ms(a), 1000);
        assert_eq!(physical_ms(d), 1000, "never behind what it issued");
    }

    #[test]
    fn observing_a_clock_ahead_orders_later_writes_after_it() {
        let mut slow = Hlc::default();
        let mut fast = Hlc::default();
        let remote = fast.tick(5000); // a node whose clock is 4 s ahead
        slow.tick(1000);
        slow.observe(remote, 1000);
        let next = slow.tick(1000);
        assert!(
            next > remote,
            "a write after seeing {remote} must order after it"
        );
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let mut c = Hlc::default();
        c.tick(7);
        for _ in 0..LOGICAL_MAX {
            c.tick(7);
        }
        let t = c.tick(7);
        assert_eq!((physical_ms(t), logical(t)), (8, 0));
    }

    #[test]
    fn node_ids_come_from_the_address_alone_and_never_meet_legacy_ones() {
        let a = node_id("127.0.0.1:8848").unwrap();
        assert_eq!(a, (0x7f00_0001u64 << 16) | 8848);
        assert_ne!(a, node_id("127.0.0.1:8849").unwrap());
        assert_ne!(a, node_id("127.0.0.2:8848").unwrap());
        let w = writer_id(a, 3);
        assert_eq!(node_of(w), a);
        assert_eq!(node_of(Version { hlc: 1, writer: w }.retired().writer), a);
        assert!(w >= 1 << 32, "above every position-based id");
        let v6 = node_id("[::1]:8848").unwrap();
        assert_eq!(v6 & IPV6_NODE_BIT, IPV6_NODE_BIT);
        assert!(writer_id(v6, 255) < RETIRED_WRITER_BIT);
        assert_ne!(v6, node_id("[::1]:8849").unwrap());
        assert_eq!(node_id("host:1"), None);
        let list = ["127.0.0.1:1".to_string(), "[::1]:1".to_string()];
        assert_eq!(colliding_ids(&list), None);
    }

    #[test]
    fn legacy_writers_are_rewritten_by_their_position_in_the_start_list() {
        let sorted: Vec<String> = ["127.0.0.1:8848", "127.0.0.1:8849", "127.0.0.1:8850"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let id = |i: usize| node_id(&sorted[i]).unwrap();
        assert_eq!(
            upgrade_legacy_writer(1 << 8 | 2, &sorted),
            writer_id(id(1), 2)
        );
        assert_eq!(
            upgrade_legacy_writer(1 << 31 | 2 << 8, &sorted),
            writer_id(id(2), 0) | RETIRED_WRITER_BIT,
            "a legacy retirement stays a retirement"
        );
        let new = writer_id(id(0), 1);
        assert_eq!(upgrade_legacy_writer(new, &sorted), new, "new ids kept");
        assert_eq!(
            upgrade_legacy_writer(7 << 8, &sorted),
            7 << 8,
            "unknown position kept"
        );
    }

    #[test]
    fn versions_order_by_time_then_writer() {
        let v = |hlc, writer| Version { hlc, writer };
        assert!(v(1, 9) < v(2, 0));
        assert!(v(2, 0) < v(2, 1));
    }
}
