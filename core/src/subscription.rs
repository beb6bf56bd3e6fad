//! A running subscription: deliveries flow from a backend's fetch task through a bounded channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::{Error, Result};

/// The backend's end of a subscription: the fetch task sends deliveries here and stops when
/// [`cancelled`](DeliverySink::cancelled) fires.
pub struct DeliverySink {
    tx: mpsc::Sender<Result<Delivery>>,
    cancel: CancellationToken,
    ready: Arc<watch::Sender<bool>>,
}

impl DeliverySink {
    /// Hands one delivery to the consumer, waiting while the prefetch buffer is full. Returns
    /// the delivery back when the subscription is closing, so the backend can release it.
    pub async fn send(&self, delivery: Delivery) -> std::result::Result<(), Delivery> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(delivery),
            permit = self.tx.reserve() => match permit {
                Ok(permit) => {
                    permit.send(Ok(delivery));
                    Ok(())
                }
                Err(_) => Err(delivery),
            },
        }
    }

    /// Reserves room for one delivery without waiting (for fetch loops on their own thread),
    /// so the delivery is built only once it can be handed over.
    pub fn try_reserve(&self) -> std::result::Result<SinkPermit<'_>, SinkBusy> {
        if self.cancel.is_cancelled() {
            return Err(SinkBusy::Closed);
        }
        match self.tx.try_reserve() {
            Ok(permit) => Ok(SinkPermit(permit)),
            Err(mpsc::error::TrySendError::Full(())) => Err(SinkBusy::Full),
            Err(mpsc::error::TrySendError::Closed(())) => Err(SinkBusy::Closed),
        }
    }

    /// Waits up to `timeout` until there is room, blocking the calling thread (for fetch loops
    /// on a thread of their own inside the runtime, such as `spawn_blocking`; never call it
    /// from an async task); reserve it with [`try_reserve`](DeliverySink::try_reserve). Wakes as
    /// soon as the consumer takes a delivery, so a fetch loop that is ahead does not sleep past
    /// the moment the consumer runs dry. `Err(Full)`: still no room after `timeout`.
    pub fn wait_for_room(&self, timeout: Duration) -> std::result::Result<(), SinkBusy> {
        match self.try_reserve() {
            Err(SinkBusy::Full) => {}
            ready => return ready.map(drop),
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            std::thread::sleep(timeout);
            return self.try_reserve().map(drop);
        };
        runtime.block_on(async {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => Err(SinkBusy::Closed),
                permit = tokio::time::timeout(timeout, self.tx.reserve()) => match permit {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err(SinkBusy::Closed),
                    Err(_) => Err(SinkBusy::Full),
                },
            }
        })
    }

    /// Reports a fatal error without waiting (for fetch loops on their own thread).
    pub fn fail_now(&self, error: Error) {
        let _ = self.tx.try_send(Err(error));
    }

    /// Reports a fatal error to the consumer; the subscription ends after it.
    pub async fn fail(&self, error: Error) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.tx.send(Err(error)) => {}
        }
    }

    /// Says whether the subscription is receiving now (for Kafka: partitions are assigned).
    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// A handle to say readiness from elsewhere (a Kafka rebalance callback).
    pub fn readiness(&self) -> Readiness {
        Readiness(self.ready.clone())
    }

    /// Completes when the subscription is being closed.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// True once the subscription is being closed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Tells when a subscription is receiving: at once for most backends; for Kafka once the
/// group has assigned it partitions. Useful before publishing to a group that reads from
/// `Latest`, and in tests.
#[derive(Clone)]
pub struct ReadySignal(watch::Receiver<bool>);

impl ReadySignal {
    /// True while the subscription is receiving.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the subscription is receiving, for at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.0.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed("subscription")),
            Err(_) => Err(Error::Timeout {
                operation: "waiting for the subscription to receive".into(),
                after: timeout,
            }),
        }
    }
}

/// The backend's side of a [`ReadySignal`].
#[derive(Clone)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Readiness {
    /// Says whether the subscription is receiving now.
    pub fn set(&self, ready: bool) {
        self.0.send_replace(ready);
    }
}

/// Room for one delivery, reserved with [`DeliverySink::try_reserve`].
pub struct SinkPermit<'a>(mpsc::Permit<'a, Result<Delivery>>);

impl SinkPermit<'_> {
    /// Hands the delivery over.
    pub fn send(self, delivery: Delivery) {
        self.0.send(Ok(delivery));
    }
}

/// Why [`DeliverySink::try_reserve`] found no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkBusy {
    /// The buffer is full: try again later.
    Full,
    /// The subscription is closing.
    Closed,
}

/// A stream of deliveries for one [`crate::SubscriptionSpec`].
///
/// Read with [`next`](Subscription::next) or [`next_batch`](Subscription::next_batch); end with
/// [`close`](Subscription::close), which stops the fetch task and releases every delivery that
/// was fetched but not yet handed out, so none is lost.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery>>,
    ready: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// An error met while a batch was being read, returned by the next read.
    deferred_error: Option<Error>,
}

impl Subscription {
    /// Creates a subscription whose fetch task is built by `fetch` from the sink it is given.
    /// `buffer` bounds how many deliveries wait between the fetch task and the consumer.
    pub fn spawn<F, Fut>(buffer: usize, fetch: F) -> Subscription
    where
        F: FnOnce(DeliverySink) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let cancel = CancellationToken::new();
        let (ready_tx, ready) = watch::channel(false);
        let sink = DeliverySink {
            tx,
            cancel: cancel.clone(),
            ready: Arc::new(ready_tx),
        };
        let task = tokio::spawn(fetch(sink));
        Subscription {
            rx,
            ready,
            cancel,
            task: Some(task),
            deferred_error: None,
        }
    }

    /// A handle that tells when the subscription is receiving (see [`ReadySignal`]).
    pub fn ready_signal(&self) -> ReadySignal {
        ReadySignal(self.ready.clone())
    }

    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        if let Some(err) = self.deferred_error.take() {
            return Some(Err(err));
        }
        self.rx.recv().await
    }

    /// A delivery that is ready now, without waiting; `None` when there is none. An error
    /// met here is kept for the next [`next`](Subscription::next).
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.deferred_error.is_some() {
            return None;
        }
        match self.rx.try_recv() {
            Ok(Ok(delivery)) => Some(delivery),
            Ok(Err(err)) => {
                self.deferred_error = Some(err);
                None
            }
            Err(_) => None,
        }
    }

    /// Waits up to `wait` for at least one delivery, then takes up to `max` that are ready.
    /// An empty vector means nothing arrived in time. A fatal error is returned on its own.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if let Some(err) = self.deferred_error.take() {
            return Err(err);
        }
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_) => return Ok(batch),
            Ok(None) => return Err(Error::Closed("subscription")),
            Ok(Some(item)) => item?,
        };
        batch.push(first);
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(Ok(delivery)) => batch.push(delivery),
                Ok(Err(err)) => {
                    self.deferred_error = Some(err);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Stops fetching, waits for the fetch task, and releases what was fetched but not read.
    pub async fn close(mut self) -> Result<()> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
            && err.is_panic()
        {
            return Err(Error::Broker {
                backend: "subscription",
                reason: "the fetch task panicked".into(),
            });
        }
        self.rx.close();
        let mut first_error = None;
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(delivery) = item
                && let Err(err) = delivery.release().await
            {
                tracing::warn!(error = %err, "releasing an unread delivery failed; the broker redelivers it");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Unread deliveries are dropped with the channel and so released by their own Drop.
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::delivery::{Acknowledger, DeliveryMeta, Settlement};
    use crate::message::Message;

    struct Unsettled;

    #[async_trait::async_trait]
    impl Acknowledger for Unsettled {
        async fn settle(self: Box<Self>, _: Settlement, _: Message) -> Result<()> {
            Ok(())
        }
    }

    fn delivery(n: u32) -> Delivery {
        let message = Message::text("t", n.to_string());
        Delivery::new(message, 1, DeliveryMeta::default(), Box::new(Unsettled))
    }

    /// What a fetch thread saw: a wait on a full buffer, a wait the consumer cut short, and
    /// a wait on a closing subscription.
    type Waits = (Option<SinkBusy>, Duration, Option<SinkBusy>);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_thread_waits_for_room_until_the_consumer_takes_a_delivery() {
        let (seen_tx, seen) = tokio::sync::oneshot::channel::<Waits>();
        let (taken_tx, taken) = std::sync::mpsc::channel::<()>();
        let mut subscription = Subscription::spawn(1, move |sink| async move {
            let waits = tokio::task::spawn_blocking(move || {
                sink.try_reserve().unwrap().send(delivery(1));
                let full = sink.wait_for_room(Duration::from_millis(20)).err();
                let _ = taken_tx.send(());
                let started = Instant::now();
                if let Err(busy) = sink.wait_for_room(Duration::from_secs(30)) {
                    panic!("no room after the consumer took one: {busy:?}");
                }
                sink.try_reserve().unwrap().send(delivery(2));
                let woken_after = started.elapsed();
                while !sink.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let closing = sink.wait_for_room(Duration::from_secs(30)).err();
                (full, woken_after, closing)
            })
            .await
            .unwrap();
            let _ = seen_tx.send(waits);
        });
        tokio::task::spawn_blocking(move || taken.recv())
            .await
            .unwrap()
            .unwrap();
        let first = subscription.next().await.unwrap().unwrap();
        let second = subscription.next().await.unwrap().unwrap();
        assert_eq!(
            (
                first.message.payload_str().unwrap(),
                second.message.payload_str().unwrap()
            ),
            ("1", "2")
        );
        subscription.cancel.cancel();
        let (full, woken_after, closing) = seen.await.unwrap();
        assert_eq!(full, Some(SinkBusy::Full));
        assert!(woken_after < Duration::from_secs(10), "{woken_after:?}");
        assert_eq!(closing, Some(SinkBusy::Closed));
    }
}
