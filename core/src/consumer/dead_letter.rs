//! Where a message goes when it failed for good: a dead-letter topic, with the reason in headers.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::broker::SharedBroker;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::message::{Message, now_ms};
use crate::wire;

use super::HandlerError;

/// What happens to a message whose retries are exhausted or that failed permanently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetter {
    /// Publish it to its topic plus this suffix (`orders.created.dlq` with `.dlq`, the default).
    Suffix(String),
    /// Publish it to this topic.
    Topic(String),
    /// Reject it on the broker: its own dead-letter route applies (RabbitMQ's `<group>.dlq`),
    /// or it is dropped where the broker has none.
    Reject,
}

impl Default for DeadLetter {
    fn default() -> Self {
        DeadLetter::Suffix(".dlq".to_owned())
    }
}

impl std::str::FromStr for DeadLetter {
    type Err = crate::error::Error;

    /// Parses `reject`, a suffix starting with `.` (`.dlq`), or a topic name (as the bindings
    /// take it).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" => Err(crate::error::Error::config(
                "dead_letter",
                "expected \"reject\", a suffix such as \".dlq\", or a topic",
            )),
            "reject" => Ok(DeadLetter::Reject),
            suffix if suffix.starts_with('.') => Ok(DeadLetter::Suffix(suffix.to_owned())),
            topic => Ok(DeadLetter::Topic(topic.to_owned())),
        }
    }
}

impl DeadLetter {
    /// The dead-letter topic for a message that failed on `topic`, if messages are published.
    pub fn topic_for(&self, topic: &str) -> Option<String> {
        match self {
            DeadLetter::Suffix(suffix) => Some(format!("{topic}{suffix}")),
            DeadLetter::Topic(dead) => Some(dead.clone()),
            DeadLetter::Reject => None,
        }
    }
}

/// Publishes dead letters for one consumer.
pub(super) struct DeadLetterer {
    broker: SharedBroker,
    policy: DeadLetter,
    prepared: Mutex<HashSet<String>>,
}

impl DeadLetterer {
    pub fn new(broker: SharedBroker, policy: DeadLetter) -> Self {
        DeadLetterer {
            broker,
            policy,
            prepared: Mutex::new(HashSet::new()),
        }
    }

    /// Publishes `delivery`'s message to its dead-letter topic. `Ok(false)` when the policy is to
    /// reject on the broker instead.
    pub async fn send(&self, delivery: &Delivery, err: &HandlerError) -> Result<bool> {
        let Some(topic) = self.policy.topic_for(&delivery.message.topic) else {
            return Ok(false);
        };
        let first_time = !self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&topic);
        if first_time {
            self.broker.prepare_topic(&topic).await?;
            self.prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.clone());
        }
        self.broker
            .publish(dead_letter(delivery, err, topic))
            .await?;
        Ok(true)
    }
}

/// The dead letter of `delivery`: same id, key, payload and headers, on `topic`, with why and
/// where it failed.
fn dead_letter(delivery: &Delivery, err: &HandlerError, topic: String) -> Message {
    let original = &delivery.message;
    let now = now_ms().to_string();
    let mut letter = original.clone();
    letter.topic = topic;
    let headers = &mut letter.headers;
    let first = headers
        .remove(wire::HEADER_FIRST_FAILURE)
        .unwrap_or_else(|| now.clone());
    headers.insert(wire::DLQ_ERROR.into(), err.message.clone());
    if let Some(kind) = &err.kind {
        headers.insert(wire::DLQ_ERROR_TYPE.into(), kind.clone());
    }
    headers.insert(wire::DLQ_ATTEMPTS.into(), delivery.attempt.to_string());
    headers.insert(wire::DLQ_TOPIC.into(), original.topic.clone());
    if let Some(group) = &delivery.meta.group {
        headers.insert(wire::DLQ_GROUP.into(), group.clone());
    }
    if let Some(partition) = delivery.meta.partition {
        headers.insert(wire::DLQ_PARTITION.into(), partition.to_string());
    }
    if let Some(offset) = delivery.meta.offset {
        headers.insert(wire::DLQ_OFFSET.into(), offset.to_string());
    } else if let Some(id) = &delivery.meta.stream_id {
        headers.insert(wire::DLQ_OFFSET.into(), id.clone());
    }
    headers.insert(wire::DLQ_FIRST_FAILURE.into(), first);
    headers.insert(wire::DLQ_LAST_FAILURE.into(), now);
    letter
}
