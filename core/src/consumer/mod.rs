//! The consumer runtime the bindings use: it runs a [`Handler`] over a subscription with
//! bounded concurrency, keeps order per key, acknowledges only after success, applies the
//! retry policy on failure, and stops gracefully.

mod dead_letter;
mod dedup;
mod dispatch;
mod handler;
mod retry;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dead_letter::DeadLetter;
pub use dedup::{Dedup, DedupStore, MemoryDedupStore};
pub use handler::{FnHandler, Handler, HandlerError, OutcomeFuture, Received, handler_fn};
pub use retry::RetryPolicy;

use crate::broker::{SharedBroker, SubscriptionSpec};
use crate::error::{Error, Result};
use crate::subscription::{ReadySignal, Subscription};
use dispatch::{Counters, Dispatcher};

/// How a consumer behaves around its handler.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// What happens when the handler fails.
    pub retry: RetryPolicy,
    /// Where messages go that failed for good (retries exhausted, or a permanent failure).
    pub dead_letter: DeadLetter,
    /// Skip messages whose id was handled within a time window (off by default).
    pub dedup: Option<Dedup>,
    /// How long [`Consumer::stop`] waits for in-flight handlers before giving their messages
    /// back to the broker unprocessed.
    pub drain_timeout: Duration,
    /// `Some(ahead)`: handle every message in the order received, one at a time, whatever its
    /// key, with up to `ahead` messages handed to the handler at once (as one run, for handlers
    /// that take runs, such as the bridge to Python and PHP). Replaces the subscription's
    /// concurrency. `None` (the default): up to `concurrency` at once, in order per key.
    pub sequential_ahead: Option<usize>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            retry: RetryPolicy::default(),
            dead_letter: DeadLetter::default(),
            dedup: None,
            drain_timeout: Duration::from_secs(30),
            sequential_ahead: None,
        }
    }
}

/// Counters of a running consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Deliveries received from the broker.
    pub received: u64,
    /// Handler calls that succeeded (and were acknowledged).
    pub succeeded: u64,
    /// Handler calls that failed.
    pub failed: u64,
    /// Failed messages put back for a retry.
    pub retried: u64,
    /// Failed messages given up on (retries exhausted or permanent failure).
    pub rejected: u64,
    /// Of those, messages published to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages given back unprocessed at stop.
    pub released: u64,
    /// Messages skipped (and acknowledged) as already handled, by the dedup store.
    pub duplicates: u64,
    /// Acknowledgements the broker refused (the message will come again).
    pub settle_errors: u64,
}

/// What [`Consumer::stop`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopReport {
    /// True when every in-flight handler finished within the drain timeout.
    pub drained: bool,
    /// Final counters.
    pub stats: ConsumerStats,
}

/// A running consumer. Stop it with [`stop`](Consumer::stop); dropping it stops fetching and
/// abandons in-flight work, whose messages the broker delivers again.
pub struct Consumer {
    ready: ReadySignal,
    stop_fetching: CancellationToken,
    fetch_ended: CancellationToken,
    abort: CancellationToken,
    fetch: Option<JoinHandle<FetchEnd>>,
    tracker: TaskTracker,
    counters: Arc<Counters>,
    drain_timeout: Duration,
}

struct FetchEnd {
    subscription: Subscription,
    error: Option<Error>,
}

impl Consumer {
    /// Subscribes to `spec` on `broker` and starts handling messages with `handler`.
    pub async fn start(
        broker: SharedBroker,
        spec: SubscriptionSpec,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> Result<Consumer> {
        spec.validate()?;
        let concurrency = options
            .sequential_ahead
            .map_or(spec.concurrency, |ahead| ahead.max(1));
        let group = spec.group.clone();
        let subscription = broker.subscribe(spec).await?;
        let ready = subscription.ready_signal();
        let stop_fetching = CancellationToken::new();
        let fetch_ended = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let dead_letters = dead_letter::DeadLetterer::new(broker.clone(), options.dead_letter);
        let dedup = options.dedup.map(|d| (d, group));
        let dispatcher = Arc::new(
            Dispatcher::new(
                handler,
                options.retry,
                dead_letters,
                dedup,
                tracker.clone(),
                abort.clone(),
                counters.clone(),
            )
            .sequential(options.sequential_ahead.is_some()),
        );
        let fetch = tokio::spawn(fetch_loop(
            subscription,
            Arc::new(Semaphore::new(concurrency)),
            dispatcher,
            stop_fetching.clone(),
            fetch_ended.clone(),
        ));
        Ok(Consumer {
            ready,
            stop_fetching,
            fetch_ended,
            abort,
            fetch: Some(fetch),
            tracker,
            counters,
            drain_timeout: options.drain_timeout,
        })
    }

    /// Tells when the subscription is receiving (for Kafka: partitions are assigned).
    pub fn ready(&self) -> ReadySignal {
        self.ready.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Completes when the consumer stopped fetching: after [`stop`](Consumer::stop) began, or
    /// when the subscription ended or failed (then `stop` returns the error).
    pub async fn fetch_ended(&self) {
        self.fetch_ended.cancelled().await
    }

    /// Stops fetching, waits up to the drain timeout for in-flight handlers (their messages
    /// are acknowledged as they succeed), gives back what did not finish, and closes the
    /// subscription, releasing anything fetched but not started. Nothing is lost and nothing
    /// is acknowledged twice.
    pub async fn stop(mut self) -> Result<StopReport> {
        self.stop_fetching.cancel();
        let end = match self.fetch.take() {
            Some(fetch) => fetch.await.map_err(|err| Error::Broker {
                backend: "consumer",
                reason: format!("the fetch loop failed: {err}"),
            })?,
            None => return Err(Error::Closed("consumer")),
        };
        self.tracker.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                timeout = ?self.drain_timeout,
                "handlers still running at the drain timeout; their messages go back to the broker"
            );
            self.abort.cancel();
            self.tracker.wait().await;
        }
        end.subscription.close().await?;
        if let Some(err) = end.error {
            return Err(err);
        }
        Ok(StopReport {
            drained,
            stats: self.counters.snapshot(),
        })
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.fetch.is_some() {
            self.stop_fetching.cancel();
            self.abort.cancel();
        }
    }
}

/// The most deliveries the fetch loop takes at once when more than one is ready.
const GATHER_MAX: usize = 256;

async fn fetch_loop(
    mut subscription: Subscription,
    slots: Arc<Semaphore>,
    dispatcher: Arc<Dispatcher>,
    stop: CancellationToken,
    ended: CancellationToken,
) -> FetchEnd {
    let mut error = None;
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = subscription.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                // What else is ready now (and has a free slot) is dispatched with it, so
                // deliveries that arrived together can be handed over together.
                let mut ready = vec![(delivery, slot)];
                while ready.len() < GATHER_MAX {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    match subscription.try_next() {
                        Some(delivery) => ready.push((delivery, slot)),
                        None => break,
                    }
                }
                dispatcher
                    .counters()
                    .received
                    .fetch_add(ready.len() as u64, Ordering::Relaxed);
                dispatcher.dispatch_all(ready);
            }
            Some(Err(err)) => {
                tracing::error!(error = %err, "subscription failed; the consumer stops fetching");
                error = Some(err);
                break;
            }
            None => break,
        }
    }
    ended.cancel();
    FetchEnd {
        subscription,
        error,
    }
}
