//! Deliveries without a key that arrive together go to a handler that takes groups in one
//! hand-over, and every one of them is still settled by its own outcome: acknowledged,
//! retried, or retried after a panic in the hand-over itself. Keyed deliveries keep their
//! per-key order and never join a group.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use polybus::brokers::memory::MemoryBroker;
use polybus::consumer::OutcomeFuture;
use polybus::{
    Consumer, ConsumerOptions, Delivery, Handler, HandlerError, Message, Publisher, RetryPolicy,
    SubscriptionSpec,
};

/// Takes groups; records each group's payloads. Payloads starting with `fail` fail on their
/// first attempt; the first group of `panic_once` panics in the hand-over.
#[derive(Default)]
struct GroupProbe {
    groups: Mutex<Vec<Vec<String>>>,
    one_by_one: Mutex<Vec<String>>,
    panic_once: AtomicBool,
    /// How many deliveries the panicking hand-over held.
    panicked: AtomicUsize,
    handled: AtomicUsize,
}

fn outcome_for(delivery: &Delivery) -> Result<(), HandlerError> {
    let text = delivery.message.payload_str().unwrap_or_default();
    if text.starts_with("fail") && delivery.attempt == 1 {
        Err(HandlerError::retryable("first attempt fails"))
    } else {
        Ok(())
    }
}

#[async_trait]
impl Handler for GroupProbe {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let text = delivery
            .message
            .payload_str()
            .unwrap_or_default()
            .to_owned();
        self.one_by_one.lock().unwrap().push(text);
        self.handled.fetch_add(1, Ordering::SeqCst);
        outcome_for(delivery)
    }

    fn takes_groups(&self) -> bool {
        true
    }

    async fn hand_over_group(&self, deliveries: &[&Delivery]) -> Option<Vec<OutcomeFuture>> {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            self.panicked.store(deliveries.len(), Ordering::SeqCst);
            panic!("the hand-over broke");
        }
        let texts = deliveries
            .iter()
            .map(|d| d.message.payload_str().unwrap_or_default().to_owned())
            .collect();
        self.groups.lock().unwrap().push(texts);
        self.handled.fetch_add(deliveries.len(), Ordering::SeqCst);
        Some(
            deliveries
                .iter()
                .map(|delivery| {
                    let outcome = outcome_for(delivery);
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        outcome
                    }) as OutcomeFuture
                })
                .collect(),
        )
    }
}

async fn run(
    probe: Arc<GroupProbe>,
    messages: Vec<Message>,
    expect_succeeded: u64,
) -> polybus::ConsumerStats {
    let broker = Arc::new(MemoryBroker::new(Default::default()));
    for message in messages {
        broker.publish(message).await.unwrap();
    }
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(3, Duration::ZERO),
        ..Default::default()
    };
    let spec = SubscriptionSpec::new(["g"], "g")
        .with_concurrency(64)
        .with_prefetch(64);
    let consumer = Consumer::start(broker.clone(), spec, probe.clone(), options)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumer.stats().succeeded < expect_succeeded {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} settled",
            consumer.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = consumer.stop().await.unwrap();
    assert_eq!(
        report.stats.succeeded, expect_succeeded,
        "{:?}",
        report.stats
    );
    assert_eq!(report.stats.settle_errors, 0);
    report.stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_deliveries_that_arrive_together_are_handed_over_as_groups() {
    let probe = Arc::new(GroupProbe::default());
    let messages = (0..200)
        .map(|n| {
            let text = if n % 10 == 0 {
                format!("fail-{n}")
            } else {
                n.to_string()
            };
            Message::text("g", text)
        })
        .collect();
    run(probe.clone(), messages, 200).await;
    let groups = probe.groups.lock().unwrap();
    let largest = groups.iter().map(Vec::len).max().unwrap_or(0);
    assert!(largest > 1, "no group was handed over: {groups:?}");
    // Every message succeeded once; the 20 failing ones were handed out twice.
    assert_eq!(probe.handled.load(Ordering::SeqCst), 220);
    let mut seen: Vec<String> = groups.iter().flatten().cloned().collect();
    seen.extend(probe.one_by_one.lock().unwrap().iter().cloned());
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_hand_over_retries_each_delivery_of_the_group() {
    let probe = Arc::new(GroupProbe {
        panic_once: AtomicBool::new(true),
        ..Default::default()
    });
    let messages = (0..100)
        .map(|n| Message::text("g", n.to_string()))
        .collect();
    let stats = run(probe.clone(), messages, 100).await;
    // Each delivery the panicking hand-over held was retried, then succeeded.
    let panicked = probe.panicked.load(Ordering::SeqCst);
    assert!(panicked > 1, "the first group should have panicked");
    assert_eq!(stats.retried as usize, panicked, "{stats:?}");
    assert_eq!(probe.handled.load(Ordering::SeqCst), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_deliveries_never_join_a_group() {
    let probe = Arc::new(GroupProbe::default());
    let messages = (0..120)
        .map(|n| {
            let message = Message::text("g", format!("{n}"));
            if n % 2 == 0 {
                message.with_key(format!("k{}", n % 3))
            } else {
                message
            }
        })
        .collect();
    run(probe.clone(), messages, 120).await;
    for group in probe.groups.lock().unwrap().iter() {
        for text in group {
            let n: usize = text.parse().unwrap();
            assert!(n % 2 == 1, "keyed message {n} was in a group");
        }
    }
    // The keyed ones were handled one at a time, each key's in publish order.
    let one_by_one = probe.one_by_one.lock().unwrap();
    for key in 0..3 {
        let order: Vec<usize> = one_by_one
            .iter()
            .map(|t| t.parse::<usize>().unwrap())
            .filter(|n| n % 2 == 0 && n % 3 == key)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "key k{key} out of order");
        assert_eq!(order.len(), 20);
    }
}
