//! Measures producer and consumer throughput of the Rust core on one broker.
//!
//! `cargo run --release -p polybus --example throughput -- [URL] [COUNT] [SIZE]`
//! (defaults: `memory://`, 100000 messages, 100-byte payloads). A consumer group with a trivial
//! handler is subscribed first; then COUNT messages are published with `publish_batch` and a
//! tenth as many one awaited publish at a time. Prints msgs/s for each way of publishing and
//! for the whole run until the last message was handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use polybus::{Consumer, ConsumerOptions, Message, SubscriptionSpec, handler_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "memory://".into());
    let count: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let broker = polybus::connect_url(&url).await?;
    let topic = format!("throughput.{}", &polybus::message::new_message_id()[24..]);
    let payload = Bytes::from(vec![b'x'; size]);
    println!(
        "{count} messages of {size} bytes on {}",
        polybus::BrokerConfig::parse(&url)?
    );

    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let handler = handler_fn(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok(()) }
    });
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.bench"))
        .with_concurrency(64)
        .with_prefetch(5_000);
    let consumer = Consumer::start(
        broker.clone(),
        spec,
        Arc::new(handler),
        ConsumerOptions::default(),
    )
    .await?;
    consumer.ready().wait(Duration::from_secs(60)).await?;

    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|_| Message::bytes(&topic, payload.clone()))
            .collect();
        for receipt in broker.publish_batch(batch).await {
            receipt?;
        }
    }
    report("publish_batch", count, started.elapsed());

    let single = (count / 10).max(1);
    let single_started = Instant::now();
    for _ in 0..single {
        broker
            .publish(Message::bytes(&topic, payload.clone()))
            .await?;
    }
    report(
        "publish, one awaited at a time",
        single,
        single_started.elapsed(),
    );

    let total = count + single;
    while handled.load(Ordering::Relaxed) < total as u64 {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {total} handled in 5 minutes",
                handled.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report(
        "published and handled (end to end)",
        total,
        started.elapsed(),
    );
    consumer.stop().await?;
    broker.close().await?;
    Ok(())
}

fn report(what: &str, count: usize, elapsed: Duration) {
    println!(
        "{what:>40}: {count} in {:.2?} = {:.0} msg/s",
        elapsed,
        count as f64 / elapsed.as_secs_f64()
    );
}
