//! `Polybus\Broker`: a connection to one broker, with a blocking API over the engine.

use std::sync::Arc;
use std::time::Duration;

use ext_php_rs::boxed::ZBox;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendCallable, ZendHashTable, Zval};
use polybus::message::validate_topic;
use polybus::{BlockingPublish, BrokerKind, FailoverBroker, Message, SharedBroker};

use crate::config::settings_from;
use crate::convert::{PhpJson, headers_from, seconds};
use crate::errors::{
    Class, Context, block_error, config_error, engine_error, engine_error_with, throw,
};
use crate::interface::{MessageBrokerInterface, PhpInterfaceMessageBrokerInterface};
use crate::php_array;
use crate::runtime::{BlockError, InOrder, block_on, run};

/// How long dropping a broker (end of request or process) waits for queued messages.
const FLUSH_AT_DROP: Duration = Duration::from_secs(5);

/// A connection to a broker: publish JSON payloads, consume with a PHP callable.
#[php_class]
#[php(name = "Polybus\\Broker")]
pub struct Broker {
    inner: Option<SharedBroker>,
    kind: BrokerKind,
    url: String,
    timeout: Duration,
}

impl Broker {
    /// The open broker, or the exception for using a closed one.
    pub(crate) fn open(&self) -> PhpResult<&SharedBroker> {
        // Every call into a broker first passes on the engine's waiting log records.
        crate::logs::forward();
        self.inner
            .as_ref()
            .ok_or_else(|| throw(Class::Polybus, format!("the broker {} is closed", self.url)))
    }

    /// The bound on connecting, publishing and flushing.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Another handle on the same connection (for `Polybus\Hub`).
    pub(crate) fn share(&self) -> PhpResult<Broker> {
        Ok(Broker {
            inner: Some(self.open()?.clone()),
            kind: self.kind,
            url: self.url.clone(),
            timeout: self.timeout,
        })
    }

    fn message(destination: &str, payload: &ZendHashTable) -> PhpResult<Message> {
        Message::json(destination, &PhpJson(payload)).map_err(|err| {
            throw(
                Class::InvalidMessage,
                format!("the payload for {destination:?} cannot be encoded as JSON: {err}"),
            )
        })
    }

    fn send(&self, message: Message) -> PhpResult<String> {
        let broker = self.open()?;
        // Both paths validate the message first.
        let receipt = match broker.publish_blocking(message, self.timeout) {
            BlockingPublish::Done(receipt) => receipt,
            BlockingPublish::Declined(message) => block_on(self.timeout, broker.publish(message))
                .map_err(|err| block_error(err, "publishing"))?,
        }
        .map_err(|err| engine_error(&err, Context::Publish))?;
        Ok(receipt.id)
    }
}

/// How many payloads of a batch are encoded and sent together, where chunks may overlap.
const PUBLISH_CHUNK: usize = 256;

/// Sends a batch in order. Where the broker keeps batches in the order they were started
/// ([`polybus::Capabilities::ordered_batches`]), it goes in chunks of [`PUBLISH_CHUNK`], two in
/// flight, the next encoded while the broker takes the ones before it. Elsewhere (RabbitMQ's
/// confirm windows, Kafka's linger) the whole batch is encoded, then sent as one, so the
/// broker's own batching sees all of it.
struct ChunkSender<'a> {
    broker: &'a SharedBroker,
    timeout: Duration,
    /// Payloads per chunk.
    chunk: usize,
    /// Chunks in flight at most.
    depth: usize,
    in_flight: InOrder<Vec<polybus::Result<polybus::PublishReceipt>>>,
    outcome: BatchOutcome,
}

impl<'a> ChunkSender<'a> {
    fn new(broker: &'a SharedBroker, timeout: Duration) -> Self {
        let (chunk, depth) = if broker.capabilities().ordered_batches {
            (PUBLISH_CHUNK, 2)
        } else {
            (usize::MAX, 1)
        };
        ChunkSender {
            broker,
            timeout,
            chunk,
            depth,
            in_flight: InOrder::new(),
            outcome: BatchOutcome::default(),
        }
    }

    /// Starts `messages` on their way once fewer than `depth` chunks are in flight.
    fn send(&mut self, messages: Vec<Message>) -> PhpResult<()> {
        let finished = self.in_flight.wait(self.depth - 1, self.timeout);
        self.count(finished)?;
        let broker = self.broker.clone();
        let finished = self.in_flight.push(
            Box::pin(async move { broker.publish_batch(messages).await }),
            self.timeout,
        );
        self.count(finished)
    }

    fn count(
        &mut self,
        finished: Result<Vec<Vec<polybus::Result<polybus::PublishReceipt>>>, BlockError>,
    ) -> PhpResult<()> {
        for results in finished.map_err(|err| block_error(err, "publishing a batch"))? {
            self.outcome.add(results);
        }
        Ok(())
    }

    /// Waits for the chunks in flight and returns the tally.
    fn finish(mut self) -> PhpResult<BatchOutcome> {
        let finished = self.in_flight.wait(0, self.timeout);
        self.count(finished)?;
        Ok(self.outcome)
    }
}

/// The tally of a batch's chunks: how many were accepted, how many failed, the first failure.
#[derive(Default)]
struct BatchOutcome {
    accepted: i64,
    failed: usize,
    first_error: Option<polybus::Error>,
}

impl BatchOutcome {
    /// Counts one chunk's results.
    fn add(&mut self, results: Vec<polybus::Result<polybus::PublishReceipt>>) {
        for result in results {
            match result {
                Ok(_) => self.accepted += 1,
                Err(err) => {
                    self.failed += 1;
                    self.first_error.get_or_insert(err);
                }
            }
        }
    }

    fn into_result(self, total: usize, destination: &str) -> PhpResult<i64> {
        match self.first_error {
            None => Ok(self.accepted),
            Some(err) => Err(engine_error_with(
                &err,
                Context::Publish,
                format!(
                    "{} of {total} messages to {destination:?} failed; the first: {err}",
                    self.failed
                ),
            )),
        }
    }
}

#[php_impl]
impl Broker {
    /// Connects to the broker a URL (`memory://`, `null://`, `kafka://host:9092`,
    /// `amqp://user:pass@host:5672/vhost`, `redis://host:6379/0?mode=list|pubsub|streams`)
    /// or a configuration array (`['driver' => 'redis', 'host' => ..., 'redis_mode' => 'list']`)
    /// describes. Throws `ConfigurationException` naming the bad part, or
    /// `ConnectionException` when a broker that connects eagerly (Redis) cannot be reached.
    pub fn __construct(config: &Zval) -> PhpResult<Self> {
        let settings = settings_from(config).map_err(config_error)?;
        let url = settings.broker.redacted_url();
        let failover = settings.failover;
        let config = &settings.broker;
        let broker = block_on(settings.timeout, async move {
            match failover {
                Some(options) => FailoverBroker::connect(config, options)
                    .await
                    .map(|b| Arc::new(b) as SharedBroker),
                None => polybus::connect(config).await,
            }
        })
        .map_err(|err| block_error(err, &format!("connecting to {url}")))
        .and_then(|connected| connected.map_err(|err| engine_error(&err, Context::Connect)));
        crate::logs::forward();
        let broker = broker?;
        Ok(Broker {
            inner: Some(broker),
            kind: settings.broker.kind(),
            url,
            timeout: settings.timeout,
        })
    }

    /// Publishes one message and returns its id. `$options`: `key` (ordering key), `headers`
    /// (name => scalar), `id` (keep an upstream id).
    pub fn publish_message(
        &self,
        destination: String,
        payload: &ZendHashTable,
        options: Option<&ZendHashTable>,
    ) -> PhpResult<String> {
        let mut message = Self::message(&destination, payload)?;
        if let Some(options) = options {
            for (key, _) in options.iter() {
                let name = key.to_string();
                if !["key", "headers", "id"].contains(&name.as_str()) {
                    return Err(config_error(format!(
                        "invalid configuration ({name}): unknown publish option; expected key, headers or id"
                    )));
                }
            }
            if let Some(key) = options.get("key").filter(|v| !v.is_null()) {
                let key = key.coerce_to_string().ok_or_else(|| {
                    config_error("invalid configuration (key): expected a string")
                })?;
                message = message.with_key(key);
            }
            if let Some(id) = options.get("id").filter(|v| !v.is_null()) {
                let id = id
                    .coerce_to_string()
                    .ok_or_else(|| config_error("invalid configuration (id): expected a string"))?;
                message = message.with_id(id);
            }
            if let Some(headers) = options.get("headers").filter(|v| !v.is_null()) {
                let headers = headers.array().ok_or_else(|| {
                    config_error("invalid configuration (headers): expected an array")
                })?;
                message.headers = headers_from(headers).map_err(|reason| {
                    throw(Class::InvalidMessage, format!("invalid message: {reason}"))
                })?;
            }
        }
        self.send(message)
    }

    /// Publishes every array of `$payloads` to `$destination`, pipelined, and returns how many
    /// the broker accepted. Throws (after all were tried) when any failed, saying how many.
    ///
    /// On Redis, payloads are encoded and sent in chunks, the next encoded while the broker
    /// takes the previous ones (see `ChunkSender`). A payload that is not an array fails the
    /// call before anything is sent; one that cannot be encoded as JSON (found while encoding)
    /// stops it there: the payloads before it were published, the exception says how many, and
    /// none after it are.
    pub fn publish_batch(&self, destination: String, payloads: &ZendHashTable) -> PhpResult<i64> {
        let broker = self.open()?;
        if let Err(reason) = validate_topic(&destination) {
            let err = polybus::Error::InvalidMessage(reason);
            return Err(engine_error(&err, Context::Publish));
        }
        // Every payload is checked to be an array before any is sent.
        let arrays = php_array::values(payloads)
            .enumerate()
            .map(|(index, payload)| {
                payload.dereference().array().ok_or_else(|| {
                    throw(
                        Class::InvalidMessage,
                        format!(
                            "invalid message: payload {index} for {destination:?} is not an array"
                        ),
                    )
                })
            })
            .collect::<PhpResult<Vec<&ZendHashTable>>>()?;
        let total = arrays.len();
        let mut sender = ChunkSender::new(broker, self.timeout);
        let mut chunk = Vec::with_capacity(total.min(sender.chunk));
        let mut stopped = None;
        for (index, payload) in arrays.into_iter().enumerate() {
            match Message::json(&destination, &PhpJson(payload)) {
                Ok(message) => chunk.push(message),
                Err(err) => {
                    stopped = Some((index, err));
                    break;
                }
            }
            if chunk.len() == sender.chunk {
                let rest = (total - index - 1).min(sender.chunk);
                sender.send(std::mem::replace(&mut chunk, Vec::with_capacity(rest)))?;
            }
        }
        if !chunk.is_empty() {
            sender.send(chunk)?;
        }
        let outcome = sender.finish()?;
        if let Some((index, err)) = stopped {
            let accepted = outcome.accepted;
            return Err(throw(
                Class::InvalidMessage,
                format!(
                    "payload {index} for {destination:?} cannot be encoded as JSON: {err}; \
                     {accepted} payloads before it were published, none after it"
                ),
            ));
        }
        outcome.into_result(total, &destination)
    }

    /// Waits up to `$timeout` seconds until everything published so far was accepted.
    #[php(defaults(timeout = 10.0))]
    pub fn flush(&self, timeout: f64) -> PhpResult<()> {
        let broker = self.open()?;
        let limit = seconds(timeout, "timeout")
            .map_err(|r| config_error(format!("invalid configuration (timeout): {r}")))?;
        // The engine's own bound comes first; ours only guards against a broker that ignores it.
        block_on(limit + Duration::from_secs(1), broker.flush(limit))
            .map_err(|err| block_error(err, "flushing"))?
            .map_err(|err| engine_error(&err, Context::Publish))
    }

    /// Consumes from `$destination`, calling `$handler(Polybus\Message $message)` for each
    /// message on this thread, until `$limit` messages were handled or `$timeout` seconds
    /// passed (`INF` for no time limit); returns how many were handled. Returning acknowledges
    /// the message; throwing applies the retry policy, then the dead-letter destination
    /// (`<destination>.dlq` by default). `$options`: `group` (default: the destination),
    /// `concurrency`, `prefetch`, `max_retries` (null: for ever), `retry_delay`,
    /// `retry_multiplier`, `retry_max_delay`, `retry_jitter`, `dead_letter` (a destination,
    /// or false to reject on the broker), `start` (`earliest`, `latest`, `offset:N`,
    /// `timestamp:MS`), `dedup` (true or `memory`, or a `redis://` URL: a message id handled
    /// within `dedup_ttl` seconds, default one day, is acknowledged unhandled), `poll_interval`
    /// (seconds between signal checks, default 0.2), `stop` (a callable returning true to stop).
    /// Pending pcntl signal handlers run between messages and at every poll interval.
    #[php(defaults(timeout = 30.0))]
    #[php(optional = "timeout")]
    pub fn consume(
        &self,
        destination: String,
        handler: ZendCallable,
        limit: i64,
        timeout: f64,
        options: Option<&ZendHashTable>,
    ) -> PhpResult<i64> {
        crate::consume::consume(self, destination, handler, limit, timeout, options)
    }

    /// How many dead letters wait in `$destination` (a dead-letter destination such as
    /// `orders.dlq`), not redriven yet.
    pub fn dead_letter_count(&self, destination: String) -> PhpResult<i64> {
        crate::dead_letters::count(self, &destination)
    }

    /// The oldest `$limit` dead letters of `$destination`, left where they are.
    #[php(defaults(limit = 10))]
    pub fn dead_letters(
        &self,
        destination: String,
        limit: i64,
    ) -> PhpResult<Vec<crate::dead_letters::DeadLetter>> {
        crate::dead_letters::list(self, &destination, limit)
    }

    /// Republishes dead letters of `$destination` to the destination each failed on (or
    /// `$to`), same id, fresh attempt count; each is removed only once the broker acknowledged
    /// the republish. Returns `['moved' => int, 'left' => [id => reason]]`.
    #[php(optional = "limit")]
    pub fn redrive_dead_letters(
        &self,
        destination: String,
        limit: Option<i64>,
        to: Option<String>,
    ) -> PhpResult<ZBox<ZendHashTable>> {
        crate::dead_letters::redrive(self, &destination, limit, to)
    }

    /// Flushes, then releases the connection; later calls throw. For `memory://` brokers only
    /// this handle is released: the process-wide broker and its messages stay.
    #[php(defaults(timeout = 10.0))]
    pub fn close(&mut self, timeout: f64) -> PhpResult<()> {
        let limit = seconds(timeout, "timeout")
            .map_err(|r| config_error(format!("invalid configuration (timeout): {r}")))?;
        let Some(broker) = self.inner.take() else {
            return Ok(());
        };
        let kind = self.kind;
        let closed = block_on(limit + Duration::from_secs(1), async move {
            let flushed = broker.flush(limit).await;
            let closed = if kind == BrokerKind::Memory {
                Ok(())
            } else {
                broker.close().await
            };
            drop(broker);
            flushed.and(closed)
        });
        crate::logs::forward();
        closed
            .map_err(|err| block_error(err, "closing"))?
            .map_err(|err| engine_error(&err, Context::Publish))
    }

    /// Sends the engine's log records (those of librdkafka included) at `$level` and above to
    /// `$logger`, a PSR-3 logger (an object with `log($level, $message, $context)`; the context
    /// holds `logger`, the record's source such as `polybus.brokers.redis.streams`, and its
    /// fields), or with `null` to PHP's `error_log()`. `$level`: `debug`, `info`, `notice`,
    /// `warning` (the default), `error`, `critical`, `alert`, `emergency` or `off`. Records are
    /// passed on when PHP calls into Polybus (every broker call, and between batches while
    /// consuming) and at the end of the request.
    #[php(optional = "level")]
    pub fn set_logger(logger: Option<&Zval>, level: Option<String>) -> PhpResult<()> {
        crate::logs::set_logger(logger, level.as_deref().unwrap_or("warning"))
    }

    /// Where publishes go and how full the spool is, for a broker configured with `failover`:
    /// `['state' => 'primary'|'spooling'|'replaying', 'spool_depth' => n, 'spool_bytes' => n,
    /// 'replayed_total' => n, 'spooled_total' => n, 'last_error' => ?string]`; null otherwise.
    pub fn failover_status(&self) -> PhpResult<Option<ZBox<ZendHashTable>>> {
        let Some(status) = self.open()?.failover_status() else {
            return Ok(None);
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut array = ZendHashTable::new();
        array.insert("state", status.state.as_str())?;
        array.insert("spool_depth", count(status.spool_depth))?;
        array.insert("spool_bytes", count(status.spool_bytes))?;
        array.insert("replayed_total", count(status.replayed_total))?;
        array.insert("spooled_total", count(status.spooled_total))?;
        array.insert("last_error", status.last_error)?;
        Ok(Some(array))
    }

    /// The backend: `memory`, `null`, `kafka`, `rabbitmq` or `redis`.
    pub fn driver(&self) -> String {
        self.kind.as_str().to_owned()
    }

    /// The broker URL with any password shown as `***`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

#[php_impl_interface]
impl MessageBrokerInterface for Broker {
    fn publish(&self, destination: String, payload: &ZendHashTable) -> PhpResult<()> {
        let message = Self::message(&destination, payload)?;
        self.send(message).map(drop)
    }
}

impl Drop for Broker {
    /// Messages still queued are flushed (bounded) before the connection goes, whether the
    /// object dies with its last reference, at the end of the request or at process exit.
    fn drop(&mut self) {
        let Some(broker) = self.inner.take() else {
            return;
        };
        let mut broker = Some(broker);
        let flushed = run(async {
            let broker = broker.take();
            if let Some(broker) = &broker {
                let _ = tokio::time::timeout(FLUSH_AT_DROP, broker.flush(FLUSH_AT_DROP)).await;
            }
            // Backends may spawn clean-up tasks when dropped: drop inside the runtime.
            drop(broker);
        });
        if flushed.is_err() {
            // No runtime to drop it in (its keeper thread could not be spawned).
            std::mem::forget(broker);
        }
    }
}
