//! Polybus: one messaging engine for Kafka, RabbitMQ, Redis and an embedded broker, shared by
//! the Python and PHP bindings.
//!
//! ```no_run
//! # async fn demo() -> polybus::Result<()> {
//! use std::sync::Arc;
//! use polybus::{Consumer, ConsumerOptions, HandlerError, Message, SubscriptionSpec, handler_fn};
//!
//! let broker = polybus::connect_url("memory://").await?;
//! broker.publish(Message::json("orders.created", &serde_json::json!({"order_id": 1}))?).await?;
//! let handler = handler_fn(|received| async move {
//!     println!("got {}", received.message.payload_str().map_err(HandlerError::from)?);
//!     Ok(())
//! });
//! let spec = SubscriptionSpec::new(["orders.created"], "billing");
//! let consumer = Consumer::start(broker, spec, Arc::new(handler), ConsumerOptions::default()).await?;
//! consumer.stop().await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "allocator")]
pub mod allocator;
pub mod bridge;
pub mod broker;
pub mod brokers;
pub mod capabilities;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod delivery;
pub mod error;
pub mod failover;
pub mod hub;
pub mod logs;
pub mod message;
pub mod process;
pub mod subscription;
pub mod wire;

pub use broker::{
    BlockingPublish, Broker, DEFAULT_PREFETCH, PublishReceipt, Publisher, SharedBroker,
    StartPosition, Subscriber, SubscriptionSpec,
};
pub use brokers::{connect, connect_url};
pub use capabilities::Capabilities;
pub use config::{BrokerConfig, BrokerKind};
pub use consumer::{
    Consumer, ConsumerOptions, ConsumerStats, DeadLetter, Dedup, DedupStore, Handler, HandlerError,
    MemoryDedupStore, Received, RetryPolicy, StopReport, handler_fn,
};
pub use dead_letters::{
    DeadLetterRecord, DeadLetters, LeftInPlace, LeftReason, RedriveOptions, RedriveReport,
};
pub use delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement, Settling};
pub use error::{Error, Result};
pub use failover::{FailoverBroker, FailoverOptions, FailoverState, FailoverStatus, FsyncPolicy};
pub use hub::{Hub, HubConfig};
pub use message::{Headers, Message};
pub use subscription::{DeliverySink, Readiness, ReadySignal, SinkBusy, SinkPermit, Subscription};
