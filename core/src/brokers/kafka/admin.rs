//! Dead letters on Kafka. A dead-letter topic is a log: the consumer group
//! `polybus.dlq.<dlq>` marks how far each partition was redriven. The letters waiting in a
//! partition run from that group's committed offset (the low watermark when it has none, or
//! when retention deleted past it) to the high watermark. Listing reads them without
//! committing; a redrive commits past each letter once its republish was acknowledged, and
//! stops reading a partition at a letter it leaves in place.
//!
//! The group never joins (partitions are assigned, not subscribed), so its commits are those
//! of a "simple" consumer: another redrive of the same topic running at the same time may
//! republish letters twice, never lose one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::KafkaBroker;
use super::codec::from_record;
use super::settings::KafkaSettings;
use crate::dead_letters::{DeadLetterCursor, DeadLetterStore, StoredLetter, cursor_group};
use crate::error::{Error, Result};
use crate::message::Message;

/// Bound of each metadata, watermark and offset request, and of waiting for records.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most records one read hands to a redrive at once.
const BATCH: usize = 100;

/// The dead-letter store of `broker`.
pub(super) fn store(broker: &KafkaBroker) -> Result<Box<dyn DeadLetterStore>> {
    broker.ensure_open()?;
    Ok(Box::new(KafkaDeadLetters {
        settings: broker.inner.settings.clone(),
    }))
}

fn error(err: KafkaError) -> Error {
    Error::Broker {
        backend: "kafka",
        reason: err.to_string(),
    }
}

/// Runs blocking librdkafka calls off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::Broker {
            backend: "kafka",
            reason: format!("a dead-letter task failed: {err}"),
        })?
}

/// The waiting range of one partition: from `next` (inclusive) to `end` (exclusive).
#[derive(Clone, Copy, Debug)]
struct Range {
    next: i64,
    end: i64,
    /// Not read further (a letter was left in place).
    stopped: bool,
}

impl Range {
    fn done(&self) -> bool {
        self.stopped || self.next >= self.end
    }
}

/// A record read from a dead-letter topic.
struct Read {
    partition: i32,
    offset: i64,
    message: Message,
}

/// A consumer in the topic's cursor group, with nothing assigned yet.
fn cursor_consumer(settings: &KafkaSettings, dlq: &str) -> Result<BaseConsumer> {
    settings
        .consumer(&cursor_group(dlq), "earliest")
        .create()
        .map_err(error)
}

/// The waiting range of every partition of `dlq` (none when the topic does not exist).
fn waiting(consumer: &BaseConsumer, dlq: &str) -> Result<HashMap<i32, Range>> {
    let metadata = consumer.fetch_metadata(Some(dlq), TIMEOUT).map_err(error)?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == dlq) else {
        return Ok(HashMap::new());
    };
    match topic.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => return Ok(HashMap::new()),
        Some(code) => {
            return Err(Error::Broker {
                backend: "kafka",
                reason: format!("reading the metadata of {dlq:?} failed: {code:?}"),
            });
        }
    }
    let mut query = TopicPartitionList::new();
    for partition in topic.partitions() {
        query.add_partition(dlq, partition.id());
    }
    let committed = consumer.committed_offsets(query, TIMEOUT).map_err(error)?;
    let mut ranges = HashMap::new();
    for element in committed.elements() {
        let partition = element.partition();
        let (low, high) = consumer
            .fetch_watermarks(dlq, partition, TIMEOUT)
            .map_err(error)?;
        let next = match element.offset() {
            Offset::Offset(offset) => offset.max(low),
            _ => low,
        };
        ranges.insert(
            partition,
            Range {
                next,
                end: high,
                stopped: false,
            },
        );
    }
    Ok(ranges)
}

/// Assigns the partitions with waiting letters at their first waiting offset.
fn assign(consumer: &BaseConsumer, dlq: &str, ranges: &HashMap<i32, Range>) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (partition, range) in ranges {
        if !range.done() {
            tpl.add_partition_offset(dlq, *partition, Offset::Offset(range.next))
                .map_err(error)?;
        }
    }
    consumer.assign(&tpl).map_err(error)
}

/// Reads up to `max` records (and at most `per_partition` from each partition) from the
/// unfinished ranges, advancing them. Fails when nothing arrives for [`TIMEOUT`] while
/// letters are known to wait.
fn read(
    consumer: &BaseConsumer,
    ranges: &mut HashMap<i32, Range>,
    max: usize,
    per_partition: usize,
) -> Result<Vec<Read>> {
    let mut reads = Vec::new();
    let mut taken: HashMap<i32, usize> = HashMap::new();
    let mut last_progress = Instant::now();
    let open = |ranges: &HashMap<i32, Range>, taken: &HashMap<i32, usize>| {
        ranges
            .iter()
            .any(|(p, r)| !r.done() && taken.get(p).copied().unwrap_or(0) < per_partition)
    };
    while reads.len() < max && open(ranges, &taken) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(record)) => {
                let partition = record.partition();
                let offset = record.offset();
                let Some(range) = ranges.get_mut(&partition) else {
                    continue;
                };
                let count = taken.entry(partition).or_default();
                if range.done() || offset < range.next || *count >= per_partition {
                    continue;
                }
                range.next = offset + 1;
                if offset >= range.end {
                    continue;
                }
                *count += 1;
                last_progress = Instant::now();
                reads.push(Read {
                    partition,
                    offset,
                    message: from_record(&record).0,
                });
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "kafka error while reading dead letters");
            }
            None => {
                // Transaction markers and compaction leave offsets without a record: the
                // consumer's position tells when a partition was read to its end.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let (Offset::Offset(position), Some(range)) =
                            (element.offset(), ranges.get_mut(&element.partition()))
                            && position > range.next
                            && taken.get(&element.partition()).copied().unwrap_or(0) < per_partition
                        {
                            range.next = position.min(range.end);
                            last_progress = Instant::now();
                        }
                    }
                }
                if last_progress.elapsed() > TIMEOUT {
                    return Err(Error::Timeout {
                        operation: "reading kafka dead letters".into(),
                        after: TIMEOUT,
                    });
                }
            }
        }
    }
    Ok(reads)
}

struct KafkaDeadLetters {
    settings: KafkaSettings,
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    async fn count(&self, dlq_topic: &str) -> Result<u64> {
        let settings = self.settings.clone();
        let dlq = dlq_topic.to_owned();
        blocking(move || {
            let consumer = cursor_consumer(&settings, &dlq)?;
            let ranges = waiting(&consumer, &dlq)?;
            Ok(ranges
                .values()
                .map(|r| u64::try_from(r.end - r.next).unwrap_or(0))
                .sum())
        })
        .await
    }

    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>> {
        let settings = self.settings.clone();
        let dlq = dlq_topic.to_owned();
        blocking(move || {
            let consumer = cursor_consumer(&settings, &dlq)?;
            let mut ranges = waiting(&consumer, &dlq)?;
            if ranges.values().all(Range::done) {
                return Ok(Vec::new());
            }
            assign(&consumer, &dlq, &ranges)?;
            // The oldest `limit` overall are among the oldest `limit` of each partition.
            let mut reads = read(&consumer, &mut ranges, usize::MAX, limit)?;
            reads.sort_by_key(|r| (r.message.timestamp_ms, r.partition, r.offset));
            reads.truncate(limit);
            Ok(reads
                .into_iter()
                .map(|r| StoredLetter::new(r.message))
                .collect())
        })
        .await
    }

    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>> {
        let settings = self.settings.clone();
        let dlq = dlq_topic.to_owned();
        let (consumer, ranges) = blocking(move || {
            let consumer = cursor_consumer(&settings, &dlq)?;
            let ranges = waiting(&consumer, &dlq)?;
            assign(&consumer, &dlq, &ranges)?;
            Ok((consumer, ranges))
        })
        .await?;
        Ok(Box::new(KafkaCursor {
            consumer: Arc::new(consumer),
            dlq: dlq_topic.to_owned(),
            ranges,
            buffer: VecDeque::new(),
            current: None,
        }))
    }
}

struct KafkaCursor {
    consumer: Arc<BaseConsumer>,
    dlq: String,
    ranges: HashMap<i32, Range>,
    /// Records read and not handed out yet.
    buffer: VecDeque<Read>,
    /// The letter handed out last: partition and offset.
    current: Option<(i32, i64)>,
}

impl KafkaCursor {
    fn stopped(&self, partition: i32) -> bool {
        self.ranges.get(&partition).is_some_and(|r| r.stopped)
    }
}

#[async_trait]
impl DeadLetterCursor for KafkaCursor {
    async fn next(&mut self) -> Result<Option<StoredLetter>> {
        self.current = None;
        loop {
            while let Some(read) = self.buffer.pop_front() {
                if self.stopped(read.partition) {
                    continue;
                }
                self.current = Some((read.partition, read.offset));
                return Ok(Some(StoredLetter::new(read.message)));
            }
            if self.ranges.values().all(Range::done) {
                return Ok(None);
            }
            let consumer = self.consumer.clone();
            let mut ranges = self.ranges.clone();
            let (reads, ranges) = blocking(move || {
                let reads = read(&consumer, &mut ranges, BATCH, usize::MAX)?;
                Ok((reads, ranges))
            })
            .await?;
            self.ranges = ranges;
            self.buffer.extend(reads);
        }
    }

    async fn settle(&mut self, remove: bool) -> Result<()> {
        let Some((partition, offset)) = self.current.take() else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        if remove {
            tpl.add_partition_offset(&self.dlq, partition, Offset::Offset(offset + 1))
                .map_err(error)?;
            let consumer = self.consumer.clone();
            return blocking(move || consumer.commit(&tpl, CommitMode::Sync).map_err(error)).await;
        }
        // The group's position cannot pass a letter left in place: this partition is done.
        if let Some(range) = self.ranges.get_mut(&partition) {
            range.stopped = true;
        }
        tpl.add_partition(&self.dlq, partition);
        if let Err(err) = self.consumer.pause(&tpl) {
            tracing::debug!(error = %err, "pausing a kafka dead-letter partition failed");
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        let consumer = self.consumer;
        // Dropping a consumer waits for librdkafka to shut it down.
        blocking(move || {
            drop(consumer);
            Ok(())
        })
        .await
    }
}
