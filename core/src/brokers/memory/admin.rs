//! Dead letters on the embedded broker: the dead-letter topic's log, with the consumer group
//! `polybus.dlq.<dlq>` as the "redriven up to here" cursor. The cursor group acknowledges
//! letters strictly in log order (a redrive stops at a letter it leaves in place), so the
//! waiting letters are the log from its oldest unacknowledged offset on. Listing reads them
//! through a second group, `polybus.dlq-peek.<dlq>`, moved to that offset and drained at once,
//! so it never holds back the log's eviction longer than the cursor group does.

use std::time::Instant;

use async_trait::async_trait;

use super::MemoryBroker;
use super::log::Topic;
use crate::broker::StartPosition;
use crate::dead_letters::{DeadLetterCursor, DeadLetterStore, StoredLetter, cursor_group};
use crate::delivery::Settlement;
use crate::error::Result;

/// The dead-letter store of `broker`.
pub(super) fn store(broker: &MemoryBroker) -> Result<Box<dyn DeadLetterStore>> {
    broker.ensure_open()?;
    Ok(Box::new(MemoryDeadLetters {
        broker: broker.clone(),
    }))
}

fn peek_group(dlq: &str) -> String {
    format!("polybus.dlq-peek.{dlq}")
}

/// The offset of the oldest letter `group` has not acknowledged (taken and handed back at
/// once), creating the group at the start of the log if needed.
fn first_waiting(topic: &mut Topic, group: &str) -> Option<u64> {
    topic.join(group, StartPosition::Earliest);
    let now = Instant::now();
    let taken = topic.take(group, now, &mut None)?;
    let offset = taken.entry.offset;
    let key = taken.entry.message.key.clone();
    topic.settle(
        group,
        offset,
        key.as_deref(),
        taken.attempt,
        Settlement::Release,
        now,
    );
    Some(offset)
}

struct MemoryDeadLetters {
    broker: MemoryBroker,
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn count(&self, dlq_topic: &str) -> Result<u64> {
        self.broker.ensure_open()?;
        let mut state = self.broker.inner.lock();
        let Some(topic) = state.topics.get_mut(dlq_topic) else {
            return Ok(0);
        };
        let first = first_waiting(topic, &cursor_group(dlq_topic));
        Ok(first.map_or(0, |first| topic.next_offset().saturating_sub(first)))
    }

    async fn peek(&self, dlq_topic: &str, limit: usize) -> Result<Vec<StoredLetter>> {
        self.broker.ensure_open()?;
        let mut letters = Vec::new();
        {
            let mut state = self.broker.inner.lock();
            let Some(topic) = state.topics.get_mut(dlq_topic) else {
                return Ok(letters);
            };
            let Some(first) = first_waiting(topic, &cursor_group(dlq_topic)) else {
                return Ok(letters);
            };
            let peek = peek_group(dlq_topic);
            topic.join(&peek, StartPosition::Offset(first as i64));
            let now = Instant::now();
            // Drained to the end, so the peek group holds nothing between two calls.
            while let Some(taken) = topic.take(&peek, now, &mut None) {
                if letters.len() < limit {
                    letters.push(StoredLetter::new(taken.entry.message.clone()));
                }
                let key = taken.entry.message.key.clone();
                topic.settle(
                    &peek,
                    taken.entry.offset,
                    key.as_deref(),
                    taken.attempt,
                    Settlement::Ack,
                    now,
                );
            }
        }
        self.broker.inner.space.notify_waiters();
        Ok(letters)
    }

    async fn open(&self, dlq_topic: &str) -> Result<Box<dyn DeadLetterCursor>> {
        self.broker.ensure_open()?;
        let group = cursor_group(dlq_topic);
        let end = {
            let mut state = self.broker.inner.lock();
            state.topics.get_mut(dlq_topic).map_or(0, |topic| {
                topic.join(&group, StartPosition::Earliest);
                topic.next_offset()
            })
        };
        Ok(Box::new(MemoryCursor {
            broker: self.broker.clone(),
            dlq: dlq_topic.to_owned(),
            group,
            end,
            current: None,
            stopped: end == 0,
        }))
    }
}

/// The letter a cursor holds: offset, key and the attempt it was taken as.
type Held = (u64, Option<String>, u32);

struct MemoryCursor {
    broker: MemoryBroker,
    dlq: String,
    group: String,
    /// The offset the log had reached when the cursor opened: later letters wait for the
    /// next redrive.
    end: u64,
    current: Option<Held>,
    stopped: bool,
}

impl MemoryCursor {
    fn settle_held(&mut self, outcome: Settlement) {
        if let Some((offset, key, attempt)) = self.current.take() {
            self.broker.inner.settle(
                &self.dlq,
                &self.group,
                offset,
                key.as_deref(),
                attempt,
                outcome,
            );
        }
    }
}

#[async_trait]
impl DeadLetterCursor for MemoryCursor {
    async fn next(&mut self) -> Result<Option<StoredLetter>> {
        self.broker.ensure_open()?;
        self.settle_held(Settlement::Release);
        if self.stopped {
            return Ok(None);
        }
        let taken = {
            let mut state = self.broker.inner.lock();
            state
                .topics
                .get_mut(&self.dlq)
                .and_then(|topic| topic.take(&self.group, Instant::now(), &mut None))
        };
        let Some(taken) = taken else {
            self.stopped = true;
            return Ok(None);
        };
        let message = taken.entry.message.clone();
        self.current = Some((taken.entry.offset, message.key.clone(), taken.attempt));
        if taken.entry.offset >= self.end {
            self.stopped = true;
            self.settle_held(Settlement::Release);
            return Ok(None);
        }
        Ok(Some(StoredLetter::new(message)))
    }

    async fn settle(&mut self, remove: bool) -> Result<()> {
        if remove {
            self.settle_held(Settlement::Ack);
        } else {
            // Acknowledging later letters would leave a gap the cursor cannot describe.
            self.settle_held(Settlement::Release);
            self.stopped = true;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.settle_held(Settlement::Release);
        // Move the peek group past what was redriven, so it does not keep it in the log.
        let mut state = self.broker.inner.lock();
        let peek = peek_group(&self.dlq);
        if let Some(topic) = state.topics.get_mut(&self.dlq)
            && topic.group_stats(&peek).is_some_and(|s| s.outstanding == 0)
        {
            let next = topic.next_offset() as i64;
            topic.join(&peek, StartPosition::Offset(next));
        }
        drop(state);
        self.broker.inner.space.notify_waiters();
        Ok(())
    }
}
