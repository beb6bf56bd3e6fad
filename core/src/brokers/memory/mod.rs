//! The embedded in-process broker: topics with a retained log, consumer groups, fan-out,
//! acknowledgements with redelivery, delayed redelivery, per-key ordering, replay, and
//! bounded topics whose publishers wait for consumers (nothing is dropped silently).
//!
//! Guarantees: at-least-once within the process. A message stays until every group reading
//! its topic has acknowledged or rejected it; beyond that the newest `capacity` messages per
//! topic are kept for replay. A topic no group reads yet keeps everything up to `capacity`,
//! then publishers wait for a consumer. Nothing survives the process.

mod admin;
mod log;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use log::GroupStats;
use log::Topic;

use crate::broker::{
    Broker, PublishReceipt, Publisher, Subscriber, SubscriptionSpec, publish_each,
};
use crate::capabilities::Capabilities;
use crate::config::MemoryConfig;
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::{Message, now_ms};
use crate::subscription::{DeliverySink, Subscription};

const CAPABILITIES: Capabilities = Capabilities {
    persistent: false,
    consumer_groups: true,
    fan_out: true,
    ordering_per_key: true,
    acknowledgements: true,
    redelivery: true,
    delayed_redelivery: true,
    replay: true,
    offset_replay: true,
    native_headers: true,
    pattern_subscriptions: false,
    ordered_batches: false,
};

/// The embedded broker. Cloning gives another handle on the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    state: Mutex<State>,
    /// Publishers waiting for room.
    space: Notify,
    closed: AtomicBool,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    /// One wake-up signal per consumer group, shared by its members.
    signals: HashMap<String, Arc<Notify>>,
}

impl MemoryBroker {
    /// A new, private broker.
    pub fn new(config: MemoryConfig) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                capacity: config.capacity,
                state: Mutex::new(State::default()),
                space: Notify::new(),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The process-wide broker named `config.name`: every `memory://NAME` URL in the process
    /// reaches the same one (the first caller's capacity applies). A closed one is replaced.
    pub fn shared(config: MemoryConfig) -> Self {
        static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut registry = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let existing = registry
            .get(&config.name)
            .filter(|b| !b.inner.closed.load(Ordering::Acquire));
        if let Some(broker) = existing {
            return broker.clone();
        }
        let broker = MemoryBroker::new(config.clone());
        registry.insert(config.name, broker.clone());
        broker
    }

    /// Counters of `group` on `topic`, if that group reads that topic.
    pub fn group_stats(&self, topic: &str, group: &str) -> Option<GroupStats> {
        self.inner.lock().topics.get(topic)?.group_stats(group)
    }

    /// How many messages `topic` retains now.
    pub fn retained(&self, topic: &str) -> usize {
        self.inner
            .lock()
            .topics
            .get(topic)
            .map_or(0, Topic::retained)
    }

    /// The offset the next message on `topic` gets (the number ever published to it).
    pub fn next_offset(&self, topic: &str) -> u64 {
        self.inner
            .lock()
            .topics
            .get(topic)
            .map_or(0, Topic::next_offset)
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("memory broker"))
        } else {
            Ok(())
        }
    }

    /// Appends one message, waiting while its topic is full.
    async fn append(&self, message: Message) -> Result<PublishReceipt> {
        message.validate()?;
        let id = message.id.clone();
        loop {
            self.ensure_open()?;
            let mut space = pin!(self.inner.space.notified());
            space.as_mut().enable();
            {
                let mut state = self.inner.lock();
                let topic = state.topics.entry(message.topic.clone()).or_default();
                if topic.make_room(self.inner.capacity) {
                    let offset = topic.append(message, now_ms());
                    let groups: Vec<String> = topic.group_names().cloned().collect();
                    state.wake(groups.iter());
                    return Ok(PublishReceipt {
                        id,
                        partition: Some(0),
                        offset: Some(offset as i64),
                        ..Default::default()
                    });
                }
            }
            tokio::select! {
                _ = space => {}
                _ = self.inner.shutdown.cancelled() => return Err(Error::Closed("memory broker")),
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation is a single
        // step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(
        &self,
        topic: &str,
        group: &str,
        offset: u64,
        key: Option<&str>,
        attempt: u32,
        outcome: Settlement,
    ) {
        let mut state = self.lock();
        let Some(log) = state.topics.get_mut(topic) else {
            return;
        };
        let wake = log.settle(group, offset, key, attempt, outcome, Instant::now());
        if wake {
            state.wake(std::iter::once(&group.to_owned()));
        }
        drop(state);
        if matches!(outcome, Settlement::Ack | Settlement::Reject) {
            self.space.notify_waiters();
        }
    }
}

impl State {
    fn wake<'a>(&self, groups: impl Iterator<Item = &'a String>) {
        for group in groups {
            if let Some(signal) = self.signals.get(group) {
                signal.notify_waiters();
            }
        }
    }
}

#[async_trait]
impl Publisher for MemoryBroker {
    async fn publish(&self, message: Message) -> Result<PublishReceipt> {
        self.append(message).await
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishReceipt>> {
        publish_each(self, messages).await
    }

    async fn flush(&self, _timeout: Duration) -> Result<()> {
        self.ensure_open()
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        Ok(())
    }
}

#[async_trait]
impl Subscriber for MemoryBroker {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Subscription> {
        spec.validate()?;
        self.ensure_open()?;
        let signal = {
            let mut state = self.inner.lock();
            for topic in &spec.topics {
                state
                    .topics
                    .entry(topic.clone())
                    .or_default()
                    .join(&spec.group, spec.start);
            }
            state.signals.entry(spec.group.clone()).or_default().clone()
        };
        let broker = self.clone();
        Ok(Subscription::spawn(spec.prefetch, move |sink| {
            fetch_loop(broker, spec, signal, sink)
        }))
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn dead_letter_store(&self) -> Result<Box<dyn crate::dead_letters::DeadLetterStore>> {
        admin::store(self)
    }
}

/// Hands the group's messages to one subscriber until the subscription or broker closes.
async fn fetch_loop(
    broker: MemoryBroker,
    spec: SubscriptionSpec,
    signal: Arc<Notify>,
    sink: DeliverySink,
) {
    let group: Arc<str> = Arc::from(spec.group.as_str());
    let mut turn = 0usize;
    sink.set_ready(true);
    loop {
        let mut woken = pin!(signal.notified());
        woken.as_mut().enable();
        let mut next_due = None;
        let taken = {
            let mut state = broker.inner.lock();
            let now = Instant::now();
            let count = spec.topics.len();
            (0..count).find_map(|i| {
                let topic = &spec.topics[(turn + i) % count];
                let taken = state
                    .topics
                    .get_mut(topic)?
                    .take(&group, now, &mut next_due)?;
                Some((topic.clone(), taken))
            })
        };
        match taken {
            Some((topic, taken)) => {
                turn = turn.wrapping_add(1);
                let entry = taken.entry;
                let meta = DeliveryMeta {
                    partition: Some(0),
                    offset: Some(entry.offset as i64),
                    redelivered: taken.attempt > 1,
                    group: Some(group.to_string()),
                    ..Default::default()
                };
                let acker = MemoryAcker {
                    inner: broker.inner.clone(),
                    topic,
                    group: group.clone(),
                    offset: entry.offset,
                    key: entry.message.key.clone(),
                    attempt: taken.attempt,
                };
                let delivery =
                    Delivery::new(entry.message.clone(), taken.attempt, meta, Box::new(acker));
                if let Err(unsent) = sink.send(delivery).await {
                    drop(unsent); // released by its Drop
                    return;
                }
            }
            None => {
                let sleep = async {
                    match next_due {
                        Some(due) => tokio::time::sleep_until(due.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = woken => {}
                    _ = sleep => {}
                    _ = sink.cancelled() => return,
                    _ = broker.inner.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Settles one memory delivery.
struct MemoryAcker {
    inner: Arc<Inner>,
    topic: String,
    group: Arc<str>,
    offset: u64,
    key: Option<String>,
    attempt: u32,
}

impl MemoryAcker {
    fn apply(&self, outcome: Settlement) {
        self.inner.settle(
            &self.topic,
            &self.group,
            self.offset,
            self.key.as_deref(),
            self.attempt,
            outcome,
        );
    }
}

#[async_trait]
impl Acknowledger for MemoryAcker {
    async fn settle(self: Box<Self>, outcome: Settlement, _message: Message) -> Result<()> {
        self.apply(outcome);
        Ok(())
    }

    fn release_on_drop(self: Box<Self>, _message: Message) {
        self.apply(Settlement::Release);
    }
}
