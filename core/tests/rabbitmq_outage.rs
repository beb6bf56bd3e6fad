//! RabbitMQ stopped and started while 10,000 messages are in flight: every message is
//! delivered at least once, counted. Its own test binary, since it takes the server away.

mod common;
mod outage;

use common::amqp_url;
use std::time::Duration;

use polybus::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let broker = polybus::connect_url(&amqp_url()).await.unwrap();
    let topic = format!(
        "polybus-rabbit.outage.{}",
        &polybus::message::new_message_id()[24..]
    );
    let during = broker.clone();
    let probe = topic.clone();
    let outage = async move {
        tokio::task::spawn_blocking(|| outage::broker_script("broker-rabbitmq.sh", "stop-app"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let messages = (0..10).map(|n| Message::text(&probe, format!("during {n}")));
        let results = during.publish_batch(messages.collect()).await;
        assert!(
            results.iter().all(Result::is_err),
            "a publish during the outage must fail, not vanish"
        );
        tokio::task::spawn_blocking(|| outage::broker_script("broker-rabbitmq.sh", "start-app"))
            .await
            .unwrap();
    };
    let total = 10_000;
    let report = outage::stream_through_an_outage(broker, &topic, total, outage).await;
    eprintln!(
        "rabbitmq outage: {total} delivered at least once; {} publishes retried; {} handled in all",
        report.publish_retries, report.handled
    );
}
