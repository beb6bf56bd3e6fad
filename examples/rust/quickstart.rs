//! The main job on the embedded broker: publish a few orders, handle them with a consumer
//! group (one of them fails once and is retried), then stop gracefully.
//!
//! Run with `make demo` or `cargo run -p polybus --example quickstart`.

use std::sync::Arc;
use std::time::Duration;

use polybus::{
    Consumer, ConsumerOptions, HandlerError, Message, RetryPolicy, SubscriptionSpec, handler_fn,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u32,
    customer: String,
    total: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("POLYBUS_URL").unwrap_or_else(|_| "memory://".into());
    let broker = polybus::connect_url(&url).await?;
    println!(
        "broker: {} ({})",
        broker.name(),
        polybus::BrokerConfig::parse(&url)?
    );

    let orders = [
        (1, "ada", 12.5),
        (2, "grace", 40.0),
        (3, "ada", 7.25),
        (4, "linus", 99.9),
        (5, "grace", 3.0),
    ];
    let messages = orders
        .iter()
        .map(|(order_id, customer, total)| {
            let event = OrderCreated {
                order_id: *order_id,
                customer: customer.to_string(),
                total: *total,
            };
            Ok(Message::json("orders.created", &event)?.with_key(*customer))
        })
        .collect::<polybus::Result<Vec<_>>>()?;
    for receipt in broker.publish_batch(messages).await {
        let receipt = receipt?;
        println!("published {} at offset {:?}", receipt.id, receipt.offset);
    }

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = handler_fn(move |received| {
        let done = done_tx.clone();
        async move {
            let order: OrderCreated = received.message.decode_json()?;
            if order.order_id == 4 && received.attempt == 1 {
                println!(
                    "order {} for {}: payment gateway timed out (attempt 1), will retry",
                    order.order_id, order.customer
                );
                return Err(HandlerError::retryable("payment gateway timed out"));
            }
            println!(
                "order {} for {}: charged {:.2} (attempt {})",
                order.order_id, order.customer, order.total, received.attempt
            );
            let _ = done.send(order.order_id);
            Ok(())
        }
    });
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(3, Duration::from_millis(200)),
        ..ConsumerOptions::default()
    };
    let spec = SubscriptionSpec::new(["orders.created"], "billing").with_concurrency(4);
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options).await?;

    for _ in 0..orders.len() {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or("the handler stopped early")?;
    }
    let report = consumer.stop().await?;
    let s = report.stats;
    println!(
        "stopped (drained: {}): {} received, {} handled, {} failed and retried, {} rejected",
        report.drained, s.received, s.succeeded, s.retried, s.rejected
    );
    broker.close().await?;
    Ok(())
}
