//! A shard's inbox: a bounded multi-producer queue that any core may push
//! into and only its shard drains, with a waker so the draining task sleeps
//! while it is empty.
//!
//! Messages cross in batches: a core collects what it has for another core
//! during one turn of its event loop (`Mail`) and hands it over as one
//! channel item with one wake-up. The bound counts messages, not batches:
//! a sender reserves a place for each message when it queues it locally
//! (`reserve`), so the inbox never holds more than its capacity of
//! requests. Replies are not counted (every one answers a request that was).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use crossbeam_channel::{Receiver, Sender};

use atomic_waker::AtomicWaker;

/// The sending half, shared by every core.
pub struct Inbox<T> {
    tx: Sender<Vec<T>>,
    waker: AtomicWaker,
    /// Requests reserved or waiting (at most `capacity`).
    queued: AtomicUsize,
    capacity: usize,
    /// Times the receiver woke up with batches to drain.
    pub wakeups: AtomicU64,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

impl<T> Inbox<T> {
    /// An inbox holding at most `capacity` requests, and its receiver.
    pub fn bounded(capacity: usize) -> (Inbox<T>, Receiver<Vec<T>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Inbox {
                tx,
                waker: AtomicWaker::new(),
                queued: AtomicUsize::new(0),
                capacity,
                wakeups: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Reserves room for one request; false when the inbox is full.
    pub fn reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Half the capacity or more is taken: lazy messages wake the
    /// receiver from here on.
    pub fn half_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity / 2
    }

    /// Hands a batch over and, if `wake`, wakes the receiver once.
    pub fn send_batch(&self, batch: Vec<T>, wake: bool) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).map_err(|_| SendError::Closed)?;
        if wake {
            self.waker.wake();
        }
        Ok(())
    }

    /// The receiver took `n` reserved requests off the queue.
    pub fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Requests reserved or waiting.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Waits until `rx` has something. Register first, then check, so that
    /// a send between the two cannot be missed.
    pub async fn ready(&self, rx: &Receiver<Vec<T>>) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if rx.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

/// One core's outgoing messages, by destination core, until the end of
/// the current turn of its event loop. Single-threaded.
pub struct Mail<T> {
    /// Per destination: the messages, and whether any of them calls for
    /// waking the destination (a lazy one does not).
    out: RefCell<Vec<(Vec<T>, bool)>>,
    /// A flush is due (the flusher was woken).
    due: Cell<bool>,
    flusher: Cell<Option<Waker>>,
}

impl<T> Mail<T> {
    pub fn new(cores: usize) -> Mail<T> {
        Mail {
            out: RefCell::new((0..cores).map(|_| (Vec::new(), false)).collect()),
            due: Cell::new(false),
            flusher: Cell::new(None),
        }
    }

    /// Queues `msg` for core `to`; it leaves at the end of this turn and
    /// wakes `to`.
    pub fn post(&self, to: usize, msg: T) {
        let mut out = self.out.borrow_mut();
        out[to].0.push(msg);
        out[to].1 = true;
        drop(out);
        self.call_flusher();
    }

    /// Queues `msg` for core `to`: it leaves at the end of this turn, but
    /// does not wake `to`, which takes it at its next wake-up, write or
    /// tick, whichever comes first.
    pub fn post_lazy(&self, to: usize, msg: T) {
        self.out.borrow_mut()[to].0.push(msg);
        self.call_flusher();
    }

    fn call_flusher(&self) {
        if !self.due.replace(true) {
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }

    /// Whether anything was posted since the last take.
    pub fn is_due(&self) -> bool {
        self.due.get()
    }

    /// Messages waiting for core `to`.
    pub fn waiting(&self, to: usize) -> usize {
        self.out.borrow()[to].0.len()
    }

    /// Waits until something was posted. The flusher's task calls it, then
    /// `take`; tasks woken in the same turn run before it, so their
    /// messages leave together.
    pub async fn posted(&self) {
        std::future::poll_fn(|cx| {
            if self.due.get() {
                Poll::Ready(())
            } else {
                self.flusher.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Everything posted since the last take: (destination, messages,
    /// whether to wake it).
    pub fn take(&self) -> Vec<(usize, Vec<T>, bool)> {
        self.due.set(false);
        let mut out = self.out.borrow_mut();
        out.iter_mut()
            .enumerate()
            .filter(|(_, (v, _))| !v.is_empty())
            .map(|(to, (v, wake))| (to, std::mem::take(v), std::mem::replace(wake, false)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_counts_requests_not_batches() {
        let (inbox, rx) = Inbox::<u32>::bounded(3);
        assert!(inbox.reserve() && inbox.reserve() && inbox.reserve());
        assert!(!inbox.reserve(), "a fourth request is refused");
        inbox.send_batch(vec![1, 2, 3], true).unwrap();
        assert_eq!(rx.len(), 1, "one batch, one channel item");
        assert_eq!(inbox.depth(), 3);
        let batch = rx.try_recv().unwrap();
        inbox.taken(batch.len());
        assert_eq!(inbox.depth(), 0);
        assert!(inbox.reserve(), "room again once drained");
    }

    #[test]
    fn half_full_from_half_the_capacity() {
        let (inbox, _rx) = Inbox::<u32>::bounded(4);
        assert!(inbox.reserve() && !inbox.half_full());
        assert!(inbox.reserve() && inbox.half_full());
    }

    #[test]
    fn mail_groups_by_destination_until_taken() {
        let mail = Mail::new(3);
        mail.post(2, "a");
        mail.post(0, "b");
        mail.post(2, "c");
        assert_eq!(mail.waiting(2), 2);
        let taken = mail.take();
        assert_eq!(taken, vec![(0, vec!["b"], true), (2, vec!["a", "c"], true)]);
        assert!(mail.take().is_empty());
        assert!(!mail.due.get());
    }

    #[test]
    fn lazy_mail_wakes_no_one_unless_it_travels_with_a_request() {
        let mail = Mail::new(3);
        mail.post_lazy(1, "beat");
        mail.post_lazy(2, "beat");
        mail.post(2, "request");
        assert!(mail.due.get(), "both leave at the end of the turn");
        assert_eq!(
            mail.take(),
            vec![(1, vec!["beat"], false), (2, vec!["beat", "request"], true)]
        );
    }
}
