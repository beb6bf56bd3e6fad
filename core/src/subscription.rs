//! A running subscription: deliveries flow from a backend's fetch task through a bounded channel.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::{Error, Result};

/// The backend's end of a subscription: the fetch task sends deliveries here and stops when
/// [`cancelled`](DeliverySink::cancelled) fires.
pub struct DeliverySink {
    tx: mpsc::Sender<Result<Delivery>>,
    cancel: CancellationToken,
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

    /// Reports a fatal error to the consumer; the subscription ends after it.
    pub async fn fail(&self, error: Error) {
        let _ = self.tx.send(Err(error)).await;
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

/// A stream of deliveries for one [`crate::SubscriptionSpec`].
///
/// Read with [`next`](Subscription::next) or [`next_batch`](Subscription::next_batch); end with
/// [`close`](Subscription::close), which stops the fetch task and releases every delivery that
/// was fetched but not yet handed out, so none is lost.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery>>,
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
        let sink = DeliverySink {
            tx,
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(fetch(sink));
        Subscription {
            rx,
            cancel,
            task: Some(task),
            deferred_error: None,
        }
    }

    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        if let Some(err) = self.deferred_error.take() {
            return Some(Err(err));
        }
        self.rx.recv().await
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
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                if err.is_panic() {
                    return Err(Error::Broker {
                        backend: "subscription",
                        reason: "the fetch task panicked".into(),
                    });
                }
            }
        }
        self.rx.close();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(delivery) = item {
                delivery.release().await?;
            }
        }
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Unread deliveries are dropped with the channel and so released by their own Drop.
        self.cancel.cancel();
    }
}
