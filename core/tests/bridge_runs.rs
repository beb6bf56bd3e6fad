//! The handler bridge on Kafka: a partition's keyless messages are handed to the foreign side
//! as one run (handled in order, in as few crossings as they arrive in), and a stop in the
//! middle of a run gives back only what was not handled.

use std::time::Duration;

use polybus::bridge::HandlerBridge;
use polybus::{Consumer, ConsumerOptions, Message, SubscriptionSpec};

fn url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_URL")
        .map(|url| url.replace("polybus.topic.partitions=4", "polybus.topic.partitions=1"))
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092?polybus.topic.partitions=1".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_s_queue_is_handed_out_as_one_run_in_order() {
    let broker = polybus::connect_url(&url()).await.unwrap();
    let topic = format!(
        "polybus-test.runs.{}",
        &polybus::message::new_message_id()[24..]
    );
    let messages = (0..6)
        .map(|n| Message::text(&topic, n.to_string()))
        .collect();
    for receipt in broker.publish_batch(messages).await {
        receipt.unwrap();
    }
    let bridge = HandlerBridge::new(8);
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"))
        .with_concurrency(8)
        .with_prefetch(8);
    let options = ConsumerOptions {
        drain_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let consumer = Consumer::start(broker, spec, bridge.handler(), options)
        .await
        .unwrap();
    // The partition's messages come as one run, whether they arrived together or one after
    // another (then as parts of the same run, handed out before the earlier ones finished).
    let mut run = Vec::new();
    while run.len() < 6 {
        let batch = bridge.next_batch(100, Duration::from_secs(30)).await;
        assert!(!batch.is_empty(), "the run should come");
        run.extend(batch);
    }
    let ids: Vec<Option<u64>> = run.iter().map(|job| job.run).collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    let order: Vec<&str> = run
        .iter()
        .map(|job| job.message.payload_str().unwrap())
        .collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5"]);
    // Three are handled; stopping gives back only the other three.
    bridge.complete(run[..3].iter().map(|job| (job.token, Ok(()))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = consumer.stop().await.unwrap();
    assert_eq!(report.stats.succeeded, 3);
    assert_eq!(report.stats.released, 3);
}
