//! When a node is gone for its connection-bound instances (NACOS2.md 6,
//! docs/distro.md): a member that has left the healthy list and stayed
//! out for `LEASE_HOLDER_GRACE_MS`. Pure: the caller feeds the healthy
//! list and the time.

use std::collections::BTreeMap;

/// How long a member stays out of the healthy list before the instances
/// of the connections it held are retired. With DOWN after at most
/// `FAILS_BEFORE_DOWN` failed reports (2 s apart per peer in a 3-node
/// cluster, a little more in larger ones), a dead holder's instances go
/// within about 25 s, inside the 30 s delete timeout; a member back
/// within it (a short partition, a restart) loses nothing.
pub const LEASE_HOLDER_GRACE_MS: u64 = 10_000;
/// How often a node looks for holders that are not members
/// (`HolderWatch::observe_holders`: one pass over its instances).
pub const STRANGER_SCAN_MS: u64 = 5_000;

/// Since when each member has been out of the healthy list.
#[derive(Debug, Clone, Default)]
pub struct HolderWatch {
    left_at: BTreeMap<String, u64>,
    /// The member list at the last look.
    members: Vec<String>,
}

impl HolderWatch {
    /// Records the current member and healthy lists: members not healthy
    /// are out since the first time they were seen out; members healthy
    /// are not. A member removed from the list stays out (since it left
    /// the healthy list, or since its removal).
    pub fn observe(&mut self, members: &[String], healthy: &[String], now_ms: u64) {
        if self.members != members {
            for gone in self.members.iter().filter(|m| !members.contains(m)) {
                self.left_at.entry(gone.clone()).or_insert(now_ms);
            }
            self.members = members.to_vec();
        }
        for m in members {
            if healthy.contains(m) {
                self.left_at.remove(m);
            } else {
                self.left_at.entry(m.clone()).or_insert(now_ms);
            }
        }
    }

    /// Records the holders of connection-bound records this node holds: a
    /// holder that is not a member (one removed before this node started,
    /// or added on the other nodes and not yet here) is out since this node
    /// first saw it. Its records go after the grace unless it becomes a
    /// member and healthy meanwhile (and if it was live after all, it
    /// re-asserts them when the retirement reaches it).
    pub fn observe_holders(&mut self, holders: &[String], me: &str, now_ms: u64) {
        for h in holders {
            if h != me && !self.members.contains(h) {
                self.left_at.entry(h.clone()).or_insert(now_ms);
            }
        }
    }

    /// Members out for at least `grace_ms`, sorted.
    pub fn gone(&self, now_ms: u64, grace_ms: u64) -> Vec<String> {
        self.left_at
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) >= grace_ms)
            .map(|(m, _)| m.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_member_is_gone_only_after_staying_out_for_the_grace() {
        let all = s(&["a", "b", "c"]);
        let mut w = HolderWatch::default();
        w.observe(&all, &all, 0);
        assert!(w.gone(0, 10).is_empty());
        w.observe(&all, &s(&["a", "c"]), 100);
        assert!(w.gone(109, 10).is_empty(), "not yet");
        w.observe(&all, &s(&["a", "c"]), 105);
        assert_eq!(w.gone(110, 10), s(&["b"]), "out since 100, not since 105");
    }

    #[test]
    fn a_member_back_in_time_is_not_gone_and_its_clock_restarts() {
        let all = s(&["a", "b"]);
        let mut w = HolderWatch::default();
        w.observe(&all, &s(&["a"]), 0);
        w.observe(&all, &all, 5);
        assert!(w.gone(100, 10).is_empty());
        w.observe(&all, &s(&["a"]), 200);
        assert!(
            w.gone(205, 10).is_empty(),
            "the grace counts again from 200"
        );
        assert_eq!(w.gone(210, 10), s(&["b"]));
    }

    #[test]
    fn a_member_removed_from_the_list_is_out_since_its_removal_or_earlier() {
        let mut w = HolderWatch::default();
        w.observe(&s(&["a", "b", "c"]), &s(&["a", "b", "c"]), 0);
        w.observe(&s(&["a", "c"]), &s(&["a", "c"]), 100);
        assert!(w.gone(109, 10).is_empty(), "not yet");
        assert_eq!(w.gone(110, 10), s(&["b"]), "out since its removal");
        w.observe(&s(&["a", "c"]), &s(&["a"]), 200);
        w.observe(&s(&["a"]), &s(&["a"]), 300);
        assert_eq!(w.gone(210, 10), s(&["b", "c"]), "c out since 200, not 300");
        w.observe(&s(&["a", "b"]), &s(&["a", "b"]), 400);
        assert_eq!(w.gone(1_000, 10), s(&["c"]), "b added back and healthy");
    }

    #[test]
    fn a_holder_that_is_no_member_is_out_since_it_was_first_seen() {
        let mut w = HolderWatch::default();
        w.observe(&s(&["a", "b"]), &s(&["a", "b"]), 0);
        w.observe_holders(&s(&["a", "x"]), "a", 100);
        w.observe_holders(&s(&["x"]), "a", 500);
        assert!(w.gone(109, 10).is_empty(), "members are not strangers");
        assert_eq!(w.gone(110, 10), s(&["x"]), "out since 100");
        w.observe(&s(&["a", "b", "x"]), &s(&["a", "b", "x"]), 600);
        assert!(w.gone(1_000, 10).is_empty(), "a member now, and healthy");
    }
}
