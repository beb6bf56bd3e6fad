//! `Polybus\DeadLetter` and the broker's dead-letter calls: count, list and redrive.

use ext_php_rs::boxed::ZBox;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendClassObject, ZendHashTable};
use polybus::{DeadLetterRecord, DeadLetters, RedriveOptions};

use crate::broker::Broker;
use crate::errors::{Context, block_error, config_error, engine_error};
use crate::message::Message;
use crate::runtime::block_on;

/// A message waiting in a dead-letter destination, with why it failed: read-only.
#[php_class]
#[php(name = "Polybus\\DeadLetter")]
pub struct DeadLetter {
    record: DeadLetterRecord,
}

#[php_impl]
impl DeadLetter {
    /// The message as stored: its topic is the dead-letter destination and its headers
    /// include the `polybus-dlq-*` ones.
    pub fn message(&self) -> ZBox<ZendClassObject<Message>> {
        ZendClassObject::new(Message::stored(self.record.message.clone()))
    }

    /// The message id (the id it was first published with).
    pub fn id(&self) -> String {
        self.record.message.id.clone()
    }

    /// Why it failed for good, as the handler's exception said.
    pub fn error(&self) -> Option<String> {
        self.record.error.clone()
    }

    /// The kind of error: the exception class.
    pub fn error_type(&self) -> Option<String> {
        self.record.error_type.clone()
    }

    /// How many deliveries were tried.
    pub fn attempts(&self) -> Option<i64> {
        self.record.attempts.map(i64::from)
    }

    /// The destination it failed on (where a redrive sends it).
    pub fn original_topic(&self) -> Option<String> {
        self.record.original_topic.clone()
    }

    /// The consumer group it failed in.
    pub fn group(&self) -> Option<String> {
        self.record.group.clone()
    }

    /// The partition it was read from, where the broker has partitions.
    pub fn partition(&self) -> Option<i64> {
        self.record.partition.map(i64::from)
    }

    /// The offset (or Redis stream id) it was read from, where the broker has one.
    pub fn offset(&self) -> Option<String> {
        self.record.offset.clone()
    }

    /// First failure, in milliseconds since the Unix epoch.
    pub fn first_failure_ms(&self) -> Option<i64> {
        self.record.first_failure_ms
    }

    /// Last failure, in milliseconds since the Unix epoch.
    pub fn last_failure_ms(&self) -> Option<i64> {
        self.record.last_failure_ms
    }
}

fn dead_letters(broker: &Broker) -> PhpResult<DeadLetters> {
    Ok(DeadLetters::new(broker.open()?.clone()))
}

/// `Broker::deadLetterCount`.
pub fn count(broker: &Broker, destination: &str) -> PhpResult<i64> {
    let dead = dead_letters(broker)?;
    let count = block_on(broker.timeout(), dead.count(destination))
        .map_err(|err| block_error(err, "counting dead letters"))?
        .map_err(|err| engine_error(&err, Context::Consume))?;
    Ok(i64::try_from(count).unwrap_or(i64::MAX))
}

/// `Broker::deadLetters`.
pub fn list(broker: &Broker, destination: &str, limit: i64) -> PhpResult<Vec<DeadLetter>> {
    let limit = usize::try_from(limit)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| config_error("invalid configuration (limit): must be at least 1"))?;
    let dead = dead_letters(broker)?;
    let records = block_on(broker.timeout(), dead.list(destination, limit))
        .map_err(|err| block_error(err, "listing dead letters"))?
        .map_err(|err| engine_error(&err, Context::Consume))?;
    Ok(records
        .into_iter()
        .map(|record| DeadLetter { record })
        .collect())
}

/// `Broker::redriveDeadLetters`: `['moved' => int, 'left' => [id => reason, ...]]`.
pub fn redrive(
    broker: &Broker,
    destination: &str,
    limit: Option<i64>,
    to: Option<String>,
) -> PhpResult<ZBox<ZendHashTable>> {
    let limit =
        match limit {
            None => None,
            Some(n) => Some(usize::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                config_error("invalid configuration (limit): must be at least 1")
            })?),
        };
    let dead = dead_letters(broker)?;
    // A redrive moves letters one acknowledged publish at a time: bound it generously.
    let bound = broker.timeout().max(std::time::Duration::from_secs(300));
    let report = block_on(
        bound,
        dead.redrive(destination, RedriveOptions { limit, to }),
    )
    .map_err(|err| block_error(err, "redriving dead letters"))?
    .map_err(|err| engine_error(&err, Context::Publish))?;
    let mut left = ZendHashTable::new();
    for letter in report.left {
        left.insert(letter.id.as_str(), letter.reason.to_string())?;
    }
    let mut result = ZendHashTable::new();
    result.insert("moved", i64::try_from(report.moved).unwrap_or(i64::MAX))?;
    result.insert("left", left)?;
    Ok(result)
}
