//! A hashed timing wheel: the per-shard timer structure behind heartbeat
//! expiry.
//!
//! Inserting is O(1); advancing visits only the slots whose time has come,
//! so the cost follows the number of timers due, not the number armed.
//! An entry whose deadline lies more than one revolution ahead simply stays
//! in its slot until a later pass. Time is a parameter: nothing here reads
//! a clock.

/// Number of slots; one revolution is `SLOTS * tick_ms`.
const SLOTS: usize = 1024;
/// A slot that holds less than a quarter of what it has room for gives
/// the rest back (down to twice what it holds), so that memory goes after
/// a burst of instances does.
const SLOT_SLACK: usize = 4;
/// Slots this small are never shrunk.
const SLOT_KEEP: usize = 16;

/// A wheel of timers carrying values of type `T`.
pub struct TimerWheel<T> {
    /// Width of one slot in ms.
    tick_ms: u64,
    /// `slots[i]` holds `(due_ms, value)` for deadlines that hash to slot i.
    slots: Vec<Vec<(u64, T)>>,
    /// The next tick number not yet processed.
    next_tick: u64,
    /// Timers armed and not yet fired.
    len: usize,
}

impl<T> TimerWheel<T> {
    pub fn new(tick_ms: u64, now_ms: u64) -> Self {
        assert!(tick_ms > 0, "tick_ms must be positive");
        TimerWheel {
            tick_ms,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: now_ms / tick_ms,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer. A deadline in the past fires on the next `advance`.
    pub fn insert(&mut self, due_ms: u64, value: T) {
        // File it under the first tick that starts at or after the
        // deadline: when that tick is visited, `now >= due` holds.
        let tick = due_ms.div_ceil(self.tick_ms).max(self.next_tick);
        self.slots[(tick % SLOTS as u64) as usize].push((due_ms, value));
        self.len += 1;
    }

    /// Moves time to `now_ms` and hands every timer due by then to `fire`.
    pub fn advance(&mut self, now_ms: u64, mut fire: impl FnMut(u64, T)) {
        let now_tick = now_ms / self.tick_ms;
        if now_tick < self.next_tick {
            return;
        }
        // After a long pause, one full revolution visits every slot.
        let ticks = (now_tick - self.next_tick + 1).min(SLOTS as u64);
        let first = if ticks == SLOTS as u64 {
            now_tick + 1 - SLOTS as u64
        } else {
            self.next_tick
        };
        for tick in first..first + ticks {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            if slot.is_empty() {
                continue;
            }
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_ms {
                    let (due, value) = slot.swap_remove(i);
                    self.len -= 1;
                    fire(due, value);
                } else {
                    i += 1;
                }
            }
            if slot.capacity() > SLOT_SLACK * slot.len().max(SLOT_KEEP) {
                slot.shrink_to(2 * slot.len());
            }
        }
        self.next_tick = now_tick + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_of_time_and_only_when_due() {
        let mut w = TimerWheel::new(100, 0);
        w.insert(250, "a");
        w.insert(1_000, "b");
        w.insert(200_000, "far"); // beyond one revolution (102.4 s)
        let mut fired = Vec::new();
        w.advance(199, |_, v| fired.push(v));
        assert!(fired.is_empty());
        w.advance(300, |_, v| fired.push(v));
        assert_eq!(fired, vec!["a"]);
        w.advance(150_000, |_, v| fired.push(v));
        assert_eq!(fired, vec!["a", "b"]);
        assert_eq!(w.len(), 1);
        w.advance(200_000, |_, v| fired.push(v));
        assert_eq!(fired, vec!["a", "b", "far"]);
        assert!(w.is_empty());
    }

    /// Regression: an entry filed under floor(due / tick) was skipped when
    /// the pass over its slot came before its deadline within that tick,
    /// and then waited a whole revolution.
    #[test]
    fn deadline_inside_a_visited_tick_still_fires() {
        let mut w = TimerWheel::new(100, 0);
        w.insert(250, "a");
        let mut fired = Vec::new();
        w.advance(220, |_, v| fired.push(v));
        assert!(fired.is_empty());
        w.advance(300, |_, v| fired.push(v));
        assert_eq!(fired, vec!["a"]);
    }

    #[test]
    fn a_slot_gives_back_room_once_its_timers_fired() {
        let mut w = TimerWheel::new(100, 0);
        for i in 0..1_000 {
            w.insert(150, i);
        }
        let slot = 2; // ceil(150 / 100)
        assert!(w.slots[slot].capacity() >= 1_000);
        w.advance(200, |_, _| {});
        assert!(w.is_empty());
        assert!(w.slots[slot].capacity() < 1_000, "room given back");
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut w = TimerWheel::new(100, 10_000);
        w.insert(5, 1);
        let mut fired = Vec::new();
        w.advance(10_000, |_, v| fired.push(v));
        assert_eq!(fired, vec![1]);
    }
}
