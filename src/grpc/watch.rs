//! A gRPC connection's liveness and its unanswered pushes, as decisions
//! without I/O or clock reads (NACOS2.md, ejection and push): the shard's
//! sweep (`server::sweep_loop`) passes the time and carries them out.

use std::collections::VecDeque;

use bytes::Bytes;

/// Pushes written to a connection and not yet answered; past it further
/// pushes to that connection are dropped (counted in
/// `registry_grpc_pushes_dropped_total`), so that a stalled client cannot
/// grow the node's send buffers.
pub const PUSHES_UNACKED_MAX: usize = 64;
/// A push not answered within this is written again (Nacos: 5 s).
pub const PUSH_ACK_TIMEOUT_MS: u64 = 5_000;
/// Writes of one push, the first included; then it is dropped.
pub const PUSH_ATTEMPTS_MAX: u32 = 3;

/// The node's liveness settings (`--grpc-probe-idle-ms`,
/// `--grpc-probe-timeout-ms`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle_ms: u64,
    pub probe_timeout_ms: u64,
}

impl Timing {
    /// How often the sweep runs: a quarter of the shortest timeout, within
    /// 50 ms..1 s.
    pub fn sweep_ms(&self) -> u64 {
        (self
            .idle_ms
            .min(self.probe_timeout_ms)
            .min(PUSH_ACK_TIMEOUT_MS)
            / 4)
        .clamp(50, 1_000)
    }
}

/// What the sweep does with one connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Fine,
    /// Silent for the idle time: send a `ClientDetectionRequest`.
    Probe,
    /// Probed and silent for the probe timeout: close it.
    Eject,
}

/// `last_active_ms`: the connection's last request or stream message;
/// `probed_at`: when the outstanding probe was sent (any message since
/// clears it).
pub fn liveness(last_active_ms: u64, probed_at: Option<u64>, now_ms: u64, t: Timing) -> Liveness {
    match probed_at {
        Some(at) if now_ms.saturating_sub(at) >= t.probe_timeout_ms => Liveness::Eject,
        Some(_) => Liveness::Fine,
        None if now_ms.saturating_sub(last_active_ms) >= t.idle_ms => Liveness::Probe,
        None => Liveness::Fine,
    }
}

/// One push written and not answered yet.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its request id.
    pub id: u64,
    /// The service (full key): a later push of it supersedes this one.
    pub svc: String,
    /// The whole gRPC frame, to write again as it was.
    pub frame: Bytes,
    pub sent_at: u64,
    pub attempts: u32,
}

/// A connection's pushes: how many written frames are unanswered (at
/// most `PUSHES_UNACKED_MAX`: a client that stops reading cannot make the
/// node buffer more), and the latest unanswered push of each service,
/// oldest first, kept to be written again.
#[derive(Debug, Default)]
pub struct Pushes {
    pending: VecDeque<Pending>,
    in_flight: usize,
}

impl Pushes {
    /// Pushes kept to be written again.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Frames written and unanswered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A new push of `svc` is to be written: it supersedes an unanswered
    /// one of the same service. False (and nothing kept) when the
    /// connection already has `PUSHES_UNACKED_MAX` frames unanswered: the
    /// caller drops the push.
    pub fn sent(&mut self, id: u64, svc: &str, frame: Bytes, now_ms: u64) -> bool {
        if self.in_flight >= PUSHES_UNACKED_MAX {
            return false;
        }
        self.in_flight += 1;
        self.pending.retain(|p| p.svc != svc);
        self.pending.push_back(Pending {
            id,
            svc: svc.to_string(),
            frame,
            sent_at: now_ms,
            attempts: 1,
        });
        true
    }

    /// The client answered push `id` (None: its answer named no id; the
    /// oldest is taken as answered, the client answers in order). True
    /// when that answered a push kept for another write.
    pub fn acked(&mut self, id: Option<u64>) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        let at = match id {
            Some(id) => self.pending.iter().position(|p| p.id == id),
            None => (!self.pending.is_empty()).then_some(0),
        };
        at.and_then(|i| self.pending.remove(i)).is_some()
    }

    /// The frames to write again now, and how many pushes were given up
    /// (written `PUSH_ATTEMPTS_MAX` times without an answer).
    pub fn due(&mut self, now_ms: u64) -> (Vec<Bytes>, usize) {
        let mut again = Vec::new();
        let before = self.pending.len();
        let in_flight = &mut self.in_flight;
        self.pending.retain_mut(|p| {
            if now_ms.saturating_sub(p.sent_at) < PUSH_ACK_TIMEOUT_MS {
                return true;
            }
            if p.attempts >= PUSH_ATTEMPTS_MAX {
                // Its answer will not come: it no longer counts as in flight.
                *in_flight = in_flight.saturating_sub(1);
                return false;
            }
            p.attempts += 1;
            p.sent_at = now_ms;
            again.push(p.frame.clone());
            true
        });
        (again, before - self.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        idle_ms: 20_000,
        probe_timeout_ms: 5_000,
    };

    #[test]
    fn an_idle_connection_is_probed_then_ejected_when_it_stays_silent() {
        assert_eq!(liveness(0, None, 19_999, T), Liveness::Fine);
        assert_eq!(liveness(0, None, 20_000, T), Liveness::Probe);
        assert_eq!(liveness(0, Some(20_000), 24_999, T), Liveness::Fine);
        assert_eq!(liveness(0, Some(20_000), 25_000, T), Liveness::Eject);
        // Traffic after the probe cleared it (the caller resets probed_at).
        assert_eq!(liveness(22_000, None, 25_000, T), Liveness::Fine);
        assert_eq!(T.sweep_ms(), 1_000);
        let short = Timing {
            idle_ms: 100,
            probe_timeout_ms: 100,
        };
        assert_eq!(short.sweep_ms(), 50);
    }

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn unanswered_pushes_are_written_again_then_given_up() {
        let mut p = Pushes::default();
        assert!(p.sent(1, "a", frame(1), 0));
        assert_eq!(p.due(4_999), (vec![], 0));
        assert_eq!(p.due(5_000), (vec![frame(1)], 0), "second attempt");
        assert_eq!(p.due(9_999), (vec![], 0));
        assert_eq!(p.due(10_000), (vec![frame(1)], 0), "third attempt");
        assert_eq!(p.due(15_000), (vec![], 1), "given up after three");
        assert!(p.is_empty());
    }

    #[test]
    fn an_answer_clears_its_push_and_a_newer_push_supersedes_an_older_one() {
        let mut p = Pushes::default();
        p.sent(1, "a", frame(1), 0);
        p.sent(2, "b", frame(2), 0);
        p.sent(3, "a", frame(3), 1);
        assert_eq!(p.len(), 2, "a's first push superseded");
        assert!(p.acked(Some(2)));
        assert!(!p.acked(Some(2)), "answered once");
        assert_eq!(p.due(6_000), (vec![frame(3)], 0));
        assert!(
            p.acked(None),
            "an answer without a known id takes the oldest"
        );
        assert!(p.is_empty());
        assert!(!p.acked(None));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_connection_has_at_most_the_bound_in_flight_even_for_one_service() {
        let mut p = Pushes::default();
        for i in 0..PUSHES_UNACKED_MAX as u64 {
            assert!(p.sent(i, "s", frame(0), 0));
        }
        assert_eq!(p.len(), 1, "one kept for another write: the latest");
        assert!(
            !p.sent(999, "s", frame(0), 0),
            "the client stopped answering"
        );
        assert!(!p.sent(999, "t", frame(0), 0));
        assert_eq!(p.in_flight(), PUSHES_UNACKED_MAX);
        p.acked(Some(3));
        assert!(p.sent(1000, "t", frame(0), 0), "an answer makes room");
    }
}
