//! A Kafka subscription: one thread polls a consumer-group member, hands messages to the
//! consumer runtime, redelivers nacked ones, commits processed offsets, and handles rebalances.
//!
//! The member reads the subscribed topics plus its group's retry topic (see [`super::retry`]).
//! A delivery nacked with a delay is copied there by its acknowledger, and its offset settled
//! once the copy is acknowledged. Copies read back wait in memory until due, uncommitted (a
//! crash reads them again); past [`MIN_HELD_RETRIES`] (or the prefetch, if larger) waiting
//! copies, the retry topic's partitions are paused until half of them went out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client_errors::ErrorReports;
use super::codec::from_record;
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::KafkaProducer;
use super::retry::{self, Origin};
use super::settings::KafkaSettings;
use crate::broker::{StartPosition, SubscriptionSpec};
use crate::delivery::{Acknowledger, Delivery, DeliveryMeta, Settlement};
use crate::error::{Error, Result};
use crate::message::{Message, now_ms};
use crate::subscription::{DeliverySink, Readiness, SinkBusy};
use crate::wire::HEADER_RETRY_DUE;

/// Copies read back from the retry topic that may wait in memory for their due time before the
/// retry topic is paused (the prefetch, when it is larger).
pub(super) const MIN_HELD_RETRIES: usize = 1000;

/// A fetched message waiting to be handed to the consumer.
struct Fetched {
    /// Where it was read from: a subscribed topic or the retry topic.
    tp: TopicPartition,
    offset: i64,
    generation: u64,
    attempt: u32,
    message: Message,
    /// For a message read from the retry topic, its original record.
    origin: Option<Origin>,
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
    /// The group's retry topic, read along with the subscribed topics.
    retry_topic: String,
    /// Writes copies of messages nacked with a delay to the retry topic.
    producer: KafkaProducer,
    /// Bumped at each rebalance, so the poll thread re-applies its pauses and forgets held
    /// messages of partitions it lost.
    assignments: AtomicU64,
    /// Set when a settlement should be committed without waiting for the commit interval.
    commit_soon: AtomicBool,
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
    errors: ErrorReports,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report(&error, reason);
    }
}

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
                self.start_retry_partitions(consumer, tpl);
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
        self.shared.assignments.fetch_add(1, Ordering::AcqRel);
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
        // A replay moves the subscribed topics; the retry topic resumes where the group was.
        let fresh: Vec<TopicPartition> = partitions_of(tpl)
            .into_iter()
            .filter(|tp| !sought.contains(tp) && tp.0 != self.shared.retry_topic)
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

    /// A group reading from `Latest` still reads its retry topic from the start where it has
    /// committed nothing there yet: copies written before a crash must not be skipped.
    fn start_retry_partitions(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if self.shared.start != StartPosition::Latest {
            return; // the others start new groups at the earliest offset already
        }
        let mut query = TopicPartitionList::new();
        for (topic, partition) in partitions_of(tpl) {
            if topic == self.shared.retry_topic {
                query.add_partition(&topic, partition);
            }
        }
        if query.count() == 0 {
            return;
        }
        match consumer.committed_offsets(query, Duration::from_secs(10)) {
            Ok(found) => {
                for element in found.elements() {
                    if !matches!(element.offset(), Offset::Offset(_)) {
                        let _ = tpl.set_partition_offset(
                            element.topic(),
                            element.partition(),
                            Offset::Beginning,
                        );
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, topic = %self.shared.retry_topic, "looking up the retry topic's committed offsets failed")
            }
        }
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

/// Runs the subscription until it is closed. Called on a blocking thread. Messages nacked with
/// a delay are written to `retry_topic` (which must exist) with `producer`.
pub(super) fn run(
    settings: KafkaSettings,
    spec: SubscriptionSpec,
    sink: DeliverySink,
    producer: KafkaProducer,
    retry_topic: String,
) {
    let reset = if spec.start == StartPosition::Latest {
        "latest"
    } else {
        "earliest"
    };
    let shared = Arc::new(Shared {
        tracker: OffsetTracker::default(),
        group: spec.group.clone(),
        retry_topic,
        producer,
        assignments: AtomicU64::new(0),
        commit_soon: AtomicBool::new(false),
        start: spec.start,
        sought: Mutex::new(HashSet::new()),
        closing: AtomicBool::new(false),
        revoke_timeout: settings.revoke_timeout,
    });
    let context = GroupContext {
        shared: shared.clone(),
        ready: sink.readiness(),
        errors: ErrorReports::new(format!("consumer of group {:?}", spec.group)),
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
    let mut topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    topics.push(&shared.retry_topic);
    if let Err(err) = consumer.subscribe(&topics) {
        sink.fail_now(kafka_error(err));
        return;
    }
    let patterns = spec.topics.iter().any(|t| t.starts_with('^'));
    let (returns_tx, returns) = mpsc::channel::<Returned>();
    let mut poller = Poller {
        consumer,
        shared,
        sink,
        returns_tx,
        returns,
        backlog: VecDeque::new(),
        retries: BinaryHeap::new(),
        waiting: HashMap::new(),
        retry_seq: 0,
        held_retries: 0,
        max_held_retries: spec.prefetch.max(MIN_HELD_RETRIES),
        retries_full: false,
        paused_topics: false,
        paused_retries: false,
        seen_assignments: 0,
        listed_topics: patterns.then(|| spec.topics.iter().cloned().collect()),
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
    /// Due times of the messages waiting in `waiting`, by sequence number.
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Messages waiting for their due time, by sequence number, each with whether it was read
    /// from the retry topic (and so counts in `held_retries`).
    waiting: HashMap<u64, (Fetched, bool)>,
    retry_seq: u64,
    /// Copies read from the retry topic waiting in `waiting`.
    held_retries: usize,
    max_held_retries: usize,
    /// Too many copies are held: the retry topic stays paused until half went out.
    retries_full: bool,
    paused_topics: bool,
    paused_retries: bool,
    /// The rebalance count the pauses were last applied to.
    seen_assignments: u64,
    /// The topics listed in the spec, when some are patterns (to tell other groups' retry
    /// topics a pattern matches from subscribed topics).
    listed_topics: Option<HashSet<String>>,
    max_backlog: usize,
    commit_interval: Duration,
}

/// What one poll gave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// A record (kept, or skipped as not for this consumer).
    Message,
    /// Nothing, or an error that is not fatal (logged).
    Nothing,
    /// A fatal error: the subscription failed.
    Fatal,
}

/// The most records taken in one turn of the poll loop.
const BURST: usize = 256;

impl Poller {
    fn run(&mut self) {
        const POLL_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
        let mut last_commit = Instant::now();
        let mut last_poll = Instant::now();
        loop {
            if self.sink.is_cancelled() {
                break;
            }
            while let Ok(returned) = self.returns.try_recv() {
                self.hold(returned.fetched, returned.due, false);
            }
            let now = Instant::now();
            while let Some(Reverse((due, seq))) = self.retries.peek().copied() {
                if due > now {
                    break;
                }
                self.retries.pop();
                if let Some((fetched, counted)) = self.waiting.remove(&seq) {
                    if counted {
                        self.held_retries -= 1;
                    }
                    self.backlog.push_back(fetched);
                }
            }
            if !self.hand_out() {
                break;
            }
            self.flow_control();
            let soon = self.shared.commit_soon.swap(false, Ordering::AcqRel);
            if soon || last_commit.elapsed() >= self.commit_interval {
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
            if self.backlog.len() >= self.max_backlog {
                // The consumer is behind: leave what librdkafka fetched ahead in its queue and
                // wait for room (woken as soon as there is some; the next turn hands out),
                // polling (rebalances, liveness) at least once a second.
                if self.sink.wait_for_room(wait) == Err(SinkBusy::Closed) {
                    break;
                }
                if last_poll.elapsed() < POLL_AT_LEAST_EVERY {
                    continue;
                }
            }
            last_poll = Instant::now();
            // One poll that may wait, then what else librdkafka has ready without waiting, so
            // a burst is handed out together (one wake-up of the consumer runtime, not one per
            // message) and the loop's own work is done once per burst.
            let mut polled = self.take(wait);
            let mut burst = 1;
            while polled == Polled::Message
                && burst < BURST
                && self.backlog.len() < self.max_backlog
            {
                polled = self.take(Duration::ZERO);
                burst += 1;
            }
            if polled == Polled::Fatal {
                break;
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

    /// Polls once, waiting up to `wait`, and keeps what came.
    fn take(&mut self, wait: Duration) -> Polled {
        match self.consumer.poll(wait) {
            None => Polled::Nothing,
            Some(Ok(record)) => {
                match self.take_in(&record) {
                    Some((fetched, Some(due))) => self.hold(fetched, due, true),
                    Some((fetched, None)) => self.backlog.push_back(fetched),
                    None => {}
                }
                Polled::Message
            }
            Some(Err(err)) => {
                if is_fatal(&err) {
                    self.sink.fail_now(kafka_error(err));
                    return Polled::Fatal;
                }
                // Through the client's reports: an error event's copy of what its callback
                // (`GroupContext::error`) reported is not logged twice.
                self.consumer.context().errors.report(&err, "");
                Polled::Nothing
            }
        }
    }

    /// Takes in a polled record, with the time to hold it until when it is a copy from the
    /// retry topic that is not due yet. `None` when it is not for this consumer: its partition
    /// was revoked, or it is another group's retry copy that a pattern matched.
    fn take_in<M: rdkafka::Message>(&self, record: &M) -> Option<(Fetched, Option<Instant>)> {
        let tp = (record.topic().to_owned(), record.partition());
        let offset = record.offset();
        let generation = self.shared.tracker.fetched(&tp, offset)?;
        let from_retry_topic = tp.0 == self.shared.retry_topic;
        if !from_retry_topic && self.is_foreign_retry(record) {
            self.shared.tracker.skipped(&tp, generation, offset);
            return None;
        }
        let (mut message, attempt) = from_record(record);
        let mut due = None;
        let mut origin = None;
        if from_retry_topic {
            let retried = retry::restore(&mut message);
            // A copy that does not name its original stands for itself.
            origin = Some(retried.origin.unwrap_or(Origin {
                partition: tp.1,
                offset,
            }));
            let wait = retried.due_ms.saturating_sub(now_ms());
            if wait > 0 {
                due = Some(Instant::now() + Duration::from_millis(wait as u64));
            }
        }
        let fetched = Fetched {
            tp,
            offset,
            generation,
            attempt,
            message,
            origin,
        };
        Some((fetched, due))
    }

    /// True for a copy in another group's retry topic, read because a pattern matched it.
    fn is_foreign_retry<M: rdkafka::Message>(&self, record: &M) -> bool {
        let Some(listed) = &self.listed_topics else {
            return false;
        };
        !listed.contains(record.topic())
            && record
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == HEADER_RETRY_DUE))
    }

    /// Keeps `fetched` until `due`.
    fn hold(&mut self, fetched: Fetched, due: Instant, from_retry_topic: bool) {
        self.retry_seq += 1;
        self.retries.push(Reverse((due, self.retry_seq)));
        self.waiting
            .insert(self.retry_seq, (fetched, from_retry_topic));
        if from_retry_topic {
            self.held_retries += 1;
        }
    }

    /// Forgets held messages of partitions this consumer no longer owns (their new owner reads
    /// them again from the last commit).
    fn drop_stale(&mut self) {
        let tracker = &self.shared.tracker;
        let mut dropped = 0;
        self.waiting.retain(|_, (fetched, counted)| {
            let current = tracker.is_current(&fetched.tp, fetched.generation);
            if !current && *counted {
                dropped += 1;
            }
            current
        });
        self.held_retries -= dropped;
    }

    /// Hands backlog messages to the consumer while it has room. False once it is gone.
    fn hand_out(&mut self) -> bool {
        while !self.backlog.is_empty() {
            match self.sink.try_reserve() {
                Ok(permit) => match next_current(&mut self.backlog, &self.shared.tracker) {
                    Some(fetched) => permit.send(self.delivery(fetched)),
                    None => break,
                },
                Err(SinkBusy::Full) => break,
                Err(SinkBusy::Closed) => return false,
            }
        }
        true
    }

    /// The delivery of `fetched`. A message from the retry topic reports its original
    /// partition and offset, and has no ordering lane (retries are out of order anyway).
    fn delivery(&self, fetched: Fetched) -> Delivery {
        let (partition, offset, sequence) = match fetched.origin {
            Some(origin) => (origin.partition, origin.offset, None),
            None => (
                fetched.tp.1,
                fetched.offset,
                Some(format!("{}/{}", fetched.tp.0, fetched.tp.1)),
            ),
        };
        let meta = DeliveryMeta {
            partition: Some(partition),
            offset: Some(offset),
            redelivered: fetched.attempt > 1,
            group: Some(self.shared.group.clone()),
            sequence,
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
            origin: fetched.origin,
        };
        Delivery::new(fetched.message, attempt, meta, Box::new(acker))
    }

    /// Pauses fetching while the backlog is full, resumes when it drains; pauses the retry
    /// topic also while too many of its copies wait for their due time. Pauses are applied
    /// again after each assignment (newly assigned partitions are not paused).
    fn flow_control(&mut self) {
        let assignments = self.shared.assignments.load(Ordering::Acquire);
        let reassigned = assignments != self.seen_assignments;
        if reassigned {
            self.drop_stale();
        }
        self.retries_full = if self.retries_full {
            self.held_retries > self.max_held_retries / 2
        } else {
            self.held_retries >= self.max_held_retries
        };
        // A full backlog only slows polling down (see `run`): librdkafka keeps what it fetched
        // ahead. Pausing drops that and resuming has to fetch it again, so it is the safety net
        // for a backlog that keeps growing, with hysteresis.
        let topics = if self.paused_topics {
            self.backlog.len() > self.max_backlog
        } else {
            self.backlog.len() >= self.max_backlog * 2
        };
        let retries = topics || self.retries_full;
        if !reassigned && topics == self.paused_topics && retries == self.paused_retries {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let (mut subscribed, mut retry) = (TopicPartitionList::new(), TopicPartitionList::new());
        for element in assignment.elements() {
            let list = if element.topic() == self.shared.retry_topic {
                &mut retry
            } else {
                &mut subscribed
            };
            list.add_partition(element.topic(), element.partition());
        }
        let mut applied = true;
        if reassigned || topics != self.paused_topics {
            match self.set_paused(&subscribed, topics) {
                true => self.paused_topics = topics,
                false => applied = false,
            }
        }
        if reassigned || retries != self.paused_retries {
            match self.set_paused(&retry, retries) {
                true => self.paused_retries = retries,
                false => applied = false,
            }
        }
        if applied {
            self.seen_assignments = assignments;
        }
    }

    /// Pauses or resumes `partitions`; false when that failed.
    fn set_paused(&self, partitions: &TopicPartitionList, paused: bool) -> bool {
        if partitions.count() == 0 {
            return true;
        }
        let result = if paused {
            self.consumer.pause(partitions)
        } else {
            self.consumer.resume(partitions)
        };
        match result {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "pausing or resuming kafka partitions failed");
                false
            }
        }
    }
}

/// Takes the next backlog message to hand out, dropping those of partitions this consumer no
/// longer owns.
fn next_current(backlog: &mut VecDeque<Fetched>, tracker: &OffsetTracker) -> Option<Fetched> {
    while let Some(fetched) = backlog.pop_front() {
        if tracker.is_current(&fetched.tp, fetched.generation)
            && tracker.handed_out(&fetched.tp, fetched.generation)
        {
            return Some(fetched);
        }
    }
    None
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

/// An engine error for a client error: the broker being unreachable (transport failures, all
/// brokers down, a message that timed out waiting for one) is a connection error, so callers
/// (the failover broker, retrying publishers) can tell an outage from a refusal.
pub(super) fn kafka_error(err: KafkaError) -> Error {
    use rdkafka::types::RDKafkaErrorCode as Code;
    if matches!(err, KafkaError::Canceled) {
        // A report that never came: the producer went away with the message.
        return Error::Closed("kafka producer");
    }
    match err.rdkafka_error_code() {
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::MessageTimedOut
            | Code::Resolve
            | Code::NetworkException
            | Code::RequestTimedOut
            | Code::OperationTimedOut,
        ) => Error::Connection {
            target: "kafka".to_owned(),
            reason: err.to_string(),
        },
        _ => Error::Broker {
            backend: "kafka",
            reason: err.to_string(),
        },
    }
}

/// Settles one Kafka delivery: acks and rejects move the commit position; nacks with a delay
/// are copied to the retry topic and then move it too; other nacks, releases, and nacks whose
/// copy could not be written go back to the poll thread to be delivered again.
struct KafkaAcker {
    shared: Arc<Shared>,
    returns: mpsc::Sender<Returned>,
    /// Where the delivered record was read from (a subscribed topic or the retry topic).
    tp: TopicPartition,
    offset: i64,
    generation: u64,
    attempt: u32,
    /// The original record, for a message read from the retry topic.
    origin: Option<Origin>,
}

impl KafkaAcker {
    /// Writes the next attempt of `message` to the retry topic, due after `delay`, and waits
    /// for the broker's acknowledgement.
    async fn to_retry_topic(&self, message: &Message, delay: Duration) -> Result<()> {
        // Rounded up, so the copy is never due before `delay` has passed (`now_ms` truncates).
        let delay_ms = i64::try_from(delay.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
        let due_ms = now_ms().saturating_add(delay_ms).saturating_add(1);
        let origin = self.origin.unwrap_or(Origin {
            partition: self.tp.1,
            offset: self.offset,
        });
        let topic = &self.shared.retry_topic;
        let attempt = self.attempt.saturating_add(1);
        let delivered = self
            .shared
            .producer
            .deliver(|ticket| retry::retry_record(message, attempt, topic, due_ms, origin, ticket))
            .await;
        delivered.map(drop).map_err(kafka_error)
    }

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
            origin: self.origin,
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
        if let Settlement::Requeue { delay: Some(delay) } = outcome
            && !delay.is_zero()
        {
            if !self.shared.tracker.is_current(&self.tp, self.generation) {
                return Ok(()); // the partition moved on; its new owner reads the message again
            }
            // Boxed: the produce future is large, and every settle would otherwise copy it.
            match Box::pin(self.to_retry_topic(&message, delay)).await {
                Ok(()) => {
                    self.shared
                        .tracker
                        .settled(&self.tp, self.generation, self.offset);
                    self.shared.commit_soon.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(err) => tracing::warn!(
                    error = %err, id = %message.id, topic = %self.shared.retry_topic,
                    "writing a retry to the retry topic failed; it is redelivered from memory, and its offset stays uncommitted until then"
                ),
            }
        }
        self.apply(outcome, message);
        Ok(())
    }

    fn release_on_drop(self: Box<Self>, message: Message) {
        self.apply(Settlement::Release, message);
    }
}
