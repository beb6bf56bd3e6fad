//! The hub against the real brokers `make test` starts: tasks to RabbitMQ, events to Kafka,
//! replay of events from a timestamp, and the clear refusal to replay where there is no history.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{amqp_url, kafka_url, unique};
use polybus::failover::FailoverOptions;
use polybus::hub::{Hub, HubConfig};
use polybus::{Error, Message, Subscription, SubscriptionSpec};

const WAIT: Duration = Duration::from_secs(60);

/// Takes deliveries (acknowledging them) until `count` arrived, then checks nothing follows.
async fn take(subscription: &mut Subscription, count: usize) -> Vec<Message> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.len() < count {
        let delivery = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} arrived", received.len()))
            .expect("subscription open")
            .expect("no error");
        received.push(delivery.message.clone());
        delivery.ack().await.unwrap();
    }
    if let Ok(Some(Ok(extra))) =
        tokio::time::timeout(Duration::from_secs(2), subscription.next()).await
    {
        panic!(
            "unexpected delivery {:?}",
            extra.message.payload_str().unwrap_or("?")
        );
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_go_to_rabbitmq_and_events_to_kafka() {
    let hub = HubConfig::new(amqp_url(), kafka_url())
        .connect()
        .await
        .unwrap();
    assert_eq!(hub.tasks().name(), "rabbitmq");
    assert_eq!(hub.events().name(), "kafka");
    assert!(!hub.is_single());

    let task_topic = unique("task");
    let mut tasks = hub
        .subscribe_tasks(SubscriptionSpec::new(
            [task_topic.as_str()],
            format!("{task_topic}.workers"),
        ))
        .await
        .unwrap();
    tasks.ready_signal().wait(WAIT).await.unwrap();
    let task = Message::text(&task_topic, "resize image 7");
    hub.publish_task(task.clone()).await.unwrap();
    let more: Vec<Message> = (0..3)
        .map(|i| Message::text(&task_topic, format!("task {i}")))
        .collect();
    for result in hub.publish_tasks(more.clone()).await {
        result.unwrap();
    }
    let received = take(&mut tasks, 4).await;
    let mut expected: HashSet<String> = more.iter().map(|m| m.id.clone()).collect();
    expected.insert(task.id.clone());
    assert_eq!(
        received
            .iter()
            .map(|m| m.id.clone())
            .collect::<HashSet<_>>(),
        expected
    );
    tasks.close().await.unwrap();

    let event_topic = unique("event");
    let event = Message::text(&event_topic, "user 7 created");
    let receipt = hub.publish_event(event.clone()).await.unwrap();
    assert!(
        receipt.offset.is_some(),
        "kafka reports an offset: {receipt:?}"
    );
    let mut events = hub
        .subscribe_events(SubscriptionSpec::new(
            [event_topic.as_str()],
            format!("{event_topic}.audit"),
        ))
        .await
        .unwrap();
    let received = take(&mut events, 1).await;
    assert_eq!(received[0].id, event.id);
    assert_eq!(received[0].payload_str().unwrap(), "user 7 created");
    events.close().await.unwrap();

    hub.flush(Duration::from_secs(10)).await.unwrap();
    hub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_events_from_a_timestamp_returns_only_later_events() {
    let events = polybus::connect_url(&kafka_url()).await.unwrap();
    let hub = Hub::single(events);
    let topic = unique("replay");
    let now = polybus::message::now_ms();
    let from = now - 30_000;
    let old: Vec<Message> = (0..6)
        .map(|i| {
            Message::text(&topic, format!("old {i}"))
                .with_key(format!("k{i}"))
                .with_timestamp_ms(now - 60_000 + i)
        })
        .collect();
    let new: Vec<Message> = (0..6)
        .map(|i| {
            Message::text(&topic, format!("new {i}"))
                .with_key(format!("k{i}"))
                .with_timestamp_ms(from + i)
        })
        .collect();
    for result in hub.publish_events(old.clone()).await {
        result.unwrap();
    }
    for result in hub.publish_events(new.clone()).await {
        result.unwrap();
    }
    // A group that has read everything is moved back to the timestamp.
    let group = format!("{topic}.replayer");
    let mut all = hub
        .subscribe_events(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap();
    assert_eq!(take(&mut all, 12).await.len(), 12);
    all.close().await.unwrap();

    let mut replay = hub
        .replay_events([topic.as_str()], group, from)
        .await
        .unwrap();
    let received = take(&mut replay, new.len()).await;
    let got: HashSet<String> = received.iter().map(|m| m.id.clone()).collect();
    let want: HashSet<String> = new.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got, want, "exactly the events at or after the timestamp");
    assert!(received.iter().all(|m| m.timestamp_ms >= from));
    replay.close().await.unwrap();
    hub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_a_broker_without_history_is_refused_by_name() {
    let hub = HubConfig::new(amqp_url(), amqp_url())
        .connect()
        .await
        .unwrap();
    assert!(hub.is_single(), "one URL, one broker");
    let err = match hub.replay_events(["anything"], "g", 0).await {
        Ok(_) => panic!("rabbitmq replayed events"),
        Err(err) => err,
    };
    assert!(
        matches!(&err, Error::Unsupported { backend: "rabbitmq", feature } if feature.contains("replay")),
        "{err}"
    );
    assert!(err.to_string().contains("rabbitmq"), "{err}");
    hub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_routes_through_a_failover_broker() {
    let dir = std::env::temp_dir().join(format!(
        "polybus-hub-spool-{}",
        polybus::message::new_message_id()
    ));
    let hub = HubConfig::new(amqp_url(), kafka_url())
        .with_tasks_failover(FailoverOptions::new(&dir))
        .connect()
        .await
        .unwrap();
    assert_eq!(hub.tasks().name(), "rabbitmq");
    let topic = unique("failover-task");
    let mut tasks = hub
        .subscribe_tasks(SubscriptionSpec::new(
            [topic.as_str()],
            format!("{topic}.w"),
        ))
        .await
        .unwrap();
    tasks.ready_signal().wait(WAIT).await.unwrap();
    let receipt = hub
        .publish_task(Message::text(&topic, "through failover"))
        .await
        .unwrap();
    assert!(!receipt.spooled, "the primary is up");
    assert_eq!(take(&mut tasks, 1).await.len(), 1);
    tasks.close().await.unwrap();
    hub.close().await.unwrap();

    // The same spool twice is refused before anything connects.
    let err = HubConfig::new(amqp_url(), "redis://127.0.0.1:6379/0")
        .with_tasks_failover(FailoverOptions::new(&dir))
        .with_events_failover(FailoverOptions::new(&dir))
        .connect()
        .await;
    assert!(matches!(err, Err(Error::Config { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}
