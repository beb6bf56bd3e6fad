//! A `Polybus\Broker`'s configuration: a broker URL, or an array in the shape of Laravel's
//! `config/messaging.php` connections.
//!
//! Array keys (all optional except `driver` or `url`):
//!
//! | key | drivers | meaning |
//! |---|---|---|
//! | `driver` | all | `memory`, `null`, `kafka`, `rabbitmq` or `redis` |
//! | `url` | all | a broker URL; other keys refine it |
//! | `timeout` | all | seconds a connect, publish or flush may take (default 30) |
//! | `name`, `capacity` | memory | instance name, messages kept per topic |
//! | `brokers` | kafka | `host:port,host:port` or a list of them |
//! | `client_id`, `group_id` | kafka | client id, default consumer group |
//! | `host`, `port`, `username`/`user`, `password` | rabbitmq, redis, kafka (SASL) | server and credentials |
//! | `vhost` | rabbitmq | virtual host |
//! | `database` | redis | database number |
//! | `redis_mode` or `mode` | redis | `list`, `pubsub` or `streams` |
//! | `tls` | kafka, rabbitmq, redis | bool: TLS to the server |
//! | `options` | kafka, rabbitmq, redis | extra URL query parameters (librdkafka properties for Kafka) |
//! | `failover` | kafka, rabbitmq, redis | array: spool publishes to disk while the broker is down (`spool_dir`, `fsync`, `max_spool_bytes`, `segment_bytes`, `probe_interval`, `publish_timeout`, `replay_batch`) |
//!
//! Settings the array leaves out come from the environment as the engine reads it
//! (`KAFKA_BROKERS`, `RABBITMQ_URL`, `RABBITMQ_HOST`..., `REDIS_URL`), then local defaults.
//! Whatever was assembled is checked by the engine's URL parser, so an array and a URL are
//! validated by the same rules and errors name the same parts.

use std::time::Duration;

use ext_php_rs::types::{ZendHashTable, Zval};
use polybus::config::{Secret, broker_config_for};
use polybus::{BrokerConfig, BrokerKind, FailoverOptions};

use crate::convert::seconds;

/// How long connecting, publishing and flushing may take unless the configuration says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed configuration.
#[derive(Debug)]
pub struct Settings {
    /// The broker to connect to.
    pub broker: BrokerConfig,
    /// The bound on connecting, publishing and flushing.
    pub timeout: Duration,
    /// Put the broker behind a durable local spool, with these settings.
    pub failover: Option<FailoverOptions>,
}

/// Reads a URL string or a configuration array.
pub fn settings_from(config: &Zval) -> Result<Settings, String> {
    let config = config.dereference();
    if let Some(url) = config.str() {
        let broker = BrokerConfig::parse(url).map_err(|err| err.to_string())?;
        return Ok(Settings {
            broker,
            timeout: DEFAULT_TIMEOUT,
            failover: None,
        });
    }
    match config.array() {
        Some(array) => from_array(array),
        None => Err(format!(
            "invalid configuration (config): expected a broker URL string or a configuration array, got {:?}",
            config.get_type()
        )),
    }
}

fn from_array(array: &ZendHashTable) -> Result<Settings, String> {
    let get = Fields(array);
    for (key, _) in array.iter() {
        let name = key.to_string();
        if !KNOWN_KEYS.contains(&name.as_str()) {
            return Err(bad(
                &name,
                format!("unknown key; expected one of {}", KNOWN_KEYS.join(", ")),
            ));
        }
    }
    let timeout = match get.float("timeout")? {
        Some(value) => seconds(value, "timeout").map_err(|reason| bad("timeout", reason))?,
        None => DEFAULT_TIMEOUT,
    };
    let from_url = match get.string("url")? {
        Some(url) => Some(BrokerConfig::parse(&url).map_err(|err| err.to_string())?),
        None => None,
    };
    let kind = match (get.string("driver")?, &from_url) {
        (Some(driver), url) => {
            let kind: BrokerKind = driver
                .parse()
                .map_err(|err: polybus::Error| reworded(err, "driver"))?;
            if let Some(url) = url
                && url.kind() != kind
            {
                return Err(bad(
                    "driver",
                    format!("driver {kind} does not match the {} URL given", url.kind()),
                ));
            }
            kind
        }
        (None, Some(url)) => url.kind(),
        (None, None) => {
            return Err(bad(
                "driver",
                "give a driver (memory, null, kafka, rabbitmq or redis) or a url",
            ));
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let mut broker = match from_url {
        Some(url) => url,
        None => broker_config_for(kind, env).map_err(|err| err.to_string())?,
    };
    apply(&mut broker, &get)?;
    // One set of rules for URLs and arrays: the engine's parser checks what was assembled.
    let broker =
        BrokerConfig::parse(&broker.url_with_credentials()).map_err(|err| err.to_string())?;
    let failover = get.failover()?;
    Ok(Settings {
        broker,
        timeout,
        failover,
    })
}

const KNOWN_KEYS: [&str; 21] = [
    "driver",
    "url",
    "timeout",
    "name",
    "capacity",
    "brokers",
    "client_id",
    "group_id",
    "host",
    "port",
    "username",
    "user",
    "password",
    "vhost",
    "database",
    "redis_mode",
    "mode",
    "tls",
    "options",
    "connection",
    "failover",
];

fn apply(broker: &mut BrokerConfig, get: &Fields<'_>) -> Result<(), String> {
    let username = match get.string("username")? {
        Some(user) => Some(user),
        None => get.string("user")?,
    };
    let password = get.string("password")?;
    match broker {
        BrokerConfig::Null => {}
        BrokerConfig::Memory(memory) => {
            if let Some(name) = get.string("name")? {
                memory.name = name;
            }
            if let Some(capacity) = get.int("capacity")? {
                memory.capacity = usize::try_from(capacity)
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| bad("capacity", "must be a positive integer"))?;
            }
        }
        BrokerConfig::Kafka(kafka) => {
            if let Some(servers) = get.list("brokers")? {
                kafka.bootstrap_servers = parse_servers(&servers)?;
            }
            if let Some(id) = get.string("client_id")? {
                kafka.client_id = Some(id);
            }
            if let Some(id) = get.string("group_id")? {
                kafka.group_id = Some(id);
            }
            if username.is_some() {
                kafka.username = username;
            }
            if let Some(password) = password {
                kafka.password = Some(Secret::new(password));
            }
            if let Some(tls) = get.bool("tls")? {
                kafka.tls = tls;
            }
            kafka.properties.extend(get.options()?);
        }
        BrokerConfig::RabbitMq(amqp) => {
            if let Some(host) = get.string("host")? {
                amqp.host = host;
            }
            if let Some(port) = get.port()? {
                amqp.port = port;
            }
            if let Some(user) = username {
                amqp.username = user;
            }
            if let Some(password) = password {
                amqp.password = Secret::new(password);
            }
            if let Some(vhost) = get.string("vhost")? {
                amqp.vhost = vhost;
            }
            if let Some(tls) = get.bool("tls")? {
                amqp.tls = tls;
            }
            amqp.params.extend(get.options()?);
        }
        BrokerConfig::Redis(redis) => {
            if let Some(host) = get.string("host")? {
                redis.host = host;
            }
            if let Some(port) = get.port()? {
                redis.port = port;
            }
            if username.is_some() {
                redis.username = username;
            }
            if let Some(password) = password.filter(|p| !p.is_empty()) {
                redis.password = Some(Secret::new(password));
            }
            if let Some(db) = get.int("database")? {
                redis.db = u32::try_from(db)
                    .map_err(|_| bad("database", "must be a database number, 0 or more"))?;
            }
            let mode = match get.string("redis_mode")? {
                Some(mode) => Some(("redis_mode", mode)),
                None => get.string("mode")?.map(|mode| ("mode", mode)),
            };
            if let Some((key, mode)) = mode {
                redis.mode = mode
                    .parse()
                    .map_err(|err: polybus::Error| reworded(err, key))?;
            }
            if let Some(tls) = get.bool("tls")? {
                redis.tls = tls;
            }
            redis.params.extend(get.options()?);
        }
    }
    Ok(())
}

/// `host:port` entries through the engine's own URL parser (default port 9092).
fn parse_servers(servers: &[String]) -> Result<Vec<String>, String> {
    if servers.is_empty() {
        return Err(bad("brokers", "no servers given"));
    }
    match BrokerConfig::parse(&format!("kafka://{}", servers.join(","))) {
        Ok(BrokerConfig::Kafka(parsed)) => Ok(parsed.bootstrap_servers),
        Ok(_) => Err(bad("brokers", "expected host:port entries")),
        Err(err) => Err(reworded(err, "brokers")),
    }
}

fn bad(part: &str, reason: impl Into<String>) -> String {
    polybus::Error::config(part, reason).to_string()
}

fn reworded(err: polybus::Error, part: &str) -> String {
    match err {
        polybus::Error::Config { reason, .. } => bad(part, reason),
        other => other.to_string(),
    }
}

/// Typed reads of a configuration array, naming the key in errors.
struct Fields<'a>(&'a ZendHashTable);

impl Fields<'_> {
    fn raw(&self, key: &str) -> Option<&Zval> {
        self.0
            .get(key)
            .map(Zval::dereference)
            .filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(v.str().map(str::to_owned).filter(|s| !s.is_empty())),
            Some(v) if v.is_long() => Ok(v.coerce_to_string()),
            Some(v) => Err(bad(
                key,
                format!("expected a string, got {:?}", v.get_type()),
            )),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => match v.long() {
                Some(n) => Ok(Some(n)),
                None => match v.str().map(str::trim) {
                    Some("") => Ok(None),
                    Some(s) => s
                        .parse()
                        .map(Some)
                        .map_err(|_| bad(key, format!("{s:?} is not an integer"))),
                    None => Err(bad(
                        key,
                        format!("expected an integer, got {:?}", v.get_type()),
                    )),
                },
            },
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => match v.double().or_else(|| v.long().map(|n| n as f64)) {
                Some(f) => Ok(Some(f)),
                None => match v.str().map(str::trim) {
                    Some("") => Ok(None),
                    Some(s) => s
                        .parse()
                        .map(Some)
                        .map_err(|_| bad(key, format!("{s:?} is not a number"))),
                    None => Err(bad(
                        key,
                        format!("expected a number, got {:?}", v.get_type()),
                    )),
                },
            },
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => match v.bool() {
                Some(b) => Ok(Some(b)),
                None => match v.str().map(|s| s.trim().to_ascii_lowercase()) {
                    Some(s) if s.is_empty() => Ok(None),
                    Some(s) if ["1", "true", "yes", "on"].contains(&s.as_str()) => Ok(Some(true)),
                    Some(s) if ["0", "false", "no", "off"].contains(&s.as_str()) => Ok(Some(false)),
                    _ => match v.long() {
                        Some(n) => Ok(Some(n != 0)),
                        None => Err(bad(key, "expected a boolean")),
                    },
                },
            },
        }
    }

    fn port(&self) -> Result<Option<u16>, String> {
        match self.int("port")? {
            None => Ok(None),
            Some(port) => u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| bad("port", format!("{port} is not a valid port"))),
        }
    }

    /// A comma-separated string or a list of strings.
    fn list(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(v.str().map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })),
            Some(v) => match v.array() {
                Some(items) => items
                    .values()
                    .map(|item| {
                        item.dereference()
                            .str()
                            .map(|s| s.trim().to_owned())
                            .ok_or_else(|| bad(key, "expected strings of host:port"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                None => Err(bad(key, "expected a string or a list of strings")),
            },
        }
    }

    /// The `options` array: extra query parameters, values as strings.
    /// The `failover` array as engine options; an empty or null array means none.
    fn failover(&self) -> Result<Option<FailoverOptions>, String> {
        let Some(value) = self.raw("failover") else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        let Some(settings) = value.array() else {
            return Err(bad(
                "failover",
                "expected an array such as ['spool_dir' => ...]",
            ));
        };
        let pairs = crate::convert::headers_from(settings)
            .map_err(|reason| bad("failover", reason.replace("header", "setting")))?;
        if pairs.is_empty() {
            return Ok(None);
        }
        FailoverOptions::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(Some)
            .map_err(|err| err.to_string())
    }

    fn options(&self) -> Result<Vec<(String, String)>, String> {
        let Some(value) = self.raw("options") else {
            return Ok(Vec::new());
        };
        let Some(options) = value.array() else {
            return Err(bad("options", "expected an array of name => value"));
        };
        crate::convert::headers_from(options)
            .map(|map| map.into_iter().collect())
            .map_err(|reason| bad("options", reason.replace("header", "option")))
    }
}
