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

    /// Hands a batch over and wakes the receiver once.
    pub fn send_batch(&self, batch: Vec<T>) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).map_err(|_| SendError::Closed)?;
        self.waker.wake();
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
    out: RefCell<Vec<Vec<T>>>,
    /// A flush is due (the flusher was woken).
    due: Cell<bool>,
    /// Messages posted that wait for a flush but do not call for one.
    lazy: Cell<bool>,
    /// The first lazy message since the flusher last looked: it wakes the
    /// flusher once, to start its timer.
    lazy_new: Cell<bool>,
    flusher: Cell<Option<Waker>>,
}

impl<T> Mail<T> {
    pub fn new(cores: usize) -> Mail<T> {
        Mail {
            out: RefCell::new((0..cores).map(|_| Vec::new()).collect()),
            due: Cell::new(false),
            lazy: Cell::new(false),
            lazy_new: Cell::new(false),
            flusher: Cell::new(None),
        }
    }

    /// Queues `msg` for core `to`; it leaves at the next flush.
    pub fn post(&self, to: usize, msg: T) {
        self.out.borrow_mut()[to].push(msg);
        if !self.due.replace(true) {
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }

    /// Queues `msg` for core `to` without calling for a flush: it leaves
    /// with the next one, at the latest `lazy_ms` later (see `posted`).
    pub fn post_lazy(&self, to: usize, msg: T) {
        self.out.borrow_mut()[to].push(msg);
        if !self.lazy.replace(true) {
            self.lazy_new.set(true);
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }

    /// Whether a flush was called for.
    pub fn flush_due(&self) -> bool {
        self.due.get()
    }

    /// Whether lazily posted messages wait (the flusher must time out).
    pub fn lazy_waiting(&self) -> bool {
        self.lazy.get()
    }

    /// Messages waiting for core `to`.
    pub fn waiting(&self, to: usize) -> usize {
        self.out.borrow()[to].len()
    }

    /// Waits until something was posted that calls for a flush, or the
    /// first lazy message (the flusher then waits for a flush with a
    /// timeout). The flusher's task calls it, then `take`; tasks woken in
    /// the same turn run before it, so their messages leave together.
    pub async fn posted(&self) {
        std::future::poll_fn(|cx| {
            if self.due.get() || self.lazy_new.replace(false) {
                Poll::Ready(())
            } else {
                self.flusher.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Everything posted since the last take, by destination.
    pub fn take(&self) -> Vec<(usize, Vec<T>)> {
        self.due.set(false);
        self.lazy.set(false);
        let mut out = self.out.borrow_mut();
        out.iter_mut()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(to, v)| (to, std::mem::take(v)))
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
        inbox.send_batch(vec![1, 2, 3]).unwrap();
        assert_eq!(rx.len(), 1, "one batch, one channel item");
        assert_eq!(inbox.depth(), 3);
        let batch = rx.try_recv().unwrap();
        inbox.taken(batch.len());
        assert_eq!(inbox.depth(), 0);
        assert!(inbox.reserve(), "room again once drained");
    }

    #[test]
    fn mail_groups_by_destination_until_taken() {
        let mail = Mail::new(3);
        mail.post(2, "a");
        mail.post(0, "b");
        mail.post(2, "c");
        assert_eq!(mail.waiting(2), 2);
        let taken = mail.take();
        assert_eq!(taken, vec![(0, vec!["b"]), (2, vec!["a", "c"])]);
        assert!(mail.take().is_empty());
        assert!(!mail.due.get());
    }

    #[test]
    fn lazy_mail_waits_for_the_next_flush() {
        let mail = Mail::new(2);
        mail.post_lazy(1, "beat");
        assert!(!mail.due.get(), "a lazy message calls for no flush");
        assert!(mail.lazy_waiting());
        mail.post(1, "request");
        assert_eq!(mail.take(), vec![(1, vec!["beat", "request"])]);
        assert!(!mail.lazy_waiting());
    }
}
