//! Pub/sub mode: `PUBLISH` and `SUBSCRIBE` / `PSUBSCRIBE`.
//!
//! At-most-once: Redis keeps nothing for a subscriber that is not connected, so messages
//! published while a subscription is reconnecting are not received. Every subscription gets
//! every message on its channels (the group name plays no part). There is nothing to settle:
//! ack, nack and reject succeed and do nothing.

use std::sync::Arc;

use ::redis::Msg;
use ::redis::aio::{PubSub, PubSubSink};
use async_trait::async_trait;
use futures::StreamExt;

use super::conn::Backoff;
use super::{Inner, envelope};
use crate::broker::SubscriptionSpec;
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::{DeliverySink, Subscription};

/// True when `topic` is a pattern for `PSUBSCRIBE` (it has `*`, `?` or `[`).
pub(super) fn is_pattern(topic: &str) -> bool {
    topic.contains(['*', '?', '['])
}

struct Channels {
    plain: Vec<String>,
    patterns: Vec<String>,
}

/// Subscribes before returning, so a message published once this returns is received.
pub(super) async fn subscribe(inner: Arc<Inner>, spec: SubscriptionSpec) -> Result<Subscription> {
    if spec.start.is_seek() {
        return Err(Error::Unsupported {
            backend: "redis",
            feature: "replay in pub/sub mode (nothing is kept; use mode=streams)".into(),
        });
    }
    let (patterns, plain) = spec.topics.iter().cloned().partition(|t| is_pattern(t));
    let channels = Channels { plain, patterns };
    let pubsub = connect(&inner, &channels)
        .await
        .map_err(|err| inner.error(err))?;
    let group = spec.group.clone();
    Ok(Subscription::spawn(spec.prefetch, move |sink| {
        run(inner, channels, group, pubsub, sink)
    }))
}

async fn connect(inner: &Inner, channels: &Channels) -> ::redis::RedisResult<PubSub> {
    let timeout = inner.settings.connection_timeout;
    let mut pubsub = match tokio::time::timeout(timeout, inner.client.get_async_pubsub()).await {
        Ok(connected) => connected?,
        Err(_) => {
            return Err(::redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting for pub/sub took over {timeout:?}"),
            )));
        }
    };
    if !channels.plain.is_empty() {
        pubsub.subscribe(&channels.plain).await?;
    }
    if !channels.patterns.is_empty() {
        pubsub.psubscribe(&channels.patterns).await?;
    }
    Ok(pubsub)
}

async fn run(
    inner: Arc<Inner>,
    channels: Channels,
    group: String,
    mut pubsub: PubSub,
    sink: DeliverySink,
) {
    let mut backoff = Backoff::new();
    loop {
        sink.set_ready(true);
        let (mut control, mut messages) = pubsub.split();
        loop {
            let next = tokio::select! {
                _ = sink.cancelled() => {
                    unsubscribe(&inner, &mut control, &channels).await;
                    return;
                }
                next = messages.next() => next,
            };
            let Some(msg) = next else { break };
            if sink.send(delivery(&msg, &group)).await.is_err() {
                unsubscribe(&inner, &mut control, &channels).await;
                return;
            }
        }
        sink.set_ready(false);
        tracing::warn!(target_url = %inner.settings.target, "redis pub/sub connection lost; reconnecting (messages published meanwhile are not received)");
        pubsub = loop {
            if !backoff.wait(&sink).await {
                return;
            }
            match connect(&inner, &channels).await {
                Ok(pubsub) => {
                    backoff.reset();
                    break pubsub;
                }
                Err(err) => {
                    tracing::warn!(target_url = %inner.settings.target, error = %err, "redis pub/sub reconnection failed; retrying")
                }
            }
        };
    }
}

/// Leaves the channels and waits for the server to confirm, so nothing published after the
/// subscription closed counts it as a receiver.
async fn unsubscribe(inner: &Inner, control: &mut PubSubSink, channels: &Channels) {
    let leave = async {
        if !channels.plain.is_empty() {
            control.unsubscribe(&channels.plain).await?;
        }
        if !channels.patterns.is_empty() {
            control.punsubscribe(&channels.patterns).await?;
        }
        Ok::<(), ::redis::RedisError>(())
    };
    match tokio::time::timeout(inner.settings.response_timeout, leave).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "redis unsubscribe failed; the connection closes anyway")
        }
        Err(_) => tracing::debug!("redis unsubscribe timed out; the connection closes anyway"),
    }
}

fn delivery(msg: &Msg, group: &str) -> Delivery {
    let (message, attempt) = envelope::decode(msg.get_payload_bytes(), msg.get_channel_name());
    let meta = DeliveryMeta {
        group: Some(group.to_owned()),
        ..Default::default()
    };
    Delivery::new(message, attempt, meta, Box::new(NoAck))
}

/// Pub/sub has nothing to settle.
struct NoAck;

#[async_trait]
impl Acknowledger for NoAck {
    async fn settle(self: Box<Self>, _outcome: Settlement, _message: Message) -> Result<()> {
        Ok(())
    }

    fn release_on_drop(self: Box<Self>, _message: Message) {}
}
