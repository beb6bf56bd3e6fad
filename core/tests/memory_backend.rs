//! Behaviour specific to the embedded memory broker and the null broker.

use std::sync::Arc;
use std::time::Duration;

use polybus::brokers::memory::MemoryBroker;
use polybus::brokers::null::NullBroker;
use polybus::config::MemoryConfig;
use polybus::{
    Error, Message, Publisher, SharedBroker, StartPosition, Subscriber, SubscriptionSpec,
};

fn small(capacity: usize) -> MemoryBroker {
    MemoryBroker::new(MemoryConfig {
        name: String::new(),
        capacity,
    })
}

#[tokio::test]
async fn a_full_topic_makes_publish_wait_until_a_consumer_acknowledges() {
    let broker = small(3);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    for n in 0..3 {
        broker
            .publish(Message::text("t", n.to_string()))
            .await
            .unwrap();
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(200),
        broker.publish(Message::text("t", "3")),
    )
    .await;
    assert!(
        blocked.is_err(),
        "the fourth publish should wait while the topic is full"
    );

    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(Message::text("t", "3")).await }
    });
    let first = sub.next().await.unwrap().unwrap();
    assert!(
        !waiting.is_finished(),
        "delivering alone must not free room"
    );
    first.ack().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("publish should resume once a message is acknowledged")
        .unwrap()
        .unwrap();
    assert_eq!(broker.next_offset("t"), 4);
}

#[tokio::test]
async fn a_topic_without_groups_keeps_everything_and_makes_publish_wait_when_full() {
    let broker = small(2);
    broker.publish(Message::text("t", "0")).await.unwrap();
    broker.publish(Message::text("t", "1")).await.unwrap();
    let blocked = tokio::time::timeout(
        Duration::from_millis(200),
        broker.publish(Message::text("t", "2")),
    )
    .await;
    assert!(
        blocked.is_err(),
        "nothing may be evicted before any group read it"
    );
    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(Message::text("t", "2")).await }
    });
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "late"))
        .await
        .unwrap();
    for expected in ["0", "1", "2"] {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.message.payload_str().unwrap(), expected);
        d.ack().await.unwrap();
    }
    waiting.await.unwrap().unwrap();
}

#[tokio::test]
async fn settled_messages_are_retained_for_replay_up_to_capacity() {
    let broker = small(5);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    for n in 0..8 {
        broker
            .publish(Message::text("t", n.to_string()))
            .await
            .unwrap();
        sub.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    assert_eq!(broker.retained("t"), 5);
    let mut replay = broker
        .subscribe(SubscriptionSpec::new(["t"], "audit").with_start(StartPosition::Earliest))
        .await
        .unwrap();
    let oldest = replay.next().await.unwrap().unwrap();
    assert_eq!(oldest.message.payload_str().unwrap(), "3");
    assert_eq!(broker.group_stats("t", "g").unwrap().acked, 8);
}

#[tokio::test]
async fn a_new_group_starting_at_latest_skips_history() {
    let broker = small(100);
    broker.publish(Message::text("t", "old")).await.unwrap();
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "late").with_start(StartPosition::Latest))
        .await
        .unwrap();
    broker.publish(Message::text("t", "new")).await.unwrap();
    let got = sub.next().await.unwrap().unwrap();
    assert_eq!(got.message.payload_str().unwrap(), "new");
}

#[tokio::test]
async fn one_subscription_reads_several_topics() {
    let broker = small(100);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["a", "b"], "g"))
        .await
        .unwrap();
    broker.publish(Message::text("a", "from a")).await.unwrap();
    broker.publish(Message::text("b", "from b")).await.unwrap();
    let mut topics = vec![];
    for _ in 0..2 {
        let d = sub.next().await.unwrap().unwrap();
        topics.push(d.message.topic.clone());
        d.ack().await.unwrap();
    }
    topics.sort();
    assert_eq!(topics, ["a", "b"]);
}

#[tokio::test]
async fn memory_urls_with_one_name_reach_one_broker() {
    let producer = polybus::connect_url("memory://shared-test").await.unwrap();
    let consumer = polybus::connect_url("memory://shared-test").await.unwrap();
    let other = polybus::connect_url("memory://other-test").await.unwrap();
    let mut sub = consumer
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    let mut elsewhere = other
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    producer.publish(Message::text("t", "hello")).await.unwrap();
    let got = sub.next().await.unwrap().unwrap();
    assert_eq!(got.message.payload_str().unwrap(), "hello");
    let nothing = tokio::time::timeout(Duration::from_millis(100), elsewhere.next()).await;
    assert!(nothing.is_err(), "another name is another broker");
}

#[tokio::test]
async fn a_closed_broker_refuses_publishes_and_ends_subscriptions() {
    let broker = small(10);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    broker.close().await.unwrap();
    let err = broker.publish(Message::text("t", "x")).await.unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap();
    assert!(end.is_none());
}

#[tokio::test]
async fn the_null_broker_accepts_counts_and_drops() {
    let null = NullBroker::new();
    let shared: SharedBroker = Arc::new(null.clone());
    assert_eq!(shared.name(), "null");
    assert!(!shared.capabilities().acknowledgements);
    let mut sub = shared
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    shared.publish(Message::text("t", "x")).await.unwrap();
    let results = shared
        .publish_batch(vec![Message::text("t", "y"), Message::text("t", "z")])
        .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(null.published(), 3);
    let nothing = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(nothing.is_err(), "the null broker delivers nothing");
    sub.close().await.unwrap();
}

#[tokio::test]
async fn backends_not_in_this_build_say_which_feature_enables_them() {
    let backends = [
        ("kafka://localhost:9092", "kafka", cfg!(feature = "kafka")),
        (
            "amqp://guest:secret@localhost:5672/",
            "rabbitmq",
            cfg!(feature = "rabbitmq"),
        ),
        ("redis://localhost:6379/0", "redis", cfg!(feature = "redis")),
    ];
    for (url, backend, _) in backends.iter().filter(|(_, _, enabled)| !enabled) {
        let err = polybus::connect_url(url)
            .await
            .err()
            .expect("not enabled in this build");
        let text = err.to_string();
        assert!(text.contains(backend) && text.contains("feature"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

#[tokio::test]
async fn next_batch_takes_what_is_ready_up_to_the_limit() {
    let broker = small(100);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "g").with_prefetch(50))
        .await
        .unwrap();
    let empty = sub.next_batch(10, Duration::from_millis(50)).await.unwrap();
    assert!(empty.is_empty(), "nothing published yet");
    for n in 0..25 {
        broker
            .publish(Message::text("t", n.to_string()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let batch = sub.next_batch(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(batch.len(), 10);
    let texts: Vec<String> = batch
        .iter()
        .map(|d| d.message.payload_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
    for delivery in batch {
        delivery.ack().await.unwrap();
    }
}

#[tokio::test]
async fn released_messages_come_back_in_publish_order() {
    let broker = small(100);
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(["t"], "g").with_prefetch(10))
        .await
        .unwrap();
    for n in 0..4 {
        broker
            .publish(Message::text("t", n.to_string()))
            .await
            .unwrap();
    }
    let first = sub.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sub.close().await.unwrap(); // releases the prefetched 1, 2 and 3
    let mut again = broker
        .subscribe(SubscriptionSpec::new(["t"], "g"))
        .await
        .unwrap();
    let mut texts = Vec::new();
    for _ in 0..3 {
        let d = again.next().await.unwrap().unwrap();
        texts.push(d.message.payload_str().unwrap().to_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(texts, ["1", "2", "3"]);
}
