//! RabbitMQ-specific behaviour against the real server `make test` starts on 127.0.0.1:5672:
//! routing through each exchange type, topic wildcards, dead-lettering, unroutable messages.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{amqp_url, unique};
use polybus::brokers::rabbitmq::{
    BindingSpec, ExchangeSpec, ExchangeType, QueueSpec, RabbitMqBroker, Topology,
};
use polybus::config::BrokerConfig;
use polybus::{Message, Publisher, Subscriber, Subscription, SubscriptionSpec};

const WAIT: Duration = Duration::from_secs(30);

fn broker_with(query: &str) -> RabbitMqBroker {
    broker_at(&format!("{}{query}", amqp_url()))
}

fn broker_at(url: &str) -> RabbitMqBroker {
    match BrokerConfig::parse(url).unwrap() {
        BrokerConfig::RabbitMq(config) => RabbitMqBroker::new(&config).unwrap(),
        other => panic!("not an AMQP URL: {other}"),
    }
}

async fn next_payload(sub: &mut Subscription) -> String {
    let delivery = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("no error");
    let text = delivery.message.payload_str().unwrap().to_owned();
    delivery.ack().await.unwrap();
    text
}

async fn nothing_more(sub: &mut Subscription) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected delivery {:?}", d.message.payload_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_exchange_type_routes_as_rabbitmq_does() {
    let broker = broker_with("");
    let base = unique("routing");
    let name = |s: &str| format!("{base}.{s}");
    let exchange = |kind: ExchangeType, s: &str| ExchangeSpec {
        name: name(s),
        kind,
        durable: true,
    };
    let queue = |s: &str| QueueSpec {
        name: name(s),
        ..Default::default()
    };
    let bind = |q: &str, x: &str, key: &str| BindingSpec {
        queue: name(q),
        exchange: name(x),
        routing_key: key.to_owned(),
        headers: BTreeMap::new(),
        match_all: true,
    };
    let mut eu_only = bind("eu", "headers", "");
    eu_only.headers.insert("region".into(), "eu".into());
    let topology = Topology {
        exchanges: vec![
            exchange(ExchangeType::Direct, "direct"),
            exchange(ExchangeType::Topic, "topic"),
            exchange(ExchangeType::Fanout, "fanout"),
            exchange(ExchangeType::Headers, "headers"),
        ],
        queues: ["direct-a", "one-word", "any-words", "fan-1", "fan-2", "eu"]
            .map(queue)
            .to_vec(),
        bindings: vec![
            bind("direct-a", "direct", "a"),
            bind("one-word", "topic", "orders.*"),
            bind("any-words", "topic", "orders.#"),
            bind("fan-1", "fanout", ""),
            bind("fan-2", "fanout", ""),
            eu_only,
        ],
    };
    broker.declare(&topology).await.unwrap();
    broker
        .declare(&topology)
        .await
        .expect("declaring twice is a no-op");

    let lenient = broker_with("?mandatory=false");
    let publish = |x: &str, key: &str, text: &str| {
        let (x, key) = (name(x), key.to_owned());
        let message = Message::text("ignored", text);
        let lenient = lenient.clone();
        async move { lenient.publish_to(&x, &key, message).await.unwrap() }
    };
    publish("direct", "a", "direct a").await;
    publish("direct", "b", "direct b").await;
    publish("topic", "orders.created", "one word").await;
    publish("topic", "orders.eu.created", "two words").await;
    publish("fanout", "whatever", "to all").await;
    lenient
        .publish_to(
            &name("headers"),
            "",
            Message::text("x", "from eu").with_header("region", "eu"),
        )
        .await
        .unwrap();
    lenient
        .publish_to(
            &name("headers"),
            "",
            Message::text("x", "from us").with_header("region", "us"),
        )
        .await
        .unwrap();

    let mut direct = broker.consume_queue(&name("direct-a"), 10).await.unwrap();
    assert_eq!(next_payload(&mut direct).await, "direct a");
    nothing_more(&mut direct).await;
    let mut one = broker.consume_queue(&name("one-word"), 10).await.unwrap();
    assert_eq!(next_payload(&mut one).await, "one word");
    nothing_more(&mut one).await;
    let mut any = broker.consume_queue(&name("any-words"), 10).await.unwrap();
    let mut got = vec![next_payload(&mut any).await, next_payload(&mut any).await];
    got.sort();
    assert_eq!(got, ["one word", "two words"]);
    for q in ["fan-1", "fan-2"] {
        let mut fan = broker.consume_queue(&name(q), 10).await.unwrap();
        assert_eq!(next_payload(&mut fan).await, "to all");
    }
    let mut eu = broker.consume_queue(&name("eu"), 10).await.unwrap();
    assert_eq!(next_payload(&mut eu).await, "from eu");
    nothing_more(&mut eu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_take_topic_wildcards() {
    let broker = broker_with("?mandatory=false");
    let base = unique("wild");
    let mut star = broker
        .subscribe(SubscriptionSpec::new(
            [format!("{base}.*")],
            format!("{base}.star"),
        ))
        .await
        .unwrap();
    let mut hash = broker
        .subscribe(SubscriptionSpec::new(
            [format!("{base}.#")],
            format!("{base}.hash"),
        ))
        .await
        .unwrap();
    broker
        .publish(Message::text(format!("{base}.created"), "one level"))
        .await
        .unwrap();
    broker
        .publish(Message::text(format!("{base}.eu.created"), "two levels"))
        .await
        .unwrap();
    assert_eq!(next_payload(&mut star).await, "one level");
    nothing_more(&mut star).await;
    let mut got = vec![next_payload(&mut hash).await, next_payload(&mut hash).await];
    got.sort();
    assert_eq!(got, ["one level", "two levels"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_message_lands_in_the_dead_letter_queue_with_its_headers() {
    let broker = broker_with("");
    let topic = unique("reject");
    let group = format!("{topic}.billing");
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap();
    let sent = Message::text(&topic, "poison")
        .with_key("k-1")
        .with_header("tenant", "eu");
    broker.publish(sent.clone()).await.unwrap();
    let delivery = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    delivery.reject().await.unwrap();

    let mut dead = broker
        .consume_queue(&format!("{group}.dlq"), 10)
        .await
        .unwrap();
    let letter = tokio::time::timeout(WAIT, dead.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(letter.message.id, sent.id);
    assert_eq!(letter.message.topic, topic, "a dead letter keeps its topic");
    assert_eq!(letter.message.key, sent.key);
    assert_eq!(letter.message.payload, sent.payload);
    assert_eq!(
        letter.message.headers.get("tenant").map(String::as_str),
        Some("eu")
    );
    assert!(
        letter.message.headers.contains_key("x-death"),
        "RabbitMQ records why: {:?}",
        letter.message.headers
    );
    letter.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unroutable_messages_are_errors_unless_allowed() {
    let strict = broker_with("");
    let err = strict
        .publish(Message::text(unique("nobody"), "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unroutable"), "{err}");
    let lenient = broker_with("?mandatory=false");
    lenient
        .publish(Message::text(unique("nobody"), "x"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_is_refused_with_a_clear_error() {
    let broker = broker_with("");
    let topic = unique("replay");
    let spec = SubscriptionSpec::new([topic.as_str()], "g")
        .with_start(polybus::StartPosition::Timestamp(0));
    let err = broker
        .subscribe(spec)
        .await
        .err()
        .expect("queues keep no history")
        .to_string();
    assert!(err.contains("rabbitmq") && err.contains("replay"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error_without_the_password() {
    let broker = polybus::connect_url("amqp://app:s3cr3t@127.0.0.1:1/?connection_timeout=2000")
        .await
        .unwrap();
    let err = broker.publish(Message::text("t", "x")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, polybus::Error::Connection { .. }), "{err:?}");
    assert!(
        !text.contains("s3cr3t") && text.contains("127.0.0.1:1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_topic_is_read_by_a_group_named_after_it() {
    use polybus::{Consumer, ConsumerOptions, HandlerError, RetryPolicy, handler_fn};
    use std::sync::Arc;
    let broker = polybus::connect_url(&amqp_url()).await.unwrap();
    let topic = unique("dlq-group");
    let dead = format!("{topic}.dlq");
    let failing = handler_fn(|_| async { Err(HandlerError::permanent("bad input")) });
    let options = ConsumerOptions {
        retry: RetryPolicy::fixed(0, Duration::ZERO),
        ..ConsumerOptions::default()
    };
    let spec = SubscriptionSpec::new([topic.as_str()], format!("{topic}.g"));
    let consumer = Consumer::start(broker.clone(), spec, Arc::new(failing), options)
        .await
        .unwrap();
    broker
        .publish(Message::text(&topic, "poison"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while consumer.stats().dead_lettered == 0 {
        assert!(std::time::Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.stop().await.unwrap();
    // The dead-letter queue was prepared before anyone subscribed, and a group named after it
    // (the default in the bindings) declares it with the same arguments.
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([dead.as_str()], dead.as_str()))
        .await
        .unwrap();
    assert_eq!(next_payload(&mut sub).await, "poison");
}

/// `rabbitmqctl` against the test broker (through the provisioning script); its output.
fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(common::script("broker-rabbitmq.sh"))
        .arg("ctl")
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A subscription of the group `<topic>.g` to `topic`.
async fn group_of(broker: &RabbitMqBroker, topic: &str) -> Subscription {
    broker
        .subscribe(SubscriptionSpec::new([topic], format!("{topic}.g")))
        .await
        .unwrap()
}

/// A new user (password `secret`) with every permission on the default vhost.
fn new_user() -> String {
    let user = unique("user");
    rabbitmqctl(&["add_user", &user, "secret"]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    user
}

/// The test broker's URL, signed in as `user`.
fn as_user(user: &str) -> String {
    amqp_url().replacen("guest:guest@", &format!("{user}:secret@"), 1)
}

/// Single publishes use connections of their own (named `polybus-publisher (direct)`), at most
/// four at once (more callers share the lapin channel); one the broker closed while it sat idle
/// is replaced, and the publish goes through. Each is found by a user of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_publishes_survive_their_idle_connection_being_closed() {
    let user = new_user();
    let broker = broker_at(&as_user(&user));
    let topic = unique("single");
    let mut sub = group_of(&broker, &topic).await;
    let publishes = (0..40).map(|n| broker.publish(Message::text(&topic, n.to_string())));
    for receipt in futures::future::join_all(publishes).await {
        receipt.unwrap();
    }
    let direct: Vec<String> =
        rabbitmqctl(&["-q", "list_connections", "pid", "user", "client_properties"])
            .lines()
            .filter(|line| line.contains(&format!("\t{user}\t")) && line.contains("(direct)"))
            .map(|line| line.split('\t').next().unwrap_or_default().to_owned())
            .collect();
    assert!(
        (1..=4).contains(&direct.len()),
        "between 1 and 4 direct connections, not {}",
        direct.len()
    );
    for pid in &direct {
        rabbitmqctl(&["close_connection", pid, "closed by a test"]);
    }
    broker
        .publish(Message::text(&topic, "after the close"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..41 {
        got.push(next_payload(&mut sub).await);
    }
    assert!(got.contains(&"after the close".to_owned()));
    nothing_more(&mut sub).await;
    sub.close().await.unwrap();
    rabbitmqctl(&["delete_user", &user]);
}

/// A publish finding its exchange deleted fails (the broker closes the channel: 404); the next
/// one declares the broker's topology again and goes through to the group's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_exchange_is_declared_again_after_one_failed_publish() {
    let exchange = unique("exchange");
    let broker = broker_with(&format!("?exchange={exchange}"));
    let topic = unique("redeclared");
    let mut sub = group_of(&broker, &topic).await;
    broker
        .publish(Message::text(&topic, "before"))
        .await
        .unwrap();
    assert_eq!(next_payload(&mut sub).await, "before");
    // lapin reads an empty path as the empty vhost; the default one is `%2f`.
    let mut url = amqp_url();
    if url.ends_with('/') {
        url.push_str("%2f");
    }
    let admin = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = admin.create_channel().await.unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let err = broker
        .publish(Message::text(&topic, "lost exchange"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404") || err.contains("NOT_FOUND"), "{err}");
    broker
        .publish(Message::text(&topic, "after"))
        .await
        .unwrap();
    assert_eq!(next_payload(&mut sub).await, "after");
    sub.close().await.unwrap();
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = admin.close(200, "done".into()).await;
}

/// A user allowed a single connection still publishes: the direct connection is refused by the
/// broker, and publishes go through the shared channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_go_through_the_shared_channel_when_no_direct_connection_is_allowed() {
    let user = new_user();
    rabbitmqctl(&["set_user_limits", &user, r#"{"max-connections": 1}"#]);
    let broker = broker_at(&format!("{}?mandatory=false", as_user(&user)));
    for n in 0..3 {
        broker
            .publish(Message::text(unique("limited"), n.to_string()))
            .await
            .unwrap();
    }
    let connections = rabbitmqctl(&["-q", "list_connections", "user"])
        .lines()
        .filter(|line| line.trim() == user)
        .count();
    assert_eq!(connections, 1, "only the shared connection");
    rabbitmqctl(&["delete_user", &user]);
}
