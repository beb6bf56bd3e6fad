//! The broker abstraction: a publisher side and a subscriber side, one pair for every backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::dead_letters::DeadLetterStore;
use crate::error::{Error, Result};
use crate::message::{Message, validate_topic};
use crate::subscription::Subscription;

/// What the broker reported for one published message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The message id.
    pub id: String,
    /// Partition written to, where the broker has partitions.
    pub partition: Option<i32>,
    /// Offset written at, where the broker has a log.
    pub offset: Option<i64>,
    /// Stream entry id (Redis streams).
    pub stream_id: Option<String>,
    /// How many subscribers received it, where the broker says (Redis pub/sub).
    pub receivers: Option<u64>,
    /// True when a [`crate::failover::FailoverBroker`] kept it in its local spool because the
    /// primary was unreachable; it is sent to the primary later.
    pub spooled: bool,
}

/// The producer side of a broker.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message and waits until the broker has accepted it.
    async fn publish(&self, message: Message) -> Result<PublishReceipt>;

    /// Publishes many messages, pipelined; returns one result per message, in order.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>>;

    /// Waits until everything published so far has been accepted by the broker.
    async fn flush(&self, timeout: Duration) -> Result<()>;

    /// Flushes and releases the connection. Later calls fail with [`Error::Closed`].
    async fn close(&self) -> Result<()>;

    /// Publishes one message on the calling thread and blocks it until the broker accepted
    /// it, for at most `timeout` (and the backend's own bound on a publish), where the backend
    /// can do that without an async runtime: Redis on plain TCP (one `send` and one `recv`),
    /// Kafka to a topic it knows (queue, then flush without waiting out `linger.ms`).
    /// Otherwise it hands the message back ([`BlockingPublish::Declined`]) for
    /// [`Publisher::publish`], which the default does. For callers that block anyway (PHP,
    /// Python's `send_sync`); never call it from an async task.
    fn publish_blocking(&self, message: Message, timeout: Duration) -> BlockingPublish {
        let _ = timeout;
        BlockingPublish::Declined(message)
    }

    /// Makes sure messages published to `topic` are kept even if nobody has subscribed yet
    /// (used for dead-letter topics): RabbitMQ declares a durable queue of that name bound to
    /// it, Kafka creates the topic. Most brokers keep them anyway: the default does nothing.
    async fn prepare_topic(&self, topic: &str) -> Result<()> {
        let _ = topic;
        Ok(())
    }
}

/// What [`Publisher::publish_blocking`] did.
#[derive(Debug)]
pub enum BlockingPublish {
    /// Published (or failed) on the calling thread.
    Done(Result<PublishReceipt>),
    /// Not done here: the message, for [`Publisher::publish`].
    Declined(Message),
}

/// Publishes `messages` one after another: for in-process backends, where a publish does
/// not wait on a network round trip. Network backends pipeline their batches instead.
pub async fn publish_each<P: Publisher + ?Sized>(
    publisher: &P,
    messages: Vec<Message>,
) -> Vec<Result<PublishReceipt>> {
    let mut receipts = Vec::with_capacity(messages.len());
    for message in messages {
        receipts.push(publisher.publish(message).await);
    }
    receipts
}

/// The subscriber side of a broker.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Starts receiving messages as `spec` describes.
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription>;
}

/// A broker backend: both sides, plus what it can do.
pub trait Broker: Publisher + Subscriber {
    /// Backend name: `memory`, `null`, `kafka`, `rabbitmq` or `redis`.
    fn name(&self) -> &'static str;

    /// The features this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// The prefetch for a subscription whose caller names none
    /// ([`BrokerKind::default_prefetch`](crate::BrokerKind::default_prefetch)).
    fn default_prefetch(&self) -> usize {
        DEFAULT_PREFETCH
    }

    /// Access to the dead letters this backend keeps, for [`crate::DeadLetters`]. The default
    /// is for backends that keep none: [`Error::Unsupported`].
    fn dead_letter_store(&self) -> Result<Box<dyn DeadLetterStore>> {
        Err(Error::Unsupported {
            backend: self.name(),
            feature: "dead-letter inspection and redrive (it keeps no messages)".into(),
        })
    }

    /// Where publishes go and how full the spool is, for a
    /// [`FailoverBroker`](crate::FailoverBroker); `None` for every other broker.
    fn failover_status(&self) -> Option<crate::failover::FailoverStatus> {
        None
    }
}

/// A shared handle on any broker.
pub type SharedBroker = Arc<dyn Broker>;

/// Where a subscription starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// A new group starts at the oldest retained message (the default: nothing published
    /// before the first consumer started is missed). An existing group resumes where it was.
    #[default]
    Earliest,
    /// A new group starts with messages published from now on. An existing group resumes.
    Latest,
    /// Moves the group to this offset (replay). Needs [`Capabilities::offset_replay`].
    Offset(i64),
    /// Moves the group to the first message appended at or after this time in milliseconds
    /// since the Unix epoch (replay). Needs [`Capabilities::replay`].
    Timestamp(i64),
}

impl StartPosition {
    /// True for positions that move an existing group (a seek), false for a new group's default.
    pub fn is_seek(self) -> bool {
        matches!(self, StartPosition::Offset(_) | StartPosition::Timestamp(_))
    }
}

impl std::str::FromStr for StartPosition {
    type Err = Error;

    /// Parses `earliest`, `latest`, `offset:N` or `timestamp:MS` (as the bindings take it).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "start",
                format!("{s:?} is not earliest, latest, offset:N or timestamp:MS"),
            )
        };
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "earliest" => StartPosition::Earliest,
            "latest" => StartPosition::Latest,
            other => match other.split_once(':') {
                Some(("offset", n)) => StartPosition::Offset(n.parse().map_err(|_| bad())?),
                Some(("timestamp", ms)) => StartPosition::Timestamp(ms.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            },
        })
    }
}

/// The prefetch of a [`SubscriptionSpec`] unless set, and of every backend but Kafka.
pub const DEFAULT_PREFETCH: usize = 100;

/// What to subscribe to and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Topics to read (patterns where [`Capabilities::pattern_subscriptions`] allows).
    pub topics: Vec<String>,
    /// Consumer group: members share the work, each group gets every message.
    pub group: String,
    /// How many handlers the consumer runtime runs at once.
    pub concurrency: usize,
    /// How many unacknowledged messages the broker may hand out ahead of processing.
    pub prefetch: usize,
    /// Where a new group starts, or where to seek.
    pub start: StartPosition,
}

impl SubscriptionSpec {
    /// A spec for `topics` in `group`, with concurrency 1 and prefetch [`DEFAULT_PREFETCH`]
    /// (bindings take [`Broker::default_prefetch`] when their caller names none).
    pub fn new<T: Into<String>>(
        topics: impl IntoIterator<Item = T>,
        group: impl Into<String>,
    ) -> Self {
        SubscriptionSpec {
            topics: topics.into_iter().map(Into::into).collect(),
            group: group.into(),
            concurrency: 1,
            prefetch: DEFAULT_PREFETCH,
            start: StartPosition::Earliest,
        }
    }

    /// Sets how many handlers run at once.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets how many messages may be handed out ahead of processing.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the start position.
    pub fn with_start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Checks the spec, naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.topics.is_empty() {
            return Err(Error::InvalidSubscription("no topics given".into()));
        }
        for topic in &self.topics {
            validate_topic(topic).map_err(Error::InvalidSubscription)?;
        }
        if self.group.trim().is_empty() {
            return Err(Error::InvalidSubscription("consumer group is empty".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::InvalidSubscription(
                "concurrency must be at least 1".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(Error::InvalidSubscription(
                "prefetch must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
