//! A RabbitMQ subscription: a consumer on a group's queue that reconnects, re-declares and
//! resumes after the connection is lost; and the acknowledgements of its deliveries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::Shared;
use super::acks::{AckWindow, Sent, Verdict};
use super::codec::from_amqp;
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::DeliverySink;

/// What a subscription consumes: a queue (with the topology that feeds it).
pub(super) struct QueueSource {
    pub queue: String,
    pub group: Option<String>,
    pub prefetch: u16,
}

/// Consumes `source` until the subscription closes, reconnecting with capped exponential
/// backoff whenever the connection or channel is lost.
pub(super) async fn run(shared: Arc<Shared>, source: QueueSource, sink: DeliverySink) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if sink.is_cancelled() {
            return;
        }
        match consume_once(&shared, &source, &sink).await {
            Ok(Ended::Closed) => return,
            Ok(Ended::Lost) => {
                backoff = Duration::from_millis(100);
                tracing::warn!(queue = %source.queue, "rabbitmq consumer lost its channel; reconnecting");
            }
            Err(err) => {
                tracing::warn!(queue = %source.queue, error = %err, retry_in = ?backoff, "rabbitmq consumer could not start; retrying");
                tokio::select! {
                    _ = sink.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Ended {
    /// The subscription was closed.
    Closed,
    /// The channel or connection went away.
    Lost,
}

async fn consume_once(
    shared: &Arc<Shared>,
    source: &QueueSource,
    sink: &DeliverySink,
) -> Result<Ended> {
    let channel = shared.new_channel(&shared.consume_link).await?;
    channel
        .basic_qos(source.prefetch, BasicQosOptions::default())
        .await
        .map_err(|err| shared.consume_link.error(err))?;
    let tag = format!("polybus-{}", &crate::message::new_message_id()[24..]);
    let mut consumer = channel
        .basic_consume(
            source.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| shared.consume_link.error(err))?;
    let (window, sender) = AckWindow::open(CHANNEL_OP_TIMEOUT, source.prefetch);
    sink.set_ready(true);
    let ended = loop {
        let next = tokio::select! {
            biased;
            _ = sink.cancelled() => break Ended::Closed,
            next = consumer.next() => next,
        };
        let amqp = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                tracing::warn!(queue = %source.queue, error = %err, "rabbitmq consumer error");
                break Ended::Lost;
            }
            None => break Ended::Lost,
        };
        let (message, attempt) = from_amqp(amqp.routing_key.as_str(), &amqp.properties, amqp.data);
        let meta = DeliveryMeta {
            delivery_tag: Some(amqp.delivery_tag),
            redelivered: amqp.redelivered || attempt > 1,
            group: source.group.clone(),
            ..Default::default()
        };
        window.register(amqp.delivery_tag, amqp.acker);
        let acker = AmqpAcker {
            window: window.clone(),
            tag: amqp.delivery_tag,
            shared: shared.clone(),
            queue: source.queue.clone(),
            attempt,
        };
        if sink
            .send(Delivery::new(message, attempt, meta, Box::new(acker)))
            .await
            .is_err()
        {
            break Ended::Closed;
        }
    };
    sink.set_ready(false);
    window.close();
    // Bounded: on a connection that died under it, lapin may never answer (the broker hands
    // the messages back when the connection goes anyway).
    if matches!(ended, Ended::Closed) {
        // What was settled goes out before the channel closes (which hands the rest back).
        let _ = tokio::time::timeout(CHANNEL_OP_TIMEOUT, sender).await;
        let _ = tokio::time::timeout(
            CHANNEL_OP_TIMEOUT,
            channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
    }
    // Closing the channel hands every unacknowledged message back to the queue.
    let _ = tokio::time::timeout(
        CHANNEL_OP_TIMEOUT,
        channel.close(200, "polybus subscription closed".into()),
    )
    .await;
    Ok(ended)
}

/// The longest wait for an acknowledgement or a channel operation. Past it the channel is
/// taken for lost: the broker delivers the message again (at-least-once), and a stop never hangs
/// on a connection that died under it.
const CHANNEL_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settles one AMQP delivery. A nack republishes the message with the attempt raised (after a
/// delay through a TTL queue when asked) and then acknowledges the original, so the attempt
/// count travels with the message; a release hands it back as it is.
struct AmqpAcker {
    window: Arc<AckWindow>,
    tag: u64,
    shared: Arc<Shared>,
    queue: String,
    attempt: u32,
}

impl AmqpAcker {
    fn lost(&self) -> Error {
        Error::Connection {
            target: self.shared.target.clone(),
            reason: "the channel was closed before the acknowledgement; the broker delivers the message again".into(),
        }
    }

    async fn send(&self, verdict: Verdict) -> Result<()> {
        let sent = self.window.settle(self.tag, verdict).await;
        self.check(sent)
    }

    fn check(&self, result: Sent) -> Result<()> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(err) => Err(self.shared.consume_link.error(err)),
        }
    }
}

#[async_trait]
impl Acknowledger for AmqpAcker {
    async fn settle(self: Box<Self>, outcome: Settlement, message: Message) -> Result<()> {
        match outcome {
            Settlement::Ack => self.send(Verdict::Ack).await,
            Settlement::Reject => self.send(Verdict::Reject).await,
            Settlement::Release => {
                // A closed channel hands the message back on its own.
                let _ = self.window.settle(self.tag, Verdict::GiveBack).await;
                Ok(())
            }
            Settlement::Requeue { delay } => {
                let again = self.attempt + 1;
                // Boxed: the republish future is large, and every ack would otherwise copy it.
                match Box::pin(self.shared.republish(&self.queue, &message, again, delay)).await {
                    Ok(()) => self.send(Verdict::Ack).await,
                    Err(err) => {
                        // Not lost: give it back as it is.
                        let _ = self.window.settle(self.tag, Verdict::GiveBack).await;
                        Err(err)
                    }
                }
            }
        }
    }
}
