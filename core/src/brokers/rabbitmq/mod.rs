//! The RabbitMQ backend (AMQP 0-9-1, on lapin).
//!
//! Default mapping of the topic API: `publish(topic)` goes to the durable topic exchange
//! `polybus` (`?exchange=` to rename it) with routing key = topic; a consumer group is a durable
//! queue named after the group, bound with each subscribed topic as a pattern (so `orders.*` and
//! `orders.#` work). Each group queue dead-letters to `<group>.dlq`.
//!
//! Guarantees: at-least-once. Messages are persistent and published with confirms, pipelined in
//! a window; a publish resolves when the broker confirmed it, or fails — including for a publish
//! in flight when the connection drops — so nothing is lost silently. With `mandatory` (the
//! default) a message no queue is bound for is an error, not a silent drop. Consumers ack after
//! the handler succeeded (a channel's acknowledged front goes out as one `basic.ack` with
//! `multiple`, see `acks`); a lost connection is re-opened with backoff, the topology re-declared
//! and consumption resumed, and the broker redelivers what was not acknowledged.

mod acks;
mod admin;
mod codec;
mod consumer;
mod direct;
mod link;
mod topology;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, PublisherConfirm};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::Mutex;

use self::consumer::QueueSource;
use self::link::Link;
pub use self::topology::{BindingSpec, ExchangeSpec, ExchangeType, QueueSpec, QueueType, Topology};
use crate::broker::{Broker, PublishReceipt, Publisher, Subscriber, SubscriptionSpec};
use crate::capabilities::Capabilities;
use crate::config::{AmqpConfig, BrokerConfig};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::Subscription;

const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    consumer_groups: true,
    fan_out: true,
    ordering_per_key: false,
    acknowledgements: true,
    redelivery: true,
    delayed_redelivery: true,
    replay: false,
    offset_replay: false,
    native_headers: true,
    pattern_subscriptions: true,
    ordered_batches: false,
};

/// Delays a nacked message can wait, in milliseconds: a requested delay is rounded up to the
/// next step, so each step needs one TTL queue per consumer queue.
const DELAY_STEPS_MS: [u64; 16] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000, 7_200_000, 86_400_000,
];

/// A RabbitMQ server: one connection for publishing (confirm mode), one for consuming.
#[derive(Clone)]
pub struct RabbitMqBroker {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    target: String,
    exchange: String,
    mandatory: bool,
    confirm_window: usize,
    /// The longest wait for a publish's confirmation (`confirm_timeout_ms`, default 30000):
    /// past it the publish fails with a timeout and the caller publishes it again (a
    /// connection lost mid-confirm may otherwise leave the confirmation pending).
    confirm_timeout: Duration,
    queue_type: QueueType,
    prefetch: Option<u16>,
    publish_link: Link,
    /// Connections of its own for publishes a caller awaits one at a time (plain TCP only).
    direct: Option<direct::DirectPublisher>,
    consume_link: Link,
    publish_channel: Mutex<Option<Channel>>,
    /// Everything declared so far, declared again on every new channel.
    topology: std::sync::Mutex<Topology>,
    closed: AtomicBool,
}

impl RabbitMqBroker {
    /// Prepares the broker; connections open on first use.
    pub fn new(config: &AmqpConfig) -> Result<Self> {
        let params = &config.params;
        let parse = |key: &str| -> Result<Option<u64>> {
            params
                .get(key)
                .map(|v| {
                    v.parse().map_err(|_| {
                        Error::config(
                            format!("query parameter `{key}`"),
                            format!("{v:?} is not a number"),
                        )
                    })
                })
                .transpose()
        };
        let mandatory = match params.get("mandatory").map(String::as_str) {
            None | Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(Error::config(
                    "query parameter `mandatory`",
                    format!("{other:?} is not true or false"),
                ));
            }
        };
        let queue_type = match params.get("queue_type").map(String::as_str) {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(Error::config(
                    "query parameter `queue_type`",
                    format!("{other:?} is not classic or quorum"),
                ));
            }
        };
        let connect_timeout = Duration::from_millis(parse("connection_timeout")?.unwrap_or(10_000));
        let target = BrokerConfig::RabbitMq(config.clone()).redacted_url();
        let uri = lapin_uri(config);
        let exchange = params
            .get("exchange")
            .cloned()
            .unwrap_or_else(|| "polybus".to_owned());
        let mut topology = Topology::default();
        topology.exchanges.push(ExchangeSpec {
            name: exchange.clone(),
            kind: ExchangeType::Topic,
            durable: true,
        });
        Ok(RabbitMqBroker {
            shared: Arc::new(Shared {
                exchange,
                mandatory,
                confirm_window: parse("confirm_window")?.unwrap_or(1000).max(1) as usize,
                confirm_timeout: Duration::from_millis(
                    parse("confirm_timeout_ms")?.unwrap_or(30_000).max(1),
                ),
                queue_type,
                prefetch: parse("prefetch")?.map(|p| p.clamp(1, u16::MAX as u64) as u16),
                publish_link: Link::new(
                    uri.clone(),
                    target.clone(),
                    "polybus-publisher",
                    connect_timeout,
                ),
                direct: direct::DirectPublisher::new(
                    config,
                    &target,
                    "polybus-publisher (direct)",
                    connect_timeout,
                ),
                consume_link: Link::new(uri, target.clone(), "polybus-consumer", connect_timeout),
                publish_channel: Mutex::new(None),
                topology: std::sync::Mutex::new(topology),
                closed: AtomicBool::new(false),
                target,
            }),
        })
    }

    /// Declares `topology` now and again after every reconnect.
    pub async fn declare(&self, topology: &Topology) -> Result<()> {
        self.shared.remember(topology);
        let channel = self.shared.new_channel(&self.shared.publish_link).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Publishes `message` to `exchange` with `routing_key` (instead of the default mapping).
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<PublishReceipt> {
        message.validate()?;
        self.shared
            .publish_one(exchange, routing_key, &message)
            .await?;
        Ok(PublishReceipt {
            id: message.id,
            ..Default::default()
        })
    }

    /// Consumes an existing queue as it is (no binding is added).
    pub async fn consume_queue(&self, queue: &str, prefetch: u16) -> Result<Subscription> {
        self.ensure_open()?;
        let source = QueueSource {
            queue: queue.to_owned(),
            group: None,
            prefetch: prefetch.max(1),
        };
        let shared = self.shared.clone();
        Ok(Subscription::spawn(prefetch as usize, move |sink| {
            consumer::run(shared, source, sink)
        }))
    }

    fn ensure_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(Error::Closed("rabbitmq broker"))
        } else {
            Ok(())
        }
    }
}

impl Shared {
    /// A consumer group's durable queue, bound to `topics` on the exchange, dead-lettering to
    /// `<queue>.dlq`.
    fn group_topology(&self, queue: &str, topics: &[String]) -> Topology {
        let dead_letters = format!("{queue}.dlq");
        Topology {
            exchanges: vec![],
            // Both declared alike, so a queue Polybus declares in one role (a group's
            // dead-letter queue) is declared the same way in another (a group of its own).
            queues: vec![self.queue_spec(queue), self.queue_spec(&dead_letters)],
            bindings: topics
                .iter()
                .map(|topic| BindingSpec {
                    queue: queue.to_owned(),
                    exchange: self.exchange.clone(),
                    routing_key: topic.clone(),
                    headers: BTreeMap::new(),
                    match_all: true,
                })
                .collect(),
        }
    }

    /// How Polybus declares every queue of its own: durable, dead-lettering to `<name>.dlq`
    /// through the default exchange.
    fn queue_spec(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            queue_type: self.queue_type,
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(format!("{name}.dlq")),
            ..Default::default()
        }
    }

    fn remember(&self, topology: &Topology) {
        let mut known = self.topology.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Topology {
            exchanges: topology
                .exchanges
                .iter()
                .filter(|e| !known.exchanges.contains(e))
                .cloned()
                .collect(),
            queues: topology
                .queues
                .iter()
                .filter(|q| !known.queues.contains(q))
                .cloned()
                .collect(),
            bindings: topology
                .bindings
                .iter()
                .filter(|b| !known.bindings.contains(b))
                .cloned()
                .collect(),
        };
        known.extend(&fresh);
    }

    /// A new channel on `link` with the whole known topology declared.
    async fn new_channel(&self, link: &Link) -> Result<Channel> {
        let connection = link.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|err| link.error(err))?;
        let topology = self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        topology.declare(&channel).await?;
        Ok(channel)
    }

    /// The publishing channel (confirm mode), re-opened if it was lost.
    async fn publish_channel(&self) -> Result<Channel> {
        let mut current = self.publish_channel.lock().await;
        if let Some(channel) = current.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.new_channel(&self.publish_link).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|err| self.publish_link.error(err))?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    /// The publishing channel of an open broker.
    async fn publish_ready(&self) -> Result<Channel> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("rabbitmq broker"));
        }
        self.publish_channel().await
    }

    /// Publishes one message and waits for its confirmation: on a direct connection when one
    /// is free (no hand-offs to lapin's I/O thread), else on the shared channel.
    async fn publish_one(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<()> {
        if let Some(direct) = &self.direct {
            if direct.take_channel_closed() {
                // A direct publish's channel was closed (an exchange deleted, say): a new shared
                // channel declares the topology again, as after the shared channel's own close.
                self.publish_channel.lock().await.take();
            }
            // The shared channel declares (and after a reconnect declares again) the exchange
            // and the queues the direct connection publishes to.
            self.publish_ready().await?;
            let publish = direct::Publish {
                exchange,
                routing_key,
                mandatory: self.mandatory,
                payload: &message.payload,
                properties: codec::properties(message, 1),
            };
            if let Some(result) = direct.publish(publish, self.confirm_timeout).await {
                return result;
            }
        }
        let confirm = self.send(exchange, routing_key, message, 1).await?;
        self.confirmed(confirm, routing_key).await
    }

    /// Sends one message; the returned future resolves with the broker's confirmation.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        attempt: u32,
    ) -> Result<PublisherConfirm> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("rabbitmq broker"));
        }
        let channel = self.publish_channel().await?;
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            ..Default::default()
        };
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &message.payload,
                codec::properties(message, attempt),
            )
            .await
            .map_err(|err| self.publish_link.error(err))
    }

    /// Waits for one confirmation; a nack or a returned (unroutable) message is an error.
    async fn confirmed(&self, confirm: PublisherConfirm, routing_key: &str) -> Result<()> {
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| confirm_timed_out(routing_key, self.confirm_timeout))?;
        match confirmation.map_err(|err| self.publish_link.error(err))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Answer::Confirmed,
            Confirmation::Ack(Some(back)) => {
                Answer::Returned(format!("{} {}", back.reply_code, back.reply_text.as_str()))
            }
            Confirmation::Nack(_) => Answer::Nacked,
        }
        .into_result(routing_key)
    }

    /// Puts `message` back on `queue` as delivery `attempt`, after `delay` through a TTL queue.
    async fn republish(
        &self,
        queue: &str,
        message: &Message,
        attempt: u32,
        delay: Option<Duration>,
    ) -> Result<()> {
        let routing_key = match delay.filter(|d| !d.is_zero()) {
            None => queue.to_owned(),
            Some(delay) => {
                let wanted = delay.as_millis().min(u64::MAX as u128) as u64;
                let step = DELAY_STEPS_MS
                    .iter()
                    .copied()
                    .find(|s| *s >= wanted)
                    .unwrap_or(DELAY_STEPS_MS[DELAY_STEPS_MS.len() - 1]);
                let delay_queue = format!("polybus.delay.{step}ms.{queue}");
                let channel = self.publish_channel().await?;
                Topology {
                    queues: vec![QueueSpec {
                        name: delay_queue.clone(),
                        dead_letter_exchange: Some(String::new()),
                        dead_letter_routing_key: Some(queue.to_owned()),
                        message_ttl_ms: Some(step),
                        expires_ms: Some(step * 2 + 600_000),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
                .declare(&channel)
                .await?;
                delay_queue
            }
        };
        let confirm = self.send("", &routing_key, message, attempt).await?;
        self.confirmed(confirm, &routing_key).await
    }
}

/// How the broker answered a confirmed publish, on the shared channel or a direct connection.
#[derive(Debug, PartialEq)]
enum Answer {
    Confirmed,
    /// Returned as unroutable (`mandatory`, with the broker's code and text), then confirmed.
    Returned(String),
    Nacked,
}

impl Answer {
    fn into_result(self, routing_key: &str) -> Result<()> {
        match self {
            Answer::Confirmed => Ok(()),
            Answer::Returned(text) => Err(Error::Broker {
                backend: "rabbitmq",
                reason: format!(
                    "message to {routing_key:?} is unroutable ({text}): no queue is bound for it (publish with mandatory=false to allow dropping)"
                ),
            }),
            Answer::Nacked => Err(Error::Broker {
                backend: "rabbitmq",
                reason: format!("the broker refused the message to {routing_key:?} (nack)"),
            }),
        }
    }
}

/// No confirmation of a publish to `routing_key` came within `after`.
fn confirm_timed_out(routing_key: &str, after: Duration) -> Error {
    Error::Timeout {
        operation: format!("the broker's confirmation of a message to {routing_key:?}"),
        after,
    }
}

/// The URI lapin connects with: credentials and the connection tuning parameters.
fn lapin_uri(config: &AmqpConfig) -> String {
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let tuning: Vec<String> = [
        "heartbeat",
        "connection_timeout",
        "channel_max",
        "frame_max",
    ]
    .iter()
    .filter_map(|key| {
        config
            .params
            .get(*key)
            .map(|v| format!("{key}={}", encode(v)))
    })
    .collect();
    let query = if tuning.is_empty() {
        String::new()
    } else {
        format!("?{}", tuning.join("&"))
    };
    format!(
        "{}://{}:{}@{}:{}/{}{query}",
        if config.tls { "amqps" } else { "amqp" },
        encode(&config.username),
        encode(config.password.expose()),
        config.host,
        config.port,
        encode(&config.vhost),
    )
}

#[async_trait]
impl Publisher for RabbitMqBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        let exchange = self.shared.exchange.clone();
        let topic = message.topic.clone();
        self.publish_to(&exchange, &topic, message).await
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        // One message (an awaited `send` from Python) takes the direct way of a single publish.
        let messages = match <[Message; 1]>::try_from(messages) {
            Ok([message]) => return vec![self.publish(message).await],
            Err(messages) => messages,
        };
        // A window of messages at a time: every frame of the window is queued on the channel in
        // one pass (in order), lapin writes them together, then the window's confirmations are
        // awaited together. No message waits a round trip, or a socket write, of its own.
        let shared = &self.shared;
        let mut results: Vec<Result<PublishReceipt>> = Vec::with_capacity(messages.len());
        // After a lost connection the rest of the batch fails at once, rather than trying to
        // reconnect for every window.
        let lost_error = |reason: &String| Error::Connection {
            target: shared.target.clone(),
            reason: reason.clone(),
        };
        let mut lost: Option<String> = None;
        for window in messages.chunks(shared.confirm_window) {
            let ready = match &lost {
                Some(reason) => Err(lost_error(reason)),
                None => shared.publish_ready().await,
            };
            let channel = match ready {
                Ok(channel) => channel,
                Err(err) => {
                    if let Error::Connection { reason, .. } = &err {
                        lost.get_or_insert_with(|| reason.clone());
                    }
                    let reason = err.to_string();
                    let closed = matches!(err, Error::Closed(_));
                    results.push(Err(err));
                    results.extend(window[1..].iter().map(|_| match &lost {
                        Some(reason) => Err(lost_error(reason)),
                        None if closed => Err(Error::Closed("rabbitmq broker")),
                        None => Err(Error::Broker {
                            backend: "rabbitmq",
                            reason: reason.clone(),
                        }),
                    }));
                    continue;
                }
            };
            let sent = join_all(window.iter().map(|message| {
                let channel = &channel;
                async move {
                    message.validate()?;
                    channel
                        .basic_publish(
                            shared.exchange.as_str().into(),
                            message.topic.as_str().into(),
                            BasicPublishOptions {
                                mandatory: shared.mandatory,
                                ..Default::default()
                            },
                            &message.payload,
                            codec::properties(message, 1),
                        )
                        .await
                        .map_err(|err| shared.publish_link.error(err))
                }
            }))
            .await;
            let confirmed = join_all(window.iter().zip(sent).map(|(message, sent)| async move {
                shared.confirmed(sent?, &message.topic).await?;
                Ok(receipt(message.id.clone()))
            }))
            .await;
            if lost.is_none() {
                lost = confirmed.iter().find_map(|r| match r {
                    Err(Error::Connection { reason, .. }) => Some(reason.clone()),
                    _ => None,
                });
            }
            results.extend(confirmed);
        }
        results
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        // Every publish resolves on its confirmation, so there is nothing queued to flush.
        self.ensure_open()
    }

    async fn prepare_topic(&self, topic: &str) -> Result<()> {
        // The queue a group named after the topic would read: it keeps what is published, and a
        // later subscription in that group finds it declared with the same arguments.
        self.declare(
            &self
                .shared
                .group_topology(topic, std::slice::from_ref(&topic.to_owned())),
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(direct) = &self.shared.direct {
            direct.clear();
        }
        self.shared.publish_link.close().await;
        self.shared.consume_link.close().await;
        Ok(())
    }
}

fn receipt(id: String) -> PublishReceipt {
    PublishReceipt {
        id,
        ..Default::default()
    }
}

#[async_trait]
impl Subscriber for RabbitMqBroker {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        spec.validate()?;
        self.ensure_open()?;
        if spec.start.is_seek() {
            return Err(Error::Unsupported {
                backend: "rabbitmq",
                feature: "replay from an offset or timestamp (queues keep no history)".into(),
            });
        }
        let queue = spec.group.clone();
        let topology = self.shared.group_topology(&queue, &spec.topics);
        self.declare(&topology).await?;
        let prefetch = self
            .shared
            .prefetch
            .unwrap_or(spec.prefetch.clamp(1, u16::MAX as usize) as u16);
        let source = QueueSource {
            queue,
            group: Some(spec.group.clone()),
            prefetch,
        };
        let shared = self.shared.clone();
        Ok(Subscription::spawn(spec.prefetch, move |sink| {
            consumer::run(shared, source, sink)
        }))
    }
}

impl Broker for RabbitMqBroker {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn dead_letter_store(&self) -> Result<Box<dyn crate::dead_letters::DeadLetterStore>> {
        admin::store(self)
    }
}
