//! Turning a [`KafkaConfig`] into librdkafka client properties plus Polybus' own settings.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// Prefix of the URL properties Polybus reads itself instead of passing them to librdkafka.
const OWN_PREFIX: &str = "polybus.";

/// Everything the Kafka backend needs from its configuration.
#[derive(Clone, Debug)]
pub(super) struct KafkaSettings {
    /// Properties common to producers, consumers and the admin client.
    pub common: ClientConfig,
    /// Create missing topics on first use (`polybus.topic.create`, default true).
    pub create_topics: bool,
    /// Partitions of topics Polybus creates (`polybus.topic.partitions`, default: the
    /// broker's `num.partitions`).
    pub topic_partitions: i32,
    /// Replication factor of topics Polybus creates (`polybus.topic.replication`, default:
    /// the broker's default).
    pub topic_replication: i32,
    /// How often the consumer commits the offsets of processed messages
    /// (`polybus.commit.interval.ms`, default 200).
    pub commit_interval: Duration,
    /// How long a revoked partition may take to finish its in-flight messages before the
    /// rebalance goes on without them (`polybus.revoke.timeout.ms`, default 10000).
    pub revoke_timeout: Duration,
    /// Upper bound of `flush` at close and drop (`polybus.flush.timeout.ms`, default 30000).
    pub flush_timeout: Duration,
}

impl KafkaSettings {
    pub fn from_config(config: &KafkaConfig) -> Result<Self> {
        if config.bootstrap_servers.is_empty() {
            return Err(Error::config("host", "no Kafka bootstrap server given"));
        }
        let mut common = ClientConfig::new();
        common.set("bootstrap.servers", config.bootstrap_servers.join(","));
        common.set(
            "client.id",
            config.client_id.as_deref().unwrap_or("polybus"),
        );
        let sasl = config.username.is_some();
        let protocol = match (config.tls, sasl) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        common.set("security.protocol", protocol);
        if let Some(user) = &config.username {
            common.set("sasl.username", user);
            common.set(
                "sasl.password",
                config.password.as_ref().map(|p| p.expose()).unwrap_or(""),
            );
            common.set("sasl.mechanism", "PLAIN");
        }
        let mut settings = KafkaSettings {
            common,
            create_topics: true,
            topic_partitions: -1,
            topic_replication: -1,
            commit_interval: Duration::from_millis(200),
            revoke_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(30),
        };
        for (key, value) in &config.properties {
            match key.strip_prefix(OWN_PREFIX) {
                Some(own) => settings.apply_own(own, value)?,
                None if key == "delivery.report.only.error" && value != "false" => {
                    return Err(Error::config(
                        format!("query parameter `{key}`"),
                        "a publish waits for its message's delivery report, so every message needs one: only false is accepted",
                    ));
                }
                None => {
                    settings.common.set(key, value);
                }
            }
        }
        Ok(settings)
    }

    fn apply_own(&mut self, key: &str, value: &str) -> Result<()> {
        let part = || format!("query parameter `{OWN_PREFIX}{key}`");
        let number = |value: &str| -> Result<i64> {
            value
                .parse()
                .map_err(|_| Error::config(part(), format!("{value:?} is not a number")))
        };
        match key {
            "topic.create" => {
                self.create_topics = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Error::config(part(), "expected true or false")),
                }
            }
            "topic.partitions" => {
                self.topic_partitions = number(value)?.clamp(-1, i32::MAX as i64) as i32
            }
            "topic.replication" => {
                self.topic_replication = number(value)?.clamp(-1, i32::MAX as i64) as i32
            }
            "commit.interval.ms" => self.commit_interval = millis(number(value)?),
            "revoke.timeout.ms" => self.revoke_timeout = millis(number(value)?),
            "flush.timeout.ms" => self.flush_timeout = millis(number(value)?),
            _ => {
                return Err(Error::config(
                    part(),
                    "unknown; expected polybus.topic.create, polybus.topic.partitions, polybus.topic.replication, polybus.commit.interval.ms, polybus.revoke.timeout.ms or polybus.flush.timeout.ms",
                ));
            }
        }
        Ok(())
    }

    /// Properties of the producer: idempotent (no duplicates or reordering on retries), and
    /// `linger.ms` 1 rather than librdkafka's 5: a batch is queued at once anyway, and a
    /// producer that awaits its acknowledgements in windows (`publish_batch` after
    /// `publish_batch`) waits out the linger on every one (Python `send_batch`, 4 batches of
    /// 1000 in flight: ~390,000 msgs/s with 5 ms, 460,000–500,000 with 2 ms, 530,000–540,000
    /// with 1 ms; with 0, 430,000: more, smaller requests).
    pub fn producer(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("enable.idempotence", "true");
        config.set("linger.ms", "1");
        merge(&mut config, &self.common);
        config
    }

    /// Properties of a consumer in `group`: offsets are committed by Polybus after the
    /// handler succeeded, never automatically.
    ///
    /// `fetch.queue.backoff.ms` defaults to 20 ms, not librdkafka's 1000: once a partition's
    /// prefetch queue is over its threshold, librdkafka waits that long before fetching for it
    /// again, and a consumer that drains the queue faster than that sat idle for most of each
    /// second (a Polybus consumer with a trivial handler: ~128,000 msgs/s in bursts with ~0.8 s
    /// gaps at the default, ~410,000 with 20 ms).
    ///
    /// `fetch.wait.max.ms` is 100, not 500: librdkafka keeps one fetch request in flight per
    /// broker, and a partition that becomes fetchable while the broker holds a long poll for
    /// others (empty ones, such as the group's retry topic) waits for that poll to end. A new
    /// group's first drain started ~0.6 s late that way (its topic's partitions were still
    /// looking up their start offsets when the empty retry partitions' fetch went out); now
    /// ~0.2 s. An idle consumer sends ten fetches a second per broker instead of two.
    pub fn consumer(&self, group: &str, reset: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("auto.offset.reset", reset);
        config.set("enable.partition.eof", "false");
        config.set("fetch.queue.backoff.ms", "20");
        config.set("fetch.wait.max.ms", "100");
        merge(&mut config, &self.common);
        config.set("group.id", group);
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        config
    }
}

fn millis(value: i64) -> Duration {
    Duration::from_millis(value.max(0) as u64)
}

/// Copies every property of `from` into `into`, overriding what is there.
fn merge(into: &mut ClientConfig, from: &ClientConfig) {
    for (key, value) in from.config_map() {
        into.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    fn settings(url: &str) -> Result<KafkaSettings> {
        match BrokerConfig::parse(url)? {
            BrokerConfig::Kafka(config) => KafkaSettings::from_config(&config),
            _ => unreachable!(),
        }
    }

    #[test]
    fn sasl_and_tls_pick_the_security_protocol() {
        let s = settings("kafka+ssl://u:p@k:9093?sasl.mechanism=SCRAM-SHA-256").unwrap();
        assert_eq!(s.common.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(s.common.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(s.common.get("sasl.username"), Some("u"));
        let s = settings("kafka://k:9092").unwrap();
        assert_eq!(s.common.get("security.protocol"), Some("plaintext"));
    }

    #[test]
    fn own_settings_are_not_passed_to_librdkafka() {
        let s = settings("kafka://k?polybus.topic.partitions=4&linger.ms=20").unwrap();
        assert_eq!(s.topic_partitions, 4);
        assert_eq!(s.common.get("polybus.topic.partitions"), None);
        assert_eq!(s.producer().get("linger.ms"), Some("20"));
        let err = settings("kafka://k?polybus.nope=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("polybus.nope"), "{err}");
    }

    #[test]
    fn every_delivery_must_be_reported() {
        let err = settings("kafka://k?delivery.report.only.error=true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.report.only.error"), "{err}");
        let s = settings("kafka://k?delivery.report.only.error=false").unwrap();
        assert_eq!(
            s.producer().get("delivery.report.only.error"),
            Some("false")
        );
    }

    #[test]
    fn consumers_never_commit_on_their_own() {
        let s = settings("kafka://k?enable.auto.commit=true&group.id=x").unwrap();
        let c = s.consumer("billing", "earliest");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("billing"));
    }

    #[test]
    fn producers_linger_one_millisecond_unless_told_otherwise() {
        let p = settings("kafka://k").unwrap().producer();
        assert_eq!(p.get("linger.ms"), Some("1"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn consumers_fetch_again_soon_unless_told_otherwise() {
        let c = settings("kafka://k").unwrap().consumer("g", "earliest");
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("20"));
        let tuned = settings("kafka://k?fetch.queue.backoff.ms=500").unwrap();
        assert_eq!(
            tuned
                .consumer("g", "earliest")
                .get("fetch.queue.backoff.ms"),
            Some("500")
        );
    }
}
