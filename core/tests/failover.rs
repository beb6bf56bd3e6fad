//! The failover broker and its spool: the spool on its own (append, read, cursor, torn tail,
//! restart, size limit, lock, options), then against a Redis server of the test's own, started,
//! killed and restarted on a free port (the shared Redis is never touched).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polybus::failover::{FailoverBroker, FailoverOptions, FailoverState, FsyncPolicy, Spool};
use polybus::{Broker, Error, Message, Publisher, SubscriptionSpec};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "polybus-failover-{name}-{}",
            polybus::message::new_message_id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Logs to the test output, filtered by `RUST_LOG`.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn options(dir: &Path) -> FailoverOptions {
    FailoverOptions {
        probe_interval: Duration::from_millis(100),
        replay_batch: 50,
        ..FailoverOptions::new(dir)
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    found.sort();
    found
}

fn numbered(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::text(topic, format!("message {i}")))
        .collect()
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The spool on its own.

#[test]
fn the_spool_reads_back_in_order_and_the_cursor_survives_a_reopen() {
    let dir = TempDir::new("cursor");
    let sent = numbered("t", 10);
    let mut spool = Spool::open(&options(dir.path())).unwrap();
    assert!(spool.is_empty());
    spool.append(&sent[..3]).unwrap();
    spool.append(&sent[3..]).unwrap();
    assert_eq!(spool.depth(), 10);

    let first = spool.read(4).unwrap();
    assert_eq!(
        ids(&first.iter().map(|s| s.message.clone()).collect::<Vec<_>>()),
        ids(&sent[..4])
    );
    // Reading does not move the cursor; committing does.
    assert_eq!(spool.read(4).unwrap().len(), 4);
    assert_eq!(spool.depth(), 10);
    spool.commit(first[3].position).unwrap();
    assert_eq!(spool.depth(), 6);
    drop(spool);

    let mut spool = Spool::open(&options(dir.path())).unwrap();
    assert_eq!(spool.depth(), 6, "the committed cursor was persisted");
    let rest = spool.read(100).unwrap();
    let rest_messages: Vec<Message> = rest.iter().map(|s| s.message.clone()).collect();
    assert_eq!(ids(&rest_messages), ids(&sent[4..]));
    spool.commit(rest.last().unwrap().position).unwrap();
    assert!(spool.is_empty());
    assert!(
        segments(dir.path()).is_empty(),
        "replayed segments are deleted"
    );
    assert_eq!(spool.bytes(), 0);

    // Appends after a drain go on in a new segment.
    spool.append(&sent[..2]).unwrap();
    drop(spool);
    let spool = Spool::open(&options(dir.path())).unwrap();
    assert_eq!(spool.depth(), 2);
}

#[test]
fn every_field_of_a_message_survives_the_spool() {
    let dir = TempDir::new("fields");
    let message = Message::bytes("orders.created", vec![0u8, 159, 146, 150, 255, 10])
        .with_id("id-1")
        .with_key("customer-7")
        .with_header("trace", "abc")
        .with_header("lang", "français")
        .with_content_type("application/x-thing")
        .with_timestamp_ms(1_700_000_000_123);
    let mut spool = Spool::open(&options(dir.path())).unwrap();
    spool.append(std::slice::from_ref(&message)).unwrap();
    drop(spool);
    let spool = Spool::open(&options(dir.path())).unwrap();
    let read = spool.read(10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].message, message);
}

#[test]
fn segments_rotate_and_are_deleted_once_replayed() {
    let dir = TempDir::new("rotate");
    let opts = FailoverOptions {
        segment_bytes: 4096,
        ..options(dir.path())
    };
    let sent: Vec<Message> = (0..100)
        .map(|i| Message::text("t", format!("{i:0>200}")))
        .collect();
    let mut spool = Spool::open(&opts).unwrap();
    for chunk in sent.chunks(7) {
        spool.append(chunk).unwrap();
    }
    let files = segments(dir.path());
    assert!(files.len() >= 5, "{} segments", files.len());
    for file in &files {
        let len = std::fs::metadata(file).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", file.display());
    }

    let all = spool.read(1000).unwrap();
    let read: Vec<Message> = all.iter().map(|s| s.message.clone()).collect();
    assert_eq!(ids(&read), ids(&sent), "read back across segments in order");
    spool.commit(all[59].position).unwrap();
    let left = segments(dir.path());
    assert!(
        left.len() < files.len(),
        "segments before the cursor deleted"
    );
    assert_eq!(left.last(), files.last());
    drop(spool);

    let spool = Spool::open(&opts).unwrap();
    assert_eq!(spool.depth(), 40);
    let rest: Vec<Message> = spool
        .read(1000)
        .unwrap()
        .into_iter()
        .map(|s| s.message)
        .collect();
    assert_eq!(ids(&rest), ids(&sent[60..]));
}

#[test]
fn a_torn_tail_is_cut_off_on_open() {
    let dir = TempDir::new("torn");
    let sent = numbered("t", 5);
    let mut spool = Spool::open(&options(dir.path())).unwrap();
    spool.append(&sent).unwrap();
    drop(spool);
    let segment = segments(dir.path()).pop().unwrap();
    let intact = std::fs::metadata(&segment).unwrap().len();

    // A crash in the middle of an append: a header claiming 100 bytes, then only 20 of them.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&100u32.to_le_bytes()).unwrap();
    file.write_all(&[7u8; 24]).unwrap();
    drop(file);
    // And a segment created just before the crash, its header cut short.
    let headless = dir.path().join(format!("{:020}.seg", 1_000_000));
    std::fs::write(&headless, b"PBS").unwrap();

    let mut spool = Spool::open(&options(dir.path())).unwrap();
    assert_eq!(spool.depth(), 5);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), intact);
    assert!(!headless.exists(), "an empty segment is removed");
    let extra = Message::text("t", "after the crash");
    spool.append(std::slice::from_ref(&extra)).unwrap();
    let read: Vec<Message> = spool
        .read(10)
        .unwrap()
        .into_iter()
        .map(|s| s.message)
        .collect();
    let mut expected = ids(&sent);
    expected.push(extra.id.clone());
    assert_eq!(ids(&read), expected);
}

#[test]
fn a_garbled_last_record_is_detected_by_its_checksum() {
    let dir = TempDir::new("garbled");
    let sent = numbered("t", 3);
    let mut spool = Spool::open(&options(dir.path())).unwrap();
    spool.append(&sent).unwrap();
    drop(spool);
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let spool = Spool::open(&options(dir.path())).unwrap();
    assert_eq!(spool.depth(), 2, "the damaged record is dropped, not fatal");
    let read: Vec<Message> = spool
        .read(10)
        .unwrap()
        .into_iter()
        .map(|s| s.message)
        .collect();
    assert_eq!(ids(&read), ids(&sent[..2]));
}

#[test]
fn a_full_spool_refuses_appends_with_a_clear_error() {
    let dir = TempDir::new("full");
    let opts = FailoverOptions {
        segment_bytes: 4096,
        max_spool_bytes: 8192,
        ..options(dir.path())
    };
    let mut spool = Spool::open(&opts).unwrap();
    let big = |i: usize| Message::bytes("t", vec![i as u8; 1000]);
    let mut accepted = 0;
    let err = loop {
        match spool.append(&[big(accepted)]) {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 100, "the limit was never reached");
    };
    assert!((6..=8).contains(&accepted), "{accepted} accepted");
    assert!(spool.bytes() <= 8192, "{} bytes", spool.bytes());
    let text = err.to_string();
    assert!(
        text.contains("full") && text.contains("max_spool_bytes"),
        "{text}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        spool.depth(),
        accepted as u64,
        "nothing partial was written"
    );
    // A batch that does not fit is refused whole.
    assert!(spool.append(&[big(1), big(2), big(3)]).is_err());
    assert_eq!(spool.depth(), accepted as u64);

    // Once replayed, there is room again.
    let all = spool.read(100).unwrap();
    spool.commit(all.last().unwrap().position).unwrap();
    spool.append(&[big(0), big(1)]).unwrap();
    assert_eq!(spool.depth(), 2);
}

#[test]
fn a_spool_directory_is_used_by_one_spool_at_a_time() {
    let dir = TempDir::new("lock");
    let spool = Spool::open(&options(dir.path())).unwrap();
    let err = match Spool::open(&options(dir.path())) {
        Ok(_) => panic!("a second spool opened the same directory"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("in use") && err.contains("spool_dir"), "{err}");
    drop(spool);
    Spool::open(&options(dir.path())).expect("the lock is released on drop");
}

#[test]
fn fsync_policies_parse_and_bad_ones_are_named() {
    assert_eq!(
        "always".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Always
    );
    assert_eq!(
        " NEVER ".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Never
    );
    assert_eq!(
        "interval:100ms".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(100))
    );
    assert_eq!(
        "interval:2s".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_secs(2))
    );
    assert_eq!(
        "interval:250".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    let policy = FsyncPolicy::Interval(Duration::from_millis(40));
    assert_eq!(policy.to_string().parse::<FsyncPolicy>().unwrap(), policy);
    for bad in [
        "sometimes",
        "interval:",
        "interval:fast",
        "interval:0ms",
        "interval:5h",
    ] {
        let err = bad.parse::<FsyncPolicy>().unwrap_err();
        assert!(
            matches!(&err, Error::Config { part, .. } if part == "fsync"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn options_build_from_pairs_and_name_what_is_wrong() {
    let opts = FailoverOptions::from_pairs([
        ("spool_dir", "/tmp/x"),
        ("fsync", "interval:50ms"),
        ("max_spool_bytes", "1GiB"),
        ("segment_bytes", "16MiB"),
        ("probe_interval", "250ms"),
        ("replay_batch", "64"),
    ])
    .unwrap();
    assert_eq!(opts.spool_dir, PathBuf::from("/tmp/x"));
    assert_eq!(opts.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
    assert_eq!(opts.max_spool_bytes, 1 << 30);
    assert_eq!(opts.segment_bytes, 16 << 20);
    assert_eq!(opts.probe_interval, Duration::from_millis(250));
    assert_eq!(opts.replay_batch, 64);

    let defaults = FailoverOptions::from_pairs([("spool_dir", "/tmp/y")]).unwrap();
    assert_eq!(defaults, FailoverOptions::new("/tmp/y"));

    let err = |pairs: &[(&str, &str)]| {
        FailoverOptions::from_pairs(pairs.iter().copied())
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(&[("spool_dir", "/tmp/x"), ("colour", "red")]).contains("`colour`"),
        "unknown keys are named"
    );
    assert!(err(&[("fsync", "always")]).contains("spool_dir"));
    assert!(err(&[("spool_dir", "/x"), ("segment_bytes", "12 parsecs")]).contains("segment_bytes"));
    assert!(err(&[("spool_dir", "/x"), ("segment_bytes", "100")]).contains("segment_bytes"));
    assert!(
        err(&[
            ("spool_dir", "/x"),
            ("max_spool_bytes", "1MiB"),
            ("segment_bytes", "2MiB")
        ])
        .contains("max_spool_bytes")
    );
    assert!(err(&[("spool_dir", "/x"), ("probe_interval", "soon")]).contains("probe_interval"));
    assert!(err(&[("spool_dir", "/x"), ("replay_batch", "0")]).contains("replay_batch"));
}

// ---------------------------------------------------------------------------------------------
// A Redis server of our own.

/// A `redis-server` child process on a free port, with an append-only file synced on every
/// write (so a kill loses nothing the server acknowledged) in its own directory.
struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A free port, with no server on it yet.
    fn reserve() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer {
            port,
            dir: TempDir::new("redis"),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0?mode=list", self.port)
    }

    /// Starts the server (again) and waits until it answers.
    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 5];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `count` messages of `topic` from the list, acknowledging each, then checks that no
/// more arrive; returns them in delivery order.
async fn consume(url: &str, topic: &str, count: usize) -> Vec<Message> {
    let consumer = polybus::connect_url(url).await.unwrap();
    let mut subscription = consumer
        .subscribe(SubscriptionSpec::new([topic], "readers").with_prefetch(500))
        .await
        .unwrap();
    let mut received = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived",
            received.len()
        );
        let batch = subscription
            .next_batch(500, Duration::from_secs(1))
            .await
            .unwrap();
        for delivery in batch {
            received.push(delivery.message.clone());
            delivery.ack().await.unwrap();
        }
    }
    let extra = subscription
        .next_batch(500, Duration::from_millis(500))
        .await
        .unwrap();
    for delivery in extra {
        received.push(delivery.message.clone());
        delivery.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    consumer.close().await.unwrap();
    received
}

fn unique_topic(name: &str) -> String {
    format!(
        "polybus-failover.{name}.{}",
        &polybus::message::new_message_id()[24..]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_down_at_start_gets_the_spool_after_a_restart_in_order() {
    init_tracing();
    let dir = TempDir::new("down-at-start");
    let mut redis = RedisServer::reserve();
    let topic = unique_topic("start");
    let sent = numbered(&topic, 230);

    let broker = FailoverBroker::connect_url(&redis.url(), options(dir.path()))
        .await
        .expect("starts with the primary down");
    assert_eq!(broker.state(), FailoverState::Spooling);
    assert_eq!(broker.name(), "redis");
    for message in &sent[..30] {
        let receipt = broker.publish(message.clone()).await.unwrap();
        assert!(receipt.spooled);
        assert_eq!(receipt.id, message.id);
    }
    for chunk in sent[30..].chunks(40) {
        for result in broker.publish_batch(chunk.to_vec()).await {
            assert!(result.unwrap().spooled);
        }
    }
    // An invalid message is refused, never spooled.
    let err = broker
        .publish(Message::text("bad topic", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(_)), "{err}");
    let status = broker.status();
    assert_eq!(status.state, FailoverState::Spooling);
    assert_eq!(status.spool_depth, 230);
    assert_eq!(status.spooled_total, 230);
    assert!(status.spool_bytes > 0);
    assert!(status.last_error.is_some(), "{status:?}");

    // A restart: the broker goes away (no close), a new one opens the same spool.
    drop(broker);
    let broker = FailoverBroker::connect_url(&redis.url(), options(dir.path()))
        .await
        .unwrap();
    assert_eq!(broker.status().spool_depth, 230, "the spool survived");
    assert_eq!(broker.state(), FailoverState::Spooling);

    redis.start();
    let status = broker
        .wait_for(Duration::from_secs(30), |s| {
            s.state == FailoverState::Primary && s.spool_depth == 0
        })
        .await
        .expect("the spool drains once the primary is back");
    assert_eq!(status.replayed_total, 230);
    assert!(segments(dir.path()).is_empty(), "replayed segments deleted");

    let after = Message::text(&topic, "straight to the primary");
    assert!(!broker.publish(after.clone()).await.unwrap().spooled);
    broker.close().await.unwrap();

    let mut expected = ids(&sent);
    expected.push(after.id.clone());
    let received = consume(&redis.url(), &topic, expected.len()).await;
    assert_eq!(ids(&received), expected, "every message, once, in order");
    assert_eq!(received[0], sent[0], "the whole message survived the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_through_a_primary_crash_and_restart_loses_nothing() {
    init_tracing();
    let dir = TempDir::new("outage");
    let mut redis = RedisServer::reserve();
    redis.start();
    let topic = unique_topic("outage");
    let broker = Arc::new(
        FailoverBroker::connect_url(&redis.url(), options(dir.path()))
            .await
            .unwrap(),
    );
    assert_eq!(broker.state(), FailoverState::Primary);
    let mut states = broker.watch_status();
    let seen_states = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let state = states.borrow_and_update().state;
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            if states.changed().await.is_err() {
                return seen;
            }
        }
    });

    // Publish continuously, single messages and batches, one after another.
    let publisher = {
        let broker = broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut order = Vec::new();
            let mut spooled = 0;
            let started = Instant::now();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(9) {
                if n % 10 == 9 {
                    let batch = numbered(&topic, 5);
                    for (message, result) in
                        batch.iter().zip(broker.publish_batch(batch.clone()).await)
                    {
                        spooled += usize::from(result.expect("publish_batch").spooled);
                        order.push(message.id.clone());
                    }
                } else {
                    let message = Message::text(&topic, format!("m{n}"));
                    let receipt = broker.publish(message.clone()).await.expect("publish");
                    spooled += usize::from(receipt.spooled);
                    order.push(message.id);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (order, spooled)
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.start();

    let (order, spooled) = publisher.await.unwrap();
    assert!(spooled > 0, "no publish went to the spool");
    let status = broker
        .wait_for(Duration::from_secs(60), |s| {
            s.state == FailoverState::Primary && s.spool_depth == 0
        })
        .await
        .expect("the spool drains");
    assert_eq!(status.spooled_total, spooled as u64);
    assert!(status.replayed_total >= spooled as u64);
    broker.close().await.unwrap();
    drop(broker); // ends the status channel, and so the watcher
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_states)
        .await
        .expect("the status channel ends with the broker")
        .unwrap();
    assert!(
        seen.contains(&FailoverState::Spooling) && seen.last() == Some(&FailoverState::Primary),
        "{seen:?}"
    );

    // Delivery is at-least-once: copies are possible, but nothing may be missing, and the
    // first copy of each message comes in publish order.
    let received = consume(&redis.url(), &topic, order.len()).await;
    let mut first_seen = Vec::with_capacity(order.len());
    let mut seen_ids = HashSet::new();
    for message in &received {
        if seen_ids.insert(message.id.clone()) {
            first_seen.push(message.id.clone());
        }
    }
    let missing = order.iter().filter(|id| !seen_ids.contains(*id)).count();
    assert_eq!(missing, 0, "{missing} of {} messages lost", order.len());
    if let Some(at) = (0..order.len()).find(|&i| first_seen[i] != order[i]) {
        panic!(
            "publish order broken at message {at} of {}: {} arrived where {} was published",
            order.len(),
            first_seen[at],
            order[at]
        );
    }
    eprintln!(
        "{} published, {spooled} through the spool, {} copies",
        order.len(),
        received.len() - order.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_broker_keeps_its_spool_for_the_next_start() {
    let dir = TempDir::new("close");
    let redis = RedisServer::reserve();
    let broker = FailoverBroker::connect_url(&redis.url(), options(dir.path()))
        .await
        .unwrap();
    // Two brokers on one spool: the second is refused.
    let err = match FailoverBroker::connect_url(&redis.url(), options(dir.path())).await {
        Ok(_) => panic!("two brokers opened one spool"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("in use"), "{err}");

    let sent = numbered("t", 12);
    for result in broker.publish_batch(sent.clone()).await {
        assert!(result.unwrap().spooled);
    }
    broker.flush(Duration::from_secs(1)).await.unwrap();
    let started = Instant::now();
    broker.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close is bounded"
    );
    assert!(matches!(
        broker.publish(Message::text("t", "late")).await,
        Err(Error::Closed(_))
    ));

    let spool = Spool::open(&options(dir.path())).expect("close released the lock");
    let kept: Vec<Message> = spool
        .read(100)
        .unwrap()
        .into_iter()
        .map(|s| s.message)
        .collect();
    assert_eq!(ids(&kept), ids(&sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_fails_the_publish_and_drops_nothing() {
    let dir = TempDir::new("full-broker");
    let redis = RedisServer::reserve();
    let opts = FailoverOptions {
        segment_bytes: 4096,
        max_spool_bytes: 8192,
        fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
        ..options(dir.path())
    };
    let broker = FailoverBroker::connect_url(&redis.url(), opts.clone())
        .await
        .unwrap();
    let mut accepted = 0u64;
    let err = loop {
        match broker.publish(Message::bytes("t", vec![1u8; 1000])).await {
            Ok(receipt) => {
                assert!(receipt.spooled);
                accepted += 1;
            }
            Err(err) => break err,
        }
        assert!(accepted < 100, "the limit was never reached");
    };
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(broker.status().spool_depth, accepted);
    drop(broker);
    let spool = Spool::open(&opts).unwrap();
    assert_eq!(spool.depth(), accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_prefetch_is_the_primary_backends_reached_or_not() {
    init_tracing();
    for (url, prefetch) in [
        ("kafka://127.0.0.1:1", 500),
        ("redis://127.0.0.1:1/0", polybus::DEFAULT_PREFETCH),
    ] {
        let dir = TempDir::new("default-prefetch");
        let broker = FailoverBroker::connect_url(url, options(dir.path()))
            .await
            .expect("starts with the primary down");
        assert_eq!(broker.default_prefetch(), prefetch, "{url}");
    }
}
