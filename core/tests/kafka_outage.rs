//! Kafka stopped and started while messages are in flight: every message is delivered at least
//! once, counted. Its own test binary, since it takes the shared test server away for a while.

mod outage;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092?polybus.topic.partitions=4".to_owned())
}

/// Runs `scripts/broker-kafka.sh <action>` (down / up keep the data directory).
fn broker_script(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/broker-kafka.sh");
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
        "polybus-kafka.outage.{}",
        &polybus::message::new_message_id()[24..]
    );
    let outage = async {
        tokio::task::spawn_blocking(|| {
            broker_script("down");
            std::thread::sleep(Duration::from_secs(1));
            broker_script("up");
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
