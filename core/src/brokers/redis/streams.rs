//! Streams mode: consumer groups on Redis streams.
//!
//! `XADD` appends to the stream named like the topic (trimmed to about `maxlen` entries when
//! set). Each group reads with `XREADGROUP` and acknowledges with `XACK`; a new group starts at
//! the oldest entry (`0`), at new entries only (`$`) or at a time (replay). An entry stays
//! pending until acknowledged: a member refreshes the idle time of what it holds, so entries
//! of a member that died become idle and another member claims them (`XAUTOCLAIM`) after
//! `claim_idle_ms`. A nack acknowledges the entry and adds a copy with the attempt raised to
//! the group's own retry stream (through its delayed set when delayed), so other groups are
//! not affected; a release hands the entry to a placeholder consumer with a long idle time, so
//! the next claim takes it at once. Entries pending for this consumer that it does not know of
//! (read by a command whose reply was lost) are not refreshed: they go idle and are claimed.
//!
//! Fields are native: `polybus-id`, `polybus-content-type`, `polybus-key`, `polybus-timestamp`,
//! `polybus-attempt` (when above 1), `header:<name>` per user header and `payload`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, RedisResult, Value};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::{self, Blocked, Dedicated, items_of, text_of};
use super::resp::Reply;
use super::{Inner, keys, scripts};
use crate::broker::{StartPosition, SubscriptionSpec};
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::{CONTENT_TYPE_JSON, Message, now_ms};
use crate::subscription::{DeliverySink, Subscription};
use crate::wire::{
    HEADER_ATTEMPT, HEADER_CONTENT_TYPE, HEADER_ID, HEADER_KEY, HEADER_TIMESTAMP, parse_attempt,
    sniff_content_type,
};

/// The field holding the payload.
pub(super) const FIELD_PAYLOAD: &str = "payload";
/// The prefix of the fields holding user headers (`header:trace-id`).
pub(super) const HEADER_FIELD_PREFIX: &str = "header:";

/// The most entries read or claimed at once.
const MAX_BATCH: usize = 1_000;
/// The most delayed copies moved into a retry stream per check.
const MAX_PROMOTE: usize = 1_000;
/// How often, at most, idle consumers without pending entries are removed from a group.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The fields of `message` on its `attempt`, flattened as name, value, name, value...
pub(super) fn fields(message: &Message, attempt: u32) -> Vec<Vec<u8>> {
    let mut fields = Vec::with_capacity(12 + 2 * message.headers.len());
    let mut push = |name: &[u8], value: &[u8]| {
        fields.push(name.to_vec());
        fields.push(value.to_vec());
    };
    push(HEADER_ID.as_bytes(), message.id.as_bytes());
    push(
        HEADER_CONTENT_TYPE.as_bytes(),
        message.content_type.as_bytes(),
    );
    if let Some(key) = &message.key {
        push(HEADER_KEY.as_bytes(), key.as_bytes());
    }
    push(
        HEADER_TIMESTAMP.as_bytes(),
        message.timestamp_ms.to_string().as_bytes(),
    );
    if attempt > 1 {
        push(HEADER_ATTEMPT.as_bytes(), attempt.to_string().as_bytes());
    }
    for (name, value) in &message.headers {
        push(
            format!("{HEADER_FIELD_PREFIX}{name}").as_bytes(),
            value.as_bytes(),
        );
    }
    push(FIELD_PAYLOAD.as_bytes(), &message.payload);
    fields
}

/// `XADD stream [MAXLEN ~ maxlen] * fields...`
pub(super) fn xadd(stream: &str, message: &Message, attempt: u32, maxlen: Option<u64>) -> Cmd {
    let mut cmd = ::redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(maxlen) = maxlen {
        cmd.arg("MAXLEN").arg("~").arg(maxlen);
    }
    cmd.arg("*");
    for field in fields(message, attempt) {
        cmd.arg(field);
    }
    cmd
}

/// Reads an entry of `topic` from its field names and values, one after the other: the message
/// and the attempt it is on. An entry without `polybus-id` comes from another producer: its
/// `payload` field (or, without one, all its fields as a JSON object) is the payload, its other
/// fields are headers, and its id is `<topic>-<entry id>`.
pub(super) fn decode_entry(topic: &str, entry_id: &str, fields: Vec<Bytes>) -> (Message, u32) {
    let entry_ms = entry_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<i64>().ok());
    let timestamp_ms = entry_ms.unwrap_or_else(now_ms);
    let polybus = fields
        .iter()
        .step_by(2)
        .any(|name| name.as_ref() == HEADER_ID.as_bytes());
    if !polybus {
        return (foreign_entry(topic, entry_id, timestamp_ms, fields), 1);
    }
    // The payload is taken over as it is, and no string is made for a name.
    let mut message = Message::received(
        topic,
        Bytes::new(),
        String::new(),
        String::new(),
        timestamp_ms,
    );
    let mut content_type = None;
    let mut attempt = 1;
    let mut values = fields.into_iter();
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        // Borrowed, not copied, when the name is UTF-8 (always, for Polybus' own fields).
        let name = String::from_utf8_lossy(&name);
        match name.as_ref() {
            HEADER_ID => message.id = text(&value),
            HEADER_CONTENT_TYPE => content_type = Some(text(&value)),
            HEADER_KEY => message.key = Some(text(&value)),
            HEADER_TIMESTAMP => {
                if let Some(ms) = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    message.timestamp_ms = ms;
                }
            }
            HEADER_ATTEMPT => attempt = parse_attempt(Some(&value)),
            FIELD_PAYLOAD => message.payload = value,
            other => {
                let header = other.strip_prefix(HEADER_FIELD_PREFIX).unwrap_or(other);
                message.headers.insert(header.to_owned(), text(&value));
            }
        }
    }
    message.content_type =
        content_type.unwrap_or_else(|| sniff_content_type(&message.payload).to_owned());
    (message, attempt)
}

/// An entry another producer added: its `payload` field (or, without one, all its fields as
/// a JSON object) is the payload, its other fields are headers.
fn foreign_entry(topic: &str, entry_id: &str, timestamp_ms: i64, fields: Vec<Bytes>) -> Message {
    let mut pairs: Vec<(String, Bytes)> = Vec::with_capacity(fields.len() / 2);
    let mut values = fields.into_iter();
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        pairs.push((text(&name), value));
    }
    let id = format!("{topic}-{entry_id}");
    if let Some(index) = pairs.iter().position(|(name, _)| name == FIELD_PAYLOAD) {
        let (_, payload) = pairs.remove(index);
        let content_type = sniff_content_type(&payload).to_owned();
        let mut message = Message::received(topic, payload, id, content_type, timestamp_ms);
        for (name, value) in pairs {
            message.headers.insert(name, text(&value));
        }
        message
    } else {
        let object: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(name, value)| (name, serde_json::Value::String(text(&value))))
            .collect();
        let payload = serde_json::Value::Object(object).to_string();
        Message::received(
            topic,
            payload,
            id,
            CONTENT_TYPE_JSON.to_owned(),
            timestamp_ms,
        )
    }
}

/// The fields of an entry redis-rs read (names and values, one after the other, from an array
/// or a RESP3 map), their bytes taken over; `None` when the entry has none (deleted).
pub(super) fn entry_fields(fields: Value) -> Option<Vec<Bytes>> {
    let values = match fields {
        Value::Array(values) => values,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let bytes = values.into_iter().map(|value| match value {
        Value::BulkString(bytes) => Bytes::from(bytes),
        other => Bytes::from(text_of(&other).unwrap_or_default()),
    });
    Some(bytes.collect())
}

/// Bytes as text (invalid sequences become U+FFFD).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The group id that puts a new group, or moves an existing one, before the first entry
/// appended at or after `ms`.
fn id_before(ms: i64) -> String {
    if ms <= 0 {
        "0".to_owned()
    } else {
        format!("{}-{}", ms - 1, u64::MAX)
    }
}

/// The keys of one topic, for one group.
struct Topic {
    name: String,
    retry: String,
    delayed: String,
}

/// A stream the subscription reads: a topic's stream, or its retry stream for the group.
struct Stream {
    key: String,
    topic: usize,
    retry: bool,
}

/// What a streams subscription and its deliveries share.
struct Shared {
    inner: Arc<Inner>,
    /// The subscription's own command connection (settlements, scripts), so its traffic does
    /// not queue the broker's publishes.
    commands: ConnectionManager,
    group: String,
    consumer: String,
    topics: Vec<Topic>,
    streams: Vec<Stream>,
    /// Where a group that disappeared while reading is created again.
    recreate_at: String,
    /// Wakes the fetch loop out of a block (a delayed nack changed when to look next).
    wake: Notify,
    /// The ids this consumer holds (read or claimed, not settled yet), per stream.
    held: Mutex<Vec<HashSet<String>>>,
    /// Orders idle-time refreshes and releases, so a refresh never takes back an entry
    /// released meanwhile.
    gate: tokio::sync::Mutex<()>,
    /// Acknowledgements waiting to go out together.
    acks: Mutex<AckQueue>,
}

/// An entry id to acknowledge, and who waits for the reply.
type AckWaiter = (String, oneshot::Sender<RedisResult<()>>);

/// Acknowledgements settled while others were being sent: each waits for the next `XACK`.
struct AckQueue {
    /// Per stream, the entry ids and who waits for their `XACK`.
    waiting: Vec<Vec<AckWaiter>>,
    /// A task is sending acknowledgements (and sends these next).
    sending: bool,
}

/// An entry read or claimed.
struct Entry {
    stream: usize,
    id: String,
    /// Field names and values, one after the other.
    fields: Vec<Bytes>,
    redelivered: bool,
}

/// Creates the groups (at the start position) and starts reading.
pub(super) async fn subscribe(inner: Arc<Inner>, spec: SubscriptionSpec) -> Result<Subscription> {
    let start = match spec.start {
        StartPosition::Earliest => "0".to_owned(),
        StartPosition::Latest => "$".to_owned(),
        StartPosition::Timestamp(ms) => id_before(ms),
        StartPosition::Offset(_) => {
            return Err(Error::Unsupported {
                backend: "redis",
                feature: "replay from an integer offset (stream entry ids are times; use StartPosition::Timestamp)".into(),
            });
        }
    };
    let topics: Vec<Topic> = spec
        .topics
        .iter()
        .map(|name| Topic {
            name: name.clone(),
            retry: keys::stream_retry(name, &spec.group),
            delayed: keys::stream_delayed(name, &spec.group),
        })
        .collect();
    let streams = topics
        .iter()
        .enumerate()
        .flat_map(|(index, topic)| {
            [
                Stream {
                    key: topic.name.clone(),
                    topic: index,
                    retry: false,
                },
                Stream {
                    key: topic.retry.clone(),
                    topic: index,
                    retry: true,
                },
            ]
        })
        .collect::<Vec<_>>();
    let stream_count = streams.len();
    let commands = conn::manager(&inner.client, &inner.settings).await?;
    let shared = Arc::new(Shared {
        inner,
        commands,
        group: spec.group.clone(),
        consumer: keys::consumer_id(),
        topics,
        streams,
        recreate_at: if spec.start == StartPosition::Latest {
            "$".to_owned()
        } else {
            start.clone()
        },
        wake: Notify::new(),
        held: Mutex::new(Vec::new()),
        gate: tokio::sync::Mutex::new(()),
        acks: Mutex::new(AckQueue {
            waiting: std::iter::repeat_with(Vec::new)
                .take(stream_count)
                .collect(),
            sending: false,
        }),
    });
    shared
        .lock_held()
        .resize_with(shared.streams.len(), HashSet::new);
    shared
        .ensure_groups(&start, spec.start.is_seek())
        .await
        .map_err(|err| shared.inner.error(err))?;
    let prefetch = spec.prefetch;
    Ok(Subscription::spawn(prefetch, move |sink| {
        run(shared, prefetch, sink)
    }))
}

async fn run(shared: Arc<Shared>, prefetch: usize, sink: DeliverySink) {
    sink.set_ready(true);
    let fetch_ended = CancellationToken::new();
    let fetch = async {
        let leftover = fetch_loop(&shared, prefetch, &sink).await;
        fetch_ended.cancel();
        leftover
    };
    let (leftover, ()) = tokio::join!(fetch, maintain(&shared, &sink, &fetch_ended));
    close(&shared, leftover).await;
}

/// What the fetch loop still held when it stopped.
struct Leftover {
    backlog: VecDeque<Entry>,
    unsent: Option<Delivery>,
}

async fn fetch_loop(shared: &Arc<Shared>, prefetch: usize, sink: &DeliverySink) -> Leftover {
    let settings = shared.inner.settings.clone();
    let mut dedicated = Dedicated::new(
        &shared.inner.client,
        settings.clone(),
        &shared.group,
        &shared.consumer,
    );
    let mut backlog: VecDeque<Entry> = VecDeque::new();
    let batch = prefetch.clamp(1, MAX_BATCH);
    let claim_every = (settings.claim_idle / 2)
        .min(settings.block)
        .max(Duration::from_millis(50));
    let mut cursors = vec!["0-0".to_owned(); shared.streams.len()];
    let mut next_claim = Instant::now();
    let mut next_promote = Instant::now();
    loop {
        while let Some(entry) = backlog.pop_front() {
            if let Err(unsent) = sink.send(shared.delivery(entry)).await {
                return Leftover {
                    backlog,
                    unsent: Some(unsent),
                };
            }
        }
        if sink.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if now >= next_claim {
            match shared.claim(&mut cursors, batch).await {
                Ok(claimed) => {
                    next_claim = now + claim_every;
                    if !claimed.is_empty() {
                        backlog.extend(claimed);
                        continue;
                    }
                }
                Err(err) => {
                    if !handle_failure(err, shared, &mut dedicated, sink).await {
                        break;
                    }
                    continue;
                }
            }
        }
        if now >= next_promote {
            match shared.promote().await {
                Ok(next_due) => {
                    next_promote = now + next_due.map_or(settings.block, |d| d.min(settings.block));
                }
                Err(err) => {
                    if !handle_failure(err, shared, &mut dedicated, sink).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let now = Instant::now();
        let block = settings
            .block
            .min(next_claim.saturating_duration_since(now))
            .min(next_promote.saturating_duration_since(now))
            .max(Duration::from_millis(1));
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS");
        for stream in &shared.streams {
            cmd.arg(&stream.key);
        }
        for _ in &shared.streams {
            cmd.arg(">");
        }
        match dedicated
            .blocking(&cmd, &shared.commands, sink, &shared.wake)
            .await
        {
            Blocked::Reply(Reply::Nil) => {
                // Timed out or woken: a delayed copy may be due now.
                next_promote = Instant::now();
            }
            Blocked::Reply(reply) => {
                dedicated.succeeded();
                backlog.extend(shared.entries_of_read(reply));
            }
            Blocked::Failed(err) => {
                if !handle_failure(err, shared, &mut dedicated, sink).await {
                    break;
                }
            }
            Blocked::Closed => break,
        }
    }
    Leftover {
        backlog,
        unsent: None,
    }
}

/// Logs a failed command and waits before the next one; recreates groups that disappeared;
/// fails the subscription for errors that retrying cannot fix. False when the loop should stop.
async fn handle_failure(
    err: ::redis::RedisError,
    shared: &Shared,
    dedicated: &mut Dedicated,
    sink: &DeliverySink,
) -> bool {
    if conn::is_no_group(&err) {
        tracing::warn!(group = %shared.group, "a redis stream or consumer group disappeared; creating it again");
        if let Err(err) = shared.ensure_groups(&shared.recreate_at, false).await {
            tracing::warn!(error = %err, "creating a redis consumer group again failed");
        }
        return dedicated.pause(sink).await;
    }
    if conn::is_transient(&err) {
        tracing::warn!(target_url = %shared.inner.settings.target, error = %err, "redis stream read failed; retrying");
        dedicated.pause(sink).await
    } else {
        // `fail` waits for room in the buffer: not past the subscription's closing.
        tokio::select! {
            _ = sink.fail(shared.inner.error(err)) => {}
            _ = sink.cancelled() => {}
        }
        false
    }
}

/// Keeps what this consumer holds from looking idle, and now and then removes group members
/// that left without work, until the subscription closes or its fetch loop ends.
async fn maintain(shared: &Shared, sink: &DeliverySink, fetch_ended: &CancellationToken) {
    let claim_idle = shared.inner.settings.claim_idle;
    let tick = (claim_idle / 3).clamp(Duration::from_millis(20), Duration::from_secs(10));
    let forget_after = claim_idle.max(FORGET_EVERY);
    let mut next_forget = Instant::now();
    loop {
        tokio::select! {
            _ = sink.cancelled() => return,
            _ = fetch_ended.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if let Err(err) = shared.refresh().await {
            tracing::warn!(error = %err, "refreshing the idle time of pending redis stream entries failed");
        }
        if Instant::now() >= next_forget {
            next_forget = Instant::now() + FORGET_EVERY;
            if let Err(err) = shared.forget(None, forget_after).await {
                tracing::debug!(error = %err, "removing idle redis stream consumers failed");
            }
        }
    }
}

/// Hands what the fetch loop held to the placeholder consumer (claimable at once), then leaves
/// the groups if nothing is pending for this consumer.
async fn close(shared: &Arc<Shared>, leftover: Leftover) {
    let Leftover { backlog, unsent } = leftover;
    for index in 0..shared.streams.len() {
        let ids: Vec<&str> = backlog
            .iter()
            .filter(|e| e.stream == index)
            .map(|e| e.id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(err) = shared.release(index, &ids).await {
            tracing::warn!(error = %err, "releasing prefetched redis stream entries failed; they are claimed after claim_idle_ms");
        }
    }
    if let Some(unsent) = unsent
        && let Err(err) = unsent.release().await
    {
        tracing::warn!(error = %err, "releasing a redis stream entry failed; it is claimed after claim_idle_ms");
    }
    if let Err(err) = shared
        .forget(
            Some(&shared.consumer),
            shared.inner.settings.claim_idle.max(FORGET_EVERY),
        )
        .await
    {
        tracing::debug!(error = %err, "leaving a redis consumer group failed");
    }
}

impl Shared {
    /// A handle on the subscription's command connection.
    fn manager(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Creates the group on every stream (`MKSTREAM`); with `seek`, moves an existing group
    /// on the topics' streams to `start`.
    async fn ensure_groups(&self, start: &str, seek: bool) -> RedisResult<()> {
        let mut manager = self.manager();
        for stream in &self.streams {
            let id = if stream.retry { "0" } else { start };
            let created = ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream.key)
                .arg(&self.group)
                .arg(id)
                .arg("MKSTREAM")
                .query_async::<Value>(&mut manager)
                .await;
            match created {
                Ok(_) => {}
                Err(err) if err.code() == Some("BUSYGROUP") => {
                    if seek && !stream.retry {
                        ::redis::cmd("XGROUP")
                            .arg("SETID")
                            .arg(&stream.key)
                            .arg(&self.group)
                            .arg(id)
                            .query_async::<Value>(&mut manager)
                            .await?;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Claims entries idle for longer than `claim_idle_ms` (those of dead members, and
    /// released ones at once), up to `max`.
    async fn claim(&self, cursors: &mut [String], max: usize) -> RedisResult<Vec<Entry>> {
        let mut manager = self.manager();
        let idle = u64::try_from(self.inner.settings.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let mut claimed = Vec::new();
        for (index, stream) in self.streams.iter().enumerate() {
            if claimed.len() >= max {
                break;
            }
            let reply: Value = ::redis::cmd("XAUTOCLAIM")
                .arg(&stream.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(idle)
                .arg(&cursors[index])
                .arg("COUNT")
                .arg(max - claimed.len())
                .query_async(&mut manager)
                .await?;
            let mut parts = items_of(reply).into_iter();
            if let Some(cursor) = parts.next().as_ref().and_then(text_of) {
                cursors[index] = cursor;
            }
            for entry in items_of(parts.next().unwrap_or(Value::Nil)) {
                if let Some((id, fields)) = entry_of(entry) {
                    self.hold(index, &id);
                    claimed.push(Entry {
                        stream: index,
                        id,
                        fields,
                        redelivered: true,
                    });
                }
            }
        }
        if !claimed.is_empty() {
            tracing::debug!(group = %self.group, claimed = claimed.len(), "claimed idle redis stream entries");
        }
        Ok(claimed)
    }

    /// Moves due delayed copies into the retry streams; returns how long until the next one.
    async fn promote(&self) -> RedisResult<Option<Duration>> {
        let mut invocation = scripts::STREAM_PROMOTE.prepare_invoke();
        for topic in &self.topics {
            invocation.key(&topic.delayed).key(&topic.retry);
        }
        invocation.arg(MAX_PROMOTE);
        let next: i64 = invocation.invoke_async(&mut self.manager()).await?;
        Ok(u64::try_from(next).ok().map(Duration::from_millis))
    }

    /// Acknowledges (and with `delete`, deletes) an entry. Entries settled together go out in
    /// one `XACK` per stream: the first starts a task that sends what is waiting, in rounds,
    /// until nothing is; each settle still waits for its own entry's reply.
    async fn acknowledge(self: &Arc<Self>, stream: usize, id: &str) -> RedisResult<()> {
        let (reply, replied) = oneshot::channel();
        let start = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            acks.waiting[stream].push((id.to_owned(), reply));
            !std::mem::replace(&mut acks.sending, true)
        };
        if start {
            // A task of its own: a settle that is cancelled must not strand the others.
            tokio::spawn(self.clone().send_acknowledgements());
        }
        replied.await.unwrap_or_else(|_| {
            Err(::redis::RedisError::from((
                ::redis::ErrorKind::Io,
                "the acknowledgement was not sent",
            )))
        })
    }

    async fn send_acknowledgements(self: Arc<Self>) {
        // Let the settles that finish alongside the first join its round.
        tokio::task::yield_now().await;
        loop {
            let round: Vec<(usize, Vec<AckWaiter>)> = {
                let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
                let round: Vec<_> = acks
                    .waiting
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(stream, ids)| (stream, std::mem::take(ids)))
                    .collect();
                if round.is_empty() {
                    acks.sending = false;
                    return;
                }
                round
            };
            let mut pipe = ::redis::pipe();
            for (stream, ids) in &round {
                let stream = &self.streams[*stream];
                let ack = pipe.cmd("XACK").arg(&stream.key).arg(&self.group);
                for (id, _) in ids {
                    ack.arg(id);
                }
                ack.ignore();
                if stream.retry || self.inner.settings.delete_after_ack {
                    let delete = pipe.cmd("XDEL").arg(&stream.key);
                    for (id, _) in ids {
                        delete.arg(id);
                    }
                    delete.ignore();
                }
            }
            let result = pipe.query_async::<()>(&mut self.manager()).await;
            for (_, ids) in round {
                for (_, reply) in ids {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<HashSet<String>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold(&self, stream: usize, id: &str) {
        if let Some(ids) = self.lock_held().get_mut(stream) {
            ids.insert(id.to_owned());
        }
    }

    fn let_go(&self, stream: usize, id: &str) {
        if let Some(ids) = self.lock_held().get_mut(stream) {
            ids.remove(id);
        }
    }

    /// Resets the idle time of the entries this consumer holds (`XCLAIM` to itself, `JUSTID`:
    /// the delivery count stays), so other members do not claim live work.
    async fn refresh(&self) -> RedisResult<()> {
        let _gate = self.gate.lock().await;
        let held: Vec<Vec<String>> = self
            .lock_held()
            .iter()
            .map(|ids| ids.iter().cloned().collect())
            .collect();
        let mut manager = self.manager();
        for (stream, ids) in self.streams.iter().zip(held) {
            for chunk in ids.chunks(500) {
                let mut cmd = ::redis::cmd("XCLAIM");
                cmd.arg(&stream.key)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID");
                cmd.query_async::<Value>(&mut manager).await?;
            }
        }
        Ok(())
    }

    /// Removes group members without pending entries that were idle for `after`, and
    /// `consumer` (this one, closing) when nothing is pending for it.
    async fn forget(&self, consumer: Option<&str>, after: Duration) -> RedisResult<()> {
        let mut manager = self.manager();
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        for stream in &self.streams {
            scripts::STREAM_FORGET
                .key(&stream.key)
                .arg(&self.group)
                .arg(consumer.unwrap_or("-"))
                .arg(after)
                .invoke_async::<i64>(&mut manager)
                .await?;
        }
        Ok(())
    }

    /// Hands entries to the placeholder consumer with a long idle time: the next claim by any
    /// member takes them. The delivery count stays as it is.
    async fn release(&self, stream: usize, ids: &[&str]) -> RedisResult<()> {
        let _gate = self.gate.lock().await;
        for id in ids {
            self.let_go(stream, id);
        }
        let mut cmd = ::redis::cmd("XCLAIM");
        cmd.arg(&self.streams[stream].key)
            .arg(&self.group)
            .arg(keys::RELEASED_CONSUMER)
            .arg(0);
        for id in ids {
            cmd.arg(*id);
        }
        cmd.arg("TIME").arg(1).arg("JUSTID");
        cmd.query_async::<Value>(&mut self.manager())
            .await
            .map(|_| ())
    }

    /// The entries of an `XREADGROUP` reply: per stream, its key and its entries.
    fn entries_of_read(&self, reply: Reply) -> Vec<Entry> {
        let mut entries = Vec::new();
        for pair in reply.into_items() {
            let mut parts = pair.into_items().into_iter();
            let (Some(key), Some(list)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(key) = key.bytes() else { continue };
            let Some(index) = self.streams.iter().position(|s| s.key.as_bytes() == key) else {
                continue;
            };
            for entry in list.into_items() {
                if let Some((id, fields)) = read_entry_of(entry) {
                    self.hold(index, &id);
                    entries.push(Entry {
                        stream: index,
                        id,
                        fields,
                        redelivered: false,
                    });
                }
            }
        }
        entries
    }

    fn delivery(self: &Arc<Self>, entry: Entry) -> Delivery {
        let stream = &self.streams[entry.stream];
        let topic = &self.topics[stream.topic];
        let (message, attempt) = decode_entry(&topic.name, &entry.id, entry.fields);
        let meta = DeliveryMeta {
            stream_id: Some(entry.id.clone()),
            redelivered: entry.redelivered || attempt > 1,
            group: Some(self.group.clone()),
            ..Default::default()
        };
        let acker = StreamAcker {
            shared: self.clone(),
            stream: entry.stream,
            id: entry.id,
            attempt,
        };
        Delivery::new(message, attempt, meta, Box::new(acker))
    }
}

/// An entry as `(id, fields)`; `None` for a deleted entry (nil fields).
fn entry_of(entry: Value) -> Option<(String, Vec<Bytes>)> {
    let mut parts = items_of(entry).into_iter();
    let id = text_of(&parts.next()?)?;
    Some((id, entry_fields(parts.next()?)?))
}

/// An entry of a stream read: its id and fields (an entry deleted meanwhile has none).
fn read_entry_of(entry: Reply) -> Option<(String, Vec<Bytes>)> {
    let mut parts = entry.into_items().into_iter();
    let id = text(parts.next()?.bytes()?);
    let Reply::Array(fields) = parts.next()? else {
        return None;
    };
    Some((
        id,
        fields.into_iter().filter_map(Reply::into_bytes).collect(),
    ))
}

/// Settles one stream entry for the group.
struct StreamAcker {
    shared: Arc<Shared>,
    stream: usize,
    id: String,
    attempt: u32,
}

#[async_trait]
impl Acknowledger for StreamAcker {
    async fn settle(self: Box<Self>, outcome: Settlement, message: Message) -> Result<()> {
        let shared = &self.shared;
        let stream = &shared.streams[self.stream];
        let topic = &shared.topics[stream.topic];
        let delete = stream.retry || shared.inner.settings.delete_after_ack;
        let mut manager = shared.manager();
        let result = match outcome {
            Settlement::Ack | Settlement::Reject => shared.acknowledge(self.stream, &self.id).await,
            Settlement::Requeue { delay } => {
                let copy = fields(&message, self.attempt.saturating_add(1));
                let delay_ms =
                    delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let member = if delay_ms > 0 {
                    scripts::netstrings(copy.iter().map(Vec::as_slice))
                } else {
                    Vec::new()
                };
                let mut invocation = scripts::STREAM_REQUEUE.prepare_invoke();
                invocation
                    .key(&stream.key)
                    .key(&topic.retry)
                    .key(&topic.delayed)
                    .arg(&shared.group)
                    .arg(&self.id)
                    .arg(if delete { "1" } else { "0" })
                    .arg(delay_ms)
                    .arg(member);
                for field in copy {
                    invocation.arg(field);
                }
                let result = invocation.invoke_async::<i64>(&mut manager).await;
                if delay_ms > 0 {
                    shared.wake.notify_one();
                }
                result.map(|_| ())
            }
            Settlement::Release => shared.release(self.stream, &[self.id.as_str()]).await,
        };
        shared.let_go(self.stream, &self.id);
        result.map_err(|err| shared.inner.error(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(fields: Vec<Vec<u8>>) -> Vec<Bytes> {
        fields.into_iter().map(Bytes::from).collect()
    }

    #[test]
    fn polybus_fields_round_trip() {
        let message = Message::bytes("orders", &b"\x00bin"[..])
            .with_key("k")
            .with_header("trace-id", "abc")
            .with_content_type("application/x-test");
        let (back, attempt) =
            decode_entry("orders", "1700000000000-0", values(fields(&message, 3)));
        assert_eq!(back, message);
        assert_eq!(attempt, 3);
    }

    #[test]
    fn foreign_entries_are_read() {
        let with_payload = vec![
            b"payload".to_vec(),
            br#"{"a":1}"#.to_vec(),
            b"source".to_vec(),
            b"crm".to_vec(),
        ];
        let (message, attempt) = decode_entry("t", "1700000000000-5", values(with_payload));
        assert_eq!(message.id, "t-1700000000000-5");
        assert_eq!(&message.payload[..], br#"{"a":1}"#);
        assert_eq!(message.content_type, "application/json");
        assert_eq!(
            message.headers.get("source").map(String::as_str),
            Some("crm")
        );
        assert_eq!(message.timestamp_ms, 1_700_000_000_000);
        assert_eq!(attempt, 1);
        let plain = vec![b"source_id".to_vec(), b"1".to_vec()];
        let (message, _) = decode_entry("t", "1-0", values(plain));
        assert_eq!(&message.payload[..], br#"{"source_id":"1"}"#);
    }

    #[test]
    fn replay_ids_sit_just_before_the_time() {
        assert_eq!(id_before(0), "0");
        assert_eq!(id_before(1000), format!("999-{}", u64::MAX));
    }
}
