//! Broker configuration: one URL (or the environment) picks and configures a backend.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` or `memory://name?capacity=N` | embedded in-process broker |
//! | `null://` | accepts, counts and drops everything |
//! | `kafka://host:9092,host2:9092?client_id=..&group_id=..&<librdkafka property>=..` | Kafka |
//! | `amqp://user:pass@host:5672/vhost`, `amqps://...` | RabbitMQ |
//! | `redis://[user:pass@]host:6379/0?mode=list\|pubsub\|streams`, `rediss://...` | Redis |

mod env;
mod parse;
mod redact;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use env::{MessagingSettings, broker_config_for, messaging_settings, resolve_config};
pub use redact::{Secret, redact_url};

use crate::error::{Error, Result};

/// The backend a configuration selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// Embedded in-process broker.
    Memory,
    /// Accepts and drops.
    Null,
    /// Apache Kafka.
    Kafka,
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
    /// Redis.
    Redis,
}

impl BrokerKind {
    /// The name used in URLs, logs and `configure_messaging(broker=...)`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Null => "null",
            BrokerKind::Kafka => "kafka",
            BrokerKind::RabbitMq => "rabbitmq",
            BrokerKind::Redis => "redis",
        }
    }

    /// How many unacknowledged messages a subscription on this backend may hold when its
    /// caller names no prefetch. On Kafka, partitions (not prefetch) share a group's work out,
    /// and handlers stay busy only while the next few hundred messages are already on their way
    /// as settlements travel back: 500. Elsewhere the prefetch is also what the broker assigns
    /// to one member ahead (RabbitMQ's `basic.qos`, Redis' `XREADGROUP COUNT`), and 100 keeps
    /// slow handlers' work spread across a group.
    pub fn default_prefetch(self) -> usize {
        match self {
            BrokerKind::Kafka => 500,
            _ => crate::broker::DEFAULT_PREFETCH,
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrokerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "memory" | "inmemory" | "in-memory" => Ok(BrokerKind::Memory),
            "null" | "none" => Ok(BrokerKind::Null),
            "kafka" => Ok(BrokerKind::Kafka),
            "rabbitmq" | "rabbit" | "amqp" => Ok(BrokerKind::RabbitMq),
            "redis" => Ok(BrokerKind::Redis),
            other => Err(Error::config(
                "broker",
                format!(
                    "unknown broker {other:?}; expected kafka, rabbitmq, redis, memory or null"
                ),
            )),
        }
    }
}

/// Settings of the embedded broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Instance name: every `memory://NAME` URL in a process reaches the same broker.
    pub name: String,
    /// Messages a topic holds before publishers wait for consumers (default 100,000).
    pub capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            name: String::new(),
            capacity: 100_000,
        }
    }
}

/// Settings of the Kafka backend.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KafkaConfig {
    /// `host:port` of each bootstrap broker.
    pub bootstrap_servers: Vec<String>,
    /// `client.id`.
    pub client_id: Option<String>,
    /// Default consumer group (`group.id`).
    pub group_id: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password.
    pub password: Option<Secret>,
    /// TLS to the brokers (`kafka+ssl://`).
    pub tls: bool,
    /// Any other librdkafka property, passed through as given.
    pub properties: BTreeMap<String, String>,
}

/// Settings of the RabbitMQ backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// TLS (`amqps://`).
    pub tls: bool,
    /// Server host.
    pub host: String,
    /// Server port (5672, or 5671 with TLS).
    pub port: u16,
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
    /// Virtual host (`/` by default).
    pub vhost: String,
    /// Other query parameters (`heartbeat`, `connection_timeout`, `prefetch`, ...).
    pub params: BTreeMap<String, String>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            tls: false,
            host: "localhost".into(),
            port: 5672,
            username: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
            params: BTreeMap::new(),
        }
    }
}

/// How the Redis backend carries messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// A list per topic: LPUSH, reliable BLMOVE consumption (queue-like; the default).
    #[default]
    List,
    /// PUBLISH / SUBSCRIBE: at-most-once fan-out.
    PubSub,
    /// Streams with consumer groups: XADD / XREADGROUP / XACK.
    Streams,
}

impl RedisMode {
    /// The name used in URLs and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::List => "list",
            RedisMode::PubSub => "pubsub",
            RedisMode::Streams => "streams",
        }
    }
}

impl FromStr for RedisMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "list" | "queue" => Ok(RedisMode::List),
            "pubsub" | "pub_sub" | "pub-sub" => Ok(RedisMode::PubSub),
            "streams" | "stream" => Ok(RedisMode::Streams),
            other => Err(Error::config(
                "mode",
                format!("unknown redis mode {other:?}; expected list, pubsub or streams"),
            )),
        }
    }
}

/// Settings of the Redis backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// TLS (`rediss://`).
    pub tls: bool,
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database number.
    pub db: u32,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// List, pub/sub or streams.
    pub mode: RedisMode,
    /// Other query parameters.
    pub params: BTreeMap<String, String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            tls: false,
            host: "localhost".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            mode: RedisMode::List,
            params: BTreeMap::new(),
        }
    }
}

/// A complete broker configuration. Parse one from a URL with `str::parse`, or read the
/// environment with [`messaging_settings`]. `Debug` and [`redacted_url`](Self::redacted_url)
/// never show a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerConfig {
    /// Embedded broker.
    Memory(MemoryConfig),
    /// Null broker.
    Null,
    /// Kafka.
    Kafka(KafkaConfig),
    /// RabbitMQ.
    RabbitMq(AmqpConfig),
    /// Redis.
    Redis(RedisConfig),
}

impl BrokerConfig {
    /// Parses a broker URL; the error names the part that is wrong.
    pub fn parse(url: &str) -> Result<Self> {
        parse::parse_url(url)
    }

    /// The backend this configuration selects.
    pub fn kind(&self) -> BrokerKind {
        match self {
            BrokerConfig::Memory(_) => BrokerKind::Memory,
            BrokerConfig::Null => BrokerKind::Null,
            BrokerConfig::Kafka(_) => BrokerKind::Kafka,
            BrokerConfig::RabbitMq(_) => BrokerKind::RabbitMq,
            BrokerConfig::Redis(_) => BrokerKind::Redis,
        }
    }

    /// The configuration as a URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        parse::to_url(self, true)
    }

    /// The configuration as a URL, password included: hand it only to a client library.
    pub fn url_with_credentials(&self) -> String {
        parse::to_url(self, false)
    }
}

impl FromStr for BrokerConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        BrokerConfig::parse(s)
    }
}

impl fmt::Display for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}
