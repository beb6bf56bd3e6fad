//! Configuration from environment variables, under the names the reference documents use.
//!
//! Every function takes a `lookup` so it can be used on the process environment
//! (`|name| std::env::var(name).ok()`) or on any map, without mutating global state.

use super::parse::parse_host_list;
use super::{AmqpConfig, BrokerConfig, BrokerKind, KafkaConfig, RedisConfig, Secret};
use crate::error::{Error, Result};

/// What the environment says about messaging as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessagingSettings {
    /// The broker to use (the null broker when messaging is disabled).
    pub broker: BrokerConfig,
    /// `MESSAGING_ENABLED` (default true).
    pub enabled: bool,
    /// `MESSAGING_FALLBACK_INMEMORY` (default false): fall back when the broker is unreachable.
    pub fallback_in_memory: bool,
}

impl MessagingSettings {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Self> {
        messaging_settings(|name| std::env::var(name).ok())
    }
}

/// Reads the messaging settings.
///
/// `POLYBUS_URL` wins. Otherwise the one broker family that is configured is used:
/// Kafka (`KAFKA_BOOTSTRAP_SERVERS` or `KAFKA_BROKERS`), RabbitMQ (`RABBITMQ_URL` or
/// `RABBITMQ_HOST`) or Redis (`REDIS_URL`); with none, the embedded memory broker. Several
/// families at once is an error, since the choice would be a guess.
pub fn messaging_settings(lookup: impl Fn(&str) -> Option<String>) -> Result<MessagingSettings> {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let enabled = parse_bool(&get, "MESSAGING_ENABLED", true)?;
    let fallback_in_memory = parse_bool(&get, "MESSAGING_FALLBACK_INMEMORY", false)?;
    let broker = if !enabled {
        BrokerConfig::Null
    } else if let Some(url) = get("POLYBUS_URL") {
        BrokerConfig::parse(&url).map_err(|err| in_variable("POLYBUS_URL", err))?
    } else {
        let families: Vec<(BrokerKind, &str)> = [
            (BrokerKind::Kafka, "KAFKA_BOOTSTRAP_SERVERS"),
            (BrokerKind::Kafka, "KAFKA_BROKERS"),
            (BrokerKind::RabbitMq, "RABBITMQ_URL"),
            (BrokerKind::RabbitMq, "RABBITMQ_HOST"),
            (BrokerKind::Redis, "REDIS_URL"),
        ]
        .into_iter()
        .filter(|(_, var)| get(var).is_some())
        .collect();
        let mut kinds: Vec<BrokerKind> = families.iter().map(|(kind, _)| *kind).collect();
        kinds.dedup();
        match kinds.as_slice() {
            [] => BrokerConfig::Memory(Default::default()),
            [kind] => broker_config_for(*kind, &lookup)?,
            _ => {
                let names: Vec<&str> = families.iter().map(|(_, var)| *var).collect();
                return Err(Error::config(
                    "environment",
                    format!(
                        "several brokers are configured ({}); set POLYBUS_URL to choose one",
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    Ok(MessagingSettings {
        broker,
        enabled,
        fallback_in_memory,
    })
}

/// The configuration of one broker kind from its environment variables, with local defaults
/// (`localhost:9092`, `amqp://guest:guest@localhost:5672/`, `redis://localhost:6379/0`).
pub fn broker_config_for(
    kind: BrokerKind,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BrokerConfig> {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    match kind {
        BrokerKind::Memory => Ok(BrokerConfig::Memory(Default::default())),
        BrokerKind::Null => Ok(BrokerConfig::Null),
        BrokerKind::Kafka => {
            let (var, servers) = match (get("KAFKA_BOOTSTRAP_SERVERS"), get("KAFKA_BROKERS")) {
                (Some(s), _) => ("KAFKA_BOOTSTRAP_SERVERS", s),
                (None, Some(s)) => ("KAFKA_BROKERS", s),
                (None, None) => ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092".to_owned()),
            };
            let mut config = if servers.contains("://") {
                match BrokerConfig::parse(&servers).map_err(|err| in_variable(var, err))? {
                    BrokerConfig::Kafka(config) => config,
                    other => {
                        return Err(Error::config(
                            var,
                            format!("expected kafka servers, found a {} URL", other.kind()),
                        ));
                    }
                }
            } else {
                KafkaConfig {
                    bootstrap_servers: parse_host_list(&servers, 9092)
                        .map_err(|err| in_variable(var, err))?,
                    ..KafkaConfig::default()
                }
            };
            if let Some(id) = get("KAFKA_CLIENT_ID") {
                config.client_id = Some(id);
            }
            if let Some(id) = get("KAFKA_GROUP_ID") {
                config.group_id = Some(id);
            }
            Ok(BrokerConfig::Kafka(config))
        }
        BrokerKind::RabbitMq => {
            if let Some(url) = get("RABBITMQ_URL") {
                return match BrokerConfig::parse(&url)
                    .map_err(|err| in_variable("RABBITMQ_URL", err))?
                {
                    config @ BrokerConfig::RabbitMq(_) => Ok(config),
                    other => Err(Error::config(
                        "RABBITMQ_URL",
                        format!(
                            "expected an amqp:// or amqps:// URL, found a {} URL",
                            other.kind()
                        ),
                    )),
                };
            }
            let defaults = AmqpConfig::default();
            let port = match get("RABBITMQ_PORT") {
                Some(port) => port.trim().parse().map_err(|_| {
                    Error::config("RABBITMQ_PORT", format!("{port:?} is not a valid port"))
                })?,
                None => defaults.port,
            };
            Ok(BrokerConfig::RabbitMq(AmqpConfig {
                host: get("RABBITMQ_HOST").unwrap_or(defaults.host),
                port,
                username: get("RABBITMQ_USER").unwrap_or(defaults.username),
                password: get("RABBITMQ_PASSWORD")
                    .map(Secret::new)
                    .unwrap_or(defaults.password),
                vhost: get("RABBITMQ_VHOST").unwrap_or(defaults.vhost),
                ..defaults
            }))
        }
        BrokerKind::Redis => match get("REDIS_URL") {
            Some(url) => {
                match BrokerConfig::parse(&url).map_err(|err| in_variable("REDIS_URL", err))? {
                    config @ BrokerConfig::Redis(_) => Ok(config),
                    other => Err(Error::config(
                        "REDIS_URL",
                        format!(
                            "expected a redis:// or rediss:// URL, found a {} URL",
                            other.kind()
                        ),
                    )),
                }
            }
            None => Ok(BrokerConfig::Redis(RedisConfig::default())),
        },
    }
}

/// The broker configuration a binding asks for: an explicit `url` wins; otherwise `kind` (or
/// the environment when `kind` is absent) with `bootstrap_servers` for Kafka; then `options`
/// are added as URL query parameters (checked like any URL: an unknown one is an error).
pub fn resolve_config<'a>(
    kind: Option<BrokerKind>,
    url: Option<&str>,
    bootstrap_servers: Option<&str>,
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BrokerConfig> {
    let mut config = match (url, kind, bootstrap_servers) {
        (Some(url), _, _) => BrokerConfig::parse(url)?,
        (None, Some(kind), _) => broker_config_for(kind, &lookup)?,
        (None, None, Some(_)) => broker_config_for(BrokerKind::Kafka, &lookup)?,
        (None, None, None) => messaging_settings(&lookup)?.broker,
    };
    if let Some(servers) = bootstrap_servers {
        match &mut config {
            BrokerConfig::Kafka(kafka) => kafka.bootstrap_servers = parse_host_list(servers, 9092)?,
            other => {
                return Err(Error::config(
                    "bootstrap_servers",
                    format!("only applies to kafka, not to {}", other.kind()),
                ));
            }
        }
    }
    let options: Vec<(&str, &str)> = options.into_iter().collect();
    if options.is_empty() {
        return Ok(config);
    }
    // Options override the parameters the configuration already has.
    let full = config.url_with_credentials();
    let (base, existing) = full.split_once('?').unwrap_or((&full, ""));
    let overridden = |pair: &&str| {
        let key = pair.split('=').next().unwrap_or("");
        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
        options.iter().any(|(k, _)| *k == key)
    };
    let query: Vec<String> = existing
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !overridden(p))
        .map(str::to_owned)
        .chain(
            options
                .iter()
                .map(|(k, v)| format!("{}={}", super::parse::encode(k), super::parse::encode(v))),
        )
        .collect();
    BrokerConfig::parse(&format!("{base}?{}", query.join("&")))
}

fn in_variable(var: &str, err: Error) -> Error {
    match err {
        Error::Config { part, reason } => Error::config(format!("{var}: {part}"), reason),
        other => other,
    }
}

fn parse_bool(get: &impl Fn(&str) -> Option<String>, var: &str, default: bool) -> Result<bool> {
    match get(var) {
        None => Ok(default),
        Some(value) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(Error::config(
                var,
                format!("{value:?} is not a boolean; use true/false, 1/0, yes/no or on/off"),
            )),
        },
    }
}
