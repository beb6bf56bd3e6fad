//! The settlements of one channel's deliveries, sent together.
//!
//! Every delivery is registered here in delivery-tag order. A settle is queued, and one task per
//! channel sends what was queued since its last send: the acknowledged deliveries at the front
//! of the channel (every delivery before them settled too) as one `basic.ack` with `multiple`,
//! any other acknowledgement as a frame of its own, and negative settlements (requeue, reject)
//! first, so an acknowledgement covering several tags never reaches the broker before a nack
//! for a tag among them. Each settle waits for the frame that carries it, so a failure still
//! reaches it; none waits on a delivery that is not settled yet.
//!
//! Acknowledgements wait (at most [`GATHER`]) until a quarter of the channel's prefetch is
//! acknowledged, so they go as one frame rather than a frame per slice a consumer happened to
//! settle together; with a prefetch below 8 they go at once.
//!
//! Why: each frame lapin sends costs hand-offs between threads, and each one the broker takes
//! costs it a round of work on the channel and the queue, and gives it credit for a few more
//! deliveries at a time. A Python consumer that settled slices of about 10 made the broker
//! spend ~47 µs per message against ~30 µs when the same messages were acknowledged 30 at a time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest an acknowledgement waits for others to share its frame.
const GATHER: Duration = Duration::from_millis(2);

/// How a delivery is settled on the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// `basic.ack`: done with.
    Ack,
    /// `basic.nack` with requeue: the broker delivers it again.
    GiveBack,
    /// `basic.reject` without requeue: the queue dead-letters it.
    Reject,
}

/// What became of the frame carrying a settlement: `Ok(true)` sent, `Ok(false)` not sent
/// because the channel is gone (or the send timed out), `Err` lapin's error.
pub(super) type Sent = std::result::Result<bool, lapin::Error>;

/// The unsettled deliveries of one channel and the settlements waiting to be sent.
pub(super) struct AckWindow {
    state: Mutex<State>,
    wake: Notify,
    /// The longest wait for one frame to be sent.
    send_timeout: Duration,
    /// How many acknowledgements go out without waiting for more.
    enough: usize,
}

struct State {
    /// Deliveries not yet settled on the broker, in delivery-tag order.
    pending: VecDeque<Slot>,
    /// How many of `pending` are acknowledged and wait for the next send.
    acked: usize,
    /// Negative settlements waiting for the next send, in the order they were made.
    negatives: Vec<(Acker, Verdict, oneshot::Sender<Sent>)>,
    /// The channel is done with: settles are refused, and the sender stops once it has sent
    /// what was queued.
    closed: bool,
}

struct Slot {
    tag: u64,
    acker: Acker,
    /// Set when the delivery is acknowledged: told how the frame carrying it went.
    acked: Option<oneshot::Sender<Sent>>,
}

/// What the sender takes from the window in one go.
struct Batch {
    /// One frame each: the negative settlements, in the order made, then the acknowledged
    /// deliveries behind an unsettled one.
    separate: Vec<(Acker, Verdict, oneshot::Sender<Sent>)>,
    /// The acknowledged front of the channel, in tag order: one frame for all.
    front: Vec<Slot>,
}

enum Take {
    Send(Batch),
    /// Acknowledgements are queued, but fewer than `enough`.
    Gather,
    Idle,
    Done,
}

impl AckWindow {
    /// A window for a new channel whose consumers have `prefetch`, and the task that sends its
    /// settlements.
    pub(super) fn open(send_timeout: Duration, prefetch: u16) -> (Arc<AckWindow>, JoinHandle<()>) {
        let window = Arc::new(AckWindow {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                acked: 0,
                negatives: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
            send_timeout,
            enough: usize::from(prefetch / 4).max(1),
        });
        let sender = tokio::spawn(window.clone().send_loop());
        (window, sender)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-updated in a way that
        // matters more than losing the window: keep going with what is there.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a delivery before it is handed out. Tags rise on a channel, so the queue stays
    /// in order.
    pub(super) fn register(&self, tag: u64, acker: Acker) {
        self.lock().pending.push_back(Slot {
            tag,
            acker,
            acked: None,
        });
    }

    /// Settles the delivery `tag` and waits until the frame that carries it was sent.
    pub(super) async fn settle(&self, tag: u64, verdict: Verdict) -> Sent {
        let (done, sent) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return Ok(false);
            }
            let Ok(index) = state.pending.binary_search_by_key(&tag, |slot| slot.tag) else {
                // Not registered on this channel (or settled already): nothing to send.
                return Ok(false);
            };
            if state.pending[index].acked.is_some() {
                return Ok(false); // acknowledged already
            }
            match verdict {
                Verdict::Ack => {
                    state.pending[index].acked = Some(done);
                    state.acked += 1;
                }
                Verdict::GiveBack | Verdict::Reject => {
                    let slot = state.pending.remove(index).expect("index found above");
                    state.negatives.push((slot.acker, verdict, done));
                }
            }
        }
        self.wake.notify_one();
        sent.await.unwrap_or(Ok(false))
    }

    /// Refuses further settles; the sender sends what is queued and stops.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// What to send now; with `gather`, acknowledgements (and nothing else) wait while they
    /// are fewer than `enough`.
    fn take(&self, gather: bool) -> Take {
        let mut state = self.lock();
        if state.acked == 0 && state.negatives.is_empty() {
            return if state.closed { Take::Done } else { Take::Idle };
        }
        if gather && !state.closed && state.negatives.is_empty() && state.acked < self.enough {
            return Take::Gather;
        }
        let mut separate = std::mem::take(&mut state.negatives);
        let run = state
            .pending
            .iter()
            .take_while(|slot| slot.acked.is_some())
            .count();
        let front: Vec<Slot> = state.pending.drain(..run).collect();
        if state.acked > run {
            state.pending.retain_mut(|slot| match slot.acked.take() {
                Some(done) => {
                    separate.push((slot.acker.clone(), Verdict::Ack, done));
                    false
                }
                None => true,
            });
        }
        state.acked = 0;
        Take::Send(Batch { separate, front })
    }

    async fn send_loop(self: Arc<Self>) {
        // When the acknowledgements waiting to share a frame have waited long enough.
        let mut due: Option<Instant> = None;
        loop {
            let gather = due.is_none_or(|due| Instant::now() < due);
            match self.take(gather) {
                Take::Send(batch) => {
                    due = None;
                    self.send(batch).await;
                }
                Take::Gather => {
                    let until = *due.get_or_insert_with(|| Instant::now() + GATHER);
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                Take::Idle => self.wake.notified().await,
                Take::Done => return,
            }
        }
    }

    async fn send(&self, batch: Batch) {
        // Frames of their own go out, and are written, before the acknowledgement of the front,
        // which may cover their tags.
        join_all(
            batch
                .separate
                .into_iter()
                .map(|(acker, verdict, done)| async move {
                    let sent = bounded(self.send_timeout, send_one(&acker, verdict)).await;
                    let _ = done.send(sent);
                }),
        )
        .await;
        let Some(last) = batch.front.last() else {
            return;
        };
        let multiple = batch.front.len() > 1;
        let sent = bounded(
            self.send_timeout,
            last.acker.ack(BasicAckOptions { multiple }),
        )
        .await;
        for slot in batch.front {
            if let Some(done) = slot.acked {
                let _ = done.send(sent.clone());
            }
        }
    }
}

/// Sends one delivery's settlement.
async fn send_one(acker: &Acker, verdict: Verdict) -> Sent {
    match verdict {
        Verdict::Ack => acker.ack(BasicAckOptions::default()).await,
        Verdict::GiveBack => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
        Verdict::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
    }
}

/// A settlement that gives up after `limit`, as "not sent" (`Ok(false)`).
async fn bounded(limit: Duration, settle: impl Future<Output = Sent>) -> Sent {
    tokio::time::timeout(limit, settle)
        .await
        .unwrap_or(Ok(false))
}
