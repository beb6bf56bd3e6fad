//! Exchanges, queues and bindings, declared idempotently and again after every reconnect.

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kind of an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routes by exact routing key.
    Direct,
    /// Routes by routing-key pattern (`*` one word, `#` any number of words).
    #[default]
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by message headers.
    Headers,
}

/// An exchange to declare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSpec {
    /// Exchange name.
    pub name: String,
    /// Exchange kind.
    #[serde(default)]
    pub kind: ExchangeType,
    /// Survives a broker restart (default true).
    #[serde(default = "yes")]
    pub durable: bool,
}

/// The kind of a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queue (the default).
    #[default]
    Classic,
    /// Replicated quorum queue.
    Quorum,
}

/// A queue to declare, with its arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Classic or quorum.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Exchange rejected and expired messages go to (`""` is the default exchange).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead-lettered messages.
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// Messages expire after this many milliseconds.
    #[serde(default)]
    pub message_ttl_ms: Option<u64>,
    /// The queue is deleted after this many milliseconds unused.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// A binding of a queue to an exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingSpec {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// Routing key or pattern (ignored by fanout and headers exchanges).
    #[serde(default)]
    pub routing_key: String,
    /// For headers exchanges: the headers to match.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// For headers exchanges: all headers must match (`x-match: all`) rather than any.
    #[serde(default = "yes")]
    pub match_all: bool,
}

/// A set of exchanges, queues and bindings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Exchanges, declared first.
    #[serde(default)]
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues, declared next (all durable).
    #[serde(default)]
    pub queues: Vec<QueueSpec>,
    /// Bindings, declared last.
    #[serde(default)]
    pub bindings: Vec<BindingSpec>,
}

fn yes() -> bool {
    true
}

impl Topology {
    /// Declares everything on `channel`. Declaring what exists with the same settings is a no-op;
    /// different settings are an error from the broker, reported with the object's name.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        for exchange in &self.exchanges {
            let kind = match exchange.kind {
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Headers => ExchangeKind::Headers,
            };
            let options = ExchangeDeclareOptions {
                durable: exchange.durable,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|err| declare_error("exchange", &exchange.name, err))?;
        }
        for queue in &self.queues {
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .queue_declare(queue.name.as_str().into(), options, queue.arguments())
                .await
                .map_err(|err| declare_error("queue", &queue.name, err))?;
        }
        for binding in &self.bindings {
            let mut arguments = FieldTable::default();
            if !binding.headers.is_empty() {
                let matching = if binding.match_all { "all" } else { "any" };
                arguments.insert("x-match".into(), long_string(matching));
                for (name, value) in &binding.headers {
                    arguments.insert(name.as_str().into(), long_string(value));
                }
            }
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    arguments,
                )
                .await
                .map_err(|err| declare_error("binding of queue", &binding.queue, err))?;
        }
        Ok(())
    }

    /// Adds another topology's objects after this one's.
    pub fn extend(&mut self, other: &Topology) {
        self.exchanges.extend(other.exchanges.iter().cloned());
        self.queues.extend(other.queues.iter().cloned());
        self.bindings.extend(other.bindings.iter().cloned());
    }
}

impl QueueSpec {
    fn arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), long_string("quorum"));
        }
        if let Some(exchange) = &self.dead_letter_exchange {
            arguments.insert("x-dead-letter-exchange".into(), long_string(exchange));
        }
        if let Some(key) = &self.dead_letter_routing_key {
            arguments.insert("x-dead-letter-routing-key".into(), long_string(key));
        }
        if let Some(ttl) = self.message_ttl_ms {
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(ttl.min(i64::MAX as u64) as i64),
            );
        }
        if let Some(expires) = self.expires_ms {
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(expires.min(i64::MAX as u64) as i64),
            );
        }
        arguments
    }
}

pub(super) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn declare_error(what: &str, name: &str, err: lapin::Error) -> Error {
    Error::Broker {
        backend: "rabbitmq",
        reason: format!("declaring {what} {name:?} failed: {err}"),
    }
}
