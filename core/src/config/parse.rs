//! Broker URLs to [`BrokerConfig`] and back.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use url::Url;

use super::redact::redact_url;
use super::{AmqpConfig, BrokerConfig, KafkaConfig, MemoryConfig, RedisConfig, Secret};
use crate::error::{Error, Result};

/// Query parameters the RabbitMQ backend understands.
pub(crate) const AMQP_PARAMS: &[&str] = &[
    "heartbeat",
    "connection_timeout",
    "channel_max",
    "frame_max",
    "exchange",
    "confirm_window",
    "confirm_timeout_ms",
    "prefetch",
    "queue_type",
    "mandatory",
];

/// Query parameters the Redis backend understands (besides `mode`).
pub(crate) const REDIS_PARAMS: &[&str] = &[
    "maxlen",
    "visibility_timeout_ms",
    "block_ms",
    "delete_after_ack",
    "claim_idle_ms",
    "connection_timeout",
    "response_timeout_ms",
    "envelope",
];

pub(crate) fn parse_url(raw: &str) -> Result<BrokerConfig> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::config("url", "the broker URL is empty"));
    }
    let Some((scheme, _)) = raw.split_once("://") else {
        return Err(Error::config(
            "scheme",
            format!(
                "{:?} has no scheme; expected memory://, null://, kafka://, amqp://, amqps://, redis:// or rediss://",
                redact_url(raw)
            ),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => parse_memory(raw),
        "null" => parse_null(raw),
        "kafka" | "kafka+ssl" | "kafkas" => parse_kafka(raw, scheme != "kafka"),
        "amqp" | "amqps" => parse_amqp(raw),
        "redis" | "rediss" => parse_redis(raw),
        other => Err(Error::config(
            "scheme",
            format!(
                "unknown scheme {other:?} in {:?}; expected memory, null, kafka, kafka+ssl, amqp, amqps, redis or rediss",
                redact_url(raw)
            ),
        )),
    }
}

fn parse_standard(raw: &str) -> Result<Url> {
    Url::parse(raw).map_err(|err| Error::config("url", format!("{:?}: {err}", redact_url(raw))))
}

fn query_map(url: &Url) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        if key.is_empty() {
            return Err(Error::config(
                "query",
                "a query parameter has an empty name",
            ));
        }
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(Error::config(
                format!("query parameter `{key}`"),
                "given more than once",
            ));
        }
    }
    Ok(params)
}

fn reject_unknown(backend: &str, params: &BTreeMap<String, String>, known: &[&str]) -> Result<()> {
    if let Some(key) = params.keys().find(|k| !known.contains(&k.as_str())) {
        let expected = if known.is_empty() {
            "none are accepted".to_owned()
        } else {
            format!("expected one of {}", known.join(", "))
        };
        return Err(Error::config(
            format!("query parameter `{key}`"),
            format!("unknown for {backend} URLs; {expected}"),
        ));
    }
    Ok(())
}

fn decoded(part: &str) -> String {
    percent_decode_str(part).decode_utf8_lossy().into_owned()
}

fn parse_memory(raw: &str) -> Result<BrokerConfig> {
    let url = parse_standard(raw)?;
    let params = query_map(&url)?;
    reject_unknown("memory", &params, &["capacity"])?;
    let mut config = MemoryConfig {
        name: url.host_str().unwrap_or("").to_owned(),
        ..MemoryConfig::default()
    };
    if let Some(capacity) = params.get("capacity") {
        config.capacity = parse_number("query parameter `capacity`", capacity)?;
        if config.capacity == 0 {
            return Err(Error::config(
                "query parameter `capacity`",
                "must be at least 1",
            ));
        }
    }
    Ok(BrokerConfig::Memory(config))
}

fn parse_null(raw: &str) -> Result<BrokerConfig> {
    let url = parse_standard(raw)?;
    reject_unknown("null", &query_map(&url)?, &[])?;
    Ok(BrokerConfig::Null)
}

fn parse_kafka(raw: &str, tls: bool) -> Result<BrokerConfig> {
    let rest = &raw[raw.find("://").map(|i| i + 3).unwrap_or(0)..];
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_end_matches('/');
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut config = KafkaConfig {
        tls,
        ..KafkaConfig::default()
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        config.username = Some(decoded(user));
        config.password = Some(Secret::new(decoded(password)));
    }
    config.bootstrap_servers = parse_host_list(hosts, 9092)?;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Error::config(
                format!("query parameter `{}`", decoded(pair)),
                "has no value; write key=value",
            )
        })?;
        let (key, value) = (decoded(key), decoded(value));
        if key.is_empty() {
            return Err(Error::config(
                "query",
                "a query parameter has an empty name",
            ));
        }
        match key.as_str() {
            "client_id" | "client.id" => config.client_id = Some(value),
            "group_id" | "group.id" => config.group_id = Some(value),
            _ => {
                config.properties.insert(key, value);
            }
        }
    }
    Ok(BrokerConfig::Kafka(config))
}

/// Parses `host:port,host2:port` (IPv6 in brackets); a missing port becomes `default_port`.
pub(crate) fn parse_host_list(hosts: &str, default_port: u16) -> Result<Vec<String>> {
    let mut servers = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(Error::config(
                "host",
                format!("empty host in bootstrap server list {hosts:?}"),
            ));
        }
        let (name, port) = split_host_port(host)?;
        let port = match port {
            Some(port) => parse_number::<u16>(&format!("port of {host:?}"), port)?,
            None => default_port,
        };
        if port == 0 {
            return Err(Error::config(format!("port of {host:?}"), "must not be 0"));
        }
        if name
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(Error::config(
                "host",
                format!("{name:?} is not a valid host name"),
            ));
        }
        servers.push(format!("{name}:{port}"));
    }
    Ok(servers)
}

fn split_host_port(host: &str) -> Result<(&str, Option<&str>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| Error::config("host", format!("{host:?} has an unclosed '['")))?;
        let port = after.strip_prefix(':');
        if !after.is_empty() && port.is_none() {
            return Err(Error::config(
                "host",
                format!("unexpected {after:?} after {host:?}"),
            ));
        }
        return Ok((&host[..addr.len() + 2], port));
    }
    match host.split_once(':') {
        Some(("", _)) => Err(Error::config(
            "host",
            format!("{host:?} has a port but no host name"),
        )),
        Some((name, port)) => Ok((name, Some(port))),
        None => Ok((host, None)),
    }
}

fn parse_number<T: std::str::FromStr>(part: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::config(part, format!("{value:?} is not a valid number")))
}

fn host_of(url: &Url, raw: &str) -> Result<String> {
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(host.to_owned()),
        _ => Err(Error::config(
            "host",
            format!("{:?} has no host", redact_url(raw)),
        )),
    }
}

fn parse_amqp(raw: &str) -> Result<BrokerConfig> {
    let url = parse_standard(raw)?;
    let tls = url.scheme() == "amqps";
    let params = query_map(&url)?;
    reject_unknown("amqp", &params, AMQP_PARAMS)?;
    let defaults = AmqpConfig::default();
    let path = url.path();
    let vhost = match path.strip_prefix('/') {
        None | Some("") => defaults.vhost.clone(),
        Some(segment) if segment.contains('/') => {
            return Err(Error::config(
                "vhost",
                format!("{segment:?} has a '/'; write it percent-encoded, e.g. %2F"),
            ));
        }
        Some(segment) => decoded(segment),
    };
    Ok(BrokerConfig::RabbitMq(AmqpConfig {
        tls,
        host: host_of(&url, raw)?,
        port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
        username: if url.username().is_empty() {
            defaults.username
        } else {
            decoded(url.username())
        },
        password: url
            .password()
            .map(|p| Secret::new(decoded(p)))
            .unwrap_or(defaults.password),
        vhost,
        params,
    }))
}

fn parse_redis(raw: &str) -> Result<BrokerConfig> {
    let url = parse_standard(raw)?;
    let tls = url.scheme() == "rediss";
    let mut params = query_map(&url)?;
    let mode = match params
        .remove("mode")
        .or_else(|| params.remove("redis_mode"))
    {
        Some(mode) => mode.parse()?,
        None => Default::default(),
    };
    reject_unknown("redis", &params, REDIS_PARAMS)?;
    let db = match url.path().trim_start_matches('/') {
        "" => 0,
        db => parse_number("database (path)", db)?,
    };
    Ok(BrokerConfig::Redis(RedisConfig {
        tls,
        host: host_of(&url, raw)?,
        port: url.port().unwrap_or(6379),
        db,
        username: Some(decoded(url.username())).filter(|u| !u.is_empty()),
        password: url.password().map(|p| Secret::new(decoded(p))),
        mode,
        params,
    }))
}

/// Characters escaped in URL parts we write: those with a meaning in a URL.
const URL_RESERVED: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b']');

pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, URL_RESERVED).to_string()
}

fn password_text(secret: &Secret, redact: bool) -> String {
    if redact {
        "***".to_owned()
    } else {
        encode(secret.expose())
    }
}

fn query_string<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let parts: Vec<String> = pairs
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub(crate) fn to_url(config: &BrokerConfig, redact: bool) -> String {
    match config {
        BrokerConfig::Memory(c) => {
            let default = MemoryConfig::default().capacity;
            let capacity = c.capacity.to_string();
            let query = query_string(
                Some(("capacity", capacity.as_str()))
                    .filter(|_| c.capacity != default)
                    .into_iter(),
            );
            format!("memory://{}{query}", c.name)
        }
        BrokerConfig::Null => "null://".to_owned(),
        BrokerConfig::Kafka(c) => {
            let scheme = if c.tls { "kafka+ssl" } else { "kafka" };
            let auth = match (&c.username, &c.password) {
                (Some(user), Some(pass)) => {
                    format!("{}:{}@", encode(user), password_text(pass, redact))
                }
                (Some(user), None) => format!("{}@", encode(user)),
                _ => String::new(),
            };
            let mut pairs: Vec<(&str, &str)> = Vec::new();
            if let Some(id) = &c.client_id {
                pairs.push(("client_id", id));
            }
            if let Some(id) = &c.group_id {
                pairs.push(("group_id", id));
            }
            pairs.extend(c.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            format!(
                "{scheme}://{auth}{}{}",
                c.bootstrap_servers.join(","),
                query_string(pairs.into_iter())
            )
        }
        BrokerConfig::RabbitMq(c) => {
            let scheme = if c.tls { "amqps" } else { "amqp" };
            format!(
                "{scheme}://{}:{}@{}:{}/{}{}",
                encode(&c.username),
                password_text(&c.password, redact),
                c.host,
                c.port,
                encode(&c.vhost),
                query_string(c.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            )
        }
        BrokerConfig::Redis(c) => {
            let scheme = if c.tls { "rediss" } else { "redis" };
            let auth = match (&c.username, &c.password) {
                (Some(user), Some(pass)) => {
                    format!("{}:{}@", encode(user), password_text(pass, redact))
                }
                (None, Some(pass)) => format!(":{}@", password_text(pass, redact)),
                (Some(user), None) => format!("{}@", encode(user)),
                (None, None) => String::new(),
            };
            let mode = c.mode.as_str();
            let pairs = std::iter::once(("mode", mode))
                .chain(c.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            format!(
                "{scheme}://{auth}{}:{}/{}{}",
                c.host,
                c.port,
                c.db,
                query_string(pairs)
            )
        }
    }
}
