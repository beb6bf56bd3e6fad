//! The Redis backend, on redis-rs, in three modes chosen with `?mode=` in the URL:
//!
//! - **list** (the default): a queue per topic. `LPUSH` to the list named like the topic;
//!   consumers move items atomically into a processing list of their own (`BLMOVE`), so an
//!   item is never lost between taking and acknowledging it. An ack removes it, a nack puts
//!   it back (with the attempt raised) at once or through a delayed set, and the processing
//!   lists of consumers whose heartbeat expired go back to the list. At-least-once; group
//!   members share the list; no fan-out, no replay.
//! - **pubsub**: `PUBLISH` / `SUBSCRIBE` (`PSUBSCRIBE` for topics with `*`, `?` or `[`).
//!   At-most-once: nothing is kept for absent subscribers and there are no acknowledgements.
//!   Every subscription receives every message (fan-out).
//! - **streams**: `XADD` to the stream named like the topic; consumer groups with
//!   `XREADGROUP` / `XACK`; entries pending with a silent consumer are claimed by another
//!   member (`XAUTOCLAIM`); nacks go to a retry stream of the group; replay from a timestamp.
//!   At-least-once, fan-out to every group, native fields instead of an envelope.
//!
//! Commands share one multiplexed connection that reconnects by itself; each subscription has
//! its own connection for blocking reads, reconnected with capped exponential backoff. Redis
//! Sentinel and Cluster are not supported yet.

mod admin;
mod blocking;
mod conn;
mod dedup;
mod direct;
mod envelope;
mod json_check;
mod keys;
mod list;
mod pubsub;
mod resp;
mod scripts;
mod settings;
mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Client, Cmd, RedisWrite, Value};
use async_trait::async_trait;

pub use self::dedup::RedisDedupStore;
use self::settings::Settings;
use crate::broker::{
    BlockingPublish, Broker, PublishReceipt, Publisher, Subscriber, SubscriptionSpec,
};
use crate::capabilities::Capabilities;
use crate::config::{RedisConfig, RedisMode};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::Subscription;

const LIST_CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    consumer_groups: true,
    fan_out: false,
    ordering_per_key: false,
    acknowledgements: true,
    redelivery: true,
    delayed_redelivery: true,
    replay: false,
    offset_replay: false,
    native_headers: false,
    pattern_subscriptions: false,
    // One pipeline per batch, handed to the shared connection when first polled.
    ordered_batches: true,
};

const PUBSUB_CAPABILITIES: Capabilities = Capabilities {
    persistent: false,
    consumer_groups: false,
    fan_out: true,
    ordering_per_key: false,
    acknowledgements: false,
    redelivery: false,
    delayed_redelivery: false,
    replay: false,
    offset_replay: false,
    native_headers: false,
    pattern_subscriptions: true,
    // One pipeline per batch, handed to the shared connection when first polled.
    ordered_batches: true,
};

const STREAMS_CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    consumer_groups: true,
    fan_out: true,
    ordering_per_key: false,
    acknowledgements: true,
    redelivery: true,
    delayed_redelivery: true,
    replay: true,
    offset_replay: false,
    native_headers: true,
    pattern_subscriptions: false,
    // One pipeline per batch, handed to the shared connection when first polled.
    ordered_batches: true,
};

/// A Redis server, in the mode its URL chose. Cloning gives another handle on the same
/// connection.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// What the broker and its subscriptions share.
struct Inner {
    settings: Arc<Settings>,
    client: Client,
    manager: ConnectionManager,
    /// Connections for single publishes.
    singles: direct::Singles,
    /// Connections for single publishes from callers that block their thread.
    blocking: blocking::BlockingSingles,
    closed: AtomicBool,
}

/// The name (`CLIENT SETNAME`) of the connections single publishes use.
const PUBLISHER_NAME: &str = "polybus-publisher";

/// The most values one `LPUSH` of a batch carries.
const VALUES_PER_PUSH: usize = 1024;

impl Inner {
    /// A handle on the shared command connection.
    fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    fn error(&self, err: ::redis::RedisError) -> Error {
        conn::error(&self.settings, err)
    }
}

impl RedisBroker {
    /// Connects to the server `config` describes; fails when it cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let settings = Arc::new(Settings::from_config(config)?);
        let info = Settings::connection_info(config)?;
        let client = Client::open(info).map_err(|err| Error::Connection {
            target: settings.target.clone(),
            reason: err.to_string(),
        })?;
        let manager = conn::manager(&client, &settings).await?;
        tracing::debug!(target_url = %settings.target, mode = settings.mode.as_str(), "connected to redis");
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                singles: direct::Singles::new(
                    client.get_connection_info().clone(),
                    PUBLISHER_NAME,
                    settings.connection_timeout,
                    settings.response_timeout,
                ),
                blocking: blocking::BlockingSingles::new(
                    client.get_connection_info().clone(),
                    PUBLISHER_NAME,
                    settings.connection_timeout,
                    settings.response_timeout,
                ),
                settings,
                client,
                manager,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// A dedup store on this server, for idempotent consumers in several processes.
    pub fn dedup_store(&self) -> RedisDedupStore {
        RedisDedupStore::new(self.inner.clone())
    }

    /// The mode this broker runs in.
    pub fn mode(&self) -> RedisMode {
        self.inner.settings.mode
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("redis publisher"))
        } else {
            Ok(())
        }
    }

    /// The command that publishes `message` in this mode.
    fn publish_command(&self, message: &Message) -> Cmd {
        let settings = &self.inner.settings;
        match settings.mode {
            RedisMode::List => {
                let mut cmd = ::redis::cmd("LPUSH");
                cmd.arg(&message.topic).arg(self.item(message));
                cmd
            }
            RedisMode::PubSub => {
                let mut cmd = ::redis::cmd("PUBLISH");
                cmd.arg(&message.topic).arg(self.item(message));
                cmd
            }
            RedisMode::Streams => streams::xadd(&message.topic, message, 1, settings.maxlen),
        }
    }

    /// What a list or channel carries for `message` when first published.
    fn item<'a>(&self, message: &'a Message) -> envelope::Item<'a> {
        envelope::Item {
            message,
            attempt: 1,
            envelope: self.inner.settings.envelope,
        }
    }

    /// The receipt for `message` given the server's reply to its publish command.
    fn receipt(&self, message: &Message, reply: &Value) -> PublishReceipt {
        let mut receipt = PublishReceipt {
            id: message.id.clone(),
            ..Default::default()
        };
        match self.inner.settings.mode {
            RedisMode::List => {}
            RedisMode::PubSub => {
                receipt.receivers = conn::int_of(reply).and_then(|n| u64::try_from(n).ok());
            }
            RedisMode::Streams => receipt.stream_id = conn::text_of(reply),
        }
        receipt
    }
}

#[async_trait]
impl Publisher for RedisBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        self.ensure_open()?;
        message.validate()?;
        // On a connection of its own: a caller awaiting each publish pays one write and one
        // read, not the multiplexer's hand-offs. Many callers at once share the multiplexer.
        let command = self.publish_command(&message);
        let reply = match self.inner.singles.query(&command).await {
            Some(reply) => reply.map(resp::Reply::into_value),
            None => {
                command
                    .query_async::<Value>(&mut self.inner.manager())
                    .await
            }
        }
        .map_err(|err| self.inner.error(err))?;
        Ok(self.receipt(&message, &reply))
    }

    /// On a plain TCP connection of its own, without the async runtime: one write and one
    /// read on the caller's thread.
    fn publish_blocking(&self, message: Message, timeout: Duration) -> BlockingPublish {
        if let Err(err) = self.ensure_open().and_then(|()| message.validate()) {
            return BlockingPublish::Done(Err(err));
        }
        let command = self.publish_command(&message);
        let settings = &self.inner.settings;
        match self.inner.blocking.query(&command, timeout) {
            None => BlockingPublish::Declined(message),
            Some(reply) => BlockingPublish::Done(
                reply
                    .map(|reply| self.receipt(&message, &reply.into_value()))
                    .map_err(|err| {
                        if err.is_timeout() {
                            Error::Timeout {
                                operation: format!("a publish to {}", settings.target),
                                after: timeout.min(settings.response_timeout),
                            }
                        } else {
                            self.inner.error(err)
                        }
                    }),
            ),
        }
    }

    /// Sends every valid message in one pipeline: one round trip for the whole batch. In list
    /// mode, consecutive messages to the same list share one `LPUSH` (up to
    /// [`VALUES_PER_PUSH`] values): the server does one command's work for them and they are
    /// popped in the same order as when pushed one by one.
    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        if self.ensure_open().is_err() {
            return messages
                .iter()
                .map(|_| Err(Error::Closed("redis publisher")))
                .collect();
        }
        let list = self.inner.settings.mode == RedisMode::List;
        let mut results: Vec<Option<Result<PublishReceipt>>> = Vec::with_capacity(messages.len());
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        // Each sent message's index in `messages` and the position of its command's reply.
        let mut sent: Vec<(usize, usize)> = Vec::with_capacity(messages.len());
        let mut commands = 0;
        // The `LPUSH` being filled: the command, its list and how many values it has.
        let mut push: Option<(Cmd, &str, usize)> = None;
        for (index, message) in messages.iter().enumerate() {
            if let Err(err) = message.validate() {
                results.push(Some(Err(err)));
                continue;
            }
            match &mut push {
                Some((cmd, topic, values))
                    if list && *topic == message.topic && *values < VALUES_PER_PUSH =>
                {
                    cmd.arg(self.item(message));
                    *values += 1;
                }
                _ if list => {
                    if let Some((full, _, _)) = push.take() {
                        pipe.add_command(full);
                    }
                    let mut cmd = ::redis::cmd("LPUSH");
                    cmd.arg(&message.topic);
                    // Room for the run of messages to this list, so the buffer is not grown
                    // (and copied) as values are added.
                    let envelope = self.inner.settings.envelope;
                    cmd.reserve_space_for_args(
                        messages[index..]
                            .iter()
                            .take_while(|next| next.topic == message.topic)
                            .take(VALUES_PER_PUSH)
                            .map(|next| envelope::max_item_len(next, envelope)),
                    );
                    cmd.arg(self.item(message));
                    push = Some((cmd, &message.topic, 1));
                    commands += 1;
                }
                _ => {
                    pipe.add_command(self.publish_command(message));
                    commands += 1;
                }
            }
            sent.push((index, commands - 1));
            results.push(None);
        }
        if let Some((last, _, _)) = push {
            pipe.add_command(last);
        }
        if !sent.is_empty() {
            match pipe
                .query_async::<Vec<Value>>(&mut self.inner.manager())
                .await
            {
                Ok(replies) => {
                    for (index, command) in sent {
                        results[index] = Some(match replies.get(command) {
                            Some(Value::ServerError(err)) => Err(Error::Broker {
                                backend: "redis",
                                reason: err.to_string(),
                            }),
                            Some(reply) => Ok(self.receipt(&messages[index], reply)),
                            None => Err(Error::Broker {
                                backend: "redis",
                                reason: "the pipeline returned fewer replies than commands".into(),
                            }),
                        });
                    }
                }
                Err(err) => {
                    for (index, _) in sent {
                        results[index] = Some(Err(self.inner.error(err.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Broker {
                        backend: "redis",
                        reason: "message was not sent".into(),
                    })
                })
            })
            .collect()
    }

    /// Nothing to flush: every publish resolves once the server has replied.
    async fn flush(&self, _timeout: Duration) -> Result<()> {
        self.ensure_open()
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.singles.clear();
        self.inner.blocking.clear();
        Ok(())
    }
}

#[async_trait]
impl Subscriber for RedisBroker {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        spec.validate()?;
        let inner = self.inner.clone();
        match self.inner.settings.mode {
            RedisMode::List => list::subscribe(inner, spec).await,
            RedisMode::PubSub => pubsub::subscribe(inner, spec).await,
            RedisMode::Streams => streams::subscribe(inner, spec).await,
        }
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.settings.mode {
            RedisMode::List => LIST_CAPABILITIES,
            RedisMode::PubSub => PUBSUB_CAPABILITIES,
            RedisMode::Streams => STREAMS_CAPABILITIES,
        }
    }

    fn dead_letter_store(&self) -> Result<Box<dyn crate::dead_letters::DeadLetterStore>> {
        admin::store(self)
    }
}
