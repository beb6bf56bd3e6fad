//! RabbitMQ stopped and started while 10,000 messages are in flight: every message is
//! delivered at least once, counted. Its own test binary, since it takes the server away.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polybus::{Consumer, ConsumerOptions, Message, RetryPolicy, SubscriptionSpec, handler_fn};

fn url() -> String {
    std::env::var("POLYBUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/".to_owned())
}

/// Runs `scripts/broker-rabbitmq.sh <action>` (stop-app / start-app keep the node and its data).
fn broker_script(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/broker-rabbitmq.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(action)
        .status()
        .expect("running the broker script");
    assert!(status.success(), "{} {action} failed", script.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let broker = polybus::connect_url(&url()).await.unwrap();
    let topic = format!(
        "polybus-rabbit.outage.{}",
        &polybus::message::new_message_id()[24..]
    );
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let record = seen.clone();
    let handler = handler_fn(move |r| {
        record.lock().unwrap().insert(r.message.id.clone());
        async { Ok(()) }
    });
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"))
        .with_concurrency(16)
        .with_prefetch(200);
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(5, Duration::from_millis(50)),
        drain_timeout: Duration::from_secs(10),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options)
        .await
        .unwrap();
    consumer
        .ready()
        .wait(Duration::from_secs(30))
        .await
        .unwrap();

    let total = 10_000;
    let mut pending: Vec<Message> = (0..total)
        .map(|n| Message::text(&topic, format!("m{n}")))
        .collect();
    let ids: HashSet<String> = pending.iter().map(|m| m.id.clone()).collect();
    let started = Instant::now();
    let mut restarted = false;
    let mut publish_errors = 0;
    // Publish in batches; a message whose publish failed is published again (as a caller would),
    // so each message is confirmed at least once. Halfway through, the broker goes away.
    while !pending.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "publishing did not finish"
        );
        if !restarted && pending.len() <= total / 2 {
            restarted = true;
            broker_script("stop-app");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let during = broker.publish_batch(pending[..10].to_vec()).await;
            assert!(
                during.iter().all(Result::is_err),
                "a publish during the outage must fail, not vanish"
            );
            broker_script("start-app");
        }
        let batch: Vec<Message> = pending.drain(..pending.len().min(500)).collect();
        let results = broker.publish_batch(batch.clone()).await;
        for (message, result) in batch.into_iter().zip(results) {
            if result.is_err() {
                publish_errors += 1;
                pending.push(message);
            }
        }
        if publish_errors > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ids.iter().all(|id| seen.lock().unwrap().contains(id)) {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} delivered after the restart",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = consumer.stop().await.unwrap();
    eprintln!(
        "rabbitmq outage: {total} delivered at least once; {publish_errors} publishes retried; {} handled in all",
        report.stats.succeeded
    );
    assert!(restarted);
    assert_eq!(seen.lock().unwrap().intersection(&ids).count(), total);
}
