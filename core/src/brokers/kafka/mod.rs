//! The Apache Kafka backend, on librdkafka (built from bundled sources, linked statically).
//!
//! Guarantees: at-least-once. The producer is idempotent (no duplicates or reordering from
//! its own retries) and a publish resolves when the broker acknowledged it. A consumer commits
//! an offset only after every message before it in the partition was settled, so a crash or
//! rebalance redelivers what was not processed, never skips it. Order is kept per key (and per
//! partition for messages without a key) on first delivery; retries are out of order.
//!
//! # Delayed redelivery: retry topics
//!
//! Each consumer group has a retry topic, `<group>.retry` (when the group name is not a valid
//! topic name, see [`retry`]: characters outside `[A-Za-z0-9._-]` become `_`, and a hash of the
//! group name is added), created like the other topics (`polybus.topic.partitions`,
//! `polybus.topic.replication`) and read by every subscription of the group along with its
//! topics.
//!
//! - A nack with a delay (`Requeue { delay }`, delay > 0) writes a copy of the message to the
//!   retry topic: same id, key, payload and headers, the next attempt in `polybus-attempt`,
//!   the due time in `polybus-retry-due-ms`, the original topic in `polybus-topic`, and the
//!   original record in `polybus-origin-partition` / `polybus-origin-offset`. Only once the
//!   broker acknowledged the copy is the original offset settled, so the partition's commit
//!   moves past it at once: a waiting retry holds back nothing.
//! - A copy read back is the message as published again (topic, timestamp, headers; the
//!   internal headers removed) on its attempt; its delivery's `partition` and `offset` are the
//!   original record's, and it has no ordering lane (`sequence` is unset). It is delivered no
//!   earlier than its due time. Until then it waits in memory with its retry-topic offset
//!   uncommitted; past `max(prefetch, 1000)` waiting copies the retry topic is paused until
//!   half of them went out (copies behind them then wait a little past their due time).
//!   Acknowledging it commits its retry-topic offset; nacking it again with a delay writes a
//!   new copy with the next attempt and the same origin.
//! - A consumer that crashes while a retry waits loses nothing: the copy is in the retry
//!   topic, uncommitted, and the next owner of its partition reads it again and waits for the
//!   same due time. The attempt count travels with the copy, so it survives the crash too.
//!   A crash between the copy's acknowledgement and the next commit (at most
//!   `polybus.commit.interval.ms`, usually far less) delivers the original once more on
//!   attempt 1 as well (at-least-once).
//! - When writing the copy fails (after the producer's own retries, bounded by
//!   `message.timeout.ms`), a warning is logged and the message is redelivered from the
//!   consumer's memory after the delay instead, its offset uncommitted until it is settled,
//!   holding back the partition's commit: a crash meanwhile redelivers it from the last
//!   commit, on attempt 1.
//! - A nack without a delay, and a release (shutdown, dropped delivery), redeliver from memory
//!   at once, as above.
//! - A group that starts from `Latest` still reads its retry topic from the beginning where it
//!   has committed nothing there yet; replays (`Offset`, `Timestamp`) move only the subscribed
//!   topics, and the retry topic resumes where the group was.
//! - With `polybus.topic.create=false` the retry topic must be created beforehand; while it is
//!   missing, every delayed nack takes the in-memory fallback.
//! - With patterns (topics starting with `^`), the pattern may match other groups' retry
//!   topics: copies read that way (carrying `polybus-retry-due-ms`, on a topic not listed by
//!   name) are skipped, not delivered. Pattern topics are not created.

mod admin;
mod client_errors;
mod codec;
mod consumer;
mod offsets;
mod producer;
mod retry;
mod settings;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use self::client_errors::ClientReports;
use self::consumer::kafka_error;
use self::producer::{Delivered, Deliveries, KafkaProducer};
use self::settings::KafkaSettings;
use crate::broker::{
    BlockingPublish, Broker, PublishReceipt, Publisher, Subscriber, SubscriptionSpec,
};
use crate::capabilities::Capabilities;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::Subscription;

const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    consumer_groups: true,
    fan_out: true,
    ordering_per_key: true,
    acknowledgements: true,
    redelivery: true,
    delayed_redelivery: true,
    replay: true,
    offset_replay: true,
    native_headers: true,
    pattern_subscriptions: false,
    ordered_batches: false,
};

/// A Kafka cluster: one idempotent producer shared by all publishes, one consumer-group member
/// per subscription.
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    producer: KafkaProducer,
    admin: AdminClient<ClientReports>,
    /// Topics known to exist (created or checked).
    known_topics: Mutex<HashSet<String>>,
    closed: AtomicBool,
    target: String,
    /// How long librdkafka tries to deliver a message (`message.timeout.ms`): what an awaited
    /// publish waits at most, and a blocking one too.
    delivery_timeout: Duration,
}

/// The most a topic's creation may take (the broker's work and the request).
const TOPIC_CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's `message.timeout.ms` when the URL sets none.
const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long one flush of a blocking publish lasts before it looks at its own message again.
const FLUSH_SLICE: Duration = Duration::from_millis(5);

impl KafkaBroker {
    /// Creates the producer and admin client. Connections are made lazily by librdkafka.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let settings = KafkaSettings::from_config(config)?;
        let target = config.bootstrap_servers.join(",");
        let producer_config = settings.producer();
        let delivery_timeout = producer_config
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(DEFAULT_DELIVERY_TIMEOUT, Duration::from_millis);
        let unreachable = |err: KafkaError| Error::Connection {
            target: target.clone(),
            reason: err.to_string(),
        };
        let producer = KafkaProducer::new(&producer_config, ClientReports::new("producer"))
            .map_err(unreachable)?;
        let admin = settings
            .common
            .create_with_context(ClientReports::new("admin"))
            .map_err(unreachable)?;
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                settings,
                producer,
                admin,
                known_topics: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                target,
                delivery_timeout,
            }),
        })
    }

    /// Creates `topics` that do not exist yet, with the configured partition count and
    /// replication (`polybus.topic.partitions`, `polybus.topic.replication`).
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        if !self.inner.settings.create_topics {
            return Ok(());
        }
        let missing: Vec<&String> = {
            let known = self
                .inner
                .known_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            topics.iter().filter(|t| !known.contains(*t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let settings = &self.inner.settings;
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    settings.topic_partitions,
                    TopicReplication::Fixed(settings.topic_replication),
                )
            })
            .collect();
        // A send that creates its topic first fails within its delivery timeout (not the
        // admin client's 60 s) when no broker answers.
        let limit = TOPIC_CREATE_TIMEOUT.min(self.inner.delivery_timeout);
        let options = AdminOptions::new()
            .operation_timeout(Some(limit))
            .request_timeout(Some(limit));
        let results = self
            .inner
            .admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|err| self.connection_error(err))?;
        let mut known = self
            .inner
            .known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for result in results {
            match result {
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    known.insert(topic);
                }
                Err((topic, code)) => {
                    return Err(Error::Broker {
                        backend: "kafka",
                        reason: format!("creating topic {topic:?} failed: {code}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn connection_error(&self, err: KafkaError) -> Error {
        Error::Connection {
            target: self.inner.target.clone(),
            reason: err.to_string(),
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("kafka producer"))
        } else {
            Ok(())
        }
    }

    /// Queues `message` as `slot` of `deliveries`; a message that cannot be queued gets its
    /// error there.
    async fn enqueue(&self, message: &Message, deliveries: &Arc<Deliveries>, slot: usize) {
        let record = codec::to_record(message, 1, deliveries.ticket(slot));
        let _ = self.inner.producer.send(record).await;
    }

    fn receipt(id: String, delivered: Delivered) -> Result<PublishReceipt> {
        let (partition, offset) = delivered.map_err(kafka_error)?;
        Ok(PublishReceipt {
            id,
            partition: Some(partition),
            offset: Some(offset),
            ..Default::default()
        })
    }

    /// True when `topic` needs no creating first: known to exist, or topics are not created.
    fn topic_ready(&self, topic: &str) -> bool {
        !self.inner.settings.create_topics
            || self
                .inner
                .known_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(topic)
    }

    fn publish_timed_out(&self, after: Duration) -> Error {
        Error::Timeout {
            operation: format!("a publish to {}", self.inner.target),
            after,
        }
    }

    async fn flush_blocking(&self, timeout: Duration) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.producer.flush(timeout))
            .await
            .map_err(|err| Error::Broker {
                backend: "kafka",
                reason: format!("flush task failed: {err}"),
            })?
            .map_err(|err| match err {
                KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Error::Timeout {
                    operation: "kafka flush".into(),
                    after: timeout,
                },
                other => kafka_error(other),
            })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // librdkafka purges what is still queued when the producer is dropped: flush first.
        if let Err(err) = self.producer.flush(self.settings.flush_timeout) {
            tracing::error!(error = %err, "kafka producer dropped with messages not delivered");
        }
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        self.ensure_open()?;
        message.validate()?;
        self.ensure_topics(std::slice::from_ref(&message.topic))
            .await?;
        let delivered = self
            .inner
            .producer
            .deliver(|ticket| codec::to_record(&message, 1, ticket))
            .await;
        Self::receipt(message.id, delivered)
    }

    /// Queues the message and flushes on the calling thread in slices of [`FLUSH_SLICE`],
    /// until its own acknowledgement came: while a flush is under way librdkafka sends what is
    /// queued without waiting out `linger.ms` (a PHP request publishing one event waited
    /// ~2.4 ms for each). Messages of the same partition queued before it still go first
    /// (librdkafka's queue per partition). A topic not created yet is handed back: `publish`
    /// creates it. Bounded by `timeout` and `message.timeout.ms`.
    fn publish_blocking(&self, message: Message, timeout: Duration) -> BlockingPublish {
        if let Err(err) = self.ensure_open().and_then(|()| message.validate()) {
            return BlockingPublish::Done(Err(err));
        }
        if !self.topic_ready(&message.topic) {
            return BlockingPublish::Declined(message);
        }
        let timeout = timeout.min(self.inner.delivery_timeout);
        let deadline = Instant::now() + timeout;
        let deliveries = Deliveries::new(1);
        let record = codec::to_record(&message, 1, deliveries.ticket(0));
        if !self.inner.producer.send_blocking(record, deadline) {
            return BlockingPublish::Done(Err(self.publish_timed_out(timeout)));
        }
        let rk = self.inner.producer.native_ptr();
        loop {
            if deliveries.is_done() {
                return BlockingPublish::Done(Self::receipt(message.id, deliveries.outcome(0)));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // Still queued: it may be delivered later (the caller may publish it again:
                // at least once, same id).
                return BlockingPublish::Done(Err(self.publish_timed_out(timeout)));
            }
            let slice = remaining.min(FLUSH_SLICE);
            let millis = i32::try_from(slice.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: `rk` is the producer's own handle, alive as long as `self`; librdkafka
            // allows a flush from any thread. It only waits (and sends at once while it does)
            // until every message queued was reported, which the producer's serving thread
            // does. It comes back early only when ours was reported too.
            unsafe { rdkafka::bindings::rd_kafka_flush(rk, millis) };
            if !deliveries.is_done() {
                // A task waiting for other deliveries may have been asked to serve ours, and
                // not got to it: serve here.
                self.inner.producer.serve();
            }
        }
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        if self.ensure_open().is_err() {
            return messages
                .iter()
                .map(|_| Err(Error::Closed("kafka producer")))
                .collect();
        }
        let checked: Vec<Result<()>> = messages.iter().map(Message::validate).collect();
        // A batch usually goes to one topic: a short list beats sorting a name per message.
        let mut topics: Vec<&str> = Vec::new();
        for (message, check) in messages.iter().zip(&checked) {
            if check.is_ok() && !topics.contains(&message.topic.as_str()) {
                topics.push(&message.topic);
            }
        }
        let topics: Vec<String> = topics.into_iter().map(str::to_owned).collect();
        let topics_ready = self.ensure_topics(&topics).await;
        // Queue everything first, then wait for all reports: they arrive while the rest are
        // queued, so the batch takes as long as its slowest message.
        let queued = match &topics_ready {
            Ok(()) => checked.iter().filter(|c| c.is_ok()).count(),
            Err(_) => 0,
        };
        let deliveries = Deliveries::new(queued);
        let mut slots = Vec::with_capacity(messages.len());
        let mut next = 0;
        for (message, check) in messages.iter().zip(checked) {
            slots.push(match (check, &topics_ready) {
                (Err(err), _) => Err(err),
                (Ok(()), Err(err)) => Err(Error::Broker {
                    backend: "kafka",
                    reason: err.to_string(),
                }),
                (Ok(()), Ok(())) => {
                    let slot = next;
                    next += 1;
                    self.enqueue(message, &deliveries, slot).await;
                    Ok(slot)
                }
            });
        }
        debug_assert_eq!(next, queued, "every slot of the deliveries is queued");
        self.inner.producer.wait(&deliveries).await;
        messages
            .into_iter()
            .zip(slots)
            .map(|(message, slot)| Self::receipt(message.id, deliveries.outcome(slot?)))
            .collect()
    }

    async fn flush(&self, timeout: Duration) -> Result<()> {
        self.flush_blocking(timeout).await
    }

    async fn prepare_topic(&self, topic: &str) -> Result<()> {
        self.ensure_topics(&[topic.to_owned()]).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.flush_blocking(self.inner.settings.flush_timeout).await
    }
}

#[async_trait]
impl Subscriber for KafkaBroker {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        spec.validate()?;
        let retry_topic = retry::retry_topic(&spec.group);
        // Patterns (`^...`) name no topic to create.
        let mut topics: Vec<String> = spec
            .topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .cloned()
            .collect();
        topics.push(retry_topic.clone());
        self.ensure_topics(&topics).await?;
        let settings = self.inner.settings.clone();
        let producer = self.inner.producer.clone();
        Ok(Subscription::spawn(spec.prefetch, move |sink| async move {
            let run = tokio::task::spawn_blocking(move || {
                consumer::run(settings, spec, sink, producer, retry_topic)
            });
            if let Err(err) = run.await {
                tracing::error!(error = %err, "the kafka poll thread failed");
            }
        }))
    }
}

impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn default_prefetch(&self) -> usize {
        crate::BrokerKind::Kafka.default_prefetch()
    }

    fn dead_letter_store(&self) -> Result<Box<dyn crate::dead_letters::DeadLetterStore>> {
        admin::store(self)
    }
}
