//! Kafka stopped and started while messages are in flight: every message is delivered at least
//! once, counted. Its own test binary, since it takes the shared test server away for a while.

mod common;
mod outage;

use common::kafka_url;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let broker = polybus::connect_url(&kafka_url()).await.unwrap();
    let topic = format!(
        "polybus-kafka.outage.{}",
        &polybus::message::new_message_id()[24..]
    );
    let outage = async {
        tokio::task::spawn_blocking(|| {
            outage::broker_script("broker-kafka.sh", "down");
            std::thread::sleep(Duration::from_secs(1));
            outage::broker_script("broker-kafka.sh", "up");
        })
        .await
        .unwrap();
    };
    let total = 10_000;
    let report = outage::stream_through_an_outage(broker, &topic, total, outage).await;
    eprintln!(
        "kafka outage: {total} delivered at least once; {} publishes retried; {} handled in all",
        report.publish_retries, report.handled
    );
}
