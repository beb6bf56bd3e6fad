//! Idempotent consumers: an id handled once is skipped when it comes again, with the store in
//! memory or in the real Redis server `make test` starts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polybus::brokers::memory::MemoryBroker;
use polybus::brokers::redis::RedisBroker;
use polybus::config::BrokerConfig;
use polybus::{
    Consumer, ConsumerOptions, Dedup, DedupStore, HandlerError, MemoryDedupStore, Message,
    RetryPolicy, SharedBroker, SubscriptionSpec, handler_fn,
};

fn options(store: Arc<dyn DedupStore>) -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy::fixed(3, Duration::from_millis(10)),
        dedup: Some(Dedup {
            store,
            ttl: Duration::from_secs(60),
        }),
        ..ConsumerOptions::default()
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes the same id three times, the first handling failing once: the message is handled
/// to success exactly once, its retry is not taken for a duplicate, the copies are skipped.
async fn scenario(broker: SharedBroker, store: Arc<dyn DedupStore>) {
    let topic = format!(
        "polybus-dedup.{}",
        &polybus::message::new_message_id()[24..]
    );
    let calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = calls.clone();
    let handler = handler_fn(move |r| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(r.attempt);
            if r.attempt == 1 && seen.lock().unwrap().len() == 1 {
                return Err(HandlerError::retryable("first try fails"));
            }
            Ok(())
        }
    });
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"));
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options(store))
        .await
        .unwrap();
    let original = Message::text(&topic, "charge").with_id("payment-42");
    broker.publish(original.clone()).await.unwrap();
    wait_until("the retry to succeed", || calls.lock().unwrap().len() == 2).await;
    broker.publish(original.clone()).await.unwrap();
    broker.publish(original).await.unwrap();
    wait_until("the copies to be skipped", || {
        consumer.stats().duplicates == 2
    })
    .await;
    let report = consumer.stop().await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![1, 2],
        "handled until success once, copies skipped"
    );
    assert_eq!((report.stats.succeeded, report.stats.duplicates), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_skipped_with_a_memory_store() {
    let broker: SharedBroker = Arc::new(MemoryBroker::new(Default::default()));
    scenario(broker, Arc::new(MemoryDedupStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_skipped_with_a_redis_store() {
    let url = std::env::var("POLYBUS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let BrokerConfig::Redis(config) = BrokerConfig::parse(&url).unwrap() else {
        panic!("not a redis URL: {url}")
    };
    let redis = RedisBroker::connect(&config)
        .await
        .expect("test Redis server");
    let store = Arc::new(redis.dedup_store());
    let broker: SharedBroker = Arc::new(redis);
    scenario(broker, store).await;
}
