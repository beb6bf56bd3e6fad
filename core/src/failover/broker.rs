//! [`FailoverBroker`]: a [`Broker`] that publishes to a primary broker and, while the primary is
//! unreachable, to a durable local spool that it replays to the primary once it is back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::options::FailoverOptions;
use super::replay;
use super::shared::{Shared, copy_error, is_outage};
use super::spool::Spool;
use super::status::{FailoverState, FailoverStatus};
use crate::broker::{
    Broker, PublishReceipt, Publisher, SharedBroker, Subscriber, SubscriptionSpec,
};
use crate::capabilities::Capabilities;
use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::Subscription;

/// How long [`FailoverBroker::close`] waits for the background tasks.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker that never loses an acknowledged publish to a primary outage.
///
/// Publishes go to the primary. When the primary is unreachable (the publish fails with
/// [`Error::Connection`], [`Error::Timeout`] or [`Error::Closed`]), the message is appended to a
/// durable local spool instead and the publish succeeds with a receipt marked
/// [`spooled`](PublishReceipt::spooled). Other errors (an invalid message, a refusal) are
/// returned and never spooled. While the spool holds messages, new publishes go to it too, so
/// they stay in publish order. A background task probes the primary every
/// [`probe_interval`](FailoverOptions::probe_interval) (with backoff), replays the spool in
/// order with `publish_batch`, and after each acknowledged batch moves a cursor that is fsync'd
/// to disk; replayed segment files are deleted. Once the spool is empty, publishes go straight
/// to the primary again. Subscriptions always go to the primary.
///
/// **Delivery is at-least-once.** A message can reach the primary twice when: a publish to
/// the primary failed after the primary had in fact taken it (a lost reply), so it was
/// spooled as well; or the process stopped (or the primary failed) after a replayed batch was
/// accepted but before its cursor was written, so the batch is replayed again on the next
/// start. Message ids are stable across all of these, so an idempotent consumer
/// ([`crate::Dedup`]) drops the copies. Order: messages reach the primary in the order their
/// publishes completed, except that when a `publish_batch` partly fails, the messages it
/// spooled follow those of the same batch the primary took.
///
/// What survives depends on [`FsyncPolicy`](super::FsyncPolicy); the spool is in
/// [`spool_dir`](FailoverOptions::spool_dir), which one broker at a time may use. Reopening a
/// broker on a spool with messages in it resumes their replay.
pub struct FailoverBroker {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FailoverBroker {
    /// Wraps `primary`, with the spool `options` describe (opened, or created).
    pub async fn open(primary: SharedBroker, options: FailoverOptions) -> Result<FailoverBroker> {
        Self::start(Some(primary), None, options).await
    }

    /// Connects to the primary `config` describes. When it cannot be reached now (a transient
    /// error), the broker starts anyway, spooling, and keeps trying to connect in the
    /// background; other errors (a bad configuration) are returned.
    pub async fn connect(
        config: &BrokerConfig,
        options: FailoverOptions,
    ) -> Result<FailoverBroker> {
        options.validate()?;
        let primary = match crate::brokers::connect(config).await {
            Ok(primary) => Some(primary),
            Err(err) if is_outage(&err) => {
                tracing::warn!(primary = %config, error = %err, "failover: the primary is unreachable at start; spooling");
                None
            }
            Err(err) => return Err(err),
        };
        Self::start(primary, Some(config.clone()), options).await
    }

    /// Parses `url` and [`connect`](Self::connect)s to it.
    pub async fn connect_url(url: &str, options: FailoverOptions) -> Result<FailoverBroker> {
        Self::connect(&BrokerConfig::parse(url)?, options).await
    }

    async fn start(
        primary: Option<SharedBroker>,
        connector: Option<BrokerConfig>,
        options: FailoverOptions,
    ) -> Result<FailoverBroker> {
        let spool_options = options.clone();
        let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_options))
            .await
            .map_err(|err| Error::Broker {
                backend: "failover",
                reason: format!("opening the spool failed: {err}"),
            })??;
        let shared = Arc::new(Shared::new(options, spool, primary, connector));
        let tasks = vec![
            tokio::spawn(replay::run_replayer(shared.clone())),
            tokio::spawn(replay::run_interval_sync(shared.clone())),
        ];
        Ok(FailoverBroker {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// A snapshot of the state, spool and counters.
    pub fn status(&self) -> FailoverStatus {
        self.shared.status()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<FailoverStatus> {
        self.shared.watch_status()
    }

    /// Where publishes go right now.
    pub fn state(&self) -> FailoverState {
        self.shared.state()
    }

    /// The primary broker, if it has been reached.
    pub fn primary(&self) -> Option<SharedBroker> {
        self.shared.connected_primary()
    }

    /// The options this broker was opened with.
    pub fn options(&self) -> &FailoverOptions {
        &self.shared.options
    }

    /// Waits until the status satisfies `done`, for at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl FnMut(&FailoverStatus) -> bool,
    ) -> Result<FailoverStatus> {
        let mut receiver = self.watch_status();
        match tokio::time::timeout(timeout, receiver.wait_for(done)).await {
            Ok(Ok(status)) => Ok(status.clone()),
            Ok(Err(_)) => Err(Error::Closed("failover broker")),
            Err(_) => Err(Error::Timeout {
                operation: "waiting for the failover status".into(),
                after: timeout,
            }),
        }
    }

    /// Appends `messages` to the spool; one receipt (or the same error) per message.
    async fn spool(
        &self,
        messages: Vec<Message>,
        cause: Option<String>,
    ) -> Vec<Result<PublishReceipt>> {
        let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
        let shared = self.shared.clone();
        let appended = tokio::task::spawn_blocking(move || shared.append(&messages, cause))
            .await
            .unwrap_or_else(|err| {
                Err(Error::Broker {
                    backend: "failover",
                    reason: format!("the spool task failed: {err}"),
                })
            });
        match appended {
            Ok(()) => ids
                .into_iter()
                .map(|id| {
                    Ok(PublishReceipt {
                        id,
                        spooled: true,
                        ..Default::default()
                    })
                })
                .collect(),
            Err(err) => ids.iter().map(|_| Err(copy_error(&err))).collect(),
        }
    }

    /// The primary, when publishes go straight to it.
    /// Runs a publish to the primary for at most `publish_timeout`; running out of time
    /// counts as an outage (a timeout error).
    async fn bounded<T>(&self, publish: impl std::future::Future<Output = T>) -> Result<T> {
        let limit = self.options().publish_timeout;
        tokio::time::timeout(limit, publish)
            .await
            .map_err(|_| Error::Timeout {
                operation: "publishing to the primary broker".to_owned(),
                after: limit,
            })
    }

    fn direct(&self) -> Option<SharedBroker> {
        if self.shared.state() == FailoverState::Primary {
            self.shared.connected_primary()
        } else {
            None
        }
    }
}

#[async_trait]
impl Publisher for FailoverBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        self.shared.ensure_open()?;
        message.validate()?;
        let mut cause = None;
        if let Some(primary) = self.direct() {
            match self
                .bounded(primary.publish(message.clone()))
                .await
                .and_then(|r| r)
            {
                Err(err) if is_outage(&err) => cause = Some(err.to_string()),
                done => return done,
            }
        }
        self.spool(vec![message], cause)
            .await
            .pop()
            .expect("one result per message")
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        if self.shared.ensure_open().is_err() {
            return messages
                .iter()
                .map(|_| Err(Error::Closed("failover broker")))
                .collect();
        }
        let mut results: Vec<Option<Result<PublishReceipt>>> = Vec::with_capacity(messages.len());
        let mut valid = Vec::with_capacity(messages.len());
        let mut slots = Vec::with_capacity(messages.len());
        for message in messages {
            match message.validate() {
                Ok(()) => {
                    slots.push(results.len());
                    results.push(None);
                    valid.push(message);
                }
                Err(err) => results.push(Some(Err(err))),
            }
        }
        let mut cause = None;
        let (to_spool, spool_slots) = match self.direct() {
            Some(primary) if !valid.is_empty() => {
                let count = valid.len();
                let sent = match self.bounded(primary.publish_batch(valid.clone())).await {
                    Ok(sent) => sent,
                    Err(err) => (0..count).map(|_| Err(copy_error(&err))).collect(),
                };
                let mut to_spool = Vec::new();
                let mut spool_slots = Vec::new();
                for ((message, slot), result) in valid.into_iter().zip(slots).zip(sent) {
                    match result {
                        Err(err) if is_outage(&err) => {
                            cause.get_or_insert_with(|| err.to_string());
                            to_spool.push(message);
                            spool_slots.push(slot);
                        }
                        done => results[slot] = Some(done),
                    }
                }
                (to_spool, spool_slots)
            }
            _ => (valid, slots),
        };
        if !to_spool.is_empty() {
            let spooled = self.spool(to_spool, cause).await;
            for (slot, result) in spool_slots.into_iter().zip(spooled) {
                results[slot] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed("failover broker"))))
            .collect()
    }

    /// Fsyncs the spool, then flushes the primary. An unreachable primary is not an error
    /// here: what it has not taken is in the spool.
    async fn flush(&self, timeout: Duration) -> Result<()> {
        self.shared.ensure_open()?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.sync())
            .await
            .map_err(|err| Error::Broker {
                backend: "failover",
                reason: format!("the spool task failed: {err}"),
            })??;
        if let Some(primary) = self.shared.connected_primary() {
            match primary.flush(timeout).await {
                Err(err) if is_outage(&err) => {
                    tracing::debug!(error = %err, "failover: flushing the primary failed; the spool holds what it has not taken");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Stops the replayer (waiting at most 10 s), syncs and releases the spool (messages in it
    /// stay for the next start), then closes the primary.
    async fn close(&self) -> Result<()> {
        if self
            .shared
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        self.shared.cancel.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let stopped = tokio::time::timeout(CLOSE_TIMEOUT, futures::future::join_all(tasks)).await;
        if stopped.is_err() {
            tracing::warn!("failover: the replayer did not stop in time");
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.release_spool()).await;
        match self.shared.connected_primary() {
            Some(primary) => match primary.close().await {
                Err(err) if is_outage(&err) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    async fn prepare_topic(&self, topic: &str) -> Result<()> {
        self.shared.ensure_open()?;
        self.shared.primary().await?.prepare_topic(topic).await
    }
}

#[async_trait]
impl Subscriber for FailoverBroker {
    /// Subscribes on the primary (connecting it first if needed).
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        self.shared.ensure_open()?;
        self.shared.primary().await?.subscribe(spec).await
    }
}

impl Broker for FailoverBroker {
    /// The primary's backend name.
    fn name(&self) -> &'static str {
        self.shared.name()
    }

    /// The primary's capabilities (all false until the primary has been reached once), but
    /// batches are not [`Capabilities::ordered_batches`]: one may go to the spool while the one
    /// before it is still on its way to the primary.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_batches: false,
            ..self.shared.capabilities()
        }
    }

    /// The primary's backend's, known before it is reached.
    fn default_prefetch(&self) -> usize {
        self.shared.default_prefetch()
    }

    /// The primary's dead letters (they live on the primary, not in the spool).
    fn dead_letter_store(&self) -> Result<Box<dyn crate::dead_letters::DeadLetterStore>> {
        match self.shared.connected_primary() {
            Some(primary) => primary.dead_letter_store(),
            None => Err(Error::Connection {
                target: self.name().to_owned(),
                reason: "the primary broker has not been reached yet".to_owned(),
            }),
        }
    }

    fn failover_status(&self) -> Option<FailoverStatus> {
        Some(self.status())
    }
}

impl Drop for FailoverBroker {
    /// Stops the background tasks and releases the spool (and its lock) at once, so the same
    /// directory can be opened again; the primary is not closed.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.release_spool();
    }
}
