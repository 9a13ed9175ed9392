//! The per-shard task map (SPEC 4.4): changes to a service are coalesced
//! per (service, peer) for `sync_delay_ms`, handed out in per-peer batches
//! when due, and retried with capped exponential backoff after a failed
//! send. Pure: the driver calls `due(now)` on its tick and reports
//! outcomes.

use std::collections::HashMap;

/// Limits and timings.
#[derive(Debug, Clone, Copy)]
pub struct TaskConfig {
    pub sync_delay_ms: u64,
    /// First retry delay; doubled per failed attempt.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Pending (service, peer) entries; past it new marks are dropped and
    /// counted (the next verify round repairs what they would have sent).
    pub entries_max: usize,
    /// Services per batch handed out for one peer.
    pub batch_services_max: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            sync_delay_ms: 100,
            retry_base_ms: 100,
            retry_max_ms: 5_000,
            entries_max: 1_000_000,
            batch_services_max: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Task {
    due_ms: u64,
    /// Failed sends so far.
    attempts: u32,
}

/// Pending replication of one shard.
#[derive(Debug)]
pub struct TaskMap {
    config: TaskConfig,
    pending: HashMap<(String, String), Task>,
    /// Marks refused because the map was full.
    pub dropped: u64,
}

impl TaskMap {
    pub fn new(config: TaskConfig) -> TaskMap {
        TaskMap {
            config,
            pending: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// `service` changed: replicate it to each of `peers` after the sync
    /// delay. A pending entry keeps its (earlier) due time: that is the
    /// coalescing.
    pub fn mark(&mut self, service: &str, peers: &[String], now_ms: u64) {
        let task = Task {
            due_ms: now_ms + self.config.sync_delay_ms,
            attempts: 0,
        };
        for peer in peers {
            self.add((service.to_string(), peer.clone()), task);
        }
    }

    /// Adds an entry unless one is pending (it keeps its earlier due time)
    /// or the map is full (counted in `dropped`).
    fn add(&mut self, key: (String, String), task: Task) {
        if self.pending.contains_key(&key) {
            return;
        }
        if self.pending.len() >= self.config.entries_max {
            self.dropped += 1;
            return;
        }
        self.pending.insert(key, task);
    }

    /// Takes every due entry, grouped per peer into batches of at most
    /// `batch_services_max` services. Sorted, so the result is
    /// deterministic.
    pub fn due(&mut self, now_ms: u64) -> Vec<(String, Vec<String>)> {
        let mut due: Vec<(String, String)> = self
            .pending
            .iter()
            .filter(|(_, t)| t.due_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        due.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        let mut batches: Vec<(String, Vec<String>)> = Vec::new();
        for (service, peer) in due {
            let t = self.pending.remove(&(service.clone(), peer.clone()));
            debug_assert!(t.is_some());
            match batches.last_mut() {
                Some((p, services))
                    if *p == peer && services.len() < self.config.batch_services_max =>
                {
                    services.push(service)
                }
                _ => batches.push((peer, vec![service])),
            }
        }
        batches
    }

    /// A batch to `peer` failed: retry each service with backoff, unless a
    /// newer change already re-marked it. `attempts` is how many times
    /// these services have failed before (0 for the first failure).
    pub fn failed(&mut self, peer: &str, services: Vec<String>, attempts: u32, now_ms: u64) {
        let backoff = self
            .config
            .retry_base_ms
            .saturating_mul(1u64 << attempts.min(20))
            .min(self.config.retry_max_ms);
        let task = Task {
            due_ms: now_ms + backoff,
            attempts: attempts + 1,
        };
        for service in services {
            self.add((service, peer.to_string()), task);
        }
    }

    /// Failed attempts recorded for a pending entry.
    pub fn attempts(&self, service: &str, peer: &str) -> Option<u32> {
        self.pending
            .get(&(service.to_string(), peer.to_string()))
            .map(|t| t.attempts)
    }

    /// `peer` left the member list: nothing more is sent to it.
    pub fn forget_peer(&mut self, peer: &str) {
        self.pending.retain(|(_, p), _| p != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(ps: &[&str]) -> Vec<String> {
        ps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_coalesce_per_service_and_peer_and_batch_per_peer() {
        let mut t = TaskMap::new(TaskConfig::default());
        let p = peers(&["b:1", "c:1"]);
        t.mark("s1", &p, 0);
        t.mark("s1", &p, 50); // coalesced: still due at 100
        t.mark("s2", &p, 60); // due at 160
        assert!(t.due(99).is_empty());
        assert_eq!(
            t.due(100),
            vec![
                ("b:1".into(), vec!["s1".into()]),
                ("c:1".into(), vec!["s1".into()])
            ]
        );
        assert_eq!(
            t.due(160),
            vec![
                ("b:1".into(), vec!["s2".into()]),
                ("c:1".into(), vec!["s2".into()])
            ]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let mut t = TaskMap::new(TaskConfig::default());
        t.failed("b:1", vec!["s".into()], 0, 1_000);
        assert!(t.due(1_099).is_empty());
        assert_eq!(t.due(1_100).len(), 1, "first retry after 100 ms");
        t.failed("b:1", vec!["s".into()], 3, 2_000);
        assert_eq!(t.attempts("s", "b:1"), Some(4));
        assert!(t.due(2_799).is_empty());
        assert_eq!(t.due(2_800).len(), 1, "after 800 ms");
        t.failed("b:1", vec!["s".into()], 30, 0);
        assert!(t.due(4_999).is_empty());
        assert_eq!(t.due(5_000).len(), 1, "capped at 5 s");
    }

    #[test]
    fn bounded_and_peers_can_be_forgotten() {
        let mut t = TaskMap::new(TaskConfig {
            entries_max: 2,
            batch_services_max: 1,
            ..TaskConfig::default()
        });
        t.mark("s1", &peers(&["b:1"]), 0);
        t.mark("s2", &peers(&["b:1", "c:1"]), 0);
        assert_eq!((t.len(), t.dropped), (2, 1));
        assert_eq!(t.due(100).len(), 2, "one service per batch");
        t.mark("s3", &peers(&["b:1", "c:1"]), 0);
        t.forget_peer("b:1");
        assert_eq!(t.due(100), vec![("c:1".into(), vec!["s3".into()])]);
    }
}
