//! Dead letters on RabbitMQ: a dead-letter topic's letters wait in the durable queue named
//! like it (declared by the consumer runtime before its first dead letter, bound to the topic).
//! The same goes for the queues the broker itself dead-letters into (`<group>.dlq`).
//!
//! Counting is a passive declare (ready messages only: letters a redrive or listing holds at
//! that moment are not counted). Listing takes letters with `basic.get` and hands them all
//! back unacknowledged at the end, which keeps them in place but sets their `redelivered` flag.
//! A redrive takes one letter at a time, acknowledges it once its republish is confirmed, and
//! holds the letters it leaves in place until it ends, then hands them back.
//!
//! Letters the broker dead-lettered carry no `polybus-dlq-*` headers: their original topic is
//! recovered from the `polybus-topic` header Polybus publishers set, or else from the routing
//! key recorded in `x-death`. The broker's `x-death` and `x-*-death-*` headers are dropped.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ErrorKind};

use super::codec::from_amqp;
use super::{RabbitMqBroker, Shared};
use crate::dead_letters::{DeadLetterCursor, DeadLetterStore, StoredLetter};
use crate::error::Result;

/// AMQP reply code of a missing queue.
const NOT_FOUND: u16 = 404;

/// The dead-letter store of `broker`.
pub(super) fn store(broker: &RabbitMqBroker) -> Result<Box<dyn DeadLetterStore>> {
    broker.ensure_open()?;
    Ok(Box::new(RabbitDeadLetters {
        shared: broker.shared.clone(),
    }))
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp) if amqp.get_id() == NOT_FOUND)
}

/// A received dead letter: the message on `queue`, with the topic it failed on as recorded.
fn letter(queue: &str, properties: &BasicProperties, body: Vec<u8>) -> StoredLetter {
    let (mut message, _attempt) = from_amqp(queue, properties, body);
    // `from_amqp` took the topic from the `polybus-topic` header, if there was one.
    let recorded = std::mem::replace(&mut message.topic, queue.to_owned());
    let origin = if recorded != queue {
        Some(recorded)
    } else {
        death_routing_key(properties)
    };
    message.headers.retain(|name, _| {
        !(name == "x-death"
            || name.starts_with("x-first-death-")
            || name.starts_with("x-last-death-"))
    });
    StoredLetter { message, origin }
}

/// The first routing key of the most recent `x-death` entry.
fn death_routing_key(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    let AMQPValue::FieldArray(keys) = death.inner().get("routing-keys")? else {
        return None;
    };
    match keys.as_slice().first()? {
        AMQPValue::LongString(key) => Some(String::from_utf8_lossy(key.as_bytes()).into_owned()),
        AMQPValue::ShortString(key) => Some(key.as_str().to_owned()),
        _ => None,
    }
}

struct RabbitDeadLetters {
    shared: Arc<Shared>,
}

impl RabbitDeadLetters {
    /// A plain channel on the publishing connection (nothing is declared on it).
    async fn channel(&self) -> Result<Channel> {
        let link = &self.shared.publish_link;
        let connection = link.connection().await?;
        connection
            .create_channel()
            .await
            .map_err(|err| link.error(err))
    }

    /// How many letters are ready in `queue`; `None` when it does not exist (the channel is
    /// closed by the broker then).
    async fn ready(&self, channel: &Channel, queue: &str) -> Result<Option<u64>> {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
        {
            Ok(declared) => Ok(Some(u64::from(declared.message_count()))),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(self.shared.publish_link.error(err)),
        }
    }
}

async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "polybus dead letters".into()).await;
    }
}

#[async_trait]
impl DeadLetterStore for RabbitDeadLetters {
    async fn count(&self, dlq_topic: &str) -> Result<u64> {
        let channel = self.channel().await?;
        let ready = self.ready(&channel, dlq_topic).await;
        close(&channel).await;
        Ok(ready?.unwrap_or(0))
    }

    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>> {
        let channel = self.channel().await?;
        let mut letters = Vec::new();
        let mut last_tag = None;
        let outcome = loop {
            if letters.len() >= limit {
                break Ok(());
            }
            match channel
                .basic_get(dlq_topic.into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(got)) => {
                    let delivery = got.delivery;
                    last_tag = Some(delivery.delivery_tag);
                    letters.push(letter(dlq_topic, &delivery.properties, delivery.data));
                }
                Ok(None) => break Ok(()),
                Err(err) if is_not_found(&err) => break Ok(()),
                Err(err) => break Err(self.shared.publish_link.error(err)),
            }
        };
        if let Some(tag) = last_tag {
            // Every letter taken goes back where it was (closing the channel would too).
            let options = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(err) = channel.basic_nack(tag, options).await {
                tracing::debug!(error = %err, "handing listed dead letters back failed; closing the channel does");
            }
        }
        close(&channel).await;
        outcome.map(|()| letters)
    }

    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>> {
        let channel = self.channel().await?;
        let remaining = match self.ready(&channel, dlq_topic).await {
            Ok(ready) => ready.unwrap_or(0),
            Err(err) => {
                close(&channel).await;
                return Err(err);
            }
        };
        Ok(Box::new(RabbitCursor {
            shared: self.shared.clone(),
            channel,
            queue: dlq_topic.to_owned(),
            remaining,
            current: None,
            kept: Vec::new(),
        }))
    }
}

struct RabbitCursor {
    shared: Arc<Shared>,
    channel: Channel,
    queue: String,
    /// Letters still to take: those ready when the cursor opened, so letters that fail again
    /// after their redrive are not taken twice.
    remaining: u64,
    /// Delivery tag of the letter handed out last.
    current: Option<u64>,
    /// Delivery tags of letters left in place, held until the end.
    kept: Vec<u64>,
}

#[async_trait]
impl DeadLetterCursor for RabbitCursor {
    async fn next(&mut self) -> Result<Option<StoredLetter>> {
        if let Some(tag) = self.current.take() {
            self.kept.push(tag);
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|err| self.shared.publish_link.error(err))?;
        let Some(got) = got else {
            self.remaining = 0;
            return Ok(None);
        };
        self.remaining -= 1;
        let delivery = got.delivery;
        self.current = Some(delivery.delivery_tag);
        Ok(Some(letter(
            &self.queue,
            &delivery.properties,
            delivery.data,
        )))
    }

    async fn settle(&mut self, remove: bool) -> Result<()> {
        let Some(tag) = self.current.take() else {
            return Ok(());
        };
        if !remove {
            self.kept.push(tag);
            return Ok(());
        }
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|err| self.shared.publish_link.error(err))
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        if let Some(tag) = self.current.take() {
            self.kept.push(tag);
        }
        for tag in &self.kept {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(err) = self.channel.basic_nack(*tag, options).await {
                // Closing the channel hands them back as well.
                tracing::debug!(error = %err, "handing a dead letter back failed");
                break;
            }
        }
        close(&self.channel).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;
    use crate::message::Message;

    fn long(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
    }

    #[test]
    fn a_polybus_dead_letter_keeps_its_headers() {
        let sent = Message::text("orders.dlq", "x").with_header(crate::wire::DLQ_TOPIC, "orders");
        let got = letter(
            "orders.dlq",
            &super::super::codec::properties(&sent, 1),
            b"x".to_vec(),
        );
        assert_eq!(got.message.topic, "orders.dlq");
        assert_eq!(got.message.id, sent.id);
        assert_eq!(got.origin, None);
        assert_eq!(got.message.headers, sent.headers);
    }

    #[test]
    fn a_rejected_message_names_its_topic() {
        // Dead-lettered by the broker: the topic travels in `polybus-topic`.
        let sent = Message::text("orders", "x").with_header("tenant", "eu");
        let got = letter(
            "billing.dlq",
            &super::super::codec::properties(&sent, 3),
            b"x".to_vec(),
        );
        assert_eq!(got.message.topic, "billing.dlq");
        assert_eq!(got.origin.as_deref(), Some("orders"));
        assert_eq!(got.message.headers.len(), 1, "{:?}", got.message.headers);
    }

    #[test]
    fn a_foreign_rejected_message_falls_back_to_x_death() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), long("billing"));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long("orders")])),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert("x-first-death-queue".into(), long("billing"));
        headers.insert("trace".into(), long("t-1"));
        let properties = BasicProperties::default().with_headers(headers);
        let got = letter("billing.dlq", &properties, b"{}".to_vec());
        assert_eq!(got.origin.as_deref(), Some("orders"));
        assert_eq!(got.message.topic, "billing.dlq");
        assert_eq!(
            got.message.headers.keys().collect::<Vec<_>>(),
            ["trace"],
            "the broker's death headers are dropped"
        );
    }
}
