//! Dead-letter administration (count, list, redrive) on every backend that keeps dead letters:
//! memory, and real Kafka, RabbitMQ and Redis (list and streams) servers (`make test` starts
//! them on loopback; `POLYBUS_TEST_KAFKA_URL`, `POLYBUS_TEST_AMQP_URL` and
//! `POLYBUS_TEST_REDIS_URL` point elsewhere). One scenario runs on each; pub/sub and the null
//! broker must say they cannot.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{amqp_url, init_tracing, kafka_url, redis_url, unique};
use polybus::brokers::memory::MemoryBroker;
use polybus::config::MemoryConfig;
use polybus::{
    Consumer, ConsumerOptions, DeadLetter, DeadLetters, Error, HandlerError, LeftReason, Message,
    RedriveOptions, RetryPolicy, SharedBroker, SubscriptionSpec, handler_fn, wire,
};

/// Upper bound of any wait: a test never hangs.
const WAIT: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> SharedBroker {
    polybus::connect_url(url)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"))
}

/// Waits until `check` holds, or panics naming `what` and the last value seen.
async fn eventually<T, F, Fut>(what: &str, check: F, done: impl Fn(&T) -> bool) -> T
where
    T: std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = check().await;
        if done(&value) {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}; last: {value:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a handler that succeeds saw: the ids, and anything wrong with the deliveries.
#[derive(Clone, Default)]
struct Seen {
    ids: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }

    fn distinct(&self) -> BTreeSet<String> {
        self.ids().into_iter().collect()
    }
}

fn options(dead_letter: DeadLetter) -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy::fixed(1, Duration::from_millis(10)),
        dead_letter,
        drain_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// A consumer of `topic` in `group` whose handler fails for payloads starting with `bad` and
/// records the others.
async fn failing_consumer(
    broker: &SharedBroker,
    topic: &str,
    group: &str,
    dead_letter: DeadLetter,
    ok: Seen,
) -> Consumer {
    let handler = handler_fn(move |r| {
        let ok = ok.clone();
        async move {
            if r.message.payload.starts_with(b"bad") {
                return Err(HandlerError::retryable("card declined").with_kind("PaymentError"));
            }
            ok.ids.lock().unwrap().push(r.message.id.clone());
            Ok(())
        }
    });
    Consumer::start(
        broker.clone(),
        SubscriptionSpec::new([topic], group),
        Arc::new(handler),
        options(dead_letter),
    )
    .await
    .unwrap()
}

/// A consumer whose handler always succeeds, checking that redriven messages start afresh.
async fn healed_consumer(broker: &SharedBroker, topic: &str, group: &str, seen: Seen) -> Consumer {
    let handler = handler_fn(move |r| {
        let seen = seen.clone();
        async move {
            let mut problems = Vec::new();
            if r.attempt != 1 {
                problems.push(format!("{} arrived as attempt {}", r.message.id, r.attempt));
            }
            for name in r.message.headers.keys() {
                if name.starts_with("polybus-dlq-") || name == wire::HEADER_FIRST_FAILURE {
                    problems.push(format!("{} still has header {name}", r.message.id));
                }
            }
            if r.message.headers.get("tenant").map(String::as_str) != Some("eu") {
                problems.push(format!("{} lost its user header", r.message.id));
            }
            seen.problems.lock().unwrap().extend(problems);
            seen.ids.lock().unwrap().push(r.message.id.clone());
            Ok(())
        }
    });
    let consumer = Consumer::start(
        broker.clone(),
        SubscriptionSpec::new([topic], group),
        Arc::new(handler),
        options(DeadLetter::default()),
    )
    .await
    .unwrap();
    consumer
        .ready()
        .wait(WAIT)
        .await
        .expect("the consumer became ready");
    consumer
}

async fn count(dead: &DeadLetters, dlq: &str) -> u64 {
    dead.count(dlq).await.unwrap()
}

/// The shared scenario: dead-letter some messages, count and list them, redrive part of them
/// with a limit, then the rest, then a letter that names no topic.
async fn scenario(broker: SharedBroker) {
    let topic = unique("dlq-admin");
    let dlq = format!("{topic}.dlq");
    let group = unique("workers");
    let dead = DeadLetters::new(broker.clone());
    assert_eq!(count(&dead, &dlq).await, 0, "nothing dead-lettered yet");
    assert!(dead.list(&dlq, 10).await.unwrap().is_empty());

    // Five messages fail twice (1 retry) and land in the dead-letter topic; two succeed.
    let good = Seen::default();
    let failing =
        failing_consumer(&broker, &topic, &group, DeadLetter::default(), good.clone()).await;
    let mut bad_ids = BTreeSet::new();
    for i in 0..7 {
        let payload = if i < 5 {
            format!("bad-{i}")
        } else {
            format!("good-{i}")
        };
        let message = Message::text(&topic, payload).with_header("tenant", "eu");
        if i < 5 {
            bad_ids.insert(message.id.clone());
        }
        broker.publish(message).await.unwrap();
    }
    eventually(
        "five dead letters and two successes",
        || async { failing.stats() },
        |s| s.dead_lettered == 5 && s.succeeded == 2,
    )
    .await;
    failing.stop().await.unwrap();

    // Count and list; listing leaves them where they are.
    let waiting = eventually("five waiting", || count(&dead, &dlq), |n| *n == 5).await;
    assert_eq!(waiting, 5);
    let records = dead.list(&dlq, 100).await.unwrap();
    let listed: BTreeSet<String> = records.iter().map(|r| r.message.id.clone()).collect();
    assert_eq!(listed, bad_ids, "list shows every dead letter once");
    for record in &records {
        assert_eq!(record.message.topic, dlq);
        assert!(record.message.payload.starts_with(b"bad"));
        assert_eq!(record.error.as_deref(), Some("card declined"));
        assert_eq!(record.error_type.as_deref(), Some("PaymentError"));
        assert_eq!(record.attempts, Some(2));
        assert_eq!(record.original_topic.as_deref(), Some(topic.as_str()));
        assert_eq!(record.group.as_deref(), Some(group.as_str()));
        let (first, last) = (
            record.first_failure_ms.unwrap(),
            record.last_failure_ms.unwrap(),
        );
        assert!(first <= last, "{first} > {last}");
        assert_eq!(
            record.message.headers.get(wire::DLQ_TOPIC),
            Some(&topic),
            "the stored message keeps its dead-letter headers"
        );
        let again = record.redrive_message(None).unwrap();
        assert_eq!(
            (again.topic.as_str(), again.id.as_str()),
            (topic.as_str(), record.message.id.as_str())
        );
    }
    assert_eq!(count(&dead, &dlq).await, 5, "listing removed nothing");
    let two = dead.list(&dlq, 2).await.unwrap();
    assert_eq!(two.len(), 2, "list honours its limit");
    let again: BTreeSet<String> = dead
        .list(&dlq, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.message.id)
        .collect();
    assert_eq!(again, bad_ids, "a second listing sees the same letters");
    assert_eq!(count(&dead, &dlq).await, 5);

    // Redrive two, with the handler fixed: only those two are processed.
    let healed = Seen::default();
    let consumer = healed_consumer(&broker, &topic, &group, healed.clone()).await;
    let report = dead
        .redrive(&dlq, RedriveOptions::default().with_limit(2))
        .await
        .unwrap();
    assert_eq!(report.moved, 2, "{report:?}");
    assert!(report.left.is_empty(), "{report:?}");
    eventually(
        "two redriven messages processed",
        || async { healed.distinct().len() },
        |n| *n == 2,
    )
    .await;
    assert_eq!(count(&dead, &dlq).await, 3);
    assert_eq!(dead.list(&dlq, 100).await.unwrap().len(), 3);

    // Redrive the rest: every dead letter processed once, the dead-letter topic empty.
    let report = dead.redrive(&dlq, RedriveOptions::default()).await.unwrap();
    assert_eq!(report.moved, 3, "{report:?}");
    assert!(report.left.is_empty(), "{report:?}");
    eventually(
        "all five processed",
        || async { healed.distinct() },
        |ids| *ids == bad_ids,
    )
    .await;
    assert_eq!(count(&dead, &dlq).await, 0);
    assert!(dead.list(&dlq, 100).await.unwrap().is_empty());
    let report = dead.redrive(&dlq, RedriveOptions::default()).await.unwrap();
    assert_eq!(report.moved, 0, "nothing left to redrive: {report:?}");

    // A letter that names no topic stays in place, until a target is given.
    let stray = Message::text(&dlq, "stray").with_header("tenant", "eu");
    broker.publish(stray.clone()).await.unwrap();
    eventually("the stray letter", || count(&dead, &dlq), |n| *n == 1).await;
    let report = dead.redrive(&dlq, RedriveOptions::default()).await.unwrap();
    assert_eq!(report.moved, 0, "{report:?}");
    assert_eq!(report.left.len(), 1, "{report:?}");
    assert_eq!(report.left[0].id, stray.id);
    assert_eq!(report.left[0].reason, LeftReason::NoTopic);
    assert_eq!(count(&dead, &dlq).await, 1, "left in place");
    let listed = dead.list(&dlq, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].original_topic, None);
    assert_eq!(listed[0].error, None);
    let report = dead
        .redrive(&dlq, RedriveOptions::default().with_target(&topic))
        .await
        .unwrap();
    assert_eq!(report.moved, 1, "{report:?}");
    eventually(
        "the stray letter processed",
        || async { healed.distinct().contains(&stray.id) },
        |b| *b,
    )
    .await;
    assert_eq!(count(&dead, &dlq).await, 0);

    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer.stop().await.unwrap();
    let problems = healed.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        healed.ids().len(),
        6,
        "each redriven message processed once: {:?}",
        healed.ids()
    );
    assert_eq!(good.ids().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory() {
    init_tracing();
    scenario(Arc::new(MemoryBroker::new(MemoryConfig::default()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka() {
    init_tracing();
    scenario(connect(&kafka_url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq() {
    init_tracing();
    scenario(connect(&amqp_url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_list() {
    init_tracing();
    scenario(connect(&redis_url("list")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_streams() {
    init_tracing();
    scenario(connect(&redis_url("streams")).await).await;
}

/// Messages RabbitMQ dead-letters itself (`DeadLetter::Reject` into `<group>.dlq`) carry no
/// Polybus dead-letter headers: they are still counted, listed with their original topic, and
/// redriven.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_rejected_messages() {
    init_tracing();
    let broker = connect(&amqp_url()).await;
    let topic = unique("dlq-reject");
    let group = unique("rejecting");
    let dlq = format!("{group}.dlq");
    let dead = DeadLetters::new(broker.clone());
    let failing =
        failing_consumer(&broker, &topic, &group, DeadLetter::Reject, Seen::default()).await;
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let message = Message::text(&topic, format!("bad-{i}")).with_header("tenant", "eu");
        ids.insert(message.id.clone());
        broker.publish(message).await.unwrap();
    }
    eventually(
        "three rejected",
        || async { failing.stats() },
        |s| s.rejected == 3,
    )
    .await;
    failing.stop().await.unwrap();
    eventually("three waiting", || count(&dead, &dlq), |n| *n == 3).await;
    let records = dead.list(&dlq, 10).await.unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.message.id.clone())
            .collect::<BTreeSet<_>>(),
        ids
    );
    for record in &records {
        assert_eq!(
            record.original_topic.as_deref(),
            Some(topic.as_str()),
            "{record:?}"
        );
        assert_eq!((record.error.as_deref(), record.attempts), (None, None));
        assert!(
            !record.message.headers.contains_key("x-death"),
            "broker headers are dropped: {:?}",
            record.message.headers
        );
    }
    assert_eq!(count(&dead, &dlq).await, 3, "listing removed nothing");

    let healed = Seen::default();
    let consumer = healed_consumer(&broker, &topic, &group, healed.clone()).await;
    let report = dead.redrive(&dlq, RedriveOptions::default()).await.unwrap();
    assert_eq!(report.moved, 3, "{report:?}");
    eventually(
        "all three processed",
        || async { healed.distinct() },
        |seen| *seen == ids,
    )
    .await;
    assert_eq!(count(&dead, &dlq).await, 0);
    consumer.stop().await.unwrap();
    let problems = healed.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
}

fn assert_unsupported<T: std::fmt::Debug>(result: polybus::Result<T>, backend: &str) {
    match result {
        Err(Error::Unsupported {
            backend: b,
            feature,
        }) => {
            assert_eq!(b, backend);
            assert!(feature.contains("dead-letter"), "{feature}");
        }
        other => panic!("expected Unsupported from {backend}, got {other:?}"),
    }
}

async fn unsupported(broker: SharedBroker, backend: &str) {
    let dead = DeadLetters::new(broker);
    assert_unsupported(dead.count("orders.dlq").await, backend);
    assert_unsupported(dead.list("orders.dlq", 10).await, backend);
    assert_unsupported(
        dead.redrive("orders.dlq", RedriveOptions::default()).await,
        backend,
    );
}

#[tokio::test]
async fn redis_pubsub_keeps_no_dead_letters() {
    unsupported(connect(&redis_url("pubsub")).await, "redis").await;
}

#[tokio::test]
async fn the_null_broker_keeps_no_dead_letters() {
    unsupported(connect("null://").await, "null").await;
}

#[tokio::test]
async fn a_bad_topic_is_refused() {
    let dead = DeadLetters::new(Arc::new(MemoryBroker::new(MemoryConfig::default())));
    let err = dead.count("has space").await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = dead
        .redrive("ok.dlq", RedriveOptions::default().with_target(""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}
