//! [`Hub`]: routes tasks to a queue broker (e.g. RabbitMQ) and events to a stream broker (e.g.
//! Kafka), and replays events from a point in time.
//!
//! ```no_run
//! # async fn demo() -> polybus::Result<()> {
//! use polybus::hub::HubConfig;
//! use polybus::Message;
//!
//! let hub = HubConfig::new("amqp://guest:guest@127.0.0.1:5672/", "kafka://127.0.0.1:9092")
//!     .connect()
//!     .await?;
//! hub.publish_task(Message::text("emails.send", "to: a@example.com")).await?;
//! hub.publish_event(Message::text("user.created", "{\"id\": 1}")).await?;
//! let replay = hub.replay_events(["user.created"], "audit", 1_700_000_000_000).await?;
//! # drop(replay);
//! hub.close().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{PublishReceipt, SharedBroker, StartPosition, SubscriptionSpec};
use crate::error::{Error, Result};
use crate::failover::{FailoverBroker, FailoverOptions};
use crate::message::Message;
use crate::subscription::Subscription;

/// Routes tasks (work queues: each task to one worker) and events (streams: every group gets
/// every event, history can be replayed) to their brokers. Both may be the same broker, and
/// either may be a [`FailoverBroker`].
#[derive(Clone)]
pub struct Hub {
    tasks: SharedBroker,
    events: SharedBroker,
}

impl Hub {
    /// A hub with `tasks` for task queues and `events` for event streams.
    pub fn new(tasks: SharedBroker, events: SharedBroker) -> Self {
        Hub { tasks, events }
    }

    /// A hub with one broker for both tasks and events.
    pub fn single(broker: SharedBroker) -> Self {
        Hub {
            tasks: broker.clone(),
            events: broker,
        }
    }

    /// The task broker.
    pub fn tasks(&self) -> &SharedBroker {
        &self.tasks
    }

    /// The event broker.
    pub fn events(&self) -> &SharedBroker {
        &self.events
    }

    /// True when tasks and events go to the same broker.
    pub fn is_single(&self) -> bool {
        Arc::ptr_eq(&self.tasks, &self.events)
    }

    /// Publishes a task.
    pub async fn publish_task(&self, message: Message) -> Result<PublishReceipt> {
        self.tasks.publish(message).await
    }

    /// Publishes tasks, pipelined; one result per message, in order.
    pub async fn publish_tasks(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        self.tasks.publish_batch(messages).await
    }

    /// Publishes an event.
    pub async fn publish_event(&self, message: Message) -> Result<PublishReceipt> {
        self.events.publish(message).await
    }

    /// Publishes events, pipelined; one result per message, in order.
    pub async fn publish_events(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        self.events.publish_batch(messages).await
    }

    /// Subscribes to tasks.
    pub async fn subscribe_tasks(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        self.tasks.subscribe(spec).await
    }

    /// Subscribes to events.
    pub async fn subscribe_events(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        self.events.subscribe(spec).await
    }

    /// Reads the events of `topics` appended at or after `from_timestamp_ms` (milliseconds
    /// since the Unix epoch), as consumer group `group`, which is moved there. Fails with
    /// [`Error::Unsupported`] naming the backend when the event broker keeps no history
    /// (see [`Capabilities::replay`](crate::Capabilities::replay)).
    pub async fn replay_events<T: Into<String>>(
        &self,
        topics: impl IntoIterator<Item = T>,
        group: impl Into<String>,
        from_timestamp_ms: i64,
    ) -> Result<Subscription> {
        let spec = SubscriptionSpec::new(topics, group)
            .with_start(StartPosition::Timestamp(from_timestamp_ms));
        self.replay_events_with(spec).await
    }

    /// Like [`replay_events`](Self::replay_events), with a full spec (concurrency, prefetch);
    /// its start position must be a [`StartPosition::Timestamp`] or [`StartPosition::Offset`].
    pub async fn replay_events_with(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        let capabilities = self.events.capabilities();
        let supported = match spec.start {
            StartPosition::Timestamp(_) => capabilities.replay,
            StartPosition::Offset(_) => capabilities.offset_replay,
            StartPosition::Earliest | StartPosition::Latest => {
                return Err(Error::InvalidSubscription(
                    "a replay starts at a timestamp or an offset, not earliest or latest".into(),
                ));
            }
        };
        if !supported {
            return Err(Error::Unsupported {
                backend: self.events.name(),
                feature: match spec.start {
                    StartPosition::Offset(_) => "event replay from an offset".into(),
                    _ => "event replay from a timestamp (it keeps no history to replay)".into(),
                },
            });
        }
        self.events.subscribe(spec).await
    }

    /// Flushes both brokers (once when they are the same).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let tasks = self.tasks.flush(timeout).await;
        let events = if self.is_single() {
            Ok(())
        } else {
            self.events.flush(timeout).await
        };
        tasks.and(events)
    }

    /// Closes both brokers (once when they are the same).
    pub async fn close(&self) -> Result<()> {
        let tasks = self.tasks.close().await;
        let events = if self.is_single() {
            Ok(())
        } else {
            self.events.close().await
        };
        tasks.and(events)
    }
}

/// How to build a [`Hub`] from two broker URLs, each optionally behind a [`FailoverBroker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// URL of the task broker.
    pub tasks_url: String,
    /// URL of the event broker.
    pub events_url: String,
    /// Spool the task broker's publishes through its outages.
    pub tasks_failover: Option<FailoverOptions>,
    /// Spool the event broker's publishes through its outages.
    pub events_failover: Option<FailoverOptions>,
}

impl HubConfig {
    /// Tasks to `tasks_url`, events to `events_url`, no failover.
    pub fn new(tasks_url: impl Into<String>, events_url: impl Into<String>) -> Self {
        HubConfig {
            tasks_url: tasks_url.into(),
            events_url: events_url.into(),
            tasks_failover: None,
            events_failover: None,
        }
    }

    /// Puts the task broker behind a [`FailoverBroker`] with these options.
    pub fn with_tasks_failover(mut self, options: FailoverOptions) -> Self {
        self.tasks_failover = Some(options);
        self
    }

    /// Puts the event broker behind a [`FailoverBroker`] with these options.
    pub fn with_events_failover(mut self, options: FailoverOptions) -> Self {
        self.events_failover = Some(options);
        self
    }

    /// Connects both brokers; when URL and failover options are the same, one broker serves
    /// both. Two failover brokers need two spool directories.
    pub async fn connect(&self) -> Result<Hub> {
        let same = self.tasks_url.trim() == self.events_url.trim()
            && self.tasks_failover == self.events_failover;
        if !same
            && let (Some(a), Some(b)) = (&self.tasks_failover, &self.events_failover)
            && a.spool_dir == b.spool_dir
        {
            return Err(Error::config(
                "events_failover.spool_dir",
                format!(
                    "{} is the task broker's spool too; give each failover broker its own directory",
                    b.spool_dir.display()
                ),
            ));
        }
        let tasks = connect_one(&self.tasks_url, self.tasks_failover.clone()).await?;
        if same {
            return Ok(Hub::single(tasks));
        }
        let events = match connect_one(&self.events_url, self.events_failover.clone()).await {
            Ok(events) => events,
            Err(err) => {
                let _ = tasks.close().await;
                return Err(err);
            }
        };
        Ok(Hub::new(tasks, events))
    }
}

async fn connect_one(url: &str, failover: Option<FailoverOptions>) -> Result<SharedBroker> {
    Ok(match failover {
        Some(options) => Arc::new(FailoverBroker::connect_url(url, options).await?),
        None => crate::brokers::connect_url(url).await?,
    })
}
