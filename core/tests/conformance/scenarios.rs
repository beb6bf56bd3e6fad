//! The scenarios, written once for every backend. Each publishes to topics of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polybus::{
    BlockingPublish, Consumer, ConsumerOptions, Error, HandlerError, Message, RetryPolicy,
    SharedBroker, StartPosition, SubscriptionSpec, handler_fn,
};

use super::support::{Tally, WAIT, expect_nothing, recv, requires, unique, wait_until};

/// A spec whose group name is unique to the topic: on brokers where groups span topics
/// (Kafka), scenarios running side by side must not share a group.
fn spec(topic: &str, group: &str) -> SubscriptionSpec {
    SubscriptionSpec::new([topic], format!("{topic}.{group}"))
}

fn quick_retries(max: u32) -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy::fixed(max, Duration::from_millis(10)),
        drain_timeout: WAIT,
        ..ConsumerOptions::default()
    }
}

async fn publish_numbered(
    broker: &SharedBroker,
    topic: &str,
    count: usize,
    key: Option<&str>,
) -> Vec<String> {
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            let msg = Message::json(topic, &serde_json::json!({ "n": n })).unwrap();
            match key {
                Some(key) => msg.with_key(key),
                None => msg,
            }
        })
        .collect();
    let ids = messages.iter().map(|m| m.id.clone()).collect();
    for chunk in messages.chunks(1000) {
        for receipt in broker.publish_batch(chunk.to_vec()).await {
            receipt.expect("batch publish failed");
        }
    }
    ids
}

/// Publishes `count` messages, each with a key of its own (so they spread over partitions).
async fn publish_keyed(broker: &SharedBroker, topic: &str, count: usize) -> Vec<String> {
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            Message::json(topic, &serde_json::json!({ "n": n }))
                .unwrap()
                .with_key(format!("key-{n}"))
        })
        .collect();
    let ids = messages.iter().map(|m| m.id.clone()).collect();
    for receipt in broker.publish_batch(messages).await {
        receipt.expect("batch publish failed");
    }
    ids
}

fn number_of(message: &Message) -> u64 {
    let value: serde_json::Value = message.decode_json().unwrap();
    value["n"].as_u64().unwrap()
}

pub async fn round_trip_preserves_id_key_headers_payload(broker: SharedBroker) {
    let topic = unique("round-trip");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let sent = Message::bytes(&topic, &b"\x00binary\xffpayload"[..])
        .with_id("order-42")
        .with_key("customer-7")
        .with_header("trace-id", "abc")
        .with_header("tenant", "eu-west")
        .with_content_type("application/x-test");
    let receipt = broker.publish(sent.clone()).await.unwrap();
    assert_eq!(receipt.id, "order-42");

    let got = recv(&mut sub, "the published message").await;
    assert_eq!(got.message.id, sent.id);
    assert_eq!(got.message.topic, sent.topic);
    assert_eq!(got.message.key, sent.key);
    assert_eq!(got.message.payload, sent.payload);
    assert_eq!(got.message.content_type, sent.content_type);
    assert_eq!(got.message.timestamp_ms, sent.timestamp_ms);
    for (name, value) in &sent.headers {
        assert_eq!(got.message.headers.get(name), Some(value), "header {name}");
    }
    assert_eq!(got.attempt, 1);
    got.ack().await.unwrap();
    sub.close().await.unwrap();
}

/// A publish from a thread that blocks on it (PHP, Python's `send_sync`): done on that
/// thread where the backend can, handed back for `publish` where it cannot; either way the
/// message arrives whole, and a bad one is refused with the same error as `publish` gives.
/// (Redis and Kafka, which do it on the thread, check that it is not handed back in their own
/// tests.)
pub async fn a_blocking_publish_round_trips(broker: SharedBroker) {
    let topic = unique("blocking");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let sent = Message::json(&topic, &serde_json::json!({"order_id": 7}))
        .unwrap()
        .with_key("customer-7")
        .with_header("trace-id", "abc");
    let (publisher, message) = (broker.clone(), sent.clone());
    let blocking = tokio::task::spawn_blocking(move || {
        publisher.publish_blocking(message, Duration::from_secs(5))
    })
    .await
    .unwrap();
    let receipt = match blocking {
        BlockingPublish::Done(receipt) => receipt,
        BlockingPublish::Declined(message) => {
            assert_eq!(
                message.id, sent.id,
                "the declined message is handed back as it was"
            );
            broker.publish(message).await
        }
    };
    assert_eq!(receipt.unwrap().id, sent.id);
    let got = recv(&mut sub, "the message published blocking").await;
    assert_eq!(got.message.id, sent.id);
    assert_eq!(got.message.key, sent.key);
    assert_eq!(got.message.payload, sent.payload);
    assert_eq!(
        got.message.headers.get("trace-id"),
        Some(&"abc".to_string())
    );
    got.ack().await.unwrap();
    sub.close().await.unwrap();

    let publisher = broker.clone();
    let bad = tokio::task::spawn_blocking(move || {
        publisher.publish_blocking(Message::bytes("has space", "x"), Duration::from_secs(5))
    })
    .await
    .unwrap();
    let err = match bad {
        BlockingPublish::Done(result) => result.unwrap_err(),
        BlockingPublish::Declined(message) => broker.publish(message).await.unwrap_err(),
    };
    assert!(matches!(err, Error::InvalidMessage(_)), "{err:?}");
    assert!(err.to_string().contains("has space"), "{err}");
}

pub async fn publish_batch_delivers_every_message_in_order(broker: SharedBroker) {
    let topic = unique("batch");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let ids = publish_numbered(&broker, &topic, 50, Some("one-key")).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        let delivery = recv(&mut sub, "a batch message").await;
        got.push(delivery.message.id.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, ids);
    sub.close().await.unwrap();
}

/// Batches started one after another, each before the previous was answered, arrive in the
/// order they were started (what a caller keeping several in flight relies on).
pub async fn batches_started_back_to_back_stay_in_order(broker: SharedBroker) {
    if !requires(&broker, "ordered batches", |c| c.ordered_batches) {
        return;
    }
    let topic = unique("batches");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let messages: Vec<Message> = (0..800)
        .map(|n| Message::json(&topic, &serde_json::json!({ "n": n })).unwrap())
        .collect();
    let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    let mut started: Vec<_> = messages
        .chunks(100)
        .map(|chunk| futures::future::maybe_done(broker.publish_batch(chunk.to_vec())))
        .collect();
    // Each is polled once, in order, before the others are awaited.
    for batch in &mut started {
        let _ = futures::poll!(&mut *batch);
    }
    futures::future::join_all(started.iter_mut()).await;
    for batch in &mut started {
        let results = std::pin::Pin::new(batch).take_output().unwrap();
        for result in results {
            result.expect("batch publish failed");
        }
    }
    let mut got = Vec::new();
    for _ in 0..800 {
        let delivery = recv(&mut sub, "a message of the batches").await;
        got.push(delivery.message.id.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, ids);
    sub.close().await.unwrap();
}

pub async fn invalid_messages_are_refused_with_a_clear_error(broker: SharedBroker) {
    let err = broker.publish(Message::bytes("", "x")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(_)), "{err:?}");
    assert!(err.to_string().contains("topic is empty"), "{err}");
    let err = broker
        .publish(Message::bytes("has space", "x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has space"), "{err}");
    let ok = unique("ok");
    let sub = broker.subscribe(spec(&ok, "g")).await.unwrap();
    let results = broker
        .publish_batch(vec![Message::bytes(&ok, "x"), Message::bytes("", "x")])
        .await;
    sub.close().await.unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(Error::InvalidMessage(_))),
        "{:?}",
        results[1]
    );
}

pub async fn invalid_subscriptions_are_refused_with_a_clear_error(broker: SharedBroker) {
    let none: [&str; 0] = [];
    let cases = [
        (SubscriptionSpec::new(none, "g"), "no topics"),
        (SubscriptionSpec::new(["t"], " "), "consumer group is empty"),
        (SubscriptionSpec::new(["bad topic"], "g"), "bad topic"),
        (spec("t", "g").with_concurrency(0), "concurrency"),
        (spec("t", "g").with_prefetch(0), "prefetch"),
    ];
    for (bad, expected) in cases {
        let err = broker
            .subscribe(bad)
            .await
            .err()
            .expect("subscribe should fail");
        assert!(matches!(err, Error::InvalidSubscription(_)), "{err:?}");
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
    }
}

pub async fn group_members_share_the_work(broker: SharedBroker) {
    if !requires(&broker, "consumer groups", |c| c.consumer_groups) {
        return;
    }
    let topic = unique("share");
    let tallies = [Tally::default(), Tally::default()];
    let mut consumers = Vec::new();
    for tally in &tallies {
        let tally = tally.clone();
        let handler = handler_fn(move |r| {
            let tally = tally.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                tally.record(&r.message.id);
                Ok(())
            }
        });
        let spec = spec(&topic, "workers").with_prefetch(5).with_concurrency(2);
        let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), quick_retries(3))
            .await
            .unwrap();
        consumer.ready().wait(WAIT).await.expect("member receiving");
        consumers.push(consumer);
    }
    for consumer in &consumers {
        consumer
            .ready()
            .wait(WAIT)
            .await
            .expect("both members receiving");
    }
    let ids = publish_keyed(&broker, &topic, 200).await;
    wait_until("200 messages across both members", || {
        tallies[0].distinct() + tallies[1].distinct() >= 200
    })
    .await;
    for consumer in consumers {
        consumer.stop().await.unwrap();
    }
    let (a, b) = (tallies[0].snapshot(), tallies[1].snapshot());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members should get work: {} / {}",
        a.len(),
        b.len()
    );
    let both: HashSet<_> = a.keys().filter(|id| b.contains_key(*id)).collect();
    assert!(
        both.is_empty(),
        "{} messages went to both members",
        both.len()
    );
    let all: HashSet<String> = a.keys().chain(b.keys()).cloned().collect();
    assert_eq!(all, ids.into_iter().collect::<HashSet<_>>());
}

pub async fn every_group_receives_every_message(broker: SharedBroker) {
    if !requires(&broker, "fan-out to several groups", |c| c.fan_out) {
        return;
    }
    let topic = unique("fan-out");
    let mut billing = broker.subscribe(spec(&topic, "billing")).await.unwrap();
    let mut shipping = broker.subscribe(spec(&topic, "shipping")).await.unwrap();
    let ids = publish_numbered(&broker, &topic, 20, Some("k")).await;
    for sub in [&mut billing, &mut shipping] {
        let mut got = Vec::new();
        for _ in 0..ids.len() {
            let delivery = recv(sub, "a fanned-out message").await;
            got.push(delivery.message.id.clone());
            delivery.ack().await.unwrap();
        }
        assert_eq!(got, ids);
    }
    billing.close().await.unwrap();
    shipping.close().await.unwrap();
}

pub async fn nack_redelivers_with_attempt_incremented(broker: SharedBroker) {
    if !requires(&broker, "redelivery", |c| c.redelivery) {
        return;
    }
    let topic = unique("nack");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let id = broker
        .publish(Message::text(&topic, "again"))
        .await
        .unwrap()
        .id;
    let first = recv(&mut sub, "the first delivery").await;
    assert_eq!((first.message.id.as_str(), first.attempt), (id.as_str(), 1));
    first.nack(None).await.unwrap();
    let second = recv(&mut sub, "the redelivery").await;
    assert_eq!(
        (second.message.id.as_str(), second.attempt),
        (id.as_str(), 2)
    );
    assert_eq!(
        second.message.topic, topic,
        "a redelivered message keeps its topic"
    );
    assert!(second.meta.redelivered);
    second.nack(None).await.unwrap();
    let third = recv(&mut sub, "the second redelivery").await;
    assert_eq!(third.attempt, 3);
    third.ack().await.unwrap();
    expect_nothing(
        &mut sub,
        Duration::from_millis(200),
        "the message was acknowledged",
    )
    .await;
    sub.close().await.unwrap();
}

pub async fn nack_with_delay_waits_before_redelivery(broker: SharedBroker) {
    if !requires(&broker, "delayed redelivery", |c| {
        c.redelivery && c.delayed_redelivery
    }) {
        return;
    }
    let topic = unique("delay");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    broker
        .publish(Message::text(&topic, "later"))
        .await
        .unwrap();
    let first = recv(&mut sub, "the first delivery").await;
    let nacked_at = Instant::now();
    first.nack(Some(Duration::from_millis(300))).await.unwrap();
    let second = recv(&mut sub, "the delayed redelivery").await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= Duration::from_millis(290),
        "redelivered after only {waited:?}"
    );
    assert_eq!(second.attempt, 2);
    second.ack().await.unwrap();
    sub.close().await.unwrap();
}

pub async fn reject_does_not_redeliver(broker: SharedBroker) {
    if !requires(&broker, "acknowledgements", |c| c.acknowledgements) {
        return;
    }
    let topic = unique("reject");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let bad = broker
        .publish(Message::text(&topic, "poison"))
        .await
        .unwrap()
        .id;
    recv(&mut sub, "the poison message")
        .await
        .reject()
        .await
        .unwrap();
    let good = broker
        .publish(Message::text(&topic, "fine"))
        .await
        .unwrap()
        .id;
    let next = recv(&mut sub, "the next message").await;
    assert_eq!(
        next.message.id, good,
        "the rejected message {bad} came back"
    );
    next.ack().await.unwrap();
    expect_nothing(
        &mut sub,
        Duration::from_millis(200),
        "both messages are settled",
    )
    .await;
    sub.close().await.unwrap();
}

/// Deliveries held together and settled in a scrambled order, all at once, each get what they
/// were given: acknowledged ones never come back (not in this subscription, not in the next),
/// released ones come back once, rejected ones never.
pub async fn settlements_in_any_order_each_take_effect(broker: SharedBroker) {
    if !requires(&broker, "redelivery", |c| c.redelivery) {
        return;
    }
    const COUNT: usize = 30;
    let topic = unique("scrambled");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    publish_numbered(&broker, &topic, COUNT, None).await;
    let mut held = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        held.push(recv(&mut sub, "the held messages").await);
    }
    // A fixed scramble: every seventh position, so neighbours are settled far apart.
    let order: Vec<usize> = (0..COUNT).map(|i| (i * 7) % COUNT).collect();
    let mut slots: Vec<Option<_>> = held.into_iter().map(Some).collect();
    let mut released = HashSet::new();
    let mut settles = order.into_iter().map(|i| {
        let delivery = slots[i].take().expect("each position once");
        let n = number_of(&delivery.message);
        if n.is_multiple_of(3) {
            released.insert(n);
        }
        async move {
            match n % 3 {
                0 => delivery.release().await,
                1 => delivery.ack().await,
                _ => delivery.reject().await,
            }
            .unwrap_or_else(|err| panic!("settling message {n}: {err}"))
        }
    });
    // The first half one after the other (each behind unsettled ones), the rest all at once.
    for settle in settles.by_ref().take(COUNT / 2) {
        settle.await;
    }
    futures::future::join_all(settles).await;
    let mut again = HashSet::new();
    while again.len() < released.len() {
        let delivery = recv(&mut sub, "the released messages, again").await;
        let n = number_of(&delivery.message);
        assert!(
            released.contains(&n),
            "message {n} came back but was not released"
        );
        assert!(again.insert(n), "released message {n} came back twice");
        delivery.ack().await.unwrap();
    }
    expect_nothing(
        &mut sub,
        Duration::from_millis(300),
        "every message is settled",
    )
    .await;
    sub.close().await.unwrap();
    let mut next = broker.subscribe(spec(&topic, "g")).await.unwrap();
    expect_nothing(
        &mut next,
        Duration::from_millis(500),
        "acknowledged messages stay acknowledged after the subscription closed",
    )
    .await;
    next.close().await.unwrap();
}

pub async fn unsettled_delivery_comes_back_after_the_subscription_closes(broker: SharedBroker) {
    if !requires(&broker, "acknowledgements", |c| c.acknowledgements) {
        return;
    }
    let topic = unique("unsettled");
    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let id = broker
        .publish(Message::text(&topic, "keep me"))
        .await
        .unwrap()
        .id;
    let delivery = recv(&mut sub, "the message").await;
    drop(delivery);
    sub.close().await.unwrap();
    let mut again = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let delivery = recv(&mut again, "the unsettled message, again").await;
    assert_eq!(delivery.message.id, id);
    delivery.ack().await.unwrap();
    again.close().await.unwrap();
}

pub async fn failing_handler_does_not_ack(broker: SharedBroker) {
    if !requires(&broker, "redelivery", |c| c.redelivery) {
        return;
    }
    let topic = unique("failing");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let handler = handler_fn(move |r| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(r.attempt);
            if r.attempt == 1 {
                Err(HandlerError::retryable("first attempt fails"))
            } else {
                Ok(())
            }
        }
    });
    let consumer = Consumer::start(
        broker.clone(),
        spec(&topic, "g"),
        Arc::new(handler),
        quick_retries(3),
    )
    .await
    .unwrap();
    broker
        .publish(Message::text(&topic, "flaky"))
        .await
        .unwrap();
    wait_until("the retried attempt", || {
        attempts.lock().unwrap().len() >= 2
    })
    .await;
    let report = consumer.stop().await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    assert_eq!(
        (
            report.stats.failed,
            report.stats.retried,
            report.stats.succeeded
        ),
        (1, 1, 1)
    );
}

pub async fn exhausted_retries_go_to_the_dead_letter_topic(broker: SharedBroker) {
    if !requires(&broker, "redelivery", |c| c.redelivery) {
        return;
    }
    let topic = unique("exhausted");
    let dead_topic = format!("{topic}.dlq");
    // Subscribed first, so brokers that keep nothing for absent subscribers keep it too.
    let mut dead = broker
        .subscribe(spec(&dead_topic, "inspect"))
        .await
        .unwrap();
    let calls = Tally::default();
    let counted = calls.clone();
    let handler = handler_fn(move |r| {
        counted.record(&r.message.id);
        async { Err(HandlerError::retryable("card declined").with_kind("PaymentError")) }
    });
    let consumer = Consumer::start(
        broker.clone(),
        spec(&topic, "g"),
        Arc::new(handler),
        quick_retries(2),
    )
    .await
    .unwrap();
    let sent = Message::text(&topic, "doomed")
        .with_key("k-9")
        .with_header("tenant", "eu");
    broker.publish(sent.clone()).await.unwrap();
    let letter = recv(&mut dead, "the dead letter").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = consumer.stop().await.unwrap();
    assert_eq!(
        calls.total(),
        3,
        "1 attempt + 2 retries, then dead-lettered"
    );
    let s = report.stats;
    assert_eq!((s.retried, s.rejected, s.dead_lettered), (2, 1, 1));

    let m = &letter.message;
    assert_eq!(
        (m.id.as_str(), m.key.as_deref(), &m.payload),
        (sent.id.as_str(), Some("k-9"), &sent.payload)
    );
    let header = |name: &str| m.headers.get(name).map(String::as_str);
    assert_eq!(header("tenant"), Some("eu"));
    assert_eq!(header(polybus::wire::DLQ_ERROR), Some("card declined"));
    assert_eq!(header(polybus::wire::DLQ_ERROR_TYPE), Some("PaymentError"));
    assert_eq!(header(polybus::wire::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(header(polybus::wire::DLQ_TOPIC), Some(topic.as_str()));
    let first: i64 = header(polybus::wire::DLQ_FIRST_FAILURE)
        .unwrap()
        .parse()
        .unwrap();
    let last: i64 = header(polybus::wire::DLQ_LAST_FAILURE)
        .unwrap()
        .parse()
        .unwrap();
    assert!(first <= last);
    letter.ack().await.unwrap();
    dead.close().await.unwrap();
}

pub async fn a_permanent_failure_skips_the_retries(broker: SharedBroker) {
    let topic = unique("permanent");
    let mut dead = broker
        .subscribe(spec(&format!("{topic}.dlq"), "inspect"))
        .await
        .unwrap();
    let calls = Tally::default();
    let counted = calls.clone();
    let handler = handler_fn(move |r| {
        counted.record(&r.message.id);
        async { Err(HandlerError::permanent("payload fails validation")) }
    });
    let consumer = Consumer::start(
        broker.clone(),
        spec(&topic, "g"),
        Arc::new(handler),
        quick_retries(5),
    )
    .await
    .unwrap();
    broker.publish(Message::text(&topic, "bad")).await.unwrap();
    let letter = recv(&mut dead, "the dead letter").await;
    assert_eq!(
        letter
            .message
            .headers
            .get(polybus::wire::DLQ_ERROR)
            .map(String::as_str),
        Some("payload fails validation")
    );
    letter.ack().await.unwrap();
    let report = consumer.stop().await.unwrap();
    assert_eq!(calls.total(), 1, "no retry for a permanent failure");
    assert_eq!((report.stats.retried, report.stats.dead_lettered), (0, 1));
    dead.close().await.unwrap();
}

pub async fn order_per_key_is_kept_under_concurrency(broker: SharedBroker) {
    let topic = unique("ordering");
    let seen: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let record = seen.clone();
    let handler = handler_fn(move |r| {
        let record = record.clone();
        async move {
            if fastrand::u8(..4) == 0 {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(..2000))).await;
            }
            let key = r.message.key.clone().unwrap();
            record
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push(number_of(&r.message));
            Ok(())
        }
    });
    let spec = spec(&topic, "g").with_concurrency(8).with_prefetch(64);
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), quick_retries(3))
        .await
        .unwrap();
    let keys = 10;
    let per_key = 50;
    let messages: Vec<Message> = (0..per_key)
        .flat_map(|n| {
            let topic = topic.clone();
            (0..keys).map(move |k| {
                Message::json(&topic, &serde_json::json!({ "n": n }))
                    .unwrap()
                    .with_key(format!("key-{k}"))
            })
        })
        .collect();
    for receipt in broker.publish_batch(messages).await {
        receipt.unwrap();
    }
    wait_until("every keyed message", || {
        seen.lock().unwrap().values().map(Vec::len).sum::<usize>() >= keys * per_key as usize
    })
    .await;
    consumer.stop().await.unwrap();
    for (key, numbers) in seen.lock().unwrap().iter() {
        assert_eq!(
            *numbers,
            (0..per_key).collect::<Vec<u64>>(),
            "order of {key}"
        );
    }
}

pub async fn stop_drains_in_flight_work_and_loses_nothing(broker: SharedBroker) {
    if !requires(&broker, "acknowledgements", |c| c.acknowledgements) {
        return;
    }
    let topic = unique("drain");
    let tally = Tally::default();
    let make_handler = |tally: Tally| {
        handler_fn(move |r| {
            let tally = tally.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                tally.record(&r.message.id);
                Ok(())
            }
        })
    };
    let spec = spec(&topic, "g").with_concurrency(4).with_prefetch(20);
    let first = Consumer::start(
        broker.clone(),
        spec.clone(),
        Arc::new(make_handler(tally.clone())),
        quick_retries(3),
    )
    .await
    .unwrap();
    let ids = publish_numbered(&broker, &topic, 300, None).await;
    wait_until("some progress", || tally.distinct() >= 40).await;
    let report = first.stop().await.unwrap();
    assert!(
        report.drained,
        "in-flight handlers should finish within the drain timeout"
    );
    assert_eq!(report.stats.released, 0);
    let handled_by_first = tally.distinct();
    assert!(
        handled_by_first < ids.len(),
        "stopped too late to test anything"
    );

    let second = Consumer::start(
        broker.clone(),
        spec,
        Arc::new(make_handler(tally.clone())),
        quick_retries(3),
    )
    .await
    .unwrap();
    wait_until("the rest after restart", || tally.distinct() >= ids.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.stop().await.unwrap();
    let counts = tally.snapshot();
    assert_eq!(counts.len(), ids.len(), "every message handled");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "acknowledged messages were delivered again: {twice:?}"
    );
}

pub async fn stop_after_drain_timeout_gives_unfinished_work_back(broker: SharedBroker) {
    if !requires(&broker, "acknowledgements", |c| c.acknowledgements) {
        return;
    }
    let topic = unique("abandon");
    let started = Tally::default();
    let marker = started.clone();
    let stuck = handler_fn(move |r| {
        marker.record(&r.message.id);
        async {
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let options = ConsumerOptions {
        drain_timeout: Duration::from_millis(100),
        ..quick_retries(3)
    };
    let consumer = Consumer::start(broker.clone(), spec(&topic, "g"), Arc::new(stuck), options)
        .await
        .unwrap();
    let id = broker
        .publish(Message::text(&topic, "slow"))
        .await
        .unwrap()
        .id;
    wait_until("the handler to start", || started.distinct() == 1).await;
    let report = consumer.stop().await.unwrap();
    assert!(!report.drained);
    assert_eq!(report.stats.released, 1);
    assert_eq!(report.stats.succeeded, 0);

    let mut sub = broker.subscribe(spec(&topic, "g")).await.unwrap();
    let again = recv(&mut sub, "the abandoned message").await;
    assert_eq!(again.message.id, id);
    assert_eq!(
        again.attempt, 1,
        "a message given back unprocessed does not count an attempt"
    );
    again.ack().await.unwrap();
    sub.close().await.unwrap();
}

pub async fn ten_thousand_messages_are_consumed_exactly_once(broker: SharedBroker) {
    let topic = unique("ten-thousand");
    let tally = Tally::default();
    let record = tally.clone();
    let handler = handler_fn(move |r| {
        record.record(&r.message.id);
        async { Ok(()) }
    });
    let spec = spec(&topic, "g").with_concurrency(16).with_prefetch(500);
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), quick_retries(3))
        .await
        .unwrap();
    let ids = publish_numbered(&broker, &topic, 10_000, None).await;
    wait_until("10,000 messages", || tally.distinct() >= ids.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = consumer.stop().await.unwrap();
    let counts = tally.snapshot();
    assert_eq!(counts.len(), 10_000);
    assert!(
        counts.values().all(|n| *n == 1),
        "some messages were handled twice"
    );
    assert!(ids.iter().all(|id| counts.contains_key(id)));
    assert_eq!(report.stats.succeeded, 10_000);
    assert_eq!(report.stats.failed, 0);
}

pub async fn replay_from_an_offset(broker: SharedBroker) {
    if !requires(&broker, "replay from an integer offset", |c| {
        c.offset_replay
    }) {
        return;
    }
    let topic = unique("replay-offset");
    let mut live = broker.subscribe(spec(&topic, "live")).await.unwrap();
    publish_numbered(&broker, &topic, 10, Some("k")).await;
    let mut offsets = Vec::new();
    for _ in 0..10 {
        let delivery = recv(&mut live, "a live message").await;
        offsets.push(
            delivery
                .meta
                .offset
                .expect("replayable backends report offsets"),
        );
        delivery.ack().await.unwrap();
    }
    live.close().await.unwrap();

    let from = offsets[5];
    let mut replay = broker
        .subscribe(spec(&topic, "auditor").with_start(StartPosition::Offset(from)))
        .await
        .unwrap();
    for expected in 5..10 {
        let delivery = recv(&mut replay, "a replayed message").await;
        assert_eq!(number_of(&delivery.message), expected);
        delivery.ack().await.unwrap();
    }
    expect_nothing(
        &mut replay,
        Duration::from_millis(200),
        "replay ends at the head",
    )
    .await;
    replay.close().await.unwrap();
}

pub async fn replay_from_a_timestamp(broker: SharedBroker) {
    if !requires(&broker, "replay", |c| c.replay) {
        return;
    }
    let topic = unique("replay-time");
    publish_numbered(&broker, &topic, 5, Some("k")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = polybus::message::now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let later: Vec<Message> = (5..8)
        .map(|n| {
            Message::json(&topic, &serde_json::json!({ "n": n }))
                .unwrap()
                .with_key("k")
        })
        .collect();
    for receipt in broker.publish_batch(later).await {
        receipt.unwrap();
    }
    let mut replay = broker
        .subscribe(spec(&topic, "auditor").with_start(StartPosition::Timestamp(cut)))
        .await
        .unwrap();
    for expected in 5..8 {
        let delivery = recv(&mut replay, "a message after the cut").await;
        assert_eq!(number_of(&delivery.message), expected);
        delivery.ack().await.unwrap();
    }
    expect_nothing(
        &mut replay,
        Duration::from_millis(200),
        "nothing after the head",
    )
    .await;
    replay.close().await.unwrap();
}
