//! A received message together with the means to acknowledge it exactly once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::Message;

/// Broker-specific facts about one delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryMeta {
    /// Kafka partition (or the memory broker's single partition, 0).
    pub partition: Option<i32>,
    /// Kafka offset or memory log offset.
    pub offset: Option<i64>,
    /// AMQP delivery tag.
    pub delivery_tag: Option<u64>,
    /// Redis stream entry id.
    pub stream_id: Option<String>,
    /// The broker says this message was delivered before.
    pub redelivered: bool,
    /// Consumer group (or queue) this delivery came through.
    pub group: Option<String>,
    /// For a message without key whose order the broker keeps (a Kafka partition), the lane
    /// the consumer runtime keeps it in order with, e.g. `topic/partition`.
    pub sequence: Option<String>,
}

/// How a delivery ends. Each delivery is settled exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: remove it / commit past it.
    Ack,
    /// Failed: deliver it again (after `delay`), counting one more attempt.
    Requeue {
        /// How long to wait before the next delivery; `None` means at once.
        delay: Option<Duration>,
    },
    /// Failed for good: do not deliver again (the broker's dead-letter route applies).
    Reject,
    /// Not processed (shutdown or dropped unsettled): deliver again without counting an attempt.
    Release,
}

/// The settling of a delivery, under way: await it for the broker's answer.
pub type Settling = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// The backend side of a delivery: settles it on the broker. The message is handed back so a
/// backend that redelivers on its own (Kafka) needs no copy of it.
#[async_trait]
pub trait Acknowledger: Send + Sync + 'static {
    /// Settles the delivery on the broker.
    async fn settle(self: Box<Self>, outcome: Settlement, message: Message) -> Result<()>;

    /// Settles with [`Settlement::Release`] without waiting; called when a delivery is dropped
    /// unsettled. The default spawns `settle` on the current tokio runtime, if there is one.
    fn release_on_drop(self: Box<Self>, message: Message) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(err) = self.settle(Settlement::Release, message).await {
                    tracing::warn!(error = %err, "releasing a dropped delivery failed");
                }
            });
        }
    }
}

/// A message received from a broker. Settle it with [`ack`](Delivery::ack),
/// [`nack`](Delivery::nack) or [`reject`](Delivery::reject); each consumes the delivery, so a
/// delivery cannot be settled twice. A delivery dropped unsettled is released: the broker
/// delivers it again (at-least-once).
pub struct Delivery {
    /// The message as published.
    pub message: Message,
    /// 1 on the first delivery, raised by one for each redelivery after a failure.
    pub attempt: u32,
    /// Broker-specific metadata.
    pub meta: DeliveryMeta,
    acker: Option<Box<dyn Acknowledger>>,
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(
        message: Message,
        attempt: u32,
        meta: DeliveryMeta,
        acker: Box<dyn Acknowledger>,
    ) -> Self {
        Delivery {
            message,
            attempt,
            meta,
            acker: Some(acker),
        }
    }

    /// Marks the message processed.
    pub fn ack(self) -> Settling {
        self.settle(Settlement::Ack)
    }

    /// Puts the message back to be delivered again after `delay` (at once when `None`).
    pub fn nack(self, delay: Option<Duration>) -> Settling {
        self.settle(Settlement::Requeue { delay })
    }

    /// Refuses the message for good; it goes to the broker's dead-letter route if there is one.
    pub fn reject(self) -> Settling {
        self.settle(Settlement::Reject)
    }

    /// Gives the message back unprocessed, without counting an attempt.
    pub fn release(self) -> Settling {
        self.settle(Settlement::Release)
    }

    /// Settles the delivery with `outcome`. The delivery is taken apart at once: the future
    /// holds only the acknowledger's work, so awaiting it copies no delivery around.
    pub fn settle(mut self, outcome: Settlement) -> Settling {
        match self.acker.take() {
            Some(acker) => acker.settle(outcome, self.take_message()),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    fn take_message(&mut self) -> Message {
        // An empty placeholder: no id is generated and no clock read for it.
        std::mem::replace(
            &mut self.message,
            Message::received(
                String::new(),
                bytes::Bytes::new(),
                String::new(),
                String::new(),
                0,
            ),
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            let message = self.take_message();
            acker.release_on_drop(message);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("meta", &self.meta)
            .field("settled", &self.acker.is_none())
            .finish()
    }
}
