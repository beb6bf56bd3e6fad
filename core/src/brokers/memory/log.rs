//! The state of the embedded broker: one retained log per topic, one cursor per consumer group.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::broker::StartPosition;
use crate::delivery::Settlement;
use crate::message::Message;

/// One appended message.
pub(super) struct Entry {
    pub offset: u64,
    pub appended_ms: i64,
    pub message: Message,
}

/// A message a group still owes a delivery for.
#[derive(Clone, Copy, Debug)]
struct Pending {
    offset: u64,
    /// Deliveries counted so far (a release does not count).
    attempts: u32,
}

/// What a group hands out next.
pub(super) struct Taken {
    pub entry: Arc<Entry>,
    pub attempt: u32,
}

/// Counters of one group on one topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Messages handed out of the log but not yet acknowledged or rejected.
    pub outstanding: u64,
}

/// A consumer group's position and outstanding work on one topic.
#[derive(Default)]
struct Group {
    /// Next log offset to hand out.
    cursor: u64,
    /// Redeliveries and unblocked keyed messages, due now.
    ready: VecDeque<Pending>,
    /// Redeliveries waiting for their delay, by due time.
    delayed: BTreeMap<(Instant, u64), Pending>,
    /// Keyed messages waiting behind an unsettled message with the same key.
    blocked: HashMap<String, VecDeque<Pending>>,
    /// Keys with a message handed out (or waiting for redelivery).
    locked_keys: HashSet<String>,
    /// Offsets handed out of the log and not yet acknowledged or rejected.
    outstanding: BTreeSet<u64>,
    acked: u64,
    rejected: u64,
}

impl Group {
    /// The oldest offset this group still needs.
    fn low_water(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.cursor)
    }
}

/// One topic: a retained log and the groups reading it.
#[derive(Default)]
pub(super) struct Topic {
    log: VecDeque<Arc<Entry>>,
    /// Offset of `log[0]`.
    base: u64,
    /// Offset the next append gets.
    next: u64,
    last_appended_ms: i64,
    groups: HashMap<String, Group>,
    delay_seq: u64,
}

impl Topic {
    /// Names of the groups reading this topic.
    pub fn group_names(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }

    /// Makes room for one more message by evicting old messages every group has settled.
    /// Returns false when the log is full of messages some group still needs, or that no
    /// group has read yet because the topic has no group so far.
    pub fn make_room(&mut self, capacity: usize) -> bool {
        if self.log.len() < capacity {
            return true;
        }
        let needed = self.groups.values().map(Group::low_water).min();
        while self.log.len() >= capacity && needed.is_some_and(|low| self.base < low) {
            self.log.pop_front();
            self.base += 1;
        }
        self.log.len() < capacity
    }

    /// Appends `message` and returns its offset. Call [`Topic::make_room`] first.
    pub fn append(&mut self, message: Message, now_ms: i64) -> u64 {
        let offset = self.next;
        self.last_appended_ms = self.last_appended_ms.max(now_ms);
        self.log.push_back(Arc::new(Entry {
            offset,
            appended_ms: self.last_appended_ms,
            message,
        }));
        self.next += 1;
        offset
    }

    /// Creates `group` at `start`, or moves an existing one when `start` is a seek.
    pub fn join(&mut self, group: &str, start: StartPosition) {
        let exists = self.groups.contains_key(group);
        if exists && !start.is_seek() {
            return;
        }
        let cursor = match start {
            StartPosition::Earliest => self.base,
            StartPosition::Latest => self.next,
            StartPosition::Offset(offset) => (offset.max(0) as u64).clamp(self.base, self.next),
            StartPosition::Timestamp(ms) => {
                let index = self.log.partition_point(|entry| entry.appended_ms < ms);
                self.base + index as u64
            }
        };
        self.groups.entry(group.to_owned()).or_default().cursor = cursor;
    }

    /// The next message for `group`, or `None` when nothing is due. `next_due` is lowered to
    /// the time the earliest delayed redelivery becomes due.
    pub fn take(
        &mut self,
        group: &str,
        now: Instant,
        next_due: &mut Option<Instant>,
    ) -> Option<Taken> {
        let state = self.groups.get_mut(group)?;
        while let Some(entry) = state.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            state.ready.push_back(entry.remove());
        }
        if let Some(((due, _), _)) = state.delayed.first_key_value() {
            *next_due = Some(next_due.map_or(*due, |d| d.min(*due)));
        }
        if let Some(pending) = state.ready.pop_front() {
            let entry = self.log[(pending.offset - self.base) as usize].clone();
            return Some(Taken {
                entry,
                attempt: pending.attempts + 1,
            });
        }
        while state.cursor < self.next {
            let offset = state.cursor;
            state.cursor += 1;
            state.outstanding.insert(offset);
            let entry = &self.log[(offset - self.base) as usize];
            if let Some(key) = &entry.message.key {
                if state.locked_keys.contains(key) {
                    let pending = Pending {
                        offset,
                        attempts: 0,
                    };
                    state
                        .blocked
                        .entry(key.clone())
                        .or_default()
                        .push_back(pending);
                    continue;
                }
                state.locked_keys.insert(key.clone());
            }
            return Some(Taken {
                entry: entry.clone(),
                attempt: 1,
            });
        }
        None
    }

    /// Settles a delivery of `offset` made to `group` as its `attempt`-th delivery.
    /// Returns true when the group has new work ready (its consumers should be woken).
    pub fn settle(
        &mut self,
        group: &str,
        offset: u64,
        key: Option<&str>,
        attempt: u32,
        outcome: Settlement,
        now: Instant,
    ) -> bool {
        let Some(state) = self.groups.get_mut(group) else {
            return false;
        };
        if !state.outstanding.contains(&offset) {
            // Already settled (for example after a seek re-delivered it): nothing to do.
            return false;
        }
        match outcome {
            Settlement::Ack | Settlement::Reject => {
                state.outstanding.remove(&offset);
                if outcome == Settlement::Ack {
                    state.acked += 1;
                } else {
                    state.rejected += 1;
                }
                let Some(key) = key else { return false };
                match state.blocked.get_mut(key).and_then(VecDeque::pop_front) {
                    Some(next) => {
                        if state.blocked.get(key).is_some_and(VecDeque::is_empty) {
                            state.blocked.remove(key);
                        }
                        state.ready.push_back(next);
                        true
                    }
                    None => {
                        state.locked_keys.remove(key);
                        false
                    }
                }
            }
            Settlement::Requeue { delay } => {
                let pending = Pending {
                    offset,
                    attempts: attempt,
                };
                match delay.filter(|d| !d.is_zero()) {
                    Some(delay) => {
                        self.delay_seq += 1;
                        state.delayed.insert((now + delay, self.delay_seq), pending);
                    }
                    None => state.ready.push_back(pending),
                }
                true
            }
            Settlement::Release => {
                // Back in log order: releasing several (a closing subscription's prefetch)
                // keeps them in the order they were published.
                let attempts = attempt.saturating_sub(1);
                let at = state
                    .ready
                    .iter()
                    .position(|p| p.offset > offset)
                    .unwrap_or(state.ready.len());
                state.ready.insert(at, Pending { offset, attempts });
                true
            }
        }
    }

    /// Counters of `group`, if it reads this topic.
    pub fn group_stats(&self, group: &str) -> Option<GroupStats> {
        self.groups.get(group).map(|g| GroupStats {
            acked: g.acked,
            rejected: g.rejected,
            outstanding: g.outstanding.len() as u64,
        })
    }

    /// Messages currently retained.
    pub fn retained(&self) -> usize {
        self.log.len()
    }

    /// The offset the next message will get.
    pub fn next_offset(&self) -> u64 {
        self.next
    }
}
