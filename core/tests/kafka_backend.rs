//! Kafka-specific behaviour against the real broker `make test` starts on 127.0.0.1:9092:
//! partition sharing, hand-over without loss, redelivery after restart, order at volume, and
//! the wire format as plain Kafka clients see it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kafka_url, publish_blocking, unique};
use polybus::{
    BlockingPublish, Consumer, ConsumerOptions, HandlerError, Message, RetryPolicy, SharedBroker,
    SubscriptionSpec, handler_fn,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(60);

fn bootstrap() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A plain rdkafka consumer of `topic` from its start, in a group of its own (`{topic}.{group}`).
fn plain_consumer(topic: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{topic}.{group}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

async fn broker() -> SharedBroker {
    polybus::connect_url(&kafka_url())
        .await
        .expect("test Kafka broker")
}

fn options() -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy::fixed(3, Duration::from_millis(20)),
        drain_timeout: Duration::from_secs(30),
        ..ConsumerOptions::default()
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish_keyed(
    broker: &SharedBroker,
    topic: &str,
    count: usize,
    keys: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            Message::json(topic, &serde_json::json!({ "n": n / keys }))
                .unwrap()
                .with_key(format!("key-{}", n % keys))
        })
        .collect();
    for chunk in messages.chunks(10_000) {
        ids.extend(chunk.iter().map(|m| m.id.clone()));
        for receipt in broker.publish_batch(chunk.to_vec()).await {
            receipt.expect("publish");
        }
    }
    ids
}

/// Records, per consumer, the message ids handled and the partitions they came from.
#[derive(Clone, Default)]
struct Seen {
    ids: Arc<Mutex<HashMap<String, u32>>>,
    partitions: Arc<Mutex<HashSet<i32>>>,
}

impl Seen {
    fn handler(&self, delay: Duration) -> Arc<dyn polybus::Handler> {
        let seen = self.clone();
        Arc::new(handler_fn(move |r| {
            let seen = seen.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                *seen
                    .ids
                    .lock()
                    .unwrap()
                    .entry(r.message.id.clone())
                    .or_default() += 1;
                seen.partitions
                    .lock()
                    .unwrap()
                    .insert(r.meta.partition.unwrap());
                Ok(())
            }
        }))
    }

    fn distinct(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_in_one_group_split_the_partitions() {
    let broker = broker().await;
    let topic = unique("split");
    let group = format!("{topic}.g");
    let (a, b) = (Seen::default(), Seen::default());
    let spec = SubscriptionSpec::new([topic.as_str()], group.as_str()).with_concurrency(4);
    let first = Consumer::start(
        broker.clone(),
        spec.clone(),
        a.handler(Duration::ZERO),
        options(),
    )
    .await
    .unwrap();
    first.ready().wait(WAIT).await.unwrap();
    let second = Consumer::start(broker.clone(), spec, b.handler(Duration::ZERO), options())
        .await
        .unwrap();
    second.ready().wait(WAIT).await.unwrap();
    first.ready().wait(WAIT).await.unwrap();

    let ids = publish_keyed(&broker, &topic, 400, 400).await;
    wait_until("400 messages", || a.distinct() + b.distinct() >= ids.len()).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    let (pa, pb) = (
        a.partitions.lock().unwrap().clone(),
        b.partitions.lock().unwrap().clone(),
    );
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "both members get partitions: {pa:?} / {pb:?}"
    );
    assert!(
        pa.is_disjoint(&pb),
        "a partition went to both members: {pa:?} / {pb:?}"
    );
    assert_eq!(pa.union(&pb).count(), 4);
    let all: HashSet<String> = a
        .ids
        .lock()
        .unwrap()
        .keys()
        .chain(b.ids.lock().unwrap().keys())
        .cloned()
        .collect();
    assert_eq!(all.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_consumer_hands_its_partitions_over_without_loss() {
    let broker = broker().await;
    let topic = unique("handover");
    let group = format!("{topic}.g");
    let (a, b) = (Seen::default(), Seen::default());
    let spec = SubscriptionSpec::new([topic.as_str()], group.as_str()).with_concurrency(8);
    let leaving = Consumer::start(
        broker.clone(),
        spec.clone(),
        a.handler(Duration::from_millis(1)),
        options(),
    )
    .await
    .unwrap();
    leaving.ready().wait(WAIT).await.unwrap();
    let staying = Consumer::start(
        broker.clone(),
        spec,
        b.handler(Duration::from_millis(1)),
        options(),
    )
    .await
    .unwrap();
    staying.ready().wait(WAIT).await.unwrap();

    let ids = publish_keyed(&broker, &topic, 3000, 64).await;
    wait_until("progress on the leaving consumer", || a.distinct() >= 100).await;
    let report = leaving.stop().await.unwrap();
    assert!(report.drained);
    wait_until("the rest on the staying consumer", || {
        let all: HashSet<String> = a
            .ids
            .lock()
            .unwrap()
            .keys()
            .chain(b.ids.lock().unwrap().keys())
            .cloned()
            .collect();
        all.len() >= ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    staying.stop().await.unwrap();
    let mut counts: HashMap<String, u32> = a.ids.lock().unwrap().clone();
    for (id, n) in b.ids.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_default() += n;
    }
    let missing = ids.iter().filter(|id| !counts.contains_key(*id)).count();
    assert_eq!(missing, 0, "messages lost in the hand-over");
    let twice = counts.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "a graceful hand-over commits everything processed: nothing comes twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_message_is_delivered_again_after_a_restart() {
    let broker = broker().await;
    let topic = unique("restart");
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"));
    let failing = handler_fn(|_| async { Err(HandlerError::retryable("downstream unavailable")) });
    // The retry waits in the group's retry topic: the restarted consumer gets it once due.
    let slow_retries = ConsumerOptions {
        retry: RetryPolicy::fixed(10, Duration::from_secs(3)),
        drain_timeout: Duration::from_secs(5),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::start(
        broker.clone(),
        spec.clone(),
        Arc::new(failing),
        slow_retries,
    )
    .await
    .unwrap();
    let id = broker
        .publish(Message::text(&topic, "charge"))
        .await
        .unwrap()
        .id;
    let deadline = Instant::now() + WAIT;
    while consumer.stats().failed == 0 {
        assert!(Instant::now() < deadline, "the handler never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.stop().await.unwrap();

    let seen = Seen::default();
    let restarted = Consumer::start(
        broker.clone(),
        spec,
        seen.handler(Duration::ZERO),
        options(),
    )
    .await
    .unwrap();
    wait_until("the failed message after the restart", || {
        seen.distinct() == 1
    })
    .await;
    restarted.stop().await.unwrap();
    assert!(seen.ids.lock().unwrap().contains_key(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_keyed_messages_keep_order_and_count_once() {
    let broker = broker().await;
    let topic = unique("volume");
    let order: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let record = order.clone();
    let handler = handler_fn(move |r| {
        let record = record.clone();
        async move {
            let n = r.message.decode_json::<serde_json::Value>()?["n"]
                .as_u64()
                .unwrap();
            record
                .lock()
                .unwrap()
                .entry(r.message.key.clone().unwrap())
                .or_default()
                .push(n);
            Ok(())
        }
    });
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"))
        .with_concurrency(32)
        .with_prefetch(2000);
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options())
        .await
        .unwrap();
    let total = 100_000;
    let keys = 100;
    let started = Instant::now();
    publish_keyed(&broker, &topic, total, keys).await;
    let produced = started.elapsed();
    let counted = || order.lock().unwrap().values().map(Vec::len).sum::<usize>();
    wait_until("100,000 messages", || counted() >= total).await;
    let consumed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = consumer.stop().await.unwrap();
    eprintln!(
        "kafka volume: produced {total} in {produced:?} ({:.0} msg/s), produced+consumed in {consumed:?} ({:.0} msg/s)",
        total as f64 / produced.as_secs_f64(),
        total as f64 / consumed.as_secs_f64()
    );
    assert_eq!(counted(), total, "every message exactly once");
    assert_eq!(report.stats.succeeded, total as u64);
    for (key, numbers) in order.lock().unwrap().iter() {
        let expected: Vec<u64> = (0..(total / keys) as u64).collect();
        assert_eq!(numbers, &expected, "order of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_kafka_clients_see_native_headers_and_polybus_reads_plain_records() {
    let broker = broker().await;
    let topic = unique("wire");
    let sent = Message::json(&topic, &serde_json::json!({"order_id": 7}))
        .unwrap()
        .with_id("order-7")
        .with_key("customer-1")
        .with_header("tenant", "eu");
    broker.publish(sent.clone()).await.unwrap();

    let plain = plain_consumer(&topic, "plain");
    let record = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "plain consumer got nothing");
            if let Some(result) = plain.poll(Duration::from_millis(200)) {
                break result.unwrap().detach();
            }
        }
    })
    .await
    .unwrap();
    use rdkafka::Message as _;
    assert_eq!(record.payload().unwrap(), &sent.payload[..]);
    assert_eq!(record.key().unwrap(), b"customer-1");
    let headers: HashMap<String, String> = record
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8_lossy(h.value.unwrap()).into_owned(),
            )
        })
        .collect();
    assert_eq!(headers["polybus-id"], "order-7");
    assert_eq!(headers["polybus-content-type"], "application/json");
    assert_eq!(headers["tenant"], "eu");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let foreign = unique("foreign");
    broker
        .publish(Message::text(&foreign, "create the topic"))
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(&foreign).payload(r#"{"from": "a plain producer"}"#),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(
            [foreign.as_str()],
            format!("{foreign}.g"),
        ))
        .await
        .unwrap();
    let mut payloads = vec![];
    for _ in 0..2 {
        let delivery = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        payloads.push((
            delivery.message.content_type.clone(),
            delivery.message.id.clone(),
        ));
        delivery.ack().await.unwrap();
    }
    sub.close().await.unwrap();
    let (content_type, id) = payloads
        .iter()
        .find(|(ct, _)| ct == "application/json")
        .expect("plain JSON record");
    assert_eq!(content_type, "application/json");
    assert!(
        id.starts_with(&foreign),
        "a plain record gets a stable id: {id}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_fails_publishes_with_a_clear_error() {
    let broker = polybus::connect_url(
        "kafka://127.0.0.1:1?message.timeout.ms=2000&polybus.topic.create=false",
    )
    .await
    .unwrap();
    let err = broker
        .publish(Message::text("nowhere", "x"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("kafka"), "{text}");
    let started = Instant::now();
    let err = publish_blocking(
        &broker,
        Message::text("nowhere", "x"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, polybus::Error::Timeout { after, .. } if after == Duration::from_millis(500)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A caller blocking on its publish (PHP, Python's `send_sync`) does not wait out `linger.ms`,
/// and the messages queued before its own are delivered first; a topic not created yet is
/// handed back for `publish`, which creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_publish_does_not_wait_out_the_linger_and_keeps_order() {
    let broker = polybus::connect_url(&format!("{}&linger.ms=5000", kafka_url()))
        .await
        .unwrap();
    let topic = unique("blocking");
    let first = Message::text(&topic, "first").with_key("k");
    let publisher = broker.clone();
    let handed_back = tokio::task::spawn_blocking(move || publisher.publish_blocking(first, WAIT))
        .await
        .unwrap();
    let BlockingPublish::Declined(first) = handed_back else {
        panic!("a topic not created yet is handed back");
    };
    broker.publish(first).await.unwrap();
    // Queued (each polled once: its record is in librdkafka's queue), waiting out the linger.
    let mut earlier: Vec<_> = (0..5)
        .map(|n| {
            let message = Message::text(&topic, format!("earlier {n}")).with_key("k");
            Box::pin(futures::future::maybe_done(broker.publish(message)))
        })
        .collect();
    for publish in &mut earlier {
        let _ = futures::poll!(publish.as_mut());
    }
    let started = Instant::now();
    let receipt = publish_blocking(
        &broker,
        Message::text(&topic, "blocking").with_key("k"),
        WAIT,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the blocking publish took {took:?}: it waited out linger.ms=5000"
    );
    futures::future::join_all(earlier.iter_mut()).await;
    let offsets: Vec<i64> = earlier
        .iter_mut()
        .map(|publish| {
            publish
                .as_mut()
                .take_output()
                .unwrap()
                .unwrap()
                .offset
                .unwrap()
        })
        .collect();
    let own = receipt.offset.unwrap();
    assert!(
        offsets.iter().all(|offset| *offset < own),
        "earlier messages of the key come first: {offsets:?} then {own}"
    );
    broker.close().await.unwrap();
}

/// A blocking publish that finds librdkafka's queue still full at its deadline fails as a
/// `Timeout` naming the caller's bound, and was not queued: what filled the queue is delivered
/// and the next blocking publish goes through (one key: one partition, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_publish_to_a_full_queue_times_out_at_its_bound() {
    let broker = polybus::connect_url(&format!(
        "{}&linger.ms=1500&queue.buffering.max.messages=1",
        kafka_url()
    ))
    .await
    .unwrap();
    let topic = unique("blocking-full");
    // Creates the topic (a blocking publish hands a topic not created yet back).
    broker
        .publish(Message::text(&topic, "created").with_key("k"))
        .await
        .unwrap();
    // Fills the queue of one message; it waits out the linger there. Polled for a while: the
    // first message may still count against the queue for a moment after its acknowledgement.
    let mut queued = Box::pin(futures::future::maybe_done(
        broker.publish(Message::text(&topic, "queued").with_key("k")),
    ));
    for _ in 0..20 {
        let _ = futures::poll!(queued.as_mut());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let bound = Duration::from_millis(300);
    let started = Instant::now();
    let err = publish_blocking(
        &broker,
        Message::text(&topic, "refused").with_key("k"),
        bound,
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, polybus::Error::Timeout { after, .. } if after == bound),
        "a full queue at the deadline is a Timeout after the caller's bound: {err:?}"
    );
    assert!(
        waited >= bound && waited < Duration::from_millis(1400),
        "waited {waited:?} for a bound of {bound:?}"
    );

    queued.as_mut().await;
    queued.as_mut().take_output().unwrap().unwrap();
    publish_blocking(&broker, Message::text(&topic, "next").with_key("k"), WAIT)
        .await
        .unwrap();

    let plain = plain_consumer(&topic, "check");
    let bodies = tokio::task::spawn_blocking(move || {
        use rdkafka::Message as _;
        let deadline = Instant::now() + WAIT;
        let mut bodies = Vec::new();
        let mut last = Instant::now();
        // Until the three arrived and then nothing else for 2 s (the refused one never queued).
        while bodies.len() < 3 || last.elapsed() < Duration::from_secs(2) {
            assert!(Instant::now() < deadline, "only {bodies:?} arrived");
            if let Some(result) = plain.poll(Duration::from_millis(200)) {
                let record = result.unwrap();
                bodies.push(String::from_utf8(record.payload().unwrap().to_vec()).unwrap());
                last = Instant::now();
            }
        }
        bodies
    })
    .await
    .unwrap();
    assert_eq!(
        bodies,
        ["created", "queued", "next"],
        "the refused message was not queued"
    );
    broker.close().await.unwrap();
}

/// A blocking publish on a runtime's own thread, while a task of that runtime waits for a
/// batch that fills librdkafka's local queue: the task cannot be polled, so the reports it was
/// woken for are served without it, and the blocking publish gets its room.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_publish_is_not_held_up_by_a_task_its_thread_cannot_poll() {
    let broker = polybus::connect_url(&format!("{}&queue.buffering.max.messages=20", kafka_url()))
        .await
        .unwrap();
    let topic = unique("blocking-parked");
    broker
        .publish(Message::text(&topic, "created"))
        .await
        .unwrap();
    let batch = (0..20)
        .map(|n| Message::text(&topic, format!("batch {n}")))
        .collect();
    let mut batch = Box::pin(broker.publish_batch(batch));
    assert!(
        futures::poll!(batch.as_mut()).is_pending(),
        "the batch is queued and waits for its reports"
    );
    // This thread now blocks: the runtime cannot poll the batch.
    let started = Instant::now();
    let published =
        broker.publish_blocking(Message::text(&topic, "blocking"), Duration::from_secs(10));
    let took = started.elapsed();
    assert!(
        matches!(published, BlockingPublish::Done(Ok(_))),
        "the blocking publish failed after {took:?}: {published:?}"
    );
    assert!(took < Duration::from_secs(5), "it took {took:?}");
    for receipt in batch.await {
        receipt.unwrap();
    }
    broker.close().await.unwrap();
}
