//! The engine's log records, for a binding to pass on to its language's logging.
//!
//! The engine and the clients under it (librdkafka through the `log` crate) report through
//! `tracing`. A Python or PHP process has no Rust subscriber, so those records went nowhere:
//! [`install`] makes this module the process' subscriber and logger, records at or above the
//! [level](set_level) wait in a bounded queue, and the binding takes them in batches
//! ([`take`], [`try_take`]) on a thread of its own language, never from an engine thread.
//! When the queue is full (10,000 records) new records are counted and dropped; the next batch
//! starts with a warning saying how many.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Records held at most; newer ones are dropped (and counted) while the queue is full.
pub const QUEUE_CAPACITY: usize = 10_000;

/// How severe a record is, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed and was not retried.
    Error = 1,
    /// Something failed and is retried, or is about to go wrong.
    Warn = 2,
    /// A change worth knowing of (a failover, a group rebalance).
    Info = 3,
    /// Detail for finding a problem.
    Debug = 4,
    /// Everything, including the clients' protocol traces.
    Trace = 5,
}

impl LogLevel {
    /// The lower-case name: `error`, `warn`, `info`, `debug`, `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn from_u8(value: u8) -> Option<LogLevel> {
        Some(match value {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            5 => LogLevel::Trace,
            _ => return None,
        })
    }

    fn of_tracing(level: &tracing::Level) -> LogLevel {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }

    fn of_log(level: log::Level) -> LogLevel {
        match level {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        }
    }
}

/// One record: where it comes from, what it says and its structured fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its severity.
    pub level: LogLevel,
    /// The Rust module (`polybus::brokers::redis::streams`) or client (`librdkafka`).
    pub target: String,
    /// The message alone.
    pub message: String,
    /// Named values (`error`, `group`...), in the order given.
    pub fields: Vec<(String, String)>,
}

impl LogRecord {
    /// A dotted logger name under `polybus`: `polybus::brokers::redis::streams` becomes
    /// `polybus.brokers.redis.streams`, `librdkafka` becomes `polybus.librdkafka`.
    pub fn logger_name(&self) -> String {
        let dotted = self.target.replace("::", ".");
        if dotted == "polybus" || dotted.starts_with("polybus.") {
            dotted
        } else {
            format!("polybus.{dotted}")
        }
    }

    /// The message followed by its fields: `redis stream read failed; retrying (error=...)`.
    pub fn text(&self) -> String {
        let mut text = self.message.clone();
        if !self.fields.is_empty() {
            text.push_str(" (");
            for (index, (name, value)) in self.fields.iter().enumerate() {
                if index > 0 {
                    text.push_str(", ");
                }
                let _ = write!(text, "{name}={value}");
            }
            text.push(')');
        }
        text
    }
}

/// The queue and the level every record is checked against.
struct Queue {
    state: Mutex<QueueState>,
    arrived: Condvar,
    /// 0 when off, else a [`LogLevel`] as `u8`.
    level: AtomicU8,
    /// Records (or a count of dropped ones) wait: checked without the lock by [`pending`].
    waiting: AtomicBool,
}

struct QueueState {
    records: VecDeque<LogRecord>,
    dropped: u64,
    /// Bumped by [`wake`], so a waiting [`take`] returns.
    wakes: u64,
}

fn queue() -> &'static Queue {
    static QUEUE: OnceLock<Queue> = OnceLock::new();
    QUEUE.get_or_init(|| Queue {
        state: Mutex::new(QueueState {
            records: VecDeque::new(),
            dropped: 0,
            wakes: 0,
        }),
        arrived: Condvar::new(),
        level: AtomicU8::new(LogLevel::Warn as u8),
        waiting: AtomicBool::new(false),
    })
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn level(&self) -> Option<LogLevel> {
        LogLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    fn enabled(&self, level: LogLevel) -> bool {
        self.level().is_some_and(|max| level <= max)
    }

    fn push(&self, record: LogRecord) {
        let mut state = self.lock();
        if state.records.len() >= QUEUE_CAPACITY {
            state.dropped += 1;
            self.waiting.store(true, Ordering::Release);
            return;
        }
        state.records.push_back(record);
        self.waiting.store(true, Ordering::Release);
        drop(state);
        self.arrived.notify_one();
    }

    fn drain(&self, state: &mut QueueState, max: usize) -> Vec<LogRecord> {
        let mut batch = Vec::new();
        if state.dropped > 0 {
            batch.push(LogRecord {
                level: LogLevel::Warn,
                target: "polybus::logs".to_owned(),
                message: format!(
                    "{} engine log records were dropped: more than {QUEUE_CAPACITY} waited to be passed on",
                    std::mem::take(&mut state.dropped)
                ),
                fields: Vec::new(),
            });
        }
        let taken = state.records.len().min(max.max(1));
        batch.extend(state.records.drain(..taken));
        self.waiting
            .store(!state.records.is_empty(), Ordering::Release);
        batch
    }
}

/// Makes this module the process' `tracing` subscriber and `log` logger, once. False when the
/// process already had a subscriber (a Rust program with its own): records go there instead.
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let ours = tracing::subscriber::set_global_default(QueueSubscriber).is_ok();
        if log::set_logger(&QueueLogger).is_ok() {
            set_log_max_level(queue().level());
        }
        ours
    })
}

/// Passes on records at `level` and above; `None` passes on nothing. Takes effect for records
/// made from now on (librdkafka's own level is read when a Kafka client is created).
pub fn set_level(level: Option<LogLevel>) {
    let queue = queue();
    let value = level.map_or(0, |level| level as u8);
    if queue.level.swap(value, Ordering::Relaxed) != value {
        set_log_max_level(level);
        tracing::callsite::rebuild_interest_cache();
    }
}

/// The level records are passed on at (`None`: off).
pub fn level() -> Option<LogLevel> {
    queue().level()
}

fn set_log_max_level(level: Option<LogLevel>) {
    log::set_max_level(match level {
        None => log::LevelFilter::Off,
        Some(LogLevel::Error) => log::LevelFilter::Error,
        Some(LogLevel::Warn) => log::LevelFilter::Warn,
        Some(LogLevel::Info) => log::LevelFilter::Info,
        Some(LogLevel::Debug) => log::LevelFilter::Debug,
        Some(LogLevel::Trace) => log::LevelFilter::Trace,
    });
}

/// Waits up to `wait` for records, then takes up to `max` of those waiting (oldest first).
/// Returns early, maybe with nothing, after [`wake`].
pub fn take(max: usize, wait: Duration) -> Vec<LogRecord> {
    let queue = queue();
    let mut state = queue.lock();
    if state.records.is_empty() && state.dropped == 0 {
        let wakes = state.wakes;
        state = queue
            .arrived
            .wait_timeout_while(state, wait, |s| {
                s.records.is_empty() && s.dropped == 0 && s.wakes == wakes
            })
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    queue.drain(&mut state, max)
}

/// Takes up to `max` waiting records without waiting.
pub fn try_take(max: usize) -> Vec<LogRecord> {
    let queue = queue();
    if !pending() {
        return Vec::new();
    }
    queue.drain(&mut queue.lock(), max)
}

/// Whether records wait (without taking the queue's lock: cheap enough for every call into a
/// binding).
pub fn pending() -> bool {
    queue().waiting.load(Ordering::Acquire)
}

/// Makes every waiting [`take`] return now.
pub fn wake() {
    let queue = queue();
    queue.lock().wakes += 1;
    queue.arrived.notify_all();
}

/// Puts records taken but not passed on back at the front, in their order (a binding that
/// could not pass them on now). What no longer fits is counted as dropped.
pub fn put_back(records: Vec<LogRecord>) {
    if records.is_empty() {
        return;
    }
    let queue = queue();
    let mut state = queue.lock();
    let room = QUEUE_CAPACITY.saturating_sub(state.records.len());
    let kept = records.len().min(room);
    state.dropped += (records.len() - kept) as u64;
    for record in records.into_iter().take(kept).rev() {
        state.records.push_front(record);
    }
    queue.waiting.store(true, Ordering::Release);
}

std::thread_local! {
    /// The queue's lock, held by the thread that forks across `fork()`.
    static HELD_FOR_FORK: std::cell::RefCell<Option<std::sync::MutexGuard<'static, QueueState>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork()`: takes the queue's lock, so the child does not start with it held by a
/// thread it does not have. Call [`after_fork`] in the parent and the child.
pub fn before_fork() {
    let guard = queue().lock();
    HELD_FOR_FORK.with(|held| *held.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent and (`child`) the child: lets the lock go; the child forgets
/// the records it inherited (the parent passes them on).
pub fn after_fork(child: bool) {
    HELD_FOR_FORK.with(|held| {
        // Taken (and so unlocked at the end of this statement) in the parent too.
        if let Some(mut state) = held.borrow_mut().take()
            && child
        {
            state.records.clear();
            state.dropped = 0;
            queue().waiting.store(false, Ordering::Release);
        }
    });
}

/// Puts `tracing` events in the queue. Spans are not kept: the engine reports with events.
struct QueueSubscriber;

impl Subscriber for QueueSubscriber {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // Asked each time: the level changes at run time. Records above the level cost
        // nothing anyway: `max_level_hint` sets tracing's global filter, checked first.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        queue().enabled(LogLevel::of_tracing(metadata.level()))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match queue().level() {
            None => LevelFilter::OFF,
            Some(LogLevel::Error) => LevelFilter::ERROR,
            Some(LogLevel::Warn) => LevelFilter::WARN,
            Some(LogLevel::Info) => LevelFilter::INFO,
            Some(LogLevel::Debug) => LevelFilter::DEBUG,
            Some(LogLevel::Trace) => LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        queue().push(LogRecord {
            level: LogLevel::of_tracing(metadata.level()),
            target: metadata.target().to_owned(),
            message: fields.message,
            fields: fields.named,
        });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// The message and named fields of an event.
#[derive(Default)]
struct Fields {
    message: String,
    named: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.named.push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.named.push((field.name().to_owned(), text));
        }
    }
}

/// Puts `log` records (librdkafka's, through rust-rdkafka) in the queue.
struct QueueLogger;

impl log::Log for QueueLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        queue().enabled(LogLevel::of_log(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        queue().push(LogRecord {
            level: LogLevel::of_log(record.level()),
            target: record.target().to_owned(),
            message: record.args().to_string(),
            fields: Vec::new(),
        });
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str, fields: &[(&str, &str)]) -> LogRecord {
        LogRecord {
            level: LogLevel::Warn,
            target: target.to_owned(),
            message: "read failed; retrying".to_owned(),
            fields: fields
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn logger_names_sit_under_polybus() {
        assert_eq!(
            record("polybus::brokers::redis::streams", &[]).logger_name(),
            "polybus.brokers.redis.streams"
        );
        assert_eq!(
            record("librdkafka", &[]).logger_name(),
            "polybus.librdkafka"
        );
        assert_eq!(
            record("polybus_php::consume", &[]).logger_name(),
            "polybus.polybus_php.consume"
        );
    }

    #[test]
    fn text_names_the_fields() {
        assert_eq!(record("t", &[]).text(), "read failed; retrying");
        assert_eq!(
            record("t", &[("error", "refused"), ("group", "g")]).text(),
            "read failed; retrying (error=refused, group=g)"
        );
    }

    #[test]
    fn levels_order_from_most_severe() {
        assert!(LogLevel::Error < LogLevel::Warn);
        assert!(LogLevel::Debug < LogLevel::Trace);
        assert_eq!(
            LogLevel::from_u8(LogLevel::Info as u8),
            Some(LogLevel::Info)
        );
        assert_eq!(LogLevel::from_u8(0), None);
    }
}
