//! Broker backends, one module each, and [`connect`] to pick one from a configuration.

#[cfg(any(feature = "rabbitmq", feature = "redis"))]
mod direct_pool;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
pub mod null;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;

use crate::broker::SharedBroker;
use crate::config::BrokerConfig;
#[cfg(not(all(feature = "kafka", feature = "rabbitmq", feature = "redis")))]
use crate::error::Error;
use crate::error::Result;

/// Connects to the broker `config` describes.
///
/// `memory://NAME` URLs reach the process-wide embedded broker of that name, so a producer and
/// a consumer configured separately in one process see the same messages.
pub async fn connect(config: &BrokerConfig) -> Result<SharedBroker> {
    match config {
        BrokerConfig::Memory(memory) => Ok(Arc::new(memory::MemoryBroker::shared(memory.clone()))),
        BrokerConfig::Null => Ok(Arc::new(null::NullBroker::new())),
        #[cfg(feature = "kafka")]
        BrokerConfig::Kafka(kafka) => Ok(Arc::new(kafka::KafkaBroker::new(kafka)?)),
        #[cfg(not(feature = "kafka"))]
        BrokerConfig::Kafka(_) => Err(Error::BackendNotEnabled {
            backend: "kafka",
            feature: "kafka",
        }),
        #[cfg(feature = "rabbitmq")]
        BrokerConfig::RabbitMq(amqp) => Ok(Arc::new(rabbitmq::RabbitMqBroker::new(amqp)?)),
        #[cfg(not(feature = "rabbitmq"))]
        BrokerConfig::RabbitMq(_) => Err(Error::BackendNotEnabled {
            backend: "rabbitmq",
            feature: "rabbitmq",
        }),
        #[cfg(feature = "redis")]
        BrokerConfig::Redis(redis) => Ok(Arc::new(redis::RedisBroker::connect(redis).await?)),
        #[cfg(not(feature = "redis"))]
        BrokerConfig::Redis(_) => Err(Error::BackendNotEnabled {
            backend: "redis",
            feature: "redis",
        }),
    }
}

/// Parses `url` and connects to it.
pub async fn connect_url(url: &str) -> Result<SharedBroker> {
    connect(&BrokerConfig::parse(url)?).await
}
