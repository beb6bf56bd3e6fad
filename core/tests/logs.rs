//! The engine's log records reach a binding through the queue in `polybus::logs`.

use std::time::Duration;

use polybus::logs::{self, LogLevel, LogRecord, QUEUE_CAPACITY};

fn record(message: &str) -> LogRecord {
    LogRecord {
        level: LogLevel::Warn,
        target: "logs".to_owned(),
        message: message.to_owned(),
        fields: Vec::new(),
    }
}

/// One test: the subscriber, the level and the queue are process-wide.
#[test]
fn records_at_the_level_wait_for_the_binding() {
    assert!(logs::install(), "no other subscriber was installed");
    assert_eq!(logs::level(), Some(LogLevel::Warn), "warnings by default");

    // Below the level: nothing.
    tracing::info!(group = "g", "joined");
    log::info!(target: "librdkafka", "CGRP: joined");
    assert!(logs::try_take(100).is_empty());

    // At the level: the event with its fields, and a `log` record (librdkafka's way).
    tracing::warn!(group = "g", error = %"refused", "redis stream read failed; retrying");
    log::warn!(target: "librdkafka", "FAIL: connection refused");
    let records = logs::take(100, Duration::from_secs(5));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].level, LogLevel::Warn);
    assert_eq!(records[0].target, "logs");
    assert_eq!(records[0].message, "redis stream read failed; retrying");
    assert_eq!(
        records[0].text(),
        "redis stream read failed; retrying (group=g, error=refused)"
    );
    assert_eq!(records[1].logger_name(), "polybus.librdkafka");
    assert_eq!(records[1].message, "FAIL: connection refused");

    // A lower level lets debug records through; off lets nothing through.
    logs::set_level(Some(LogLevel::Debug));
    tracing::debug!("fetched");
    log::debug!(target: "librdkafka", "FETCH");
    let debug = logs::take(100, Duration::from_secs(5));
    assert_eq!(debug.len(), 2, "{debug:?}");
    assert_eq!(debug[0].level, LogLevel::Debug);
    logs::set_level(None);
    tracing::error!("lost");
    assert!(logs::try_take(100).is_empty());

    // A full queue drops new records and says how many, first thing in the next batch.
    logs::set_level(Some(LogLevel::Warn));
    for n in 0..QUEUE_CAPACITY + 5 {
        tracing::warn!(n, "flood");
    }
    let first = logs::try_take(10);
    assert_eq!(first.len(), 11, "the warning and 10 records");
    assert!(
        first[0]
            .message
            .starts_with("5 engine log records were dropped"),
        "{}",
        first[0].message
    );
    assert_eq!(first[1].fields, vec![("n".to_owned(), "0".to_owned())]);
    let mut left = QUEUE_CAPACITY - 10;
    while left > 0 {
        let batch = logs::try_take(1000);
        assert!(!batch.is_empty());
        left -= batch.len();
    }
    assert!(logs::try_take(10).is_empty());

    // Records put back come first, in their order.
    tracing::warn!("third");
    logs::put_back(vec![record("first"), record("second")]);
    let texts: Vec<String> = logs::try_take(10).into_iter().map(|r| r.message).collect();
    assert_eq!(texts, ["first", "second", "third"]);

    // Around a fork: the parent keeps its records, a child forgets the inherited ones.
    tracing::warn!("before the fork");
    logs::before_fork();
    logs::after_fork(false);
    assert_eq!(logs::try_take(10).len(), 1);
    tracing::warn!("inherited");
    logs::before_fork();
    logs::after_fork(true);
    assert!(!logs::pending());
    assert!(logs::try_take(10).is_empty());

    // A waiting take returns when woken.
    let waiter = std::thread::spawn(|| {
        let started = std::time::Instant::now();
        let batch = logs::take(10, Duration::from_secs(30));
        (batch, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    logs::wake();
    let (batch, waited) = waiter.join().expect("the waiter ends");
    assert!(batch.is_empty());
    assert!(
        waited < Duration::from_secs(10),
        "woken, not timed out: {waited:?}"
    );
}
