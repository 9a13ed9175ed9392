//! Cluster membership (SPEC 4.1) as a state machine without I/O: the
//! driver asks whom to report to next, tells it how the report went and
//! which reports arrived, and reads the healthy list. Every change to the
//! healthy list bumps `epoch`, which the driver broadcasts to the shards.

use super::hash::owner_index;

/// Failed reports in a row that turn SUSPICIOUS into DOWN.
pub const FAILS_BEFORE_DOWN: u32 = 3;

/// Longest a disagreement about the member list holds expiry back (see
/// `Disagreement`): a node left on another list for longer (a forgotten
/// file) no longer keeps dead instances alive; the clients of what it
/// misroutes re-register when their beat is answered 20404.
pub const DISAGREEMENT_HOLD_MAX_MS: u64 = 120_000;

/// Signs of disagreement further apart than this many report rounds (one
/// report interval per other member) start a new disagreement.
pub const DISAGREEMENT_GAP_ROUNDS: u64 = 3;

/// What a node answers (400) to a report from a node not in its list; the
/// reporter reads it as a sign that the lists differ.
pub const NOT_ANOTHER_MEMBER: &str = "is not another member";

/// Whether some node works from another member list than this one (a
/// report carrying another list digest, a report from a node that is no
/// member here, a report of ours refused as "not another member"). While
/// the lists differ, a service may have two owners: the beats of its
/// instances reach the one the relaying node names, and the other one,
/// hearing nothing, would expire them and replicate the deletes. So while
/// a disagreement lasts (at most `DISAGREEMENT_HOLD_MAX_MS`), every sign
/// of it gives the owned instances a fresh timeout, as an ownership change
/// does. Pure: time is a parameter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Disagreement {
    /// When the current disagreement was first seen.
    since_ms: Option<u64>,
    /// The latest sign of it.
    last_ms: u64,
}

impl Disagreement {
    /// A sign of disagreement at `now_ms`. One more than `gap_ms` after the
    /// previous starts a new disagreement. Returns (whether this sign
    /// started one, whether expiry is still held back).
    pub fn seen(&mut self, now_ms: u64, gap_ms: u64) -> (bool, bool) {
        let started = match self.since_ms {
            Some(_) if now_ms.saturating_sub(self.last_ms) <= gap_ms => false,
            _ => {
                self.since_ms = Some(now_ms);
                true
            }
        };
        self.last_ms = now_ms;
        (started, self.holding(now_ms))
    }

    /// Whether a sign at `now_ms` holds expiry back: the disagreement has
    /// not yet lasted `DISAGREEMENT_HOLD_MAX_MS`.
    pub fn holding(&self, now_ms: u64) -> bool {
        self.since_ms
            .is_some_and(|s| now_ms.saturating_sub(s) <= DISAGREEMENT_HOLD_MAX_MS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Suspicious,
    Down,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Up => "UP",
            State::Suspicious => "SUSPICIOUS",
            State::Down => "DOWN",
        }
    }
}

/// How a member report went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// 200: the member is UP.
    Accepted,
    /// 503: the member is up but still loading its snapshot.
    Starting,
    /// Nothing listens there.
    Refused,
    /// 403: the member refused our cluster token (the nodes were started
    /// with different `--cluster-token`s). DOWN at once, and said so.
    TokenRefused,
    /// Timeout, reset, any other answer.
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// `ip:port`, as configured.
    pub address: String,
    pub state: State,
    /// Failed reports in a row.
    pub fail_count: u32,
    /// The last answer from it was a 403 for our cluster token.
    pub token_refused: bool,
}

#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    /// Every member including this node, sorted by address string.
    members: Vec<Member>,
    /// Round-robin position over the other members.
    cursor: usize,
    /// Bumped whenever the healthy list changes.
    epoch: u64,
    /// Bumped whenever the member list itself changes (issue 14).
    list_version: u64,
    /// Wall-clock ms of the last member-list change; 0 before the first.
    list_changed_ms: u64,
    /// Whether another node works from another list (see `Disagreement`).
    disagreement: Disagreement,
}

/// What a new member list changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl ListChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ListError {
    #[error("this node ({0}) is not among the new members; the old list is kept")]
    NotAMember(String),
    #[error("members {0} and {1} would have the same node id; the old list is kept")]
    CollidingIds(String, String),
}

impl Membership {
    /// `peers` may or may not include `me`; duplicates are ignored. Every
    /// member starts UP.
    pub fn new(me: &str, peers: &[String]) -> Membership {
        let mut all: Vec<String> = peers.to_vec();
        all.push(me.to_string());
        all.sort();
        all.dedup();
        Membership {
            me: me.to_string(),
            members: all
                .into_iter()
                .map(|address| Member {
                    address,
                    state: State::Up,
                    fail_count: 0,
                    token_refused: false,
                })
                .collect(),
            cursor: 0,
            epoch: 1,
            list_version: 1,
            list_changed_ms: 0,
            disagreement: Disagreement::default(),
        }
    }

    /// Applies a new member list (issue 14): members kept keep their
    /// state; added ones start DOWN (nothing is forwarded or owned by them
    /// until a report shows them UP, that is with their snapshot loaded);
    /// removed ones are forgotten (their services move to the others). A
    /// list without this node, or with two members of one node id, is
    /// refused and changes nothing.
    pub fn set_list(&mut self, list: &[String], now_ms: u64) -> Result<ListChange, ListError> {
        let mut all: Vec<String> = list.to_vec();
        all.sort();
        all.dedup();
        if !all.contains(&self.me) {
            return Err(ListError::NotAMember(self.me.clone()));
        }
        if let Some((a, b)) = super::hlc::colliding_ids(&all) {
            return Err(ListError::CollidingIds(a, b));
        }
        let change = ListChange {
            added: all
                .iter()
                .filter(|a| !self.members.iter().any(|m| &m.address == *a))
                .cloned()
                .collect(),
            removed: self
                .members
                .iter()
                .filter(|m| !all.contains(&m.address))
                .map(|m| m.address.clone())
                .collect(),
        };
        if change.is_empty() {
            return Ok(change);
        }
        let before = self.healthy();
        self.members.retain(|m| all.contains(&m.address));
        for address in &change.added {
            self.members.push(Member {
                address: address.clone(),
                state: State::Down,
                fail_count: 0,
                token_refused: false,
            });
        }
        self.members.sort_by(|a, b| a.address.cmp(&b.address));
        // The next report goes to the first added member: it turns UP
        // (and takes its share of the services) one report interval after
        // the change rather than a whole round later.
        self.cursor = self
            .members
            .iter()
            .filter(|m| m.address != self.me)
            .position(|m| change.added.contains(&m.address))
            .unwrap_or(0);
        self.list_version += 1;
        self.list_changed_ms = now_ms;
        if self.healthy() != before {
            self.epoch += 1;
        }
        Ok(change)
    }

    pub fn list_version(&self) -> u64 {
        self.list_version
    }

    pub fn list_changed_ms(&self) -> u64 {
        self.list_changed_ms
    }

    pub fn is_member(&self, address: &str) -> bool {
        self.members.iter().any(|m| m.address == address)
    }

    /// A digest of the member list (the addresses, sorted), sent with every
    /// report so that the receiver sees when the lists differ.
    pub fn list_digest(&self) -> String {
        let joined: String = self
            .members
            .iter()
            .map(|m| format!("{}\n", m.address))
            .collect();
        format!("{:08x}", super::hash::distro_hash(&joined))
    }

    /// How far apart signs of one disagreement may be: some report rounds.
    fn disagreement_gap_ms(&self, report_interval_ms: u64) -> u64 {
        let others = self.members.len().saturating_sub(1).max(1) as u64;
        DISAGREEMENT_GAP_ROUNDS * others * report_interval_ms
    }

    /// A sign at `now_ms` that another node works from another list (see
    /// `Disagreement::seen`): (whether it started a disagreement, whether
    /// expiry is still held back).
    pub fn lists_disagree(&mut self, now_ms: u64, report_interval_ms: u64) -> (bool, bool) {
        let gap = self.disagreement_gap_ms(report_interval_ms);
        self.disagreement.seen(now_ms, gap)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// UP or SUSPICIOUS members, sorted by address string.
    pub fn healthy(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.state != State::Down)
            .map(|m| m.address.clone())
            .collect()
    }

    /// The member that owns a grouped service name.
    pub fn owner(&self, grouped_service: &str) -> String {
        let healthy = self.healthy();
        // This node is never DOWN in its own view, so the list is not empty.
        healthy[owner_index(grouped_service, healthy.len())].clone()
    }

    /// The next member to report to (round robin over the others), if any.
    pub fn next_report_target(&mut self) -> Option<String> {
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.address != self.me)
            .collect();
        if others.is_empty() {
            return None;
        }
        let t = others[self.cursor % others.len()].address.clone();
        self.cursor = (self.cursor + 1) % others.len();
        Some(t)
    }

    fn set(&mut self, address: &str, state: State, fail_count: u32) -> bool {
        let before = self.healthy();
        let Some(m) = self.members.iter_mut().find(|m| m.address == address) else {
            return false;
        };
        if address == self.me {
            return false;
        }
        m.state = state;
        m.fail_count = fail_count;
        let changed = self.healthy() != before;
        if changed {
            self.epoch += 1;
        }
        changed
    }

    /// Our report reached `target`. Returns whether the healthy list changed.
    pub fn report_ok(&mut self, target: &str) -> bool {
        self.set(target, State::Up, 0)
    }

    /// Our report to `target` failed; `refused` when the connection was
    /// refused (nothing listens there).
    pub fn report_failed(&mut self, target: &str, refused: bool) -> bool {
        let Some(m) = self.members.iter().find(|m| m.address == target) else {
            return false;
        };
        let fails = m.fail_count + 1;
        // A failure never brings a DOWN member back into the healthy list.
        let state = if refused || fails > FAILS_BEFORE_DOWN || m.state == State::Down {
            State::Down
        } else {
            State::Suspicious
        };
        self.set(target, state, fails)
    }

    /// Applies how a report to `target` went (SPEC 4.1, plus: a member
    /// still loading its snapshot counts as DOWN, so that nothing is
    /// forwarded to it before it holds the data). Returns whether the
    /// healthy list changed.
    pub fn report_outcome(&mut self, target: &str, outcome: ReportOutcome) -> bool {
        self.mark_token(target, outcome == ReportOutcome::TokenRefused);
        match outcome {
            ReportOutcome::Accepted => self.report_ok(target),
            ReportOutcome::Starting | ReportOutcome::Refused | ReportOutcome::TokenRefused => {
                self.report_failed(target, true)
            }
            ReportOutcome::Failed => self.report_failed(target, false),
        }
    }

    /// Whether `target` refused our token in its last answer.
    pub fn token_refused(&self, target: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.address == target && m.token_refused)
    }

    fn mark_token(&mut self, target: &str, refused: bool) {
        if let Some(m) = self.members.iter_mut().find(|m| m.address == target) {
            m.token_refused = refused && target != self.me;
        }
    }

    /// A report from `from` arrived: it is UP.
    pub fn report_received(&mut self, from: &str) -> bool {
        self.mark_token(from, false);
        self.set(from, State::Up, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        let peers: Vec<String> = ["127.0.0.1:8849", "127.0.0.1:8848", "127.0.0.1:8850"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Membership::new("127.0.0.1:8848", &peers)
    }

    #[test]
    fn reports_go_round_robin_to_the_others() {
        let mut m = three();
        let targets: Vec<_> = (0..4).map(|_| m.next_report_target().unwrap()).collect();
        assert_eq!(
            targets,
            [
                "127.0.0.1:8849",
                "127.0.0.1:8850",
                "127.0.0.1:8849",
                "127.0.0.1:8850"
            ]
        );
        assert_eq!(
            Membership::new("a:1", &[]).next_report_target(),
            None,
            "standalone"
        );
    }

    #[test]
    fn failures_make_suspicious_then_down_and_success_or_a_report_revives() {
        let mut m = three();
        let e0 = m.epoch();
        assert!(
            !m.report_failed("127.0.0.1:8849", false),
            "SUSPICIOUS is still healthy"
        );
        assert_eq!(m.members()[1].state, State::Suspicious);
        for _ in 0..2 {
            m.report_failed("127.0.0.1:8849", false);
        }
        assert_eq!(
            m.members()[1].state,
            State::Suspicious,
            "3 failures: still suspicious"
        );
        assert!(
            m.report_failed("127.0.0.1:8849", false),
            "the 4th in a row: DOWN"
        );
        assert_eq!(m.healthy(), ["127.0.0.1:8848", "127.0.0.1:8850"]);
        assert!(m.epoch() > e0);
        assert!(m.report_received("127.0.0.1:8849"));
        assert_eq!(m.healthy().len(), 3);
        assert!(
            m.report_failed("127.0.0.1:8850", true),
            "a refused connection: DOWN at once"
        );
        assert!(m.report_ok("127.0.0.1:8850"));
        assert!(
            !m.report_failed("127.0.0.1:8848", true),
            "never marks itself down"
        );
        assert_eq!(m.healthy().len(), 3);
    }

    #[test]
    fn a_starting_member_is_down_until_it_accepts_a_report() {
        let mut m = three();
        assert!(m.report_outcome("127.0.0.1:8849", ReportOutcome::Starting));
        assert_eq!(m.members()[1].state, State::Down);
        assert!(!m.report_outcome("127.0.0.1:8849", ReportOutcome::Failed));
        assert!(m.report_outcome("127.0.0.1:8849", ReportOutcome::Accepted));
        assert_eq!(m.members()[1].state, State::Up);
        assert!(!m.report_outcome("127.0.0.1:8850", ReportOutcome::Failed));
        assert_eq!(m.members()[2].state, State::Suspicious);
        assert!(m.report_outcome("127.0.0.1:8850", ReportOutcome::Refused));
    }

    #[test]
    fn a_member_that_refuses_our_token_is_down_and_marked_until_it_accepts() {
        let mut m = three();
        let peer = "127.0.0.1:8849";
        assert!(m.report_outcome(peer, ReportOutcome::TokenRefused));
        assert_eq!(m.members()[1].state, State::Down);
        assert!(m.token_refused(peer) && m.members()[1].token_refused);
        assert!(!m.report_outcome(peer, ReportOutcome::TokenRefused));
        assert!(m.token_refused(peer), "still refused");
        assert!(m.report_outcome(peer, ReportOutcome::Accepted));
        assert!(!m.token_refused(peer), "cleared by an accepted report");
        m.report_outcome(peer, ReportOutcome::TokenRefused);
        m.report_outcome(peer, ReportOutcome::Refused);
        assert!(!m.token_refused(peer), "its last answer was no answer");
    }

    #[test]
    fn a_new_list_adds_members_down_forgets_removed_ones_and_keeps_the_rest() {
        let mut m = three();
        m.report_failed("127.0.0.1:8849", false);
        let e0 = m.epoch();
        let list: Vec<String> = ["127.0.0.1:8848", "127.0.0.1:8849", "127.0.0.1:8851"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let change = m.set_list(&list, 5_000).unwrap();
        assert_eq!(change.added, ["127.0.0.1:8851"]);
        assert_eq!(change.removed, ["127.0.0.1:8850"]);
        assert_eq!((m.list_version(), m.list_changed_ms()), (2, 5_000));
        assert!(m.epoch() > e0, "8850 left the healthy list");
        let states: Vec<_> = m
            .members()
            .iter()
            .map(|x| (x.address.as_str(), x.state, x.fail_count))
            .collect();
        assert_eq!(
            states,
            [
                ("127.0.0.1:8848", State::Up, 0),
                ("127.0.0.1:8849", State::Suspicious, 1),
                ("127.0.0.1:8851", State::Down, 0),
            ]
        );
        assert_eq!(m.healthy(), ["127.0.0.1:8848", "127.0.0.1:8849"]);
        assert_eq!(
            m.next_report_target().as_deref(),
            Some("127.0.0.1:8851"),
            "the added member is reported to first"
        );
        assert!(
            m.report_ok("127.0.0.1:8851"),
            "UP once a report goes through"
        );
        assert!(!m.is_member("127.0.0.1:8850"));
        assert!(
            !m.report_received("127.0.0.1:8850"),
            "a removed member stays out"
        );
        // The same list again changes nothing.
        let e1 = m.epoch();
        assert!(m.set_list(&list, 6_000).unwrap().is_empty());
        assert_eq!((m.list_version(), m.epoch()), (2, e1));
    }

    #[test]
    fn a_list_without_this_node_is_refused_and_changes_nothing() {
        let mut m = three();
        let before = m.members().to_vec();
        let err = m.set_list(&["127.0.0.1:8849".to_string()], 1).unwrap_err();
        assert_eq!(err, ListError::NotAMember("127.0.0.1:8848".into()));
        assert_eq!(m.members(), &before[..]);
        assert_eq!(m.list_version(), 1);
    }

    #[test]
    fn ownership_follows_the_sorted_healthy_list() {
        let mut m = three();
        // SPEC vectors, modulo 3 over the sorted list.
        assert_eq!(m.owner("DEFAULT_GROUP@@nacos.test.1"), "127.0.0.1:8848");
        assert_eq!(m.owner("DEFAULT_GROUP@@svc"), "127.0.0.1:8850");
        assert_eq!(m.owner("DEFAULT_GROUP@@order-service"), "127.0.0.1:8849");
        m.report_failed("127.0.0.1:8850", true);
        let owner = m.owner("DEFAULT_GROUP@@svc");
        assert_ne!(owner, "127.0.0.1:8850", "a DOWN member owns nothing");
    }

    #[test]
    fn a_disagreement_holds_expiry_back_from_its_first_sign_for_at_most_the_hold() {
        let mut d = Disagreement::default();
        assert!(!d.holding(0), "nothing seen, nothing held");
        assert_eq!(d.seen(1_000, 500), (true, true));
        assert_eq!(d.seen(1_400, 500), (false, true), "the same disagreement");
        // Signs that keep coming hold it back until the hold is used up.
        let mut t = 1_400;
        while t + 400 <= 1_000 + DISAGREEMENT_HOLD_MAX_MS {
            t += 400;
            assert_eq!(d.seen(t, 500), (false, true));
        }
        assert_eq!(
            d.seen(1_001 + DISAGREEMENT_HOLD_MAX_MS, 500),
            (false, false)
        );
        // A quiet spell longer than the gap ends it; the next sign starts
        // a new one, held again.
        let later = 1_001 + DISAGREEMENT_HOLD_MAX_MS + 501;
        assert_eq!(d.seen(later, 500), (true, true));
    }

    #[test]
    fn the_list_digest_names_the_members_whatever_their_order_or_state() {
        let mut m = three();
        let same = Membership::new(
            "127.0.0.1:8849",
            &["127.0.0.1:8850".to_string(), "127.0.0.1:8848".to_string()],
        );
        assert_eq!(m.list_digest(), same.list_digest());
        m.report_outcome("127.0.0.1:8850", ReportOutcome::Refused);
        assert_eq!(m.list_digest(), same.list_digest(), "states do not count");
        let before = m.list_digest();
        m.set_list(
            &["127.0.0.1:8848".to_string(), "127.0.0.1:8849".to_string()],
            5,
        )
        .unwrap();
        assert_ne!(m.list_digest(), before);
        assert_eq!(m.disagreement_gap_ms(300), DISAGREEMENT_GAP_ROUNDS * 300);
    }
}
