//! What the integration tests share: the test servers' URLs (`make test` starts them on
//! loopback; `POLYBUS_TEST_KAFKA_URL`, `POLYBUS_TEST_AMQP_URL` and `POLYBUS_TEST_REDIS_URL`
//! point elsewhere), names no other test uses, and logging.
#![allow(dead_code)] // each test binary uses some of them

/// The test Kafka cluster (topics created with 4 partitions).
pub fn kafka_url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092?polybus.topic.partitions=4".to_owned())
}

/// The test RabbitMQ server.
pub fn amqp_url() -> String {
    std::env::var("POLYBUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/".to_owned())
}

/// The test Redis server's URL in `mode` (the override's own `mode` is replaced).
pub fn redis_url(mode: &str) -> String {
    let base = std::env::var("POLYBUS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let (address, query) = base.split_once('?').unwrap_or((&base, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .map(str::to_owned)
        .collect();
    params.push(format!("mode={mode}"));
    format!("{address}?{}", params.join("&"))
}

/// A topic (or group) name no other test, or earlier run, uses.
pub fn unique(name: &str) -> String {
    let id = polybus::message::new_message_id().replace('-', "");
    format!("polybus-test.{name}.{}", &id[20..])
}

/// Installs a log subscriber once (`RUST_LOG` controls it; errors only by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_test_writer()
        .try_init();
}

/// The path of `scripts/<name>` in this checkout. Read at run time (cargo sets
/// `CARGO_MANIFEST_DIR`): a build cached from another checkout carries that checkout's path in
/// `env!`, and its scripts may no longer exist.
pub fn script(name: &str) -> std::path::PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::PathBuf::from(manifest_dir)
        .join("../scripts")
        .join(name)
}

/// Publishes `message` with `publish_blocking` on a thread of its own (it blocks), which must
/// publish it there rather than hand it back for `publish`.
pub async fn publish_blocking(
    broker: &polybus::SharedBroker,
    message: polybus::Message,
    timeout: std::time::Duration,
) -> polybus::Result<polybus::PublishReceipt> {
    let broker = broker.clone();
    match tokio::task::spawn_blocking(move || broker.publish_blocking(message, timeout))
        .await
        .unwrap()
    {
        polybus::BlockingPublish::Done(receipt) => receipt,
        polybus::BlockingPublish::Declined(message) => {
            panic!("a blocking publish was handed back for `publish`: {message:?}")
        }
    }
}
