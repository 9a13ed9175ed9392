//! A shard's inbox: a bounded multi-producer queue that any core may push
//! into and only its shard drains, with a waker so the draining task sleeps
//! while it is empty. One wake-up drains everything queued.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use atomic_waker::AtomicWaker;

/// The sending half, shared by every core.
pub struct Inbox<T> {
    tx: Sender<T>,
    waker: AtomicWaker,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

impl<T> Inbox<T> {
    /// An inbox holding at most `capacity` messages, and its receiver.
    pub fn bounded(capacity: usize) -> (Inbox<T>, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            Inbox {
                tx,
                waker: AtomicWaker::new(),
            },
            rx,
        )
    }

    pub fn send(&self, msg: T) -> Result<(), SendError> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SendError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SendError::Closed),
        }
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Waits until `rx` has something. Register first, then check, so that
    /// a send between the two cannot be missed.
    pub async fn ready(&self, rx: &Receiver<T>) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if rx.is_empty() {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await
    }
}
