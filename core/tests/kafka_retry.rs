//! Delayed redelivery on Kafka through the group's retry topic, against the real broker
//! `make test` starts on 127.0.0.1:9092: the delay is kept without holding back the partition,
//! survives a crash with its attempt count, and exhausted retries still dead-letter with the
//! original record's coordinates.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kafka_url, unique};
use polybus::message::now_ms;
use polybus::{
    Consumer, ConsumerOptions, Delivery, HandlerError, Message, RetryPolicy, SharedBroker,
    Subscription, SubscriptionSpec, handler_fn, wire,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

/// Set in the child process of the crash test: the topic and group it consumes.
const CRASH_CHILD_ENV: &str = "POLYBUS_KAFKA_RETRY_CRASH_CHILD";

/// The test URL with short group sessions, so a member that died without leaving the group
/// is replaced within seconds.
fn short_session_url() -> String {
    let url = kafka_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}session.timeout.ms=6000&heartbeat.interval.ms=1000")
}

fn bootstrap() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

async fn broker() -> SharedBroker {
    polybus::connect_url(&kafka_url())
        .await
        .expect("test Kafka broker")
}

async fn recv(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("subscription failed while waiting for {what}: {err}"),
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("nothing within {WAIT:?} while waiting for {what}"),
    }
}

async fn expect_nothing(sub: &mut Subscription, quiet: Duration, why: &str) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, sub.next()).await {
        panic!(
            "expected nothing ({why}), got {} on attempt {}",
            d.message.id, d.attempt
        );
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain Kafka client for looking at offsets; it joins no group.
fn inspector(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// The offset `group` committed on `topic`/`partition`, if any.
fn committed(inspector: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let found =
        tokio::task::block_in_place(|| inspector.committed_offsets(tpl, Duration::from_secs(10)))
            .unwrap();
    match found.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// How many records `topic` (4 partitions) holds.
fn records_in(inspector: &BaseConsumer, topic: &str) -> i64 {
    tokio::task::block_in_place(|| {
        (0..4)
            .map(|p| {
                let (low, high) = inspector
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum()
    })
}

fn internal_headers(message: &Message) -> Vec<&str> {
    [
        wire::HEADER_RETRY_DUE,
        wire::HEADER_ORIGIN_PARTITION,
        wire::HEADER_ORIGIN_OFFSET,
        wire::HEADER_TOPIC,
        wire::HEADER_TIMESTAMP,
        wire::HEADER_ATTEMPT,
    ]
    .into_iter()
    .filter(|h| message.headers.contains_key(*h))
    .collect()
}

/// One handler call: message number, attempt, when, and the delivery's partition and offset.
#[derive(Clone, Debug)]
struct Call {
    n: u64,
    attempt: u32,
    at: Instant,
    partition: i32,
    offset: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_retry_waits_without_holding_back_its_partition() {
    let broker = broker().await;
    let topic = unique("delay");
    let group = format!("{topic}.g");
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let log = calls.clone();
    let handler = handler_fn(move |r| {
        let log = log.clone();
        async move {
            let n = r.message.decode_json::<serde_json::Value>()?["n"]
                .as_u64()
                .unwrap();
            log.lock().unwrap().push(Call {
                n,
                attempt: r.attempt,
                at: Instant::now(),
                partition: r.meta.partition.unwrap(),
                offset: r.meta.offset.unwrap(),
            });
            if n == 0 && r.attempt == 1 {
                return Err(HandlerError::retryable("not yet"));
            }
            Ok(())
        }
    });
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(3, Duration::from_secs(2)),
        ..ConsumerOptions::default()
    };
    let spec = SubscriptionSpec::new([topic.as_str()], group.as_str()).with_concurrency(4);
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(handler), options)
        .await
        .unwrap();
    consumer.ready().wait(WAIT).await.unwrap();
    // One key: every message on the same partition, the failing one first.
    let count = 10;
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            Message::json(&topic, &serde_json::json!({ "n": n }))
                .unwrap()
                .with_key("one-partition")
        })
        .collect();
    for receipt in broker.publish_batch(messages).await {
        receipt.unwrap();
    }
    let retried = |calls: &[Call]| calls.iter().any(|c| c.n == 0 && c.attempt == 2);
    wait_until("the first attempts", || {
        calls.lock().unwrap().len() >= count
    })
    .await;
    let partition = calls.lock().unwrap()[0].partition;

    // While the retry waits, the partition's commit moves past every message.
    let inspector = inspector(&group);
    let mut committed_while_waiting = None;
    while !retried(&calls.lock().unwrap()) {
        if committed(&inspector, &topic, partition) == Some(count as i64) {
            committed_while_waiting = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("the retry", || retried(&calls.lock().unwrap())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = consumer.stop().await.unwrap();

    let calls = calls.lock().unwrap().clone();
    let first = calls.iter().find(|c| c.n == 0 && c.attempt == 1).unwrap();
    let retry = calls.iter().find(|c| c.n == 0 && c.attempt == 2).unwrap();
    let waited = retry.at - first.at;
    let committed_after = committed_while_waiting
        .map(|at| at - first.at)
        .expect("the partition's offset was committed past the waiting message before its retry");
    eprintln!(
        "kafka retry topic: nacked for 2 s, redelivered after {waited:?}; partition committed past it after {committed_after:?}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "redelivered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "redelivered after {waited:?}"
    );
    let others: Vec<&Call> = calls.iter().filter(|c| c.n != 0).collect();
    assert_eq!(
        others.len(),
        count - 1,
        "each other message once: {calls:?}"
    );
    assert!(
        others
            .iter()
            .all(|c| c.at < retry.at && c.partition == partition),
        "the other messages of the partition ran while the retry waited: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.n == 0).count(),
        2,
        "the failed message ran twice: {calls:?}"
    );
    assert_eq!(
        (retry.partition, retry.offset),
        (first.partition, first.offset),
        "a retry reports the original record"
    );
    let s = report.stats;
    assert_eq!((s.failed, s.retried, s.succeeded), (1, 1, count as u64));
    assert_eq!(records_in(&inspector, &format!("{group}.retry")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_survives_the_consumer_going_away_while_it_waits() {
    let broker = broker().await;
    let topic = unique("dropped");
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"));
    let sent = Message::text(&topic, "charge")
        .with_key("customer-1")
        .with_header("tenant", "eu");
    let receipt = broker.publish(sent.clone()).await.unwrap();

    let mut a = broker.subscribe(spec.clone()).await.unwrap();
    let first = recv(&mut a, "the first delivery").await;
    assert_eq!(
        (first.message.id.as_str(), first.attempt),
        (sent.id.as_str(), 1)
    );
    let nacked_ms = now_ms();
    first.nack(Some(Duration::from_secs(3))).await.unwrap();
    drop(a); // gone at once: nothing it held in memory survives

    let mut b = broker.subscribe(spec).await.unwrap();
    let again = recv(&mut b, "the retry on a fresh consumer").await;
    let received_ms = now_ms();
    eprintln!(
        "kafka retry after the consumer went away: nacked for 3 s, redelivered after {} ms",
        received_ms - nacked_ms
    );
    assert_eq!(
        (again.message.id.as_str(), again.attempt),
        (sent.id.as_str(), 2),
        "the original record came back instead of the retry"
    );
    assert!(
        received_ms >= nacked_ms + 3000,
        "redelivered {} ms after the nack",
        received_ms - nacked_ms
    );
    let m = &again.message;
    assert_eq!(
        (
            m.topic.as_str(),
            m.key.as_deref(),
            &m.payload,
            m.timestamp_ms
        ),
        (
            topic.as_str(),
            Some("customer-1"),
            &sent.payload,
            sent.timestamp_ms
        )
    );
    assert_eq!(m.headers.get("tenant").map(String::as_str), Some("eu"));
    assert_eq!(internal_headers(m), Vec::<&str>::new());
    assert_eq!(
        (again.meta.partition, again.meta.offset),
        (receipt.partition, receipt.offset)
    );
    assert!(again.meta.redelivered);
    again.ack().await.unwrap();
    expect_nothing(
        &mut b,
        Duration::from_secs(3),
        "the message was handled once",
    )
    .await;
    b.close().await.unwrap();
}

/// The crashing consumer of [`a_retry_survives_a_crash_with_its_due_time_and_attempt`], run in
/// a child process; a no-op in the normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_nacks_then_dies() {
    let Ok(names) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let (topic, group) = names.split_once(' ').unwrap();
    let broker = polybus::connect_url(&short_session_url()).await.unwrap();
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([topic], group))
        .await
        .unwrap();
    let first = recv(&mut sub, "the first delivery").await;
    assert_eq!(first.attempt, 1);
    let nacked_ms = now_ms();
    first.nack(Some(Duration::from_secs(10))).await.unwrap();
    println!("NACKED {nacked_ms}");
    // Long enough for the commit that follows the retry copy; far less than the delay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A crash: no destructor runs, nothing is closed, the group is not left.
    std::process::exit(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_survives_a_crash_with_its_due_time_and_attempt() {
    let broker = polybus::connect_url(&short_session_url()).await.unwrap();
    let topic = unique("crash");
    let group = format!("{topic}.g");
    let sent = Message::text(&topic, "charge");
    broker.publish(sent.clone()).await.unwrap();

    let exe = std::env::current_exe().unwrap();
    let names = format!("{topic} {group}");
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["crash_child_nacks_then_dies", "--exact", "--nocapture"])
            .env(CRASH_CHILD_ENV, names)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    let nacked_ms: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("NACKED "))
        .unwrap_or_else(|| {
            panic!(
                "the child did not nack: {stdout}\n{}",
                String::from_utf8_lossy(&child.stderr)
            )
        })
        .trim()
        .parse()
        .unwrap();
    assert!(child.status.success(), "child: {:?}", child.status);

    let mut b = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap();
    let again = recv(&mut b, "the retry after the crash").await;
    let received_ms = now_ms();
    eprintln!(
        "kafka retry after a crash: nacked for 10 s, redelivered after {} ms",
        received_ms - nacked_ms
    );
    assert_eq!(
        (again.message.id.as_str(), again.attempt),
        (sent.id.as_str(), 2),
        "the original record came back instead of the retry"
    );
    assert!(
        received_ms >= nacked_ms + 10_000,
        "redelivered {} ms after the nack",
        received_ms - nacked_ms
    );
    again.ack().await.unwrap();
    expect_nothing(
        &mut b,
        Duration::from_secs(3),
        "the message was handled once",
    )
    .await;
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_retries_dead_letter_with_the_original_record() {
    let broker = broker().await;
    let topic = unique("exhausted");
    let group = format!("{topic}.g");
    let dead_topic = format!("{topic}.dlq");
    let mut dead = broker
        .subscribe(SubscriptionSpec::new(
            [dead_topic.as_str()],
            format!("{dead_topic}.inspect"),
        ))
        .await
        .unwrap();
    type Seen = (u32, Instant, Option<i32>, Option<i64>, String, Vec<String>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = handler_fn(move |r| {
        let internal = internal_headers(&r.message)
            .into_iter()
            .map(str::to_owned)
            .collect();
        log.lock().unwrap().push((
            r.attempt,
            Instant::now(),
            r.meta.partition,
            r.meta.offset,
            r.message.topic.clone(),
            internal,
        ));
        async { Err(HandlerError::retryable("card declined").with_kind("PaymentError")) }
    });
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(2, Duration::from_millis(500)),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::start(
        broker.clone(),
        SubscriptionSpec::new([topic.as_str()], group.as_str()),
        Arc::new(handler),
        options,
    )
    .await
    .unwrap();
    let sent = Message::text(&topic, "doomed")
        .with_key("k-9")
        .with_header("tenant", "eu");
    let receipt = broker.publish(sent.clone()).await.unwrap();
    let letter = recv(&mut dead, "the dead letter").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = consumer.stop().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|s| s.0).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    for pair in seen.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= Duration::from_millis(490), "retried after {gap:?}");
    }
    for (attempt, _, partition, offset, seen_topic, internal) in &seen {
        assert_eq!(
            (*partition, *offset, seen_topic.as_str()),
            (receipt.partition, receipt.offset, topic.as_str()),
            "attempt {attempt} reports the original record"
        );
        assert!(internal.is_empty(), "attempt {attempt} saw {internal:?}");
    }
    let s = report.stats;
    assert_eq!((s.retried, s.rejected, s.dead_lettered), (2, 1, 1));

    let m = &letter.message;
    assert_eq!(
        (m.id.as_str(), m.key.as_deref(), &m.payload),
        (sent.id.as_str(), Some("k-9"), &sent.payload)
    );
    let header = |name: &str| m.headers.get(name).map(String::as_str);
    let partition = receipt.partition.unwrap().to_string();
    let offset = receipt.offset.unwrap().to_string();
    assert_eq!(header("tenant"), Some("eu"));
    assert_eq!(header(wire::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(header(wire::DLQ_TOPIC), Some(topic.as_str()));
    assert_eq!(header(wire::DLQ_GROUP), Some(group.as_str()));
    assert_eq!(header(wire::DLQ_PARTITION), Some(partition.as_str()));
    assert_eq!(header(wire::DLQ_OFFSET), Some(offset.as_str()));
    assert_eq!(header(wire::DLQ_ERROR), Some("card declined"));
    for internal in [
        wire::HEADER_RETRY_DUE,
        wire::HEADER_ORIGIN_PARTITION,
        wire::HEADER_ORIGIN_OFFSET,
        wire::HEADER_FIRST_FAILURE,
    ] {
        assert_eq!(header(internal), None, "{internal} in the dead letter");
    }
    let first: i64 = header(wire::DLQ_FIRST_FAILURE).unwrap().parse().unwrap();
    let last: i64 = header(wire::DLQ_LAST_FAILURE).unwrap().parse().unwrap();
    assert!(
        last - first >= 990,
        "the first failure time travels through the retry topic: {first}..{last}"
    );
    letter.ack().await.unwrap();
    dead.close().await.unwrap();
    let inspector = inspector(&group);
    assert_eq!(
        records_in(&inspector, &format!("{group}.retry")),
        2,
        "both retries went through the retry topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pattern_subscriptions_retry_and_skip_other_groups_retry_topics() {
    let broker = broker().await;
    let prefix = unique("pattern");
    let topic = format!("{prefix}.orders");
    let foreign = format!("{prefix}.other-group.retry");
    // Topics exist before the subscription, so the pattern matches them at once.
    broker.prepare_topic(&topic).await.unwrap();
    broker.prepare_topic(&foreign).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let due = (now_ms() - 1000).to_string();
    producer
        .send(
            FutureRecord::<str, str>::to(&foreign)
                .payload("another group's retry")
                .headers(OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: wire::HEADER_RETRY_DUE,
                    value: Some(due.as_str()),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let sent = broker
        .publish(Message::text(&topic, "matched"))
        .await
        .unwrap();

    let pattern = format!("^{}\\..*", prefix.replace('.', "\\."));
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([pattern], format!("{prefix}.g")))
        .await
        .unwrap();
    let first = recv(&mut sub, "the matched message").await;
    assert_eq!(
        (first.message.id.as_str(), first.attempt),
        (sent.id.as_str(), 1)
    );
    let nacked = Instant::now();
    first.nack(Some(Duration::from_millis(500))).await.unwrap();
    let again = recv(&mut sub, "the retry").await;
    assert!(nacked.elapsed() >= Duration::from_millis(490));
    assert_eq!(
        (
            again.message.id.as_str(),
            again.attempt,
            again.message.topic.as_str()
        ),
        (sent.id.as_str(), 2, topic.as_str())
    );
    again.ack().await.unwrap();
    expect_nothing(
        &mut sub,
        Duration::from_secs(2),
        "other groups' retries are not delivered",
    )
    .await;
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_waiting_retries_than_are_held_in_memory_all_come_back_once() {
    let broker = broker().await;
    let topic = unique("many");
    let count = 1500; // more than the 1000 held before the retry topic is paused
    let messages: Vec<Message> = (0..count)
        .map(|n| Message::text(&topic, format!("m{n}")))
        .collect();
    for receipt in broker.publish_batch(messages).await {
        receipt.unwrap();
    }
    let mut sub = broker
        .subscribe(SubscriptionSpec::new(
            [topic.as_str()],
            format!("{topic}.g"),
        ))
        .await
        .unwrap();
    let due: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let mut nacks = Vec::with_capacity(count);
    for _ in 0..count {
        let delivery = recv(&mut sub, "a first delivery").await;
        assert_eq!(delivery.attempt, 1);
        let due = due.clone();
        nacks.push(tokio::spawn(async move {
            let id = delivery.message.id.clone();
            let at = now_ms();
            delivery.nack(Some(Duration::from_secs(2))).await.unwrap();
            due.lock().unwrap().insert(id, at + 2000);
        }));
    }
    for nack in nacks {
        nack.await.unwrap();
    }
    let started = Instant::now();
    let mut back = HashSet::new();
    for _ in 0..count {
        let delivery = recv(&mut sub, "a retry").await;
        let now = now_ms();
        assert_eq!(delivery.attempt, 2);
        let due_ms = due.lock().unwrap()[&delivery.message.id];
        assert!(now >= due_ms, "{} ms early", due_ms - now);
        assert!(back.insert(delivery.message.id.clone()), "twice");
        delivery.ack().await.unwrap();
    }
    eprintln!(
        "kafka retry topic: {count} retries back {:?} after the last nack",
        started.elapsed()
    );
    expect_nothing(&mut sub, Duration::from_secs(1), "each retry once").await;
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_starting_from_latest_still_reads_its_whole_retry_topic() {
    let broker = broker().await;
    let topic = unique("latest");
    let group = format!("{topic}.g");
    let retry_topic = format!("{group}.retry");
    broker.prepare_topic(&topic).await.unwrap();
    broker.prepare_topic(&retry_topic).await.unwrap();
    // A copy written before the group ever committed anything on its retry topic (its member
    // crashed first): `Latest` must not skip it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let due = (now_ms() + 500).to_string();
    let headers = [
        (wire::HEADER_ID, "left-behind"),
        (wire::HEADER_ATTEMPT, "2"),
        (wire::HEADER_TOPIC, topic.as_str()),
        (wire::HEADER_RETRY_DUE, due.as_str()),
        (wire::HEADER_ORIGIN_PARTITION, "3"),
        (wire::HEADER_ORIGIN_OFFSET, "17"),
        ("tenant", "eu"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(rdkafka::message::Header {
            key,
            value: Some(value),
        })
    });
    producer
        .send(
            FutureRecord::<str, str>::to(&retry_topic)
                .payload("retry me")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let mut sub = broker
        .subscribe(
            SubscriptionSpec::new([topic.as_str()], group.as_str())
                .with_start(polybus::StartPosition::Latest),
        )
        .await
        .unwrap();
    let got = recv(&mut sub, "the copy left in the retry topic").await;
    assert!(
        now_ms() >= due.parse::<i64>().unwrap(),
        "delivered before due"
    );
    assert_eq!(
        (
            got.message.id.as_str(),
            got.attempt,
            got.message.topic.as_str()
        ),
        ("left-behind", 2, topic.as_str())
    );
    assert_eq!((got.meta.partition, got.meta.offset), (Some(3), Some(17)));
    assert_eq!(
        got.message.headers.get("tenant").map(String::as_str),
        Some("eu")
    );
    assert_eq!(internal_headers(&got.message), Vec::<&str>::new());
    got.ack().await.unwrap();
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_the_retry_topic_refuses_is_redelivered_from_memory() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let broker = broker().await;
    let topic = unique("refused");
    let group = format!("{topic}.g");
    // A retry topic that takes no copy: each is larger than the topic allows.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let retry_topic = format!("{group}.retry");
    let created = admin
        .create_topics(
            &[NewTopic::new(&retry_topic, 4, TopicReplication::Fixed(1))
                .set("max.message.bytes", "64")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    created.into_iter().for_each(|r| {
        r.unwrap();
    });
    let receipt = broker
        .publish(Message::text(&topic, "retry me"))
        .await
        .unwrap();
    let (partition, offset) = (receipt.partition.unwrap(), receipt.offset.unwrap());

    let mut sub = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap();
    let first = recv(&mut sub, "the first delivery").await;
    let nacked = Instant::now();
    first.nack(Some(Duration::from_secs(1))).await.unwrap();
    let inspector = inspector(&group);
    // The offset stays uncommitted while the retry waits in memory.
    let mut checked = 0;
    while nacked.elapsed() < Duration::from_millis(700) {
        let position = committed(&inspector, &topic, partition);
        assert!(
            position.is_none_or(|p| p <= offset),
            "committed {position:?} past the waiting message at {offset}"
        );
        checked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checked > 0);
    let again = recv(&mut sub, "the retry from memory").await;
    assert!(nacked.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        (again.attempt, again.meta.partition, again.meta.offset),
        (2, Some(partition), Some(offset))
    );
    again.ack().await.unwrap();
    wait_until("the commit past the acknowledged retry", || {
        committed(&inspector, &topic, partition) == Some(offset + 1)
    })
    .await;
    sub.close().await.unwrap();
    assert_eq!(records_in(&inspector, &retry_topic), 0);
}
