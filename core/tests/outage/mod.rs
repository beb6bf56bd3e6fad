//! The outage scenario every broker runs: a consumer is handling a stream of messages when the
//! server goes away and comes back. Every message must be delivered at least once, counted.

use std::collections::HashSet;
use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polybus::{
    Consumer, ConsumerOptions, Message, RetryPolicy, SharedBroker, SubscriptionSpec, handler_fn,
};

/// Runs `scripts/<script> <action>` with `POLYBUS_KEEP_BROKER_DATA=1`, so the server keeps its
/// data across stop and start, failing the test if it fails. (The Redis drill runs a server of its own.)
#[allow(dead_code)]
pub fn broker_script(script: &str, action: &str) {
    let script = super::common::script(script);
    let status = Command::new("bash")
        .arg(&script)
        .arg(action)
        // A restart, not a new broker: what was stored before the outage must still be there.
        .env("POLYBUS_KEEP_BROKER_DATA", "1")
        .status()
        .expect("running the broker script");
    assert!(status.success(), "{} {action} failed", script.display());
}

/// What one run saw.
pub struct OutageReport {
    /// Publishes that failed (during the outage) and were published again.
    pub publish_retries: usize,
    /// Handler calls in all (redeliveries included).
    pub handled: u64,
}

/// Publishes `total` messages in batches while a consumer handles them; when half are
/// published, `outage` runs (stop the server, wait, start it again) while publishing goes on.
/// A publish that fails is published again, as a caller would. Waits (bounded) until every
/// message was handled at least once.
pub async fn stream_through_an_outage<F>(
    broker: SharedBroker,
    topic: &str,
    total: usize,
    outage: F,
) -> OutageReport
where
    F: Future<Output = ()> + Send + 'static,
{
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let record = seen.clone();
    let handler = handler_fn(move |r| {
        record.lock().unwrap().insert(r.message.id.clone());
        async { Ok(()) }
    });
    let spec = SubscriptionSpec::new([topic], format!("{topic}.g"))
        .with_concurrency(16)
        .with_prefetch(200);
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(5, Duration::from_millis(50)),
        drain_timeout: Duration::from_secs(10),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options)
        .await
        .expect("starting the consumer");
    consumer
        .ready()
        .wait(Duration::from_secs(60))
        .await
        .expect("the consumer became ready");

    let mut pending: Vec<Message> = (0..total)
        .map(|n| Message::text(topic, format!("m{n}")))
        .collect();
    let ids: HashSet<String> = pending.iter().map(|m| m.id.clone()).collect();
    let started = Instant::now();
    let mut outage = Some(outage);
    let mut outage_task = None;
    let mut publish_retries = 0;
    while !pending.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "publishing did not finish"
        );
        if pending.len() <= total / 2
            && let Some(outage) = outage.take()
        {
            outage_task = Some(tokio::spawn(outage));
            // Let the server go away before publishing on.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let batch: Vec<Message> = pending.drain(..pending.len().min(500)).collect();
        // A publish must end, one way or the other, even when the server goes away under it.
        let results =
            tokio::time::timeout(Duration::from_secs(90), broker.publish_batch(batch.clone()))
                .await
                .expect("a publish_batch did not end within 90 s");
        let mut failed = 0;
        for (message, result) in batch.into_iter().zip(results) {
            if result.is_err() {
                failed += 1;
                pending.push(message);
            }
        }
        publish_retries += failed;
        if failed > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::timeout(
        Duration::from_secs(120),
        outage_task.expect("the outage happened"),
    )
    .await
    .expect("the outage did not end within 120 s")
    .expect("the outage task");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ids.iter().all(|id| seen.lock().unwrap().contains(id)) {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} delivered after the restart",
            seen.lock().unwrap().intersection(&ids).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = tokio::time::timeout(Duration::from_secs(60), consumer.stop())
        .await
        .expect("stopping the consumer took over 60 s")
        .expect("stopping the consumer");
    assert_eq!(seen.lock().unwrap().intersection(&ids).count(), total);
    OutageReport {
        publish_retries,
        handled: report.stats.succeeded,
    }
}
