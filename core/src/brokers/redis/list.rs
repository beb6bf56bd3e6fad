//! List mode: a reliable queue per topic.
//!
//! A consumer moves items from the topic's list into a processing list of its own, atomically
//! (`LMOVE` in a script for batches, `BLMOVE` with a bounded block when the list is empty), so
//! an item is always in exactly one place. Settling works on the processing list in one script
//! each: an ack or reject removes the item, a nack removes it and pushes a copy with the attempt
//! raised back to the head of the list, or into the topic's delayed set (score = due time), from
//! which consumers move it back when due. Each consumer refreshes a heartbeat key with a TTL (the
//! visibility timeout); any consumer of the topic gives the processing lists of consumers whose
//! heartbeat expired back to the list.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::Value;
use ::redis::aio::ConnectionManager;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Blocked, Dedicated, int_of, items_of};
use super::{Inner, envelope, keys, scripts};
use crate::broker::SubscriptionSpec;
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::{DeliverySink, Subscription};

/// The most items one fetch script moves (a script blocks the server while it runs).
const MAX_BATCH: usize = 1_000;
/// The most delayed items moved back per topic and fetch.
const MAX_PROMOTE: usize = 1_000;
/// The block bound when a subscription reads several lists (it blocks on one at a time).
const MULTI_TOPIC_BLOCK: Duration = Duration::from_millis(200);

/// The keys of one topic, for one consumer.
struct Topic {
    name: String,
    processing: String,
    delayed: String,
    registry: String,
    /// Items of the processing list this consumer knows it holds (taken, not yet settled).
    /// A settlement lowers it only once its command completed, so the list never holds fewer.
    held: AtomicUsize,
}

/// What a list subscription and its deliveries share.
struct Shared {
    inner: Arc<Inner>,
    /// The subscription's own command connection (settlements, scripts), so its traffic does
    /// not queue the broker's publishes.
    commands: ConnectionManager,
    group: String,
    consumer: String,
    heartbeat: String,
    topics: Vec<Topic>,
    /// Items taken from a list and not settled or given back yet.
    owned: AtomicUsize,
    /// The fetch loop has stopped: the last settlement unregisters the consumer.
    closed: AtomicBool,
    /// Wakes the fetch loop out of a block (a delayed nack changed when to look next).
    wake: Notify,
}

/// An item taken from a list.
struct Fetched {
    topic: usize,
    raw: Bytes,
}

/// Starts a list subscription: registers the consumer (heartbeat and registries) first, so
/// a server that cannot be reached is reported here.
pub(super) async fn subscribe(inner: Arc<Inner>, spec: SubscriptionSpec) -> Result<Subscription> {
    if spec.start.is_seek() {
        return Err(Error::Unsupported {
            backend: "redis",
            feature: "replay in list mode (a list keeps no history; use mode=streams)".into(),
        });
    }
    let consumer = keys::consumer_id();
    let topics = spec
        .topics
        .iter()
        .map(|name| Topic {
            name: name.clone(),
            processing: keys::list_processing(name, &consumer),
            delayed: keys::list_delayed(name),
            registry: keys::list_consumers(name),
            held: AtomicUsize::new(0),
        })
        .collect();
    let commands = conn::manager(&inner.client, &inner.settings).await?;
    let shared = Arc::new(Shared {
        heartbeat: keys::heartbeat(&consumer),
        inner,
        commands,
        group: spec.group.clone(),
        consumer,
        topics,
        owned: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        wake: Notify::new(),
    });
    shared.beat().await.map_err(|err| shared.inner.error(err))?;
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
    backlog: VecDeque<Fetched>,
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
    let mut backlog: VecDeque<Fetched> = VecDeque::new();
    let mut turn = 0usize;
    let batch = prefetch.clamp(1, MAX_BATCH);
    loop {
        while let Some(fetched) = backlog.pop_front() {
            if let Err(unsent) = sink.send(shared.delivery(fetched)).await {
                return Leftover {
                    backlog,
                    unsent: Some(unsent),
                };
            }
        }
        if sink.is_cancelled() {
            break;
        }
        let next_due = match shared.take(batch, turn).await {
            Ok((taken, next_due)) => {
                dedicated.succeeded();
                turn = turn.wrapping_add(1);
                if !taken.is_empty() {
                    backlog.extend(taken);
                    continue;
                }
                next_due
            }
            Err(err) => {
                shared.reconcile().await;
                if !handle_failure(err, shared, &mut dedicated, sink).await {
                    break;
                }
                continue;
            }
        };
        // Nothing ready: block on one list until an item arrives, the next delayed item is
        // due, or the bound passes.
        let mut block = settings.block;
        if shared.topics.len() > 1 {
            block = block.min(MULTI_TOPIC_BLOCK);
        }
        if let Some(due) = next_due {
            if due.is_zero() {
                continue;
            }
            block = block.min(due);
        }
        let block = block.max(Duration::from_millis(10));
        let index = turn % shared.topics.len();
        let topic = &shared.topics[index];
        let mut cmd = ::redis::cmd("BLMOVE");
        cmd.arg(&topic.name)
            .arg(&topic.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(format!("{:.3}", block.as_secs_f64()));
        match dedicated
            .blocking(&cmd, &shared.commands, sink, &shared.wake)
            .await
        {
            Blocked::Reply(reply) => {
                // Nil when the block ended with nothing moved.
                if let Some(raw) = reply.into_bytes() {
                    topic.held.fetch_add(1, Ordering::AcqRel);
                    shared.owned.fetch_add(1, Ordering::AcqRel);
                    backlog.push_back(Fetched { topic: index, raw });
                }
            }
            Blocked::Failed(err) => {
                // The server may have moved an item whose reply was lost.
                shared.reconcile().await;
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

/// Logs a failed read and waits before the next one; fails the subscription for errors that
/// retrying cannot fix. False when the loop should stop.
async fn handle_failure(
    err: ::redis::RedisError,
    shared: &Shared,
    dedicated: &mut Dedicated,
    sink: &DeliverySink,
) -> bool {
    if conn::is_transient(&err) {
        tracing::warn!(target_url = %shared.inner.settings.target, error = %err, "redis list read failed; retrying");
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

/// Refreshes the heartbeat and recovers the work of dead consumers until the subscription
/// closes or its fetch loop ends.
async fn maintain(shared: &Shared, sink: &DeliverySink, fetch_ended: &CancellationToken) {
    let visibility = shared.inner.settings.visibility_timeout;
    let tick = (visibility / 3).clamp(Duration::from_millis(50), Duration::from_secs(10));
    loop {
        if let Err(err) = shared.recover().await {
            tracing::warn!(error = %err, "recovering the work of dead redis list consumers failed");
        }
        tokio::select! {
            _ = sink.cancelled() => return,
            _ = fetch_ended.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if let Err(err) = shared.beat().await {
            tracing::warn!(error = %err, "refreshing a redis list consumer's heartbeat failed");
        }
    }
}

/// Gives back what the fetch loop held. Once nothing is outstanding (now, or at the last
/// settlement of a delivery still out), the consumer unregisters.
async fn close(shared: &Arc<Shared>, leftover: Leftover) {
    let Leftover { backlog, unsent } = leftover;
    let held = backlog.len();
    for (index, topic) in shared.topics.iter().enumerate() {
        // Newest first, so the oldest ends up at the head of the list again.
        let items: Vec<&[u8]> = backlog
            .iter()
            .rev()
            .filter(|f| f.topic == index)
            .map(|f| &f.raw[..])
            .collect();
        if items.is_empty() {
            continue;
        }
        let count = items.len();
        let mut invocation = scripts::LIST_RETURN.prepare_invoke();
        invocation.key(&topic.processing).key(&topic.name);
        for item in items {
            invocation.arg(item);
        }
        if let Err(err) = invocation.invoke_async::<i64>(&mut shared.manager()).await {
            tracing::warn!(error = %err, "giving prefetched items back to a redis list failed; they return after the visibility timeout");
        }
        topic.held.fetch_sub(count, Ordering::AcqRel);
    }
    shared.owned.fetch_sub(held, Ordering::AcqRel);
    if let Some(unsent) = unsent {
        // Older than the backlog: given back last, so it is delivered first.
        if let Err(err) = unsent.release().await {
            tracing::warn!(error = %err, "giving an item back to a redis list failed; it returns after the visibility timeout");
        }
    }
    // SeqCst here and in the last settlement: one of the two sees the other's write.
    shared.closed.store(true, Ordering::SeqCst);
    let outstanding = shared.owned.load(Ordering::SeqCst);
    if outstanding > 0 {
        tracing::debug!(
            outstanding,
            "redis list subscription closed with deliveries outstanding; unsettled ones return after the visibility timeout"
        );
        return;
    }
    shared.unregister().await;
}

impl Shared {
    /// A handle on the subscription's command connection.
    fn manager(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Gives back what a read whose reply was lost moved into the processing lists.
    async fn reconcile(&self) {
        for topic in &self.topics {
            let held = topic.held.load(Ordering::Acquire);
            let result = scripts::LIST_RECONCILE
                .key(&topic.processing)
                .key(&topic.name)
                .arg(held)
                .invoke_async::<i64>(&mut self.manager())
                .await;
            match result {
                Ok(0) => {}
                Ok(moved) => {
                    tracing::info!(topic = %topic.name, moved, "gave back items a failed redis list read had moved")
                }
                Err(err) => {
                    tracing::debug!(error = %err, "checking a redis processing list after a failed read failed; it is checked again when the subscription closes")
                }
            }
        }
    }

    /// Gives the rest of the processing lists back (an item a failed read may have left
    /// there), then removes the consumer's registration and heartbeat. Idempotent.
    async fn unregister(&self) {
        for topic in &self.topics {
            let result = scripts::LIST_RECOVER
                .key(&self.heartbeat)
                .key(&topic.processing)
                .key(&topic.name)
                .key(&topic.registry)
                .arg(&self.consumer)
                .arg("force")
                .invoke_async::<i64>(&mut self.manager())
                .await;
            if let Err(err) = result {
                tracing::warn!(error = %err, "unregistering a redis list consumer failed");
            }
        }
        let _ = ::redis::cmd("DEL")
            .arg(&self.heartbeat)
            .query_async::<Value>(&mut self.manager())
            .await;
    }

    /// Moves due delayed items back and takes up to `max` items. Returns them and how long
    /// until the next delayed item is due.
    async fn take(
        &self,
        max: usize,
        turn: usize,
    ) -> ::redis::RedisResult<(Vec<Fetched>, Option<Duration>)> {
        let mut invocation = scripts::LIST_FETCH.prepare_invoke();
        for topic in &self.topics {
            invocation
                .key(&topic.name)
                .key(&topic.processing)
                .key(&topic.delayed);
        }
        invocation
            .arg(max)
            .arg(turn % self.topics.len())
            .arg(MAX_PROMOTE);
        let reply: Value = invocation.invoke_async(&mut self.manager()).await?;
        let mut parts = items_of(reply).into_iter();
        let taken = items_of(parts.next().unwrap_or(Value::Nil));
        let next_due = parts
            .next()
            .as_ref()
            .and_then(int_of)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis);
        let mut fetched = Vec::with_capacity(taken.len() / 2);
        let mut pairs = taken.into_iter();
        while let (Some(index), Some(item)) = (pairs.next(), pairs.next()) {
            let index = int_of(&index)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < self.topics.len());
            if let (Some(topic), Value::BulkString(raw)) = (index, item) {
                fetched.push(Fetched {
                    topic,
                    raw: Bytes::from(raw),
                });
            }
        }
        for item in &fetched {
            self.topics[item.topic].held.fetch_add(1, Ordering::AcqRel);
        }
        self.owned.fetch_add(fetched.len(), Ordering::AcqRel);
        Ok((fetched, next_due))
    }

    /// Refreshes the heartbeat and the registrations (a consumer wrongly taken for dead
    /// registers again).
    async fn beat(&self) -> ::redis::RedisResult<()> {
        let ttl =
            u64::try_from(self.inner.settings.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(&self.heartbeat)
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore();
        for topic in &self.topics {
            pipe.cmd("SADD")
                .arg(&topic.registry)
                .arg(&self.consumer)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.manager()).await
    }

    /// Gives the processing lists of this topic's dead consumers back to the list.
    async fn recover(&self) -> ::redis::RedisResult<()> {
        let mut manager = self.manager();
        for topic in &self.topics {
            let members: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg(&topic.registry)
                .query_async(&mut manager)
                .await?;
            let others: Vec<&String> = members.iter().filter(|m| **m != self.consumer).collect();
            if others.is_empty() {
                continue;
            }
            let mut pipe = ::redis::pipe();
            for member in &others {
                pipe.cmd("EXISTS").arg(keys::heartbeat(member));
            }
            let alive: Vec<i64> = pipe.query_async(&mut manager).await?;
            for (member, alive) in others.iter().zip(alive) {
                if alive != 0 {
                    continue;
                }
                let moved: i64 = scripts::LIST_RECOVER
                    .key(keys::heartbeat(member))
                    .key(keys::list_processing(&topic.name, member))
                    .key(&topic.name)
                    .key(&topic.registry)
                    .arg(member.as_str())
                    .arg("check")
                    .invoke_async(&mut manager)
                    .await?;
                if moved > 0 {
                    tracing::info!(topic = %topic.name, consumer = %member, moved, "gave the unacknowledged messages of a dead redis list consumer back");
                }
            }
        }
        Ok(())
    }

    fn delivery(self: &Arc<Self>, fetched: Fetched) -> Delivery {
        let topic = &self.topics[fetched.topic];
        let (message, attempt) = envelope::decode(&fetched.raw, &topic.name);
        let meta = DeliveryMeta {
            redelivered: attempt > 1,
            group: Some(self.group.clone()),
            ..Default::default()
        };
        let acker = ListAcker {
            shared: self.clone(),
            topic: fetched.topic,
            raw: fetched.raw,
            attempt,
        };
        Delivery::new(message, attempt, meta, Box::new(acker))
    }
}

/// Settles one list item on the consumer's processing list.
struct ListAcker {
    shared: Arc<Shared>,
    topic: usize,
    raw: Bytes,
    attempt: u32,
}

#[async_trait]
impl Acknowledger for ListAcker {
    async fn settle(self: Box<Self>, outcome: Settlement, message: Message) -> Result<()> {
        let topic = &self.shared.topics[self.topic];
        let (action, item, delay_ms): (&str, Vec<u8>, u64) = match outcome {
            Settlement::Ack | Settlement::Reject => ("ack", Vec::new(), 0),
            Settlement::Requeue { delay } => {
                let item = envelope::encode(&message, self.attempt.saturating_add(1));
                let ms = delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                if ms > 0 {
                    ("delay", item, ms)
                } else {
                    ("requeue", item, 0)
                }
            }
            Settlement::Release => ("requeue", self.raw.to_vec(), 0),
        };
        let mut manager = self.shared.manager();
        let result = if action == "ack" {
            // One command is enough, and cheaper for the server than a script.
            ::redis::cmd("LREM")
                .arg(&topic.processing)
                .arg(-1)
                .arg(&self.raw[..])
                .query_async::<i64>(&mut manager)
                .await
        } else {
            scripts::LIST_SETTLE
                .key(&topic.processing)
                .key(&topic.name)
                .key(&topic.delayed)
                .arg(&self.raw[..])
                .arg(action)
                .arg(item)
                .arg(delay_ms)
                .invoke_async::<i64>(&mut manager)
                .await
        };
        if action == "delay" {
            self.shared.wake.notify_one();
        }
        topic.held.fetch_sub(1, Ordering::AcqRel);
        // Settled or not, the item is no longer this delivery's: a failed settlement leaves it
        // in the processing list, from where it is delivered again.
        let last = self.shared.owned.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && self.shared.closed.load(Ordering::SeqCst) {
            self.shared.unregister().await;
        }
        result
            .map(|_| ())
            .map_err(|err| self.shared.inner.error(err))
    }
}
