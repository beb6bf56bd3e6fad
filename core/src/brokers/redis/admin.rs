//! Dead letters on Redis.
//!
//! - **list** mode: the letters wait in the list named like the dead-letter topic, oldest at
//!   the right end (publishers `LPUSH`). Counting is `LLEN`, listing `LRANGE` from the right.
//!   A redrive reads the oldest letter with `LINDEX`, republishes it, then removes exactly that
//!   item (`LREM`, from the right); letters left in place are stepped over.
//! - **streams** mode: the letters are the entries of the stream named like the dead-letter
//!   topic; the consumer group `polybus.dlq.<dlq>` marks what was redriven. Waiting letters
//!   are those pending in the group (left in place, or taken by a redrive that did not finish)
//!   and those after its last delivered id. A redrive reads pending ones first, then new
//!   ones, and acknowledges each (`XACK`, plus `XDEL` with `delete_after_ack`) once its
//!   republish was acknowledged. Without the group (never redriven) every entry waits.
//! - **pubsub** mode keeps nothing: [`Error::Unsupported`].

use std::collections::VecDeque;
use std::sync::Arc;

use ::redis::Value;
use async_trait::async_trait;
use bytes::Bytes;

use super::conn::{int_of, items_of, text_of};
use super::streams::{decode_entry, entry_fields};
use super::{Inner, RedisBroker, envelope};
use crate::config::RedisMode;
use crate::dead_letters::{DeadLetterCursor, DeadLetterStore, StoredLetter, cursor_group};
use crate::error::{Error, Result};

/// The consumer name redrives read the cursor group with.
const CONSUMER: &str = "polybus-dlq";
/// The most entries read at once.
const BATCH: usize = 100;

/// The dead-letter store of `broker`, in its mode.
pub(super) fn store(broker: &RedisBroker) -> Result<Box<dyn DeadLetterStore>> {
    broker.ensure_open()?;
    let inner = broker.inner.clone();
    match inner.settings.mode {
        RedisMode::List => Ok(Box::new(ListDeadLetters { inner })),
        RedisMode::Streams => Ok(Box::new(StreamDeadLetters { inner })),
        RedisMode::PubSub => Err(Error::Unsupported {
            backend: "redis",
            feature: "dead-letter inspection and redrive in pubsub mode (channels keep no messages; use mode=list or mode=streams)".into(),
        }),
    }
}

async fn query<T: ::redis::FromRedisValue>(inner: &Inner, cmd: &mut ::redis::Cmd) -> Result<T> {
    cmd.query_async(&mut inner.manager())
        .await
        .map_err(|err| inner.error(err))
}

/// The most items a list command asks for, as a negative index from the right.
fn from_right(count: usize) -> i64 {
    -(i64::try_from(count).unwrap_or(i64::MAX))
}

struct ListDeadLetters {
    inner: Arc<Inner>,
}

#[async_trait]
impl DeadLetterStore for ListDeadLetters {
    async fn count(&self, dlq_topic: &str) -> Result<u64> {
        query(&self.inner, ::redis::cmd("LLEN").arg(dlq_topic)).await
    }

    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>> {
        let items: Vec<Vec<u8>> = query(
            &self.inner,
            ::redis::cmd("LRANGE")
                .arg(dlq_topic)
                .arg(from_right(limit))
                .arg(-1),
        )
        .await?;
        Ok(items
            .iter()
            .rev()
            .map(|raw| StoredLetter::new(envelope::decode(raw, dlq_topic).0))
            .collect())
    }

    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>> {
        let remaining: u64 = self.count(dlq_topic).await?;
        Ok(Box::new(ListCursor {
            inner: self.inner.clone(),
            list: dlq_topic.to_owned(),
            remaining,
            kept: 0,
            current: None,
        }))
    }
}

struct ListCursor {
    inner: Arc<Inner>,
    list: String,
    /// Items still to take: those in the list when the cursor opened.
    remaining: u64,
    /// Items left in place at the right end, stepped over.
    kept: usize,
    /// The item handed out last.
    current: Option<Vec<u8>>,
}

#[async_trait]
impl DeadLetterCursor for ListCursor {
    async fn next(&mut self) -> Result<Option<StoredLetter>> {
        if self.current.take().is_some() {
            self.kept += 1;
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        let index = from_right(self.kept.saturating_add(1));
        let item: Option<Vec<u8>> = query(
            &self.inner,
            ::redis::cmd("LINDEX").arg(&self.list).arg(index),
        )
        .await?;
        let Some(raw) = item else {
            self.remaining = 0;
            return Ok(None);
        };
        self.remaining -= 1;
        let message = envelope::decode(&raw, &self.list).0;
        self.current = Some(raw);
        Ok(Some(StoredLetter::new(message)))
    }

    async fn settle(&mut self, remove: bool) -> Result<()> {
        let Some(raw) = self.current.take() else {
            return Ok(());
        };
        if !remove {
            self.kept += 1;
            return Ok(());
        }
        let _removed: i64 = query(
            &self.inner,
            ::redis::cmd("LREM").arg(&self.list).arg(-1).arg(raw),
        )
        .await?;
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A stream entry: its id and fields (`None` when it was deleted while pending).
type Entry = (String, Option<Vec<Bytes>>);

fn entry_of(value: Value) -> Option<Entry> {
    let mut parts = items_of(value).into_iter();
    let id = text_of(&parts.next()?)?;
    Some((id, parts.next().and_then(entry_fields)))
}

/// The entries of an `XRANGE` reply.
fn entries_of(reply: Value) -> Vec<Entry> {
    items_of(reply).into_iter().filter_map(entry_of).collect()
}

/// The entries of an `XREADGROUP` reply on one stream.
fn entries_of_read(reply: Value) -> Vec<Entry> {
    let lists: Vec<Value> = match reply {
        Value::Map(pairs) => pairs.into_iter().map(|(_, list)| list).collect(),
        other => items_of(other)
            .into_iter()
            .filter_map(|pair| items_of(pair).into_iter().nth(1))
            .collect(),
    };
    lists.into_iter().flat_map(entries_of).collect()
}

/// The fields of a map-like reply (RESP3 map or RESP2 flat array), by name.
fn fields_of(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text_of(&k)?, v)))
            .collect(),
        other => {
            let mut out = Vec::new();
            let mut items = items_of(other).into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = text_of(&k) {
                    out.push((k, v));
                }
            }
            out
        }
    }
}

/// A stream id as `(ms, seq)`, for comparisons.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// What `XINFO GROUPS` says about the cursor group.
struct GroupInfo {
    pending: u64,
    last_delivered: String,
    lag: Option<u64>,
}

struct StreamDeadLetters {
    inner: Arc<Inner>,
}

impl StreamDeadLetters {
    async fn exists(&self, stream: &str) -> Result<bool> {
        let n: i64 = query(&self.inner, ::redis::cmd("EXISTS").arg(stream)).await?;
        Ok(n > 0)
    }

    /// The cursor group of an existing stream, if it was created.
    async fn group(&self, stream: &str) -> Result<Option<GroupInfo>> {
        let group = cursor_group(stream);
        let reply: Value =
            query(&self.inner, ::redis::cmd("XINFO").arg("GROUPS").arg(stream)).await?;
        for item in items_of(reply) {
            let fields = fields_of(item);
            let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if get("name").and_then(text_of).as_deref() != Some(group.as_str()) {
                continue;
            }
            return Ok(Some(GroupInfo {
                pending: get("pending")
                    .and_then(int_of)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                last_delivered: get("last-delivered-id")
                    .and_then(text_of)
                    .unwrap_or_else(|| "0-0".into()),
                lag: get("lag")
                    .and_then(int_of)
                    .and_then(|n| u64::try_from(n).ok()),
            }));
        }
        Ok(None)
    }

    /// Entries after `id` (exclusive), at most `count`.
    async fn after(&self, stream: &str, id: &str, count: usize) -> Result<Vec<Entry>> {
        let reply: Value = query(
            &self.inner,
            ::redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("({id}"))
                .arg("+")
                .arg("COUNT")
                .arg(count),
        )
        .await?;
        Ok(entries_of(reply))
    }

    /// How many entries follow `id`, counted page by page (when the server knows no lag).
    async fn count_after(&self, stream: &str, id: &str) -> Result<u64> {
        let mut total = 0u64;
        let mut from = id.to_owned();
        loop {
            let page = self.after(stream, &from, 1_000).await?;
            let Some((last, _)) = page.last() else {
                return Ok(total);
            };
            from = last.clone();
            total += page.len() as u64;
        }
    }
}

fn stored(stream: &str, entry: Entry) -> Option<StoredLetter> {
    let (id, fields) = entry;
    Some(StoredLetter::new(decode_entry(stream, &id, fields?).0))
}

#[async_trait]
impl DeadLetterStore for StreamDeadLetters {
    async fn count(&self, dlq_topic: &str) -> Result<u64> {
        if !self.exists(dlq_topic).await? {
            return Ok(0);
        }
        match self.group(dlq_topic).await? {
            None => query(&self.inner, ::redis::cmd("XLEN").arg(dlq_topic)).await,
            Some(group) => {
                let after = match group.lag {
                    Some(lag) => lag,
                    None => self.count_after(dlq_topic, &group.last_delivered).await?,
                };
                Ok(group.pending + after)
            }
        }
    }

    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>> {
        if !self.exists(dlq_topic).await? {
            return Ok(Vec::new());
        }
        let Some(group) = self.group(dlq_topic).await? else {
            let reply: Value = query(
                &self.inner,
                ::redis::cmd("XRANGE")
                    .arg(dlq_topic)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
            return Ok(entries_of(reply)
                .into_iter()
                .filter_map(|e| stored(dlq_topic, e))
                .collect());
        };
        let mut letters = Vec::new();
        if group.pending > 0 {
            // Pending entries come before the last delivered id: they are the oldest.
            let pending: Value = query(
                &self.inner,
                ::redis::cmd("XPENDING")
                    .arg(dlq_topic)
                    .arg(cursor_group(dlq_topic))
                    .arg("-")
                    .arg("+")
                    .arg(limit),
            )
            .await?;
            let ids: Vec<String> = items_of(pending)
                .into_iter()
                .filter_map(|p| items_of(p).first().and_then(text_of))
                .collect();
            if !ids.is_empty() {
                let mut pipe = ::redis::pipe();
                for id in &ids {
                    pipe.cmd("XRANGE").arg(dlq_topic).arg(id).arg(id);
                }
                let replies: Vec<Value> = pipe
                    .query_async(&mut self.inner.manager())
                    .await
                    .map_err(|err| self.inner.error(err))?;
                letters.extend(
                    replies
                        .into_iter()
                        .flat_map(entries_of)
                        .filter_map(|e| stored(dlq_topic, e)),
                );
            }
        }
        if letters.len() < limit {
            let rest = self
                .after(dlq_topic, &group.last_delivered, limit - letters.len())
                .await?;
            letters.extend(rest.into_iter().filter_map(|e| stored(dlq_topic, e)));
        }
        letters.truncate(limit);
        Ok(letters)
    }

    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>> {
        let group = cursor_group(dlq_topic);
        let mut cursor = StreamCursor {
            inner: self.inner.clone(),
            stream: dlq_topic.to_owned(),
            group: group.clone(),
            end: (0, 0),
            phase: Phase::Done,
            buffer: VecDeque::new(),
            current: None,
        };
        if !self.exists(dlq_topic).await? {
            return Ok(Box::new(cursor));
        }
        let created: std::result::Result<Value, _> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(dlq_topic)
            .arg(&group)
            .arg("0")
            .query_async(&mut self.inner.manager())
            .await;
        if let Err(err) = created
            && err.code() != Some("BUSYGROUP")
        {
            return Err(self.inner.error(err));
        }
        let newest: Value = query(
            &self.inner,
            ::redis::cmd("XREVRANGE")
                .arg(dlq_topic)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
        if let Some((id, _)) = entries_of(newest).into_iter().next() {
            cursor.end = id_key(&id);
            cursor.phase = Phase::Pending("0-0".into());
        }
        Ok(Box::new(cursor))
    }
}

/// Where a streams redrive reads next.
enum Phase {
    /// The group's pending entries, after this id.
    Pending(String),
    /// New entries (`>`).
    New,
    /// Nothing more to read.
    Done,
}

struct StreamCursor {
    inner: Arc<Inner>,
    stream: String,
    group: String,
    /// The newest entry when the cursor opened: later ones wait for the next redrive.
    end: (u64, u64),
    phase: Phase,
    buffer: VecDeque<Entry>,
    /// The id of the entry handed out last.
    current: Option<String>,
}

impl StreamCursor {
    async fn read(&self, from: &str) -> Result<Vec<Entry>> {
        let reply: Value = query(
            &self.inner,
            ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(CONSUMER)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(from),
        )
        .await?;
        Ok(entries_of_read(reply))
    }

    /// Refills the buffer; false when there is nothing more to read.
    async fn fill(&mut self) -> Result<bool> {
        loop {
            match &self.phase {
                Phase::Done => return Ok(false),
                Phase::Pending(after) => {
                    let entries = self.read(after).await?;
                    match entries.last() {
                        None => self.phase = Phase::New,
                        Some((last, _)) => {
                            self.phase = Phase::Pending(last.clone());
                            self.buffer.extend(entries);
                            return Ok(true);
                        }
                    }
                }
                Phase::New => {
                    let entries = self.read(">").await?;
                    if entries.is_empty() {
                        self.phase = Phase::Done;
                        return Ok(false);
                    }
                    if entries.iter().any(|(id, _)| id_key(id) > self.end) {
                        // Entries read past the end stay pending: the next redrive takes them.
                        self.phase = Phase::Done;
                    }
                    self.buffer.extend(entries);
                    return Ok(true);
                }
            }
        }
    }

    async fn ack(&self, id: &str) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore();
        if self.inner.settings.delete_after_ack {
            pipe.cmd("XDEL").arg(&self.stream).arg(id).ignore();
        }
        pipe.query_async::<()>(&mut self.inner.manager())
            .await
            .map_err(|err| self.inner.error(err))
    }
}

#[async_trait]
impl DeadLetterCursor for StreamCursor {
    async fn next(&mut self) -> Result<Option<StoredLetter>> {
        self.current = None;
        loop {
            while let Some((id, fields)) = self.buffer.pop_front() {
                if id_key(&id) > self.end {
                    continue;
                }
                let Some(fields) = fields else {
                    // Deleted (or trimmed) while pending: nothing left to redrive.
                    self.ack(&id).await?;
                    continue;
                };
                let (message, _attempt) = decode_entry(&self.stream, &id, fields);
                self.current = Some(id);
                return Ok(Some(StoredLetter::new(message)));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn settle(&mut self, remove: bool) -> Result<()> {
        match self.current.take() {
            Some(id) if remove => self.ack(&id).await,
            // Left in place: it stays pending in the cursor group.
            _ => Ok(()),
        }
    }

    async fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(id_key("1700-2") > id_key("1700-1"));
        assert!(id_key("1701-0") > id_key("1700-9"));
        assert_eq!(id_key("5"), (5, 0));
    }

    #[test]
    fn list_indexes_count_from_the_right() {
        assert_eq!(from_right(1), -1);
        assert_eq!(from_right(usize::MAX), -i64::MAX);
    }
}
