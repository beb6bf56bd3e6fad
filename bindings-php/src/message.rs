//! `Polybus\Message`: a received message as a consume handler sees it.

use ext_php_rs::binary::Binary;
use ext_php_rs::boxed::ZBox;
use ext_php_rs::prelude::*;
use ext_php_rs::types::ZendHashTable;
use polybus::Headers;
use polybus::bridge::Job;
use polybus::message::CONTENT_TYPE_JSON;

use crate::convert::json_to_array;

/// A message received by `Broker::consume`: read-only.
#[php_class]
#[php(name = "Polybus\\Message")]
pub struct Message {
    inner: polybus::Message,
    attempt: u32,
    is_json: bool,
    partition: Option<i32>,
    offset: Option<i64>,
    redelivered: bool,
}

impl Message {
    /// Wraps a job handed out by the consumer runtime.
    pub fn from_job(job: Job) -> Self {
        let is_json = is_json(&job.message.content_type);
        Message {
            attempt: job.attempt,
            is_json,
            partition: job.meta.partition,
            offset: job.meta.offset,
            redelivered: job.meta.redelivered,
            inner: job.message,
        }
    }
}

impl Message {
    /// Wraps a message read outside a consume (a stored dead letter): attempt 1, no position.
    pub fn stored(inner: polybus::Message) -> Self {
        Message {
            attempt: 1,
            is_json: is_json(&inner.content_type),
            partition: None,
            offset: None,
            redelivered: false,
            inner,
        }
    }
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE_JSON))
}

#[php_impl]
impl Message {
    /// The message id (a UUIDv7 unless the producer chose one); stable across retries.
    pub fn id(&self) -> String {
        self.inner.id.clone()
    }

    /// The destination it was published to.
    pub fn topic(&self) -> String {
        self.inner.topic.clone()
    }

    /// The ordering key, if the producer set one.
    pub fn key(&self) -> Option<String> {
        self.inner.key.clone()
    }

    /// The user headers, name => value.
    pub fn headers(&self) -> Headers {
        self.inner.headers.clone()
    }

    /// One header, or null when it is absent.
    pub fn header(&self, name: String) -> Option<String> {
        self.inner.headers.get(&name).cloned()
    }

    /// The payload decoded from JSON as an array (objects as associative arrays), or null
    /// when the content type is not JSON or the JSON is not an object or array.
    pub fn payload(&self) -> Option<ZBox<ZendHashTable>> {
        if self.is_json {
            json_to_array(&self.inner.payload)
        } else {
            None
        }
    }

    /// The raw body, as bytes.
    pub fn body(&self) -> Binary<u8> {
        Binary::from(self.inner.payload.to_vec())
    }

    /// The MIME type of the body (`application/json` for payloads published from arrays).
    pub fn content_type(&self) -> String {
        self.inner.content_type.clone()
    }

    /// Which delivery this is: 1 the first time, 2 on the first retry, ...
    pub fn attempt(&self) -> i64 {
        i64::from(self.attempt)
    }

    /// When the message was created, in milliseconds since the Unix epoch.
    pub fn timestamp(&self) -> i64 {
        self.inner.timestamp_ms
    }

    /// True when the broker says it delivered this message before.
    pub fn is_redelivered(&self) -> bool {
        self.redelivered
    }

    /// The partition it was read from, where the broker has partitions (Kafka).
    pub fn partition(&self) -> Option<i64> {
        self.partition.map(i64::from)
    }

    /// The offset it was read from, where the broker has a log (Kafka, memory).
    pub fn offset(&self) -> Option<i64> {
        self.offset
    }
}
