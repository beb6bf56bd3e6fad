//! Inspecting, counting and redriving dead letters: one API on every broker that keeps them.
//!
//! The consumer runtime publishes a message whose retries are exhausted to a dead-letter topic
//! (`<topic>.dlq` by default) with `polybus-dlq-*` headers saying why and where it failed.
//! [`DeadLetters`] reads that topic back:
//!
//! - [`count`](DeadLetters::count): how many dead letters wait (not redriven yet);
//! - [`list`](DeadLetters::list): the oldest waiting ones, without removing them;
//! - [`redrive`](DeadLetters::redrive): republishes them to the topic they failed on, each
//!   removed from the dead-letter topic only once the broker acknowledged the republish
//!   (at-least-once: a crash in between may republish one twice, never loses one).
//!
//! ```no_run
//! # async fn demo(broker: polybus::SharedBroker) -> polybus::Result<()> {
//! use polybus::{DeadLetters, RedriveOptions};
//!
//! let dead = DeadLetters::new(broker);
//! println!("{} waiting", dead.count("orders.created.dlq").await?);
//! for letter in dead.list("orders.created.dlq", 10).await? {
//!     println!("{}: {:?} after {:?} attempts", letter.message.id, letter.error, letter.attempts);
//! }
//! let report = dead.redrive("orders.created.dlq", RedriveOptions::default().with_limit(100)).await?;
//! println!("{} redriven, {} left in place", report.moved, report.left.len());
//! # Ok(()) }
//! ```
//!
//! How each backend keeps its dead letters (see [`crate::Broker::dead_letter_store`]):
//!
//! - **memory**: the topic's log, with the consumer group `polybus.dlq.<dlq>` as the
//!   "redriven up to here" cursor.
//! - **Kafka**: the topic's partitions, with the consumer group `polybus.dlq.<dlq>` as the
//!   cursor: its committed offset (or the low watermark when it has none) is where the
//!   waiting dead letters of a partition start.
//! - **RabbitMQ**: the durable queue named like the dead-letter topic (declared by the
//!   consumer runtime). [`list`](DeadLetters::list) takes messages with `basic.get` and hands
//!   them back unacknowledged, which sets their `redelivered` flag. Queues the broker itself
//!   dead-letters into (`<group>.dlq`, for [`crate::DeadLetter::Reject`]) are read alike: their
//!   messages carry no `polybus-dlq-*` headers, so the parsed fields are `None` except the
//!   original topic, recovered from the `polybus-topic` header or the `x-death` routing key.
//! - **Redis lists**: the list named like the topic (oldest at the right end).
//! - **Redis streams**: the stream named like the topic, with the consumer group
//!   `polybus.dlq.<dlq>` as the cursor (entries left in place stay pending in it).
//! - **Redis pub/sub** and **null** keep nothing: every call fails with
//!   [`Error::Unsupported`].

use async_trait::async_trait;

use crate::broker::SharedBroker;
use crate::error::{Error, Result};
use crate::message::{Message, validate_topic};
use crate::wire;

/// Prefix of the consumer groups that mark how far a dead-letter topic was redriven (memory,
/// Kafka, Redis streams): `polybus.dlq.<dead-letter topic>`.
pub const CURSOR_GROUP_PREFIX: &str = "polybus.dlq.";

/// The cursor group of `dlq_topic` on backends that keep one.
pub fn cursor_group(dlq_topic: &str) -> String {
    format!("{CURSOR_GROUP_PREFIX}{dlq_topic}")
}

/// A dead letter, as read from a dead-letter topic, with its `polybus-dlq-*` headers parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// The message as stored: `topic` is the dead-letter topic and the `polybus-dlq-*`
    /// headers are kept. [`redrive_message`](DeadLetterRecord::redrive_message) gives the
    /// message as a redrive republishes it.
    pub message: Message,
    /// Why it failed for good (`polybus-dlq-error`).
    pub error: Option<String>,
    /// The kind of error, e.g. an exception class (`polybus-dlq-error-type`).
    pub error_type: Option<String>,
    /// How many deliveries were tried (`polybus-dlq-attempts`).
    pub attempts: Option<u32>,
    /// The topic it failed on (`polybus-dlq-topic`, or what the broker recorded).
    pub original_topic: Option<String>,
    /// The consumer group it failed in (`polybus-dlq-group`).
    pub group: Option<String>,
    /// The partition it was read from, where the broker has partitions.
    pub partition: Option<i32>,
    /// The offset (or Redis stream entry id) it was read from, where the broker has one.
    pub offset: Option<String>,
    /// First failure, milliseconds since the Unix epoch.
    pub first_failure_ms: Option<i64>,
    /// Last failure, milliseconds since the Unix epoch.
    pub last_failure_ms: Option<i64>,
}

impl DeadLetterRecord {
    /// Parses the dead-letter headers of `letter`.
    pub fn from_stored(letter: StoredLetter) -> Self {
        let StoredLetter { message, origin } = letter;
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<i64>().ok());
        DeadLetterRecord {
            error: message.headers.get(wire::DLQ_ERROR).cloned(),
            error_type: header(wire::DLQ_ERROR_TYPE),
            attempts: header(wire::DLQ_ATTEMPTS).and_then(|v| v.parse().ok()),
            original_topic: header(wire::DLQ_TOPIC)
                .or(origin)
                .filter(|t| validate_topic(t).is_ok()),
            group: header(wire::DLQ_GROUP),
            partition: header(wire::DLQ_PARTITION).and_then(|v| v.parse().ok()),
            offset: header(wire::DLQ_OFFSET),
            first_failure_ms: number(wire::DLQ_FIRST_FAILURE),
            last_failure_ms: number(wire::DLQ_LAST_FAILURE),
            message,
        }
    }

    /// The message a redrive publishes: same id, key, payload, content type, timestamp and
    /// user headers, on `to` (or the original topic), without the dead-letter and retry
    /// headers, so it starts again at attempt 1. `None` when there is no topic to send it to.
    pub fn redrive_message(&self, to: Option<&str>) -> Option<Message> {
        let topic = to.or(self.original_topic.as_deref())?;
        let mut message = self.message.clone();
        message.topic = topic.to_owned();
        message.headers.retain(|name, _| !is_failure_header(name));
        Some(message)
    }
}

/// Headers that describe a failure rather than the message: dropped on redrive.
fn is_failure_header(name: &str) -> bool {
    name.starts_with("polybus-dlq-")
        || name == wire::HEADER_FIRST_FAILURE
        || name == wire::HEADER_ATTEMPT
}

/// What to redrive and where to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveOptions {
    /// The most dead letters taken from the dead-letter topic (moved or left in place);
    /// `None` takes every one waiting when the redrive starts.
    pub limit: Option<usize>,
    /// Publish every dead letter to this topic instead of the one it failed on.
    pub to: Option<String>,
}

impl RedriveOptions {
    /// Takes at most `limit` dead letters.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Publishes to `topic` instead of each dead letter's original topic.
    pub fn with_target(mut self, topic: impl Into<String>) -> Self {
        self.to = Some(topic.into());
        self
    }
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Dead letters republished (and acknowledged by the broker) and removed from the
    /// dead-letter topic.
    pub moved: u64,
    /// Dead letters left where they were, with why.
    pub left: Vec<LeftInPlace>,
}

/// A dead letter a redrive left in the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftInPlace {
    /// The message id.
    pub id: String,
    /// Why it was left.
    pub reason: LeftReason,
}

/// Why a redrive left a dead letter in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeftReason {
    /// It names no original topic (no `polybus-dlq-topic`) and no target was given.
    NoTopic,
    /// Publishing it failed; the error message.
    PublishFailed(String),
}

impl std::fmt::Display for LeftReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftReason::NoTopic => {
                f.write_str("it names no original topic and no target was given")
            }
            LeftReason::PublishFailed(err) => write!(f, "republishing it failed: {err}"),
        }
    }
}

/// A dead letter as a backend stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLetter {
    /// The message; its topic is the dead-letter topic.
    pub message: Message,
    /// The topic it failed on as the broker recorded it, for dead letters without a
    /// `polybus-dlq-topic` header (RabbitMQ's own dead-lettering).
    pub origin: Option<String>,
}

impl StoredLetter {
    /// A dead letter with only its message.
    pub fn new(message: Message) -> Self {
        StoredLetter {
            message,
            origin: None,
        }
    }
}

/// A backend's access to the dead letters it keeps; see [`crate::Broker::dead_letter_store`].
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// How many dead letters wait in `dlq_topic`.
    async fn count(&self, dlq_topic: &str) -> Result<u64>;

    /// Up to `limit` of the oldest waiting dead letters, left where they are.
    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>>;

    /// Starts taking dead letters out of `dlq_topic` one by one.
    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>>;
}

/// Takes dead letters out of a dead-letter topic, oldest first, one at a time: each letter
/// [`next`](DeadLetterCursor::next) returns is settled with
/// [`settle`](DeadLetterCursor::settle) before the next one is asked for.
#[async_trait]
pub trait DeadLetterCursor: Send {
    /// The next waiting dead letter, or `None` when every letter that waited when the cursor
    /// opened was taken (or the backend cannot go past one left in place).
    async fn next(&mut self) -> Result<Option<StoredLetter>>;

    /// Settles the letter `next` returned last: `remove` takes it out of the dead-letter
    /// topic for good; otherwise it stays where it was.
    async fn settle(&mut self, remove: bool) -> Result<()>;

    /// Ends the walk, handing back whatever is still held.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// Counts, lists and redrives the dead letters of a broker.
#[derive(Clone)]
pub struct DeadLetters {
    broker: SharedBroker,
}

impl DeadLetters {
    /// Dead-letter administration on `broker`.
    pub fn new(broker: SharedBroker) -> Self {
        DeadLetters { broker }
    }

    fn store(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterStore>> {
        validate_topic(dlq_topic).map_err(|reason| Error::config("dead-letter topic", reason))?;
        self.broker.dead_letter_store()
    }

    /// How many dead letters wait in `dlq_topic` (not redriven yet). A topic that was never
    /// created holds none.
    pub async fn count(&self, dlq_topic: &str) -> Result<u64> {
        self.store(dlq_topic)?.count(dlq_topic).await
    }

    /// Up to `limit` of the oldest dead letters waiting in `dlq_topic`, left where they are.
    pub async fn list(&self, dlq_topic: &str, limit: usize) -> Result<Vec<DeadLetterRecord>> {
        if limit == 0 {
            self.store(dlq_topic)?;
            return Ok(Vec::new());
        }
        let letters = self.store(dlq_topic)?.peek(dlq_topic, limit).await?;
        Ok(letters
            .into_iter()
            .take(limit)
            .map(DeadLetterRecord::from_stored)
            .collect())
    }

    /// Republishes the dead letters waiting in `dlq_topic`, oldest first, to the topic each
    /// failed on (or `options.to`), and removes each from `dlq_topic` once the broker has
    /// acknowledged its republish. A letter without a topic to go to, or whose republish
    /// fails, stays where it is and is reported; a transient failure (connection lost,
    /// timeout) ends the redrive there. On Kafka a partition (on the memory broker, the
    /// topic) is not redriven past a letter left in place, which keeps the cursor exact.
    ///
    /// Letters that fail again after the redrive come back as new dead letters; they are
    /// not redriven twice by one call. A broker error while taking or removing a letter ends
    /// the redrive with that error; a letter republished but not removed yet is republished
    /// again by the next redrive (at-least-once).
    pub async fn redrive(&self, dlq_topic: &str, options: RedriveOptions) -> Result<RedriveReport> {
        if let Some(to) = &options.to {
            validate_topic(to).map_err(|reason| Error::config("redrive target", reason))?;
        }
        let store = self.store(dlq_topic)?;
        let mut report = RedriveReport::default();
        let limit = options.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(report);
        }
        let mut cursor = store.open(dlq_topic).await?;
        let walked = self
            .walk(cursor.as_mut(), &options, limit, &mut report)
            .await;
        let closed = cursor.close().await;
        walked.and(closed)?;
        Ok(report)
    }

    async fn walk(
        &self,
        cursor: &mut dyn DeadLetterCursor,
        options: &RedriveOptions,
        limit: usize,
        report: &mut RedriveReport,
    ) -> Result<()> {
        let mut taken = 0usize;
        while taken < limit {
            let Some(letter) = cursor.next().await? else {
                break;
            };
            taken += 1;
            let record = DeadLetterRecord::from_stored(letter);
            let id = record.message.id.clone();
            let Some(message) = record.redrive_message(options.to.as_deref()) else {
                cursor.settle(false).await?;
                report.left.push(LeftInPlace {
                    id,
                    reason: LeftReason::NoTopic,
                });
                continue;
            };
            match self.broker.publish(message).await {
                Ok(_) => {
                    cursor.settle(true).await?;
                    report.moved += 1;
                }
                Err(err) => {
                    tracing::warn!(id = %id, error = %err, "redriving a dead letter failed; it stays in the dead-letter topic");
                    cursor.settle(false).await?;
                    let transient = err.is_transient();
                    report.left.push(LeftInPlace {
                        id,
                        reason: LeftReason::PublishFailed(err.to_string()),
                    });
                    if transient {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> Message {
        Message::text("orders.dlq", "x")
            .with_id("m-1")
            .with_key("k")
            .with_header("tenant", "eu")
            .with_header(wire::DLQ_ERROR, "card declined")
            .with_header(wire::DLQ_ERROR_TYPE, "PaymentError")
            .with_header(wire::DLQ_ATTEMPTS, "3")
            .with_header(wire::DLQ_TOPIC, "orders")
            .with_header(wire::DLQ_GROUP, "billing")
            .with_header(wire::DLQ_PARTITION, "2")
            .with_header(wire::DLQ_OFFSET, "17")
            .with_header(wire::DLQ_FIRST_FAILURE, "1000")
            .with_header(wire::DLQ_LAST_FAILURE, "2000")
    }

    #[test]
    fn the_dead_letter_headers_are_parsed() {
        let record = DeadLetterRecord::from_stored(StoredLetter::new(letter()));
        assert_eq!(record.error.as_deref(), Some("card declined"));
        assert_eq!(record.error_type.as_deref(), Some("PaymentError"));
        assert_eq!(record.attempts, Some(3));
        assert_eq!(record.original_topic.as_deref(), Some("orders"));
        assert_eq!(record.group.as_deref(), Some("billing"));
        assert_eq!(record.partition, Some(2));
        assert_eq!(record.offset.as_deref(), Some("17"));
        assert_eq!(record.first_failure_ms, Some(1000));
        assert_eq!(record.last_failure_ms, Some(2000));
        assert_eq!(record.message.topic, "orders.dlq");
    }

    #[test]
    fn a_redriven_message_starts_afresh() {
        let record = DeadLetterRecord::from_stored(StoredLetter::new(
            letter().with_header(wire::HEADER_FIRST_FAILURE, "1000"),
        ));
        let message = record.redrive_message(None).unwrap();
        assert_eq!(message.topic, "orders");
        assert_eq!(
            (message.id.as_str(), message.key.as_deref()),
            ("m-1", Some("k"))
        );
        assert_eq!(message.headers.len(), 1, "{:?}", message.headers);
        assert_eq!(message.headers["tenant"], "eu");
        assert_eq!(
            record.redrive_message(Some("other")).unwrap().topic,
            "other"
        );
    }

    #[test]
    fn foreign_dead_letters_use_the_recorded_origin() {
        let plain = Message::text("billing.dlq", "x");
        let record = DeadLetterRecord::from_stored(StoredLetter {
            message: plain.clone(),
            origin: Some("orders".into()),
        });
        assert_eq!(record.original_topic.as_deref(), Some("orders"));
        assert_eq!(record.error, None);
        assert_eq!(record.attempts, None);
        let record = DeadLetterRecord::from_stored(StoredLetter::new(plain));
        assert_eq!(record.redrive_message(None), None);
    }
}
