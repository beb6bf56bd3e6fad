//! The null broker: accepts and counts every message, then drops it. For local development
//! and tests of code that publishes (as the reference's `NullMessageBroker`). Subscriptions
//! receive nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::{
    Broker, PublishReceipt, Publisher, Subscriber, SubscriptionSpec, publish_each,
};
use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::message::Message;
use crate::subscription::Subscription;

/// Accepts, counts, drops.
#[derive(Clone, Default)]
pub struct NullBroker {
    published: Arc<AtomicU64>,
}

impl NullBroker {
    /// A new null broker with its counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages were accepted (and dropped).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Publisher for NullBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        message.validate()?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(PublishReceipt {
            id: message.id,
            ..Default::default()
        })
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        publish_each(self, messages).await
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Subscriber for NullBroker {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        spec.validate()?;
        Ok(Subscription::spawn(1, |sink| async move {
            sink.cancelled().await
        }))
    }
}

impl Broker for NullBroker {
    fn name(&self) -> &'static str {
        "null"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}
