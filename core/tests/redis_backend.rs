//! Redis-specific behaviour against the real server `make test` starts on 127.0.0.1:6379
//! (`POLYBUS_TEST_REDIS_URL` points elsewhere): consumers that die without acknowledging,
//! plain clients on both sides of the wire, pub/sub fan-out, pipelined batches, reconnection
//! and prompt shutdown. Every scenario uses keys of its own and is bounded in time.

mod common;
use common::{publish_blocking, unique};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use polybus::{Delivery, Message, SharedBroker, Subscription, SubscriptionSpec};
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);

/// The server address, without query parameters.
fn address() -> String {
    let url = std::env::var("POLYBUS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    url.split('?').next().unwrap_or_default().to_owned()
}

fn url(query: &str) -> String {
    format!("{}?{query}", address())
}

async fn broker(query: &str) -> SharedBroker {
    polybus::connect_url(&url(query))
        .await
        .unwrap_or_else(|err| panic!("connecting to the test Redis server: {err}"))
}

/// A plain redis-rs connection, as another client of the server would have.
async fn plain() -> redis::aio::MultiplexedConnection {
    redis::Client::open(address())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("plain redis connection")
}

async fn recv(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("subscription failed waiting for {what}: {err}"),
        Ok(None) => panic!("subscription ended waiting for {what}"),
        Err(_) => panic!("nothing within {WAIT:?} waiting for {what}"),
    }
}

async fn expect_nothing(sub: &mut Subscription, quiet: Duration, why: &str) {
    if let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, sub.next()).await {
        panic!("expected nothing ({why}), got {:?}", delivery.message.id);
    }
}

/// Runs a consumer on a runtime of its own that takes one message and then dies the way a
/// killed process does: its runtime stops, nothing is acknowledged or closed, its heartbeat
/// and idle-time refreshes stop. Returns what it held.
async fn consumer_dies_holding_one(
    url: String,
    topic: String,
    group: String,
) -> (String, Option<String>) {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let held = runtime.block_on(async {
            let broker = polybus::connect_url(&url).await.unwrap();
            let mut sub = broker
                .subscribe(SubscriptionSpec::new([topic.as_str()], group).with_prefetch(1))
                .await
                .unwrap();
            let delivery = recv(&mut sub, "the message the doomed consumer takes").await;
            let held = (delivery.message.id.clone(), delivery.meta.stream_id.clone());
            // Neither settled nor released, neither closed nor dropped: the process "dies".
            std::mem::forget(delivery);
            std::mem::forget(sub);
            held
        });
        runtime.shutdown_background();
        held
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_message_of_a_dead_consumer_goes_to_another() {
    let query = "mode=list&visibility_timeout_ms=1000";
    let broker = broker(query).await;
    let topic = unique("dead-list");
    let sent = broker
        .publish(Message::text(&topic, "survives"))
        .await
        .unwrap();
    let (held, _) = consumer_dies_holding_one(url(query), topic.clone(), "workers".into()).await;
    assert_eq!(held, sent.id);
    let mut conn = plain().await;
    let queued: i64 = conn.llen(&topic).await.unwrap();
    assert_eq!(
        queued, 0,
        "the dead consumer holds the message in its processing list"
    );

    let started = Instant::now();
    let mut survivor = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], "workers"))
        .await
        .unwrap();
    let delivery = recv(&mut survivor, "the dead consumer's message").await;
    assert_eq!(delivery.message.id, sent.id);
    assert_eq!(
        delivery.attempt, 1,
        "a crash does not count as a failed attempt"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "recovered after {:?}",
        started.elapsed()
    );
    delivery.ack().await.unwrap();
    expect_nothing(&mut survivor, Duration::from_millis(300), "delivered once").await;
    survivor.close().await.unwrap();

    let processing: Vec<String> = conn
        .keys(format!("polybus:list:{topic}:processing:*"))
        .await
        .unwrap();
    assert!(
        processing.is_empty(),
        "processing lists left: {processing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_entry_of_a_dead_consumer_is_claimed_by_another() {
    let query = "mode=streams&claim_idle_ms=1000";
    let broker = broker(query).await;
    let topic = unique("dead-stream");
    let group = format!("{topic}.workers");
    // Create the group first, so the doomed consumer reads from the start.
    broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let sent = broker
        .publish(Message::text(&topic, "survives"))
        .await
        .unwrap();
    let (held, stream_id) =
        consumer_dies_holding_one(url(query), topic.clone(), group.clone()).await;
    assert_eq!(held, sent.id);
    assert_eq!(stream_id, sent.stream_id);

    let started = Instant::now();
    let mut survivor = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
        .await
        .unwrap();
    let delivery = recv(&mut survivor, "the dead consumer's entry").await;
    assert_eq!(delivery.message.id, sent.id);
    assert_eq!(delivery.meta.stream_id, sent.stream_id);
    assert_eq!(delivery.attempt, 1);
    assert!(delivery.meta.redelivered);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "claimed after {:?}",
        started.elapsed()
    );
    delivery.ack().await.unwrap();
    expect_nothing(&mut survivor, Duration::from_millis(300), "delivered once").await;
    survivor.close().await.unwrap();

    let mut conn = plain().await;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&topic)
        .arg(&group)
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("unexpected XPENDING reply {pending:?}")
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "nothing pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_json_lpush_is_consumed_as_its_payload() {
    let broker = broker("mode=list").await;
    let topic = unique("source.fetch.failed");
    let mut conn = plain().await;
    // What the Laravel app does: LPUSH destination json_encode($payload).
    let _: i64 = conn.lpush(&topic, r#"{"source_id":1}"#).await.unwrap();
    let _: i64 = conn.lpush(&topic, "not json").await.unwrap();

    let mut sub = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], "laravel"))
        .await
        .unwrap();
    let first = recv(&mut sub, "the JSON item").await;
    assert_eq!(&first.message.payload[..], br#"{"source_id":1}"#);
    assert_eq!(first.message.content_type, "application/json");
    assert_eq!(first.message.topic, topic);
    assert!(!first.message.id.is_empty());
    assert_eq!(first.attempt, 1);
    let value: serde_json::Value = first.message.decode_json().unwrap();
    assert_eq!(value["source_id"], 1);
    let id = first.message.id.clone();
    first.nack(None).await.unwrap();

    let second = recv(&mut sub, "the text item").await;
    assert_eq!(&second.message.payload[..], b"not json");
    assert_eq!(second.message.content_type, "application/octet-stream");
    second.ack().await.unwrap();

    // The nacked item came back as an envelope: same id, next attempt, same payload.
    let again = recv(&mut sub, "the nacked JSON item").await;
    assert_eq!(again.message.id, id);
    assert_eq!(again.attempt, 2);
    assert_eq!(&again.message.payload[..], br#"{"source_id":1}"#);
    again.ack().await.unwrap();
    sub.close().await.unwrap();
    let left: i64 = conn.llen(&topic).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_items_are_the_documented_envelope_or_the_bare_payload() {
    let mut conn = plain().await;
    let topic = unique("envelope");
    let enveloped = broker("mode=list").await;
    let message = Message::json(&topic, &serde_json::json!({"order_id": 7}))
        .unwrap()
        .with_id("order-7")
        .with_key("customer-1")
        .with_header("trace-id", "t-1")
        .with_timestamp_ms(1_718_000_000_000);
    enveloped.publish(message).await.unwrap();
    let raw: String = conn.rpop(&topic, None).await.unwrap();
    let item: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        item,
        serde_json::json!({
            "polybus": 1, "id": "order-7", "topic": topic, "key": "customer-1",
            "headers": {"trace-id": "t-1"}, "timestamp": 1_718_000_000_000i64,
            "payload": {"order_id": 7}
        })
    );
    // Without a key or headers, only what differs from the defaults is written.
    let plain_message = Message::json(&topic, &serde_json::json!({"n": 1}))
        .unwrap()
        .with_id("plain-1")
        .with_timestamp_ms(1_718_000_000_001);
    enveloped.publish(plain_message).await.unwrap();
    let raw: String = conn.rpop(&topic, None).await.unwrap();
    assert_eq!(
        raw,
        format!(
            r#"{{"polybus":1,"id":"plain-1","topic":"{topic}","timestamp":1718000000001,"payload":{{"n":1}}}}"#
        )
    );
    enveloped
        .publish(Message::bytes(&topic, &b"\x01\x02"[..]))
        .await
        .unwrap();
    let raw: String = conn.rpop(&topic, None).await.unwrap();
    let item: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(item["payload_base64"], "AQI=");
    assert!(item.get("payload").is_none());

    let bare = broker("mode=list&envelope=false").await;
    bare.publish(Message::json(&topic, &serde_json::json!({"source_id": 2})).unwrap())
        .await
        .unwrap();
    let raw: String = conn.rpop(&topic, None).await.unwrap();
    assert_eq!(raw, r#"{"source_id":2}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_fields_are_native_and_foreign_entries_are_read() {
    let broker = broker("mode=streams").await;
    let topic = unique("fields");
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], "g"))
        .await
        .unwrap();
    let sent = broker
        .publish(
            Message::text(&topic, "hello")
                .with_id("m-1")
                .with_key("k")
                .with_header("trace-id", "abc"),
        )
        .await
        .unwrap();
    let mut conn = plain().await;
    let range: redis::Value = redis::cmd("XRANGE")
        .arg(&topic)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{range:?}");
    for field in [
        "polybus-id",
        "m-1",
        "polybus-content-type",
        "polybus-key",
        "polybus-timestamp",
        "header:trace-id",
        "payload",
    ] {
        assert!(
            text.contains(&format!("{:?}", field.as_bytes())) || text.contains(field),
            "{field} missing from {text}"
        );
    }
    let delivery = recv(&mut sub, "the published entry").await;
    assert_eq!(delivery.meta.stream_id, sent.stream_id);
    assert_eq!(delivery.message.headers.get("trace-id").unwrap(), "abc");
    delivery.ack().await.unwrap();

    // A plain producer: XADD with a payload field, and one with loose fields.
    let foreign_id: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("payload")
        .arg(r#"{"source_id":1}"#)
        .arg("origin")
        .arg("crm")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("source_id")
        .arg("2")
        .query_async(&mut conn)
        .await
        .unwrap();
    let first = recv(&mut sub, "the foreign entry with a payload field").await;
    assert_eq!(first.message.id, format!("{topic}-{foreign_id}"));
    assert_eq!(&first.message.payload[..], br#"{"source_id":1}"#);
    assert_eq!(first.message.content_type, "application/json");
    assert_eq!(first.message.headers.get("origin").unwrap(), "crm");
    first.ack().await.unwrap();
    let second = recv(&mut sub, "the foreign entry with loose fields").await;
    assert_eq!(&second.message.payload[..], br#"{"source_id":"2"}"#);
    second.ack().await.unwrap();
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pubsub_fans_out_and_reports_receivers() {
    let broker = broker("mode=pubsub").await;
    let topic = unique("fan-out");
    let mut a = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], "a"))
        .await
        .unwrap();
    let mut b = broker
        .subscribe(SubscriptionSpec::new([topic.as_str()], "a"))
        .await
        .unwrap();
    let receipt = broker
        .publish(Message::text(&topic, "to both"))
        .await
        .unwrap();
    assert_eq!(receipt.receivers, Some(2));
    for sub in [&mut a, &mut b] {
        let delivery = recv(sub, "the fanned-out message").await;
        assert_eq!(delivery.message.id, receipt.id);
        assert_eq!(delivery.message.payload_str().unwrap(), "to both");
        delivery.ack().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    // Nobody listens any more: the message is dropped, and the receipt says so.
    let receipt = broker
        .publish(Message::text(&topic, "to nobody"))
        .await
        .unwrap();
    assert_eq!(receipt.receivers, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pubsub_patterns_match_channels() {
    let broker = broker("mode=pubsub").await;
    let prefix = unique("pattern");
    let mut sub = broker
        .subscribe(SubscriptionSpec::new([format!("{prefix}.*")], "g"))
        .await
        .unwrap();
    let receipt = broker
        .publish(Message::text(format!("{prefix}.created"), "x"))
        .await
        .unwrap();
    assert_eq!(receipt.receivers, Some(1));
    let delivery = recv(&mut sub, "a message on a matching channel").await;
    assert_eq!(delivery.message.topic, format!("{prefix}.created"));
    sub.close().await.unwrap();
}

/// A TCP proxy in front of the server that counts round trips: each time the client sends
/// after the server has answered is one more.
async fn counting_proxy() -> (SocketAddr, Arc<AtomicUsize>) {
    let proxy = proxy().await;
    (proxy.address, proxy.turns)
}

/// A TCP proxy in front of the server.
struct Proxy {
    address: SocketAddr,
    /// Round trips seen (see [`counting_proxy`]).
    turns: Arc<AtomicUsize>,
    /// While on, the server's replies are held back.
    hold: Arc<AtomicBool>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
}

async fn proxy() -> Proxy {
    let upstream = address()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let turns = Arc::new(AtomicUsize::new(0));
    let counter = turns.clone();
    let hold = Arc::new(AtomicBool::new(false));
    let held = hold.clone();
    let accepted = Arc::new(AtomicUsize::new(0));
    let accepts = accepted.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            accepts.fetch_add(1, Ordering::AcqRel);
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            // 0: nothing yet, 1: the client spoke last, 2: the server did.
            let last = Arc::new(AtomicU8::new(0));
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (up_last, up_turns, held) = (last.clone(), counter.clone(), held.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if up_last.swap(1, Ordering::AcqRel) != 1 {
                        up_turns.fetch_add(1, Ordering::AcqRel);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    while held.load(Ordering::Acquire) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    last.store(2, Ordering::Release);
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Proxy {
        address: local,
        turns,
        hold,
        accepted,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_pipelined_in_every_mode() {
    let (proxy, turns) = counting_proxy().await;
    let db = address().rsplit('/').next().unwrap_or("0").to_owned();
    for mode in ["list", "streams", "pubsub"] {
        let broker = polybus::connect_url(&format!("redis://{proxy}/{db}?mode={mode}"))
            .await
            .unwrap();
        let topic = unique("pipelined");
        broker
            .publish(Message::text(&topic, "warm-up"))
            .await
            .unwrap();
        let messages: Vec<Message> = (0..500)
            .map(|n| Message::text(&topic, n.to_string()))
            .collect();
        let before = turns.load(Ordering::Acquire);
        let receipts = broker.publish_batch(messages).await;
        let used = turns.load(Ordering::Acquire) - before;
        eprintln!("{mode}: 500 messages in {used} round trip(s)");
        assert!(receipts.iter().all(Result::is_ok), "{mode}: {receipts:?}");
        assert!(
            used <= 25,
            "{mode}: 500 messages took {used} round trips; a pipeline takes about one"
        );
        if mode == "streams" {
            assert!(
                receipts
                    .iter()
                    .all(|r| r.as_ref().unwrap().stream_id.is_some())
            );
        }
        broker.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_report_each_message_on_its_own() {
    let broker = broker("mode=list").await;
    let topic = unique("batch-errors");
    let mut conn = plain().await;
    // A key of another type makes its commands fail on the server.
    let wrong = unique("a-string");
    let _: () = conn.set(&wrong, "x").await.unwrap();
    let receipts = broker
        .publish_batch(vec![
            Message::text(&topic, "ok"),
            Message::text(&wrong, "refused by the server"),
            Message::text("", "refused before sending"),
            Message::text(&topic, "ok too"),
        ])
        .await;
    assert!(receipts[0].is_ok() && receipts[3].is_ok(), "{receipts:?}");
    let err = receipts[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("WRONGTYPE"), "{err}");
    assert!(matches!(
        receipts[2],
        Err(polybus::Error::InvalidMessage(_))
    ));
    let queued: i64 = conn.llen(&topic).await.unwrap();
    assert_eq!(queued, 2);
    let _: () = conn.del(&[&topic, &wrong]).await.unwrap();
}

/// The JSON payload a list item's envelope carries.
fn enveloped_payload(raw: &str) -> serde_json::Value {
    let item: serde_json::Value = serde_json::from_str(raw).unwrap();
    item["payload"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_batches_keep_each_list_s_order_and_each_message_s_result() {
    let broker = broker("mode=list").await;
    let (first, second, wrong) = (unique("order-a"), unique("order-b"), unique("order-w"));
    let mut conn = plain().await;
    let _: () = conn.set(&wrong, "x").await.unwrap();
    let to = |topic: &str, n: usize| Message::json(topic, &serde_json::json!(n)).unwrap();
    // More than one LPUSH's worth to the first list, then runs that alternate between lists,
    // a key of the wrong type and a message refused before sending.
    let mut messages: Vec<Message> = (0..1500).map(|n| to(&first, n)).collect();
    messages.extend((0..3).map(|n| to(&second, n)));
    messages.extend([to(&first, 1500), to(&first, 1501)]);
    messages.extend([to(&wrong, 0), to(&wrong, 1)]);
    messages.extend([to(&first, 1502), to("", 0), to(&first, 1503)]);
    let receipts = broker.publish_batch(messages).await;
    assert_eq!(receipts.len(), 1510);
    for (position, receipt) in receipts.iter().enumerate() {
        match position {
            1505 | 1506 => {
                let err = receipt.as_ref().unwrap_err().to_string();
                assert!(err.contains("WRONGTYPE"), "{position}: {err}");
            }
            1508 => assert!(matches!(receipt, Err(polybus::Error::InvalidMessage(_)))),
            _ => assert!(receipt.is_ok(), "{position}: {receipt:?}"),
        }
    }
    // Consumers pop from the right: oldest first.
    let mut items: Vec<String> = conn.lrange(&first, 0, -1).await.unwrap();
    items.reverse();
    let popped: Vec<serde_json::Value> = items.iter().map(|raw| enveloped_payload(raw)).collect();
    let expected: Vec<serde_json::Value> = (0..1504).map(|n| serde_json::json!(n)).collect();
    assert_eq!(popped, expected);
    let mut items: Vec<String> = conn.lrange(&second, 0, -1).await.unwrap();
    items.reverse();
    let popped: Vec<serde_json::Value> = items.iter().map(|raw| enveloped_payload(raw)).collect();
    assert_eq!(
        popped,
        vec![
            serde_json::json!(0),
            serde_json::json!(1),
            serde_json::json!(2)
        ]
    );
    let _: () = conn.del(&[&first, &second, &wrong]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_ends_a_blocked_read_promptly() {
    for mode in ["list", "streams"] {
        let broker = broker(&format!("mode={mode}&block_ms=20000")).await;
        let topic = unique("prompt-close");
        let sub = broker
            .subscribe(SubscriptionSpec::new([topic.as_str()], "g"))
            .await
            .unwrap();
        // Let the fetch loop reach its blocking read.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        sub.close().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode}: closing took {:?} with a 20 s block",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_connection_is_reestablished() {
    for mode in ["list", "streams"] {
        let broker = broker(&format!("mode={mode}&block_ms=200")).await;
        let topic = unique("reconnect");
        let group = unique("reconnect-group");
        let mut sub = broker
            .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
            .await
            .unwrap();
        // Kill this subscription's blocking connection (found by its client name, once it
        // is open).
        let mut conn = plain().await;
        let deadline = Instant::now() + WAIT;
        let ids = loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap();
            let ids: Vec<String> = clients
                .lines()
                .filter(|line| line.contains(&format!("name=polybus-{mode}-{group}-")))
                .filter_map(|line| {
                    line.split(' ')
                        .find_map(|part| part.strip_prefix("id="))
                        .map(str::to_owned)
                })
                .collect();
            if !ids.is_empty() {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: no blocking connection in {clients}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ids.len(), 1, "{mode}: one blocking connection expected");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&ids[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        let sent = broker
            .publish(Message::text(&topic, "after the kill"))
            .await
            .unwrap();
        let delivery = recv(&mut sub, "a message after the connection was killed").await;
        assert_eq!(delivery.message.id, sent.id);
        delivery.ack().await.unwrap();
        sub.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_can_be_trimmed_and_entries_deleted_after_ack() {
    let mut conn = plain().await;
    let topic = unique("trimmed");
    let trimmed = broker("mode=streams&maxlen=100").await;
    let messages: Vec<Message> = (0..1_000)
        .map(|n| Message::text(&topic, n.to_string()))
        .collect();
    for receipt in trimmed.publish_batch(messages).await {
        receipt.unwrap();
    }
    let length: i64 = conn.xlen(&topic).await.unwrap();
    assert!(length < 1_000, "approximate trimming kept {length} entries");

    let topic = unique("deleted");
    let deleting = broker("mode=streams&delete_after_ack=true").await;
    let mut sub = deleting
        .subscribe(SubscriptionSpec::new([topic.as_str()], "g"))
        .await
        .unwrap();
    deleting
        .publish(Message::text(&topic, "once"))
        .await
        .unwrap();
    recv(&mut sub, "the entry").await.ack().await.unwrap();
    let length: i64 = conn.xlen(&topic).await.unwrap();
    assert_eq!(length, 0, "the acknowledged entry is deleted");
    sub.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_and_bad_options_are_clear_errors() {
    let err = polybus::connect_url("redis://:s3cret@127.0.0.1:1/0?connection_timeout=500")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, polybus::Error::Connection { .. }), "{err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    let err = polybus::connect_url(&url("mode=list&block_ms=never"))
        .await
        .err()
        .expect("bad option");
    assert!(err.to_string().contains("block_ms"), "{err}");
    let list = broker("mode=list").await;
    let err = list
        .subscribe(
            SubscriptionSpec::new(["t"], "g").with_start(polybus::StartPosition::Timestamp(1)),
        )
        .await
        .err()
        .expect("lists keep no history");
    assert!(matches!(err, polybus::Error::Unsupported { .. }), "{err:?}");
    let streams = broker("mode=streams").await;
    let err = streams
        .subscribe(SubscriptionSpec::new(["t"], "g").with_start(polybus::StartPosition::Offset(3)))
        .await
        .err()
        .expect("streams have no integer offsets");
    assert!(err.to_string().contains("Timestamp"), "{err}");
}

/// Creates a user `secret` signs in as, with access to every key and channel and `commands`.
async fn acl_user(admin: &mut redis::aio::MultiplexedConnection, commands: &[&str]) -> String {
    let user = unique("user");
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*");
    for rule in commands {
        setuser.arg(*rule);
    }
    let _: () = setuser.query_async(admin).await.unwrap();
    user
}

async fn drop_user(admin: &mut redis::aio::MultiplexedConnection, user: &str) {
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async(admin)
        .await
        .unwrap();
}

/// The server's `host:port`.
fn host_port() -> String {
    address()
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A subscription's own connection for blocking reads signs in as the URL's user and uses its
/// database, like every other connection of the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_reads_sign_in_as_the_url_s_user_on_its_database() {
    let mut admin = plain().await;
    let user = acl_user(&mut admin, &["+@all"]).await;
    for mode in ["streams", "list"] {
        let url = format!("redis://{user}:secret@{}/7?mode={mode}", host_port());
        let broker = polybus::connect_url(&url).await.unwrap();
        let topic = unique("signed-in");
        let group = unique("readers");
        let mut sub = broker
            .subscribe(SubscriptionSpec::new([topic.as_str()], group.as_str()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = broker.publish(Message::text(&topic, "hi")).await.unwrap();
        let delivery = recv(&mut sub, "the message, read on database 7").await;
        assert_eq!(delivery.message.id, sent.id, "{mode}");
        delivery.ack().await.unwrap();

        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await
            .unwrap();
        let reader = clients
            .lines()
            .find(|line| line.contains(&format!("name=polybus-{mode}-{group}-")))
            .unwrap_or_else(|| panic!("no blocking-read connection in {clients}"));
        assert!(reader.contains(&format!(" user={user} ")), "{reader}");
        assert!(reader.contains(" db=7 "), "{reader}");
        let in_db0: i64 = admin.exists(&topic).await.unwrap();
        assert_eq!(in_db0, 0, "{mode}: nothing written to database 0");
        sub.close().await.unwrap();
    }
    drop_user(&mut admin, &user).await;
}

/// A user refused the CLIENT commands (an ACL, a managed service) still publishes and reads:
/// naming a connection and learning its id are optional.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_without_the_client_commands_publishes_and_reads() {
    let mut admin = plain().await;
    let user = acl_user(&mut admin, &["+@all", "-client"]).await;
    for mode in ["streams", "list"] {
        let url = format!("redis://{user}:secret@{}/0?mode={mode}", host_port());
        let broker = polybus::connect_url(&url).await.unwrap();
        let topic = unique("no-client");
        let mut sub = broker
            .subscribe(SubscriptionSpec::new(
                [topic.as_str()],
                unique("g").as_str(),
            ))
            .await
            .unwrap();
        let sent = broker.publish(Message::text(&topic, "hi")).await.unwrap();
        let delivery = recv(&mut sub, "the message").await;
        assert_eq!(delivery.message.id, sent.id, "{mode}");
        delivery.ack().await.unwrap();
        sub.close().await.unwrap();
    }
    drop_user(&mut admin, &user).await;
}

/// The ids of the connections `user` has open under the name `name`.
async fn clients_of(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
    name: &str,
) -> Vec<String> {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    clients
        .lines()
        .filter(|line| line.contains(&format!(" user={user} ")))
        .filter(|line| line.contains(&format!(" name={name} ")))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|part| part.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// Single publishes use connections of their own, at most four at once (more callers share
/// the multiplexed connection); one the server closed while it sat idle is replaced, and the
/// publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_publishes_survive_their_idle_connection_being_closed() {
    let mut admin = plain().await;
    let user = acl_user(&mut admin, &["+@all"]).await;
    let url = format!("redis://{user}:secret@{}/0?mode=list", host_port());
    let broker = polybus::connect_url(&url).await.unwrap();
    let topic = unique("single");
    let publishes = (0..40).map(|n| broker.publish(Message::text(&topic, n.to_string())));
    for receipt in futures::future::join_all(publishes).await {
        receipt.unwrap();
    }
    let kept = clients_of(&mut admin, &user, "polybus-publisher").await;
    assert!(
        (1..=4).contains(&kept.len()),
        "between 1 and 4 publishing connections, not {}",
        kept.len()
    );
    for id in &kept {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    broker
        .publish(Message::text(&topic, "after the kill"))
        .await
        .unwrap();
    let length: i64 = admin.llen(&topic).await.unwrap();
    assert_eq!(length, 41, "every publish is in the list");
    let _: i64 = admin.del(&topic).await.unwrap();
    drop_user(&mut admin, &user).await;
}

/// Blocking publishes (PHP's, Python's `send_sync`) run on the caller's thread, one after
/// another on one connection of their own, signed in as the URL's user; one the server closed
/// while it sat idle is replaced and the publish goes through; after `close` they fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_publishes_keep_a_connection_and_survive_it_being_closed() {
    let mut admin = plain().await;
    let user = acl_user(&mut admin, &["+@all"]).await;
    let url = format!("redis://{user}:secret@{}/0?mode=list", host_port());
    let broker = polybus::connect_url(&url).await.unwrap();
    let topic = unique("blocking");
    let wait = Duration::from_secs(5);
    for n in 0..20 {
        publish_blocking(&broker, Message::text(&topic, n.to_string()), wait)
            .await
            .unwrap();
    }
    let kept = clients_of(&mut admin, &user, "polybus-publisher").await;
    assert_eq!(
        kept.len(),
        1,
        "one connection for one caller at a time: {kept:?}"
    );
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&kept[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    publish_blocking(&broker, Message::text(&topic, "after the kill"), wait)
        .await
        .unwrap();
    let length: i64 = admin.llen(&topic).await.unwrap();
    assert_eq!(length, 21, "every publish is in the list, once");
    broker.close().await.unwrap();
    let err = publish_blocking(&broker, Message::text(&topic, "closed"), wait)
        .await
        .unwrap_err();
    assert!(matches!(err, polybus::Error::Closed(_)), "{err:?}");
    let _: i64 = admin.del(&topic).await.unwrap();
    drop_user(&mut admin, &user).await;
}

/// A blocking publish whose reply does not come waits no longer than its caller allows, is
/// not sent again (the server may have run it: here it did), and its connection is not used
/// again; the next publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_publish_without_a_reply_times_out_and_is_not_resent() {
    let proxy = proxy().await;
    let hold = proxy.hold.clone();
    let db = address().rsplit('/').next().unwrap_or("0").to_owned();
    let broker = polybus::connect_url(&format!("redis://{}/{db}?mode=list", proxy.address))
        .await
        .unwrap();
    let topic = unique("blocking-timeout");
    let wait = Duration::from_secs(5);
    publish_blocking(&broker, Message::text(&topic, "first"), wait)
        .await
        .unwrap();
    let connections = proxy.accepted.load(Ordering::Acquire);
    hold.store(true, Ordering::Release);
    let started = Instant::now();
    let err = publish_blocking(
        &broker,
        Message::text(&topic, "unanswered"),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    hold.store(false, Ordering::Release);
    assert!(
        matches!(err, polybus::Error::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "waited {waited:?} for a reply allowed 300 ms"
    );
    publish_blocking(&broker, Message::text(&topic, "next"), wait)
        .await
        .unwrap();
    assert_eq!(
        proxy.accepted.load(Ordering::Acquire),
        connections + 1,
        "the connection left without its reply is not used again"
    );
    let mut conn = plain().await;
    let items: Vec<String> = conn.lrange(&topic, 0, -1).await.unwrap();
    assert_eq!(items.len(), 3, "each publish once: {items:?}");
    let _: i64 = conn.del(&topic).await.unwrap();
    broker.close().await.unwrap();
}
