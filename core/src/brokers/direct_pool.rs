//! Connections a caller takes for itself while it waits on one request (a single publish), so
//! the request is written and its answer read on the caller's task, with no hand-off to a
//! client library's I/O task. Few callers hold one at a time: past that many, a caller is
//! told to use the backend's shared, pipelined connection, which serves many concurrent
//! requests better than more connections would.
//!
//! A child process made by `fork()` does not use (or close) the connections it inherited: they
//! are its parent's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Idle connections kept, and the callers allowed one at a time.
pub(crate) struct DirectPool<C> {
    idle: Mutex<Idle<C>>,
    /// Cleared: connections given back are closed.
    closed: AtomicBool,
    in_use: AtomicUsize,
    max_in_use: usize,
    max_idle: usize,
    /// A connection idle longer is closed rather than trusted (`None`: kept however long).
    idle_limit: Option<Duration>,
}

/// The kept connections, since when each is idle (where the pool has a limit), and the
/// process that opened them.
struct Idle<C> {
    connections: Vec<(C, Option<Instant>)>,
    generation: u64,
}

impl<C> DirectPool<C> {
    /// A pool lending to at most `max_in_use` callers at once and keeping `max_idle`
    /// connections, none idle longer than `idle_limit`.
    pub fn new(max_in_use: usize, max_idle: usize, idle_limit: Option<Duration>) -> Self {
        DirectPool {
            idle: Mutex::new(Idle {
                connections: Vec::new(),
                generation: crate::process::generation(),
            }),
            closed: AtomicBool::new(false),
            in_use: AtomicUsize::new(0),
            max_in_use,
            max_idle,
            idle_limit,
        }
    }

    /// A place for one caller, or `None` when `max_in_use` callers hold one.
    pub fn lease(&self) -> Option<Lease<'_, C>> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_use).then_some(n + 1)
            })
            .ok()
            .map(|_| Lease { pool: self })
    }

    /// Closes every idle connection, and those given back from now on.
    pub fn clear(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().connections.clear();
    }

    /// The idle connections, after forgetting those a parent process opened.
    fn lock(&self) -> MutexGuard<'_, Idle<C>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let generation = crate::process::generation();
        if idle.generation != generation {
            // Not dropped: closing them would end the parent's conversations.
            for inherited in idle.connections.drain(..) {
                std::mem::forget(inherited);
            }
            idle.generation = generation;
        }
        idle
    }
}

/// One caller's place in the pool, given back when dropped.
pub(crate) struct Lease<'a, C> {
    pool: &'a DirectPool<C>,
}

impl<C> Lease<'_, C> {
    /// The most recently kept connection, if any; those idle past the limit are closed.
    pub fn idle(&mut self) -> Option<C> {
        let mut idle = self.pool.lock();
        if let Some(limit) = self.pool.idle_limit {
            idle.connections
                .retain(|(_, since)| since.is_some_and(|since| since.elapsed() < limit));
        }
        idle.connections.pop().map(|(conn, _)| conn)
    }

    /// Keeps `conn` (in step, ready for another request) for the next caller.
    pub fn keep(&self, conn: C) {
        let mut idle = self.pool.lock();
        if idle.connections.len() < self.pool.max_idle && !self.pool.closed.load(Ordering::Acquire)
        {
            // Without a limit, the time is not needed (a clock read less per request).
            let since = self.pool.idle_limit.map(|_| Instant::now());
            idle.connections.push((conn, since));
        }
    }
}

impl<C> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_in_use_callers_hold_a_lease() {
        let pool: DirectPool<u8> = DirectPool::new(2, 4, None);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert!(pool.lease().is_none());
        drop(a);
        let c = pool.lease();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(pool.in_use.load(Ordering::Acquire), 0);
    }

    #[test]
    fn kept_connections_are_lent_again_up_to_max_idle() {
        let pool = DirectPool::new(4, 2, None);
        let lease = pool.lease().unwrap();
        for conn in 1..=3 {
            lease.keep(conn);
        }
        let mut lease = pool.lease().unwrap();
        assert_eq!(lease.idle(), Some(2));
        assert_eq!(lease.idle(), Some(1));
        assert_eq!(lease.idle(), None);
    }

    #[test]
    fn connections_idle_past_the_limit_are_closed() {
        let pool = DirectPool::new(4, 4, Some(Duration::ZERO));
        let mut lease = pool.lease().unwrap();
        lease.keep(1);
        lease.keep(2);
        assert_eq!(lease.idle(), None);
        assert!(pool.idle.lock().unwrap().connections.is_empty());
    }

    #[test]
    fn after_clear_nothing_is_kept() {
        let pool = DirectPool::new(4, 4, None);
        let mut lease = pool.lease().unwrap();
        lease.keep(1);
        pool.clear();
        lease.keep(2);
        assert_eq!(lease.idle(), None);
    }
}
