//! Which offsets a consumer may commit: never past a message that is not settled yet, even
//! when a partition's messages are processed concurrently and finish out of order.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

/// A topic and partition.
pub(super) type TopicPartition = (String, i32);

#[derive(Debug)]
struct PartitionState {
    /// Bumped at each assignment, so settlements from an earlier ownership are ignored.
    generation: u64,
    /// Fetched offsets not yet acknowledged or rejected.
    pending: BTreeSet<i64>,
    /// How many pending messages are with the consumer (handed out, not yet settled).
    handed_out: usize,
    /// One past the highest offset fetched.
    next: i64,
    /// The last position committed (or sent for commit).
    committed: i64,
}

impl PartitionState {
    /// The position to commit: the oldest unsettled offset, or past everything fetched.
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

/// Per-partition bookkeeping of one subscription, shared by its poll thread and its deliveries.
#[derive(Default)]
pub(super) struct OffsetTracker {
    partitions: Mutex<FxHashMap<TopicPartition, PartitionState>>,
    generations: Mutex<u64>,
}

impl OffsetTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<TopicPartition, PartitionState>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking newly assigned partitions.
    pub fn assign(&self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let generation = {
            let mut counter = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            *counter += 1;
            *counter
        };
        let mut map = self.lock();
        for tp in partitions {
            map.insert(
                tp,
                PartitionState {
                    generation,
                    pending: BTreeSet::new(),
                    handed_out: 0,
                    next: -1,
                    committed: -1,
                },
            );
        }
    }

    /// Records a fetched message; returns the ownership generation, or `None` when the
    /// partition is not assigned to this consumer any more.
    pub fn fetched(&self, tp: &TopicPartition, offset: i64) -> Option<u64> {
        let mut map = self.lock();
        let state = map.get_mut(tp)?;
        state.pending.insert(offset);
        state.next = state.next.max(offset + 1);
        Some(state.generation)
    }

    /// True while `generation` still owns the partition.
    pub fn is_current(&self, tp: &TopicPartition, generation: u64) -> bool {
        self.lock()
            .get(tp)
            .is_some_and(|s| s.generation == generation)
    }

    /// Records that a fetched message went to the consumer. False when it is stale.
    pub fn handed_out(&self, tp: &TopicPartition, generation: u64) -> bool {
        match self.lock().get_mut(tp) {
            Some(state) if state.generation == generation => {
                state.handed_out += 1;
                true
            }
            _ => false,
        }
    }

    /// A handed-out message came back to be delivered again: it stays pending.
    pub fn returned(&self, tp: &TopicPartition, generation: u64) -> bool {
        match self.lock().get_mut(tp) {
            Some(state) if state.generation == generation => {
                state.handed_out = state.handed_out.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// A handed-out message was acknowledged or rejected: the commit position may move past it.
    pub fn settled(&self, tp: &TopicPartition, generation: u64, offset: i64) {
        if let Some(state) = self.lock().get_mut(tp)
            && state.generation == generation
            && state.pending.remove(&offset)
        {
            state.handed_out = state.handed_out.saturating_sub(1);
        }
    }

    /// A fetched message that is not for this consumer (never handed out): the commit
    /// position may move past it.
    pub fn skipped(&self, tp: &TopicPartition, generation: u64, offset: i64) {
        if let Some(state) = self.lock().get_mut(tp)
            && state.generation == generation
        {
            state.pending.remove(&offset);
        }
    }

    /// Messages of `partitions` the consumer has and has not settled.
    pub fn with_consumer(&self, partitions: &[TopicPartition]) -> usize {
        let map = self.lock();
        partitions
            .iter()
            .filter_map(|tp| map.get(tp))
            .map(|s| s.handed_out)
            .sum()
    }

    /// Positions that moved since the last call, to commit now.
    pub fn to_commit(&self) -> Vec<(TopicPartition, i64)> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for (tp, state) in map.iter_mut() {
            let position = state.position();
            if position > state.committed {
                state.committed = position;
                out.push((tp.clone(), position));
            }
        }
        out
    }

    /// Stops tracking `partitions`; returns their final positions not committed yet.
    pub fn revoke(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut map = self.lock();
        partitions
            .iter()
            .filter_map(|tp| {
                let state = map.remove(tp)?;
                let position = state.position();
                (position > state.committed).then(|| (tp.clone(), position))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".to_owned(), 0)
    }

    #[test]
    fn commits_never_pass_an_unsettled_offset() {
        let tracker = OffsetTracker::default();
        tracker.assign([tp()]);
        let generation = (10..15)
            .map(|o| tracker.fetched(&tp(), o).unwrap())
            .last()
            .unwrap();
        for _ in 10..15 {
            assert!(tracker.handed_out(&tp(), generation));
        }
        tracker.settled(&tp(), generation, 12);
        tracker.settled(&tp(), generation, 13);
        assert_eq!(tracker.to_commit(), vec![(tp(), 10)]);
        tracker.settled(&tp(), generation, 10);
        tracker.settled(&tp(), generation, 11);
        assert_eq!(tracker.to_commit(), vec![(tp(), 14)]);
        assert_eq!(tracker.to_commit(), vec![], "nothing moved");
        tracker.settled(&tp(), generation, 14);
        assert_eq!(tracker.to_commit(), vec![(tp(), 15)]);
        assert_eq!(tracker.with_consumer(&[tp()]), 0);
    }

    #[test]
    fn settlements_from_an_earlier_ownership_are_ignored() {
        let tracker = OffsetTracker::default();
        tracker.assign([tp()]);
        let old = tracker.fetched(&tp(), 5).unwrap();
        tracker.handed_out(&tp(), old);
        assert_eq!(tracker.revoke(&[tp()]), vec![(tp(), 5)]);
        tracker.assign([tp()]);
        let new = tracker.fetched(&tp(), 5).unwrap();
        assert_ne!(old, new);
        tracker.settled(&tp(), old, 5);
        assert_eq!(
            tracker.to_commit(),
            vec![(tp(), 5)],
            "the stale ack must not move the position"
        );
        assert!(!tracker.is_current(&tp(), old));
    }

    #[test]
    fn returned_messages_stay_pending() {
        let tracker = OffsetTracker::default();
        tracker.assign([tp()]);
        let generation = tracker.fetched(&tp(), 0).unwrap();
        tracker.handed_out(&tp(), generation);
        assert!(tracker.returned(&tp(), generation));
        assert_eq!(tracker.with_consumer(&[tp()]), 0);
        assert_eq!(tracker.to_commit(), vec![(tp(), 0)]);
    }
}
