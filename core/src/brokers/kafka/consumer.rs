//! A Kafka subscription: one thread polls a consumer-group member, hands messages to the
//! consumer runtime, redelivers nacked ones, commits processed offsets, and handles rebalances.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use super::codec::from_record;
use super::offsets::{OffsetTracker, TopicPartition};
use super::settings::KafkaSettings;
use crate::broker::{StartPosition, SubscriptionSpec};
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::{DeliverySink, Readiness, SinkBusy};

/// A fetched message waiting to be handed to the consumer.
struct Fetched {
    tp: TopicPartition,
    offset: i64,
    generation: u64,
    attempt: u32,
    message: Message,
}

/// A nacked or released message on its way back to the poll thread.
struct Returned {
    fetched: Fetched,
    due: Instant,
}

/// State shared by the poll thread, its rebalance callbacks and the deliveries' ackers.
struct Shared {
    tracker: OffsetTracker,
    group: String,
    start: StartPosition,
    /// Partitions already moved to the requested start (a seek applies once per partition).
    sought: Mutex<HashSet<TopicPartition>>,
    closing: AtomicBool,
    revoke_timeout: Duration,
}

/// The consumer context: runs rebalances so revoked partitions finish and commit their
/// in-flight work first, and newly assigned ones start where a replay asks.
struct GroupContext {
    shared: Arc<Shared>,
    ready: Readiness,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.apply_start(consumer, tpl);
                self.shared.tracker.assign(partitions_of(tpl));
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                let has_partitions = consumer
                    .assignment()
                    .map(|a| a.count() > 0)
                    .unwrap_or(false);
                self.ready.set(has_partitions);
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.ready.set(false);
                self.finish_revoked(consumer, &partitions_of(tpl));
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, group = %self.shared.group, "kafka rebalance failed");
                let all = partitions_of(tpl);
                self.finish_revoked(consumer, &all);
                consumer.unassign()
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, group = %self.shared.group, "applying a kafka rebalance failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(err) = result {
            tracing::warn!(error = %err, group = %self.shared.group, "kafka offset commit failed; it is retried with the next commit");
        }
    }
}

impl GroupContext {
    /// Waits (bounded) for the consumer to settle what it has of the revoked partitions, then
    /// commits their positions. What is not settled by then is delivered again to the new owner.
    fn finish_revoked(&self, consumer: &BaseConsumer<Self>, partitions: &[TopicPartition]) {
        if !self.shared.closing.load(Ordering::Acquire) {
            let deadline = Instant::now() + self.shared.revoke_timeout;
            while self.shared.tracker.with_consumer(partitions) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let positions = self.shared.tracker.revoke(partitions);
        commit(consumer, &positions, CommitMode::Sync);
    }

    /// Moves newly assigned partitions to the requested offset or timestamp (once each).
    fn apply_start(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut sought = self.shared.sought.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: Vec<TopicPartition> = partitions_of(tpl)
            .into_iter()
            .filter(|tp| !sought.contains(tp))
            .collect();
        if fresh.is_empty() {
            return;
        }
        match self.shared.start {
            StartPosition::Offset(offset) => {
                for (topic, partition) in &fresh {
                    let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(offset));
                }
            }
            StartPosition::Timestamp(ms) => {
                let mut query = TopicPartitionList::new();
                for (topic, partition) in &fresh {
                    let _ = query.add_partition_offset(topic, *partition, Offset::Offset(ms));
                }
                match consumer.offsets_for_times(query, Duration::from_secs(10)) {
                    Ok(found) => {
                        for element in found.elements() {
                            let offset = match element.offset() {
                                Offset::Offset(o) => Offset::Offset(o),
                                // No message at or after the time: start at the end.
                                _ => Offset::End,
                            };
                            let _ = tpl.set_partition_offset(
                                element.topic(),
                                element.partition(),
                                offset,
                            );
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "looking up offsets for a timestamp failed")
                    }
                }
            }
            StartPosition::Earliest | StartPosition::Latest => {}
        }
        sought.extend(fresh);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: &[(TopicPartition, i64)],
    mode: CommitMode,
) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(err) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %err, "kafka offset commit failed");
    }
}

/// Runs the subscription until it is closed. Called on a blocking thread.
pub(super) fn run(settings: KafkaSettings, spec: SubscriptionSpec, sink: DeliverySink) {
    let reset = if spec.start == StartPosition::Latest {
        "latest"
    } else {
        "earliest"
    };
    let shared = Arc::new(Shared {
        tracker: OffsetTracker::default(),
        group: spec.group.clone(),
        start: spec.start,
        sought: Mutex::new(HashSet::new()),
        closing: AtomicBool::new(false),
        revoke_timeout: settings.revoke_timeout,
    });
    let context = GroupContext {
        shared: shared.clone(),
        ready: sink.readiness(),
    };
    let consumer: BaseConsumer<GroupContext> = match settings
        .consumer(&spec.group, reset)
        .create_with_context(context)
    {
        Ok(consumer) => consumer,
        Err(err) => {
            sink.fail_now(kafka_error(err));
            return;
        }
    };
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    if let Err(err) = consumer.subscribe(&topics) {
        sink.fail_now(kafka_error(err));
        return;
    }
    let (returns_tx, returns) = mpsc::channel::<Returned>();
    let mut poller = Poller {
        consumer,
        shared,
        sink,
        returns_tx,
        returns,
        backlog: VecDeque::new(),
        retries: BinaryHeap::new(),
        retry_seq: 0,
        paused: false,
        max_backlog: spec.prefetch.max(1),
        commit_interval: settings.commit_interval,
    };
    poller.run();
}

struct Poller {
    consumer: BaseConsumer<GroupContext>,
    shared: Arc<Shared>,
    sink: DeliverySink,
    returns_tx: mpsc::Sender<Returned>,
    returns: mpsc::Receiver<Returned>,
    backlog: VecDeque<Fetched>,
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    retry_seq: u64,
    paused: bool,
    max_backlog: usize,
    commit_interval: Duration,
}

/// Retries waiting for their due time, by sequence number.
type RetrySlots = std::collections::HashMap<u64, Fetched>;

impl Poller {
    fn run(&mut self) {
        let mut waiting = RetrySlots::new();
        let mut last_commit = Instant::now();
        loop {
            if self.sink.is_cancelled() {
                break;
            }
            while let Ok(returned) = self.returns.try_recv() {
                self.retry_seq += 1;
                self.retries.push(Reverse((returned.due, self.retry_seq)));
                waiting.insert(self.retry_seq, returned.fetched);
            }
            let now = Instant::now();
            while let Some(Reverse((due, seq))) = self.retries.peek().copied() {
                if due > now {
                    break;
                }
                self.retries.pop();
                if let Some(fetched) = waiting.remove(&seq) {
                    self.backlog.push_back(fetched);
                }
            }
            if !self.hand_out() {
                break;
            }
            self.flow_control();
            if last_commit.elapsed() >= self.commit_interval {
                commit(
                    &self.consumer,
                    &self.shared.tracker.to_commit(),
                    CommitMode::Async,
                );
                last_commit = Instant::now();
            }
            let next_retry = self
                .retries
                .peek()
                .map(|Reverse((due, _))| due.saturating_duration_since(now));
            let mut wait = if self.backlog.is_empty() {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(5)
            };
            if let Some(next_retry) = next_retry {
                wait = wait.min(next_retry);
            }
            match self.consumer.poll(wait) {
                None => {}
                Some(Ok(record)) => {
                    let tp = (record.topic().to_owned(), record.partition());
                    let offset = record.offset();
                    if let Some(generation) = self.shared.tracker.fetched(&tp, offset) {
                        let (message, attempt) = from_record(&record);
                        self.backlog.push_back(Fetched {
                            tp,
                            offset,
                            generation,
                            attempt,
                            message,
                        });
                    }
                }
                Some(Err(err)) => {
                    if is_fatal(&err) {
                        self.sink.fail_now(kafka_error(err));
                        break;
                    }
                    tracing::warn!(error = %err, group = %self.shared.group, "kafka consumer error");
                }
            }
        }
        self.shared.closing.store(true, Ordering::Release);
        commit(
            &self.consumer,
            &self.shared.tracker.to_commit(),
            CommitMode::Sync,
        );
        // Dropping the consumer leaves the group; its revoke callback commits again without waiting.
    }

    /// Hands backlog messages to the consumer while it has room. False once it is gone.
    fn hand_out(&mut self) -> bool {
        while let Some(front) = self.backlog.front() {
            if !self.shared.tracker.is_current(&front.tp, front.generation) {
                self.backlog.pop_front();
                continue;
            }
            match self.sink.try_reserve() {
                Ok(permit) => {
                    let Some(fetched) = self.backlog.pop_front() else {
                        break;
                    };
                    if !self
                        .shared
                        .tracker
                        .handed_out(&fetched.tp, fetched.generation)
                    {
                        continue;
                    }
                    permit.send(self.delivery(fetched));
                }
                Err(SinkBusy::Full) => break,
                Err(SinkBusy::Closed) => return false,
            }
        }
        true
    }

    fn delivery(&self, fetched: Fetched) -> Delivery {
        let meta = DeliveryMeta {
            partition: Some(fetched.tp.1),
            offset: Some(fetched.offset),
            redelivered: fetched.attempt > 1,
            group: Some(self.shared.group.clone()),
            sequence: Some(format!("{}/{}", fetched.tp.0, fetched.tp.1)),
            ..Default::default()
        };
        let attempt = fetched.attempt;
        let acker = KafkaAcker {
            shared: self.shared.clone(),
            returns: self.returns_tx.clone(),
            tp: fetched.tp,
            offset: fetched.offset,
            generation: fetched.generation,
            attempt,
        };
        Delivery::new(fetched.message, attempt, meta, Box::new(acker))
    }

    /// Pauses fetching while the backlog is full, resumes when it drains.
    fn flow_control(&mut self) {
        let full = self.backlog.len() >= self.max_backlog;
        if full == self.paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if full {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => self.paused = full,
            Err(err) => tracing::warn!(error = %err, "pausing or resuming kafka partitions failed"),
        }
    }
}

fn is_fatal(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::Fatal
                | rdkafka::types::RDKafkaErrorCode::Authentication
        )
    )
}

pub(super) fn kafka_error(err: KafkaError) -> Error {
    Error::Broker {
        backend: "kafka",
        reason: err.to_string(),
    }
}

/// Settles one Kafka delivery: acks and rejects move the commit position; nacks and releases
/// go back to the poll thread to be delivered again.
struct KafkaAcker {
    shared: Arc<Shared>,
    returns: mpsc::Sender<Returned>,
    tp: TopicPartition,
    offset: i64,
    generation: u64,
    attempt: u32,
}

impl KafkaAcker {
    fn apply(self, outcome: Settlement, message: Message) {
        let (delay, attempt) = match outcome {
            Settlement::Ack | Settlement::Reject => {
                self.shared
                    .tracker
                    .settled(&self.tp, self.generation, self.offset);
                return;
            }
            Settlement::Requeue { delay } => (delay.unwrap_or_default(), self.attempt + 1),
            Settlement::Release => (Duration::ZERO, self.attempt),
        };
        if !self.shared.tracker.returned(&self.tp, self.generation) {
            return; // the partition moved on; its new owner reads the message again
        }
        let fetched = Fetched {
            tp: self.tp,
            offset: self.offset,
            generation: self.generation,
            attempt,
            message,
        };
        // If the poll thread is gone the message stays uncommitted and comes back later.
        let _ = self.returns.send(Returned {
            fetched,
            due: Instant::now() + delay,
        });
    }
}

#[async_trait]
impl Acknowledger for KafkaAcker {
    async fn settle(self: Box<Self>, outcome: Settlement, message: Message) -> Result<()> {
        self.apply(outcome, message);
        Ok(())
    }

    fn release_on_drop(self: Box<Self>, message: Message) {
        self.apply(Settlement::Release, message);
    }
}
