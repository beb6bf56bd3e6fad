//! Key names. A topic's list or stream is the key named like the topic itself, so plain
//! clients interoperate (`LPUSH source.fetch.failed '{...}'`); Polybus' own bookkeeping lives
//! under the `polybus:` prefix.

/// The prefix of every key Polybus creates for itself.
pub(super) const PREFIX: &str = "polybus:";

/// Lists: the items `consumer` took from `topic` and has not settled yet.
pub(super) fn list_processing(topic: &str, consumer: &str) -> String {
    format!("{PREFIX}list:{topic}:processing:{consumer}")
}

/// Lists: nacked items waiting for their redelivery time (sorted set, score = due time in ms).
pub(super) fn list_delayed(topic: &str) -> String {
    format!("{PREFIX}list:{topic}:delayed")
}

/// Lists: the ids of the consumers with a processing list for `topic` (set).
pub(super) fn list_consumers(topic: &str) -> String {
    format!("{PREFIX}list:{topic}:consumers")
}

/// Lists: a consumer's heartbeat; it expires when the consumer stops refreshing it.
pub(super) fn heartbeat(consumer: &str) -> String {
    format!("{PREFIX}consumer:{consumer}:alive")
}

/// Streams: the copies of messages `group` nacked, delivered again to that group only.
pub(super) fn stream_retry(topic: &str, group: &str) -> String {
    format!("{PREFIX}stream:{topic}:retry:{group}")
}

/// Streams: nacked copies for `group` waiting for their redelivery time (sorted set).
pub(super) fn stream_delayed(topic: &str, group: &str) -> String {
    format!("{PREFIX}stream:{topic}:delayed:{group}")
}

/// Streams: the consumer name that released entries are handed to, so any member claims them
/// at once.
pub(super) const RELEASED_CONSUMER: &str = "polybus-released";

/// A new, unique consumer id (one per subscription).
pub(super) fn consumer_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
