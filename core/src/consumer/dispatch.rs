//! Runs handlers: one task per unordered message, one lane per key (or per partition, for
//! keyless messages the broker orders) so a lane's messages run in order while different
//! lanes run concurrently.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dead_letter::DeadLetterer;
use super::dedup::Dedup;
use super::{ConsumerStats, Handler, HandlerError, OutcomeFuture, RetryPolicy};
use crate::delivery::Delivery;
use crate::error::Result;
use crate::message::now_ms;
use crate::wire;

#[derive(Default)]
pub(super) struct Counters {
    pub received: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    duplicates: AtomicU64,
    settle_errors: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> ConsumerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            received: get(&self.received),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            rejected: get(&self.rejected),
            dead_lettered: get(&self.dead_lettered),
            released: get(&self.released),
            duplicates: get(&self.duplicates),
            settle_errors: get(&self.settle_errors),
        }
    }
}

/// What the dedup store said about a delivery.
enum Claim {
    /// No dedup store, or it failed: handle the message.
    None,
    /// Claimed under this key: handle the message, release the key if the handler fails.
    Held(String),
    /// Handled (or being handled) already: acknowledge without handling.
    Skip,
}

/// How a delivery of a group is being handled.
enum Handled {
    /// Handed over with the group: its outcome's future.
    HandedOver(OutcomeFuture),
    /// The handler does not take groups: handled on its own.
    Alone,
    /// The hand-over panicked with this message.
    Panicked(String),
}

/// The lane a delivery must keep its order in: its key, or its sequence (a partition).
fn lane_key(delivery: &Delivery) -> Option<&String> {
    delivery
        .message
        .key
        .as_ref()
        .or(delivery.meta.sequence.as_ref())
}

/// A settlement under way in a lane.
type Settle<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What became of one handler call: `None` when the consumer stopped before it finished,
/// `Err` with the panic message when the handler panicked.
type Outcome = Option<std::result::Result<std::result::Result<(), HandlerError>, String>>;

/// Awaits `handled` while driving the settlements under way.
async fn meanwhile<T, S>(handled: impl Future<Output = T>, settling: &mut FuturesUnordered<S>) -> T
where
    S: Future<Output = ()>,
{
    let mut handled = pin!(handled);
    loop {
        tokio::select! {
            biased;
            outcome = &mut handled => return outcome,
            Some(()) = settling.next(), if !settling.is_empty() => {}
        }
    }
}

/// The message of a caught panic.
fn panic_reason(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A delivery and the concurrency slot it holds until it is settled.
type Slotted = (Delivery, OwnedSemaphorePermit);

/// Deliveries of one key waiting for the lane's task, and the signal that wakes it.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<Slotted>,
    wake: Arc<Notify>,
}

/// A delivery of a lane handed over and not settled yet.
struct Pending {
    delivery: Delivery,
    claim: Claim,
    outcome: OutcomeFuture,
    slot: OwnedSemaphorePermit,
}

pub(super) struct Dispatcher {
    handler: Arc<dyn Handler>,
    retry: RetryPolicy,
    dead_letters: DeadLetterer,
    /// The dedup settings and the consumer group the ids are remembered for.
    dedup: Option<(Dedup, String)>,
    tracker: TaskTracker,
    abort: CancellationToken,
    counters: Arc<Counters>,
    /// The lanes with a task running, by key: deliveries wait there for the lane's task.
    lanes: Mutex<HashMap<String, Lane>>,
    /// The id of the next lane task's run (see [`Handler::hand_over_run`]).
    next_run: AtomicU64,
    /// Every delivery goes through one lane (a sequential consumer).
    one_lane: bool,
}

impl Dispatcher {
    pub fn new(
        handler: Arc<dyn Handler>,
        retry: RetryPolicy,
        dead_letters: DeadLetterer,
        dedup: Option<(Dedup, String)>,
        tracker: TaskTracker,
        abort: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        Dispatcher {
            one_lane: false,
            handler,
            retry,
            dead_letters,
            dedup,
            tracker,
            abort,
            counters,
            lanes: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(1),
        }
    }

    /// Sends every delivery through one lane: handled in the order received, one at a time.
    pub fn sequential(mut self, one_lane: bool) -> Self {
        self.one_lane = one_lane;
        self
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Dispatches deliveries that arrived together. Those without a lane (no key, no
    /// sequence) go to a handler that [takes groups](Handler::takes_groups) in one hand-over;
    /// the others are dispatched one by one.
    pub fn dispatch_all(self: &Arc<Self>, ready: Vec<Slotted>) {
        let grouping = ready.len() > 1 && !self.one_lane && self.handler.takes_groups();
        let mut group = Vec::new();
        for (delivery, slot) in ready {
            if grouping && lane_key(&delivery).is_none() {
                group.push((delivery, slot));
            } else {
                self.dispatch(delivery, slot);
            }
        }
        if group.len() == 1 {
            let (delivery, slot) = group.remove(0);
            self.dispatch(delivery, slot);
        } else if !group.is_empty() {
            let this = self.clone();
            self.tracker
                .spawn(async move { this.process_group(group).await });
        }
    }

    /// Starts handling `delivery` now, or queues it behind the running one with its key.
    pub fn dispatch(self: &Arc<Self>, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let lane = if self.one_lane {
            Some(String::new())
        } else {
            lane_key(&delivery).cloned()
        };
        let Some(key) = lane else {
            let this = self.clone();
            self.tracker.spawn(async move {
                this.process(delivery).await;
                drop(slot);
            });
            return;
        };
        let wake = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lane) = lanes.get_mut(&key) {
                lane.waiting.push_back((delivery, slot));
                lane.wake.notify_one();
                return;
            }
            lanes.entry(key.clone()).or_default().wake.clone()
        };
        let this = self.clone();
        self.tracker
            .spawn(async move { this.run_lane(key, (delivery, slot), wake).await });
    }

    /// Takes what waits in the lane of `key`. When nothing does and `end` is set, the lane is
    /// closed (the next delivery with the key starts a new one).
    fn take_waiting(&self, key: &str, end: bool) -> Vec<Slotted> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        match lanes.get_mut(key) {
            Some(lane) if !lane.waiting.is_empty() => lane.waiting.drain(..).collect(),
            Some(_) if end => {
                lanes.remove(key);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Runs one lane: its deliveries are handled in order, each settled as soon as its own
    /// outcome is known, which frees its slot. A handler that takes runs gets what arrives in
    /// the lane while earlier deliveries are still being handled, as the next part of the same
    /// run, so the lane never waits for its last outcome before handing over more.
    async fn run_lane(&self, key: String, first: Slotted, wake: Arc<Notify>) {
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        let mut pending = VecDeque::new();
        let mut settling = FuturesUnordered::new();
        self.hand_over(run, vec![first], &mut pending, &mut settling)
            .await;
        loop {
            let Some(front) = pending.front_mut() else {
                let more = self.take_waiting(&key, true);
                if more.is_empty() {
                    break;
                }
                self.hand_over(run, more, &mut pending, &mut settling).await;
                continue;
            };
            tokio::select! {
                biased;
                outcome = self.outcome_of(&mut front.outcome) => {
                    if let Some(done) = pending.pop_front() {
                        settling.push(self.settle_slotted(done.delivery, done.claim, done.slot, outcome));
                    }
                }
                () = wake.notified() => {
                    let more = self.take_waiting(&key, false);
                    self.hand_over(run, more, &mut pending, &mut settling).await;
                }
                Some(()) = settling.next(), if !settling.is_empty() => {}
            }
        }
        while settling.next().await.is_some() {}
    }

    /// Hands `deliveries` of a lane over as the next part of `run`, adding them to `pending`.
    /// A handler that does not take runs handles them here, one after another, each settled
    /// as soon as it is handled.
    async fn hand_over<'a>(
        &'a self,
        run: u64,
        deliveries: Vec<Slotted>,
        pending: &mut VecDeque<Pending>,
        settling: &mut FuturesUnordered<Settle<'a>>,
    ) {
        if deliveries.is_empty() {
            return;
        }
        let mut claimed = Vec::with_capacity(deliveries.len());
        for (delivery, slot) in deliveries {
            if self.abort.is_cancelled() {
                // Settling "stopped before it finished" gives it back.
                settling.push(self.settle_slotted(delivery, Claim::None, slot, None));
                continue;
            }
            match self.claim(&delivery).await {
                Claim::Skip => {
                    self.skip_duplicate(delivery).await;
                    drop(slot);
                }
                claim => claimed.push((delivery, claim, slot)),
            }
        }
        if claimed.is_empty() {
            return;
        }
        let refs: Vec<&Delivery> = claimed.iter().map(|(d, _, _)| d).collect();
        let handed = AssertUnwindSafe(self.handler.hand_over_run(run, &refs))
            .catch_unwind()
            .await;
        drop(refs);
        match handed {
            Ok(Some(outcomes)) if outcomes.len() == claimed.len() => {
                for ((delivery, claim, slot), outcome) in claimed.into_iter().zip(outcomes) {
                    pending.push_back(Pending {
                        delivery,
                        claim,
                        outcome,
                        slot,
                    });
                }
            }
            Ok(_) => {
                // The handler takes one delivery at a time: in order, settling meanwhile.
                for (delivery, claim, slot) in claimed {
                    let handled = self.handler.handle(&delivery);
                    let outcome = meanwhile(self.outcome_of(handled), settling).await;
                    settling.push(self.settle_slotted(delivery, claim, slot, outcome));
                }
            }
            Err(panic) => {
                let reason = panic_reason(&*panic);
                for (delivery, claim, slot) in claimed {
                    let outcome = Some(Err(reason.clone()));
                    settling.push(self.settle_slotted(delivery, claim, slot, outcome));
                }
            }
        }
    }

    /// Settles a lane's delivery by its outcome, then frees its slot.
    fn settle_slotted(
        &self,
        delivery: Delivery,
        claim: Claim,
        slot: OwnedSemaphorePermit,
        outcome: Outcome,
    ) -> Settle<'_> {
        Box::pin(async move {
            self.settle(delivery, claim, outcome).await;
            drop(slot);
        })
    }

    /// Handles deliveries that need no order among them with one hand-over. Each is settled
    /// as soon as its own outcome is known, and frees its slot then.
    async fn process_group(&self, group: Vec<Slotted>) {
        if self.abort.is_cancelled() {
            for (delivery, _slot) in group {
                self.give_back(delivery).await;
            }
            return;
        }
        let claims = match &self.dedup {
            None => group.iter().map(|_| Claim::None).collect(),
            // Claimed concurrently, not one store round trip after another.
            Some(_) => join_all(group.iter().map(|(delivery, _)| self.claim(delivery))).await,
        };
        let mut claimed = Vec::with_capacity(group.len());
        for ((delivery, slot), claim) in group.into_iter().zip(claims) {
            match claim {
                Claim::Skip => self.skip_duplicate(delivery).await,
                claim => claimed.push((delivery, claim, slot)),
            }
        }
        if claimed.is_empty() {
            return;
        }
        let refs: Vec<&Delivery> = claimed.iter().map(|(delivery, _, _)| delivery).collect();
        let handed = AssertUnwindSafe(self.handler.hand_over_group(&refs))
            .catch_unwind()
            .await;
        drop(refs);
        let how: Vec<Handled> = match handed {
            Ok(Some(futures)) if futures.len() == claimed.len() => {
                futures.into_iter().map(Handled::HandedOver).collect()
            }
            // The handler takes one delivery at a time: all of them at once, still.
            Ok(_) => claimed.iter().map(|_| Handled::Alone).collect(),
            Err(panic) => {
                let reason = panic_reason(&*panic);
                claimed
                    .iter()
                    .map(|_| Handled::Panicked(reason.clone()))
                    .collect()
            }
        };
        let mut settling: FuturesUnordered<_> = claimed
            .into_iter()
            .zip(how)
            .map(|((delivery, claim, slot), how)| self.finish(delivery, claim, slot, how))
            .collect();
        while settling.next().await.is_some() {}
    }

    /// Settles one delivery of a group by its outcome, then frees its slot.
    async fn finish(
        &self,
        delivery: Delivery,
        claim: Claim,
        slot: OwnedSemaphorePermit,
        how: Handled,
    ) {
        let outcome = match how {
            Handled::HandedOver(future) => self.outcome_of(future).await,
            Handled::Alone => self.outcome_of(self.handler.handle(&delivery)).await,
            Handled::Panicked(reason) => Some(Err(reason)),
        };
        self.settle(delivery, claim, outcome).await;
        drop(slot);
    }

    /// The outcome of a handler's future: `None` when the consumer is stopped first (then the
    /// handler is not called at all; settling `None` gives the delivery back).
    async fn outcome_of<F>(&self, handled: F) -> Outcome
    where
        F: Future<Output = std::result::Result<(), HandlerError>>,
    {
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => None,
            result = AssertUnwindSafe(handled).catch_unwind() => {
                Some(result.map_err(|panic| panic_reason(&*panic)))
            }
        }
    }

    /// Runs the handler and settles the delivery by its outcome.
    async fn process(&self, delivery: Delivery) {
        if self.abort.is_cancelled() {
            self.give_back(delivery).await;
            return;
        }
        let claim = match self.claim(&delivery).await {
            Claim::Skip => {
                self.skip_duplicate(delivery).await;
                return;
            }
            claim => claim,
        };
        self.process_claimed(delivery, claim).await;
    }

    /// Runs the handler on a delivery whose dedup claim is taken, and settles it.
    async fn process_claimed(&self, delivery: Delivery, claim: Claim) {
        let outcome = self.outcome_of(self.handler.handle(&delivery)).await;
        self.settle(delivery, claim, outcome).await;
    }

    /// Acknowledges a delivery the dedup store says was handled already.
    async fn skip_duplicate(&self, delivery: Delivery) {
        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = delivery.ack().await {
            self.counters.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "acknowledging a duplicate failed; it comes back");
        }
    }

    /// Settles a delivery by the handler's outcome (`None`: stopped before it finished).
    ///
    /// The paths other than success are boxed: their futures (retries, dead letters) are large,
    /// and every delivery's task would otherwise carry and copy them.
    async fn settle(&self, delivery: Delivery, claim: Claim, outcome: Outcome) {
        if !matches!(outcome, Some(Ok(Ok(())))) {
            Box::pin(self.unclaim(claim)).await;
        }
        let settled = match outcome {
            // Stopped before it finished, or never started: it goes back as it came.
            None
            | Some(Ok(Err(HandlerError {
                not_handled: true, ..
            }))) => {
                Box::pin(self.give_back(delivery)).await;
                return;
            }
            Some(Ok(Ok(()))) => {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                delivery.ack().await
            }
            Some(Ok(Err(err))) => Box::pin(self.fail(delivery, err)).await,
            Some(Err(reason)) => {
                let err = HandlerError::retryable(format!("handler panicked: {reason}"))
                    .with_kind("panic");
                Box::pin(self.fail(delivery, err)).await
            }
        };
        if let Err(err) = settled {
            self.counters.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "settling a delivery failed; the broker will deliver it again");
        }
    }

    async fn fail(&self, mut delivery: Delivery, err: HandlerError) -> Result<()> {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let attempt = delivery.attempt;
        if !err.permanent && self.retry.allows_retry(attempt) {
            let delay = self.retry.delay_for(attempt);
            tracing::warn!(
                id = %delivery.message.id, topic = %delivery.message.topic, attempt, ?delay,
                error = %err, "handler failed; retrying"
            );
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            delivery
                .message
                .headers
                .entry(wire::HEADER_FIRST_FAILURE.to_owned())
                .or_insert_with(|| now_ms().to_string());
            return delivery.nack(Some(delay)).await;
        }
        tracing::error!(
            id = %delivery.message.id, topic = %delivery.message.topic, attempt,
            permanent = err.permanent, error = %err, "handler failed for good"
        );
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        match self.dead_letters.send(&delivery, &err).await {
            Ok(true) => {
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                delivery.ack().await
            }
            Ok(false) => delivery.reject().await,
            Err(publish_err) => {
                // Never drop it: it comes back and is dead-lettered again later.
                tracing::error!(error = %publish_err, "publishing a dead letter failed; the message comes back");
                let delay = self.retry.max_delay;
                delivery.nack(Some(delay)).await.and(Err(publish_err))
            }
        }
    }

    /// Claims the message id in the dedup store, if the consumer has one. A store that cannot
    /// be reached does not stop consumption: the message is handled (at-least-once).
    async fn claim(&self, delivery: &Delivery) -> Claim {
        let Some((dedup, group)) = &self.dedup else {
            return Claim::None;
        };
        let key = format!("polybus:dedup:{group}:{}", delivery.message.id);
        match dedup.store.claim(&key, dedup.ttl).await {
            Ok(true) => Claim::Held(key),
            Ok(false) => Claim::Skip,
            Err(err) => {
                tracing::warn!(error = %err, "the dedup store failed; handling the message anyway");
                Claim::None
            }
        }
    }

    /// Gives a claim back after a failure, so the retry is not taken for a duplicate.
    async fn unclaim(&self, claim: Claim) {
        if let (Claim::Held(key), Some((dedup, _))) = (claim, &self.dedup)
            && let Err(err) = dedup.store.release(&key).await
        {
            tracing::warn!(error = %err, "releasing a dedup claim failed; it expires on its own");
        }
    }

    async fn give_back(&self, delivery: Delivery) {
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = delivery.release().await {
            self.counters.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "releasing a delivery failed; the broker will deliver it again");
        }
    }
}
