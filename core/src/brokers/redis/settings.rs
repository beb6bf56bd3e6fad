//! The Redis backend's settings: the URL's query parameters, checked and with their defaults.

use std::time::Duration;

use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{BrokerConfig, RedisConfig, RedisMode};
use crate::error::{Error, Result};

/// Everything the backend needs from a [`RedisConfig`].
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// List, pub/sub or streams.
    pub mode: RedisMode,
    /// The redacted URL, for errors and logs.
    pub target: String,
    /// Streams: approximate `MAXLEN` for `XADD` (`maxlen`); `None` keeps every entry.
    pub maxlen: Option<u64>,
    /// Lists: how long a consumer's heartbeat lives; a consumer silent for longer is dead and
    /// its unacknowledged messages go back to the list (`visibility_timeout_ms`).
    pub visibility_timeout: Duration,
    /// The bound on one blocking read (`block_ms`).
    pub block: Duration,
    /// Streams: delete an entry once it is acknowledged (`delete_after_ack`).
    pub delete_after_ack: bool,
    /// Streams: how long an entry stays pending with a silent consumer before another member
    /// claims it (`claim_idle_ms`).
    pub claim_idle: Duration,
    /// The bound on establishing a connection (`connection_timeout`, milliseconds).
    pub connection_timeout: Duration,
    /// The bound on one command's reply (`response_timeout_ms`).
    pub response_timeout: Duration,
    /// Lists and pub/sub: wrap messages in the Polybus JSON envelope (`envelope`). Without it
    /// only the payload is written, for consumers that read the bare payload.
    pub envelope: bool,
}

impl Settings {
    /// Reads and checks the settings in `config`; the error names the bad parameter.
    pub fn from_config(config: &RedisConfig) -> Result<Self> {
        let params = &config.params;
        let millis = |name: &str, default: u64, min: u64| -> Result<Duration> {
            let value = match params.get(name) {
                None => default,
                Some(raw) => raw.trim().parse::<u64>().map_err(|_| {
                    Error::config(
                        format!("query parameter `{name}`"),
                        format!("{raw:?} is not a whole number of milliseconds"),
                    )
                })?,
            };
            if value < min {
                return Err(Error::config(
                    format!("query parameter `{name}`"),
                    format!("must be at least {min} ms"),
                ));
            }
            Ok(Duration::from_millis(value))
        };
        let maxlen = match params.get("maxlen") {
            None => None,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(Error::config(
                        "query parameter `maxlen`",
                        format!("{raw:?} is not a whole number of entries"),
                    ));
                }
            },
        };
        Ok(Settings {
            mode: config.mode,
            target: BrokerConfig::Redis(config.clone()).redacted_url(),
            maxlen,
            visibility_timeout: millis("visibility_timeout_ms", 30_000, 100)?,
            block: millis("block_ms", 1_000, 10)?,
            delete_after_ack: flag(params.get("delete_after_ack"), "delete_after_ack", false)?,
            claim_idle: millis("claim_idle_ms", 30_000, 10)?,
            connection_timeout: millis("connection_timeout", 5_000, 1)?,
            response_timeout: millis("response_timeout_ms", 10_000, 1)?,
            envelope: flag(params.get("envelope"), "envelope", true)?,
        })
    }

    /// The redis-rs connection info for `config` (credentials included).
    pub fn connection_info(config: &RedisConfig) -> Result<ConnectionInfo> {
        let host = config
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = if config.tls {
            ConnectionAddr::TcpTls {
                host,
                port: config.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, config.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(i64::from(config.db));
        if let Some(user) = &config.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &config.password {
            redis = redis.set_password(password.expose());
        }
        let info = addr.into_connection_info().map_err(|err| {
            Error::config(
                "url",
                format!(
                    "{}: {err}",
                    BrokerConfig::Redis(config.clone()).redacted_url()
                ),
            )
        })?;
        Ok(info.set_redis_settings(redis))
    }
}

fn flag(value: Option<&String>, name: &str, default: bool) -> Result<bool> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(Error::config(
            format!("query parameter `{name}`"),
            format!("{v:?} is not true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        match BrokerConfig::parse(url)? {
            BrokerConfig::Redis(config) => Settings::from_config(&config),
            other => panic!("not a redis config: {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let s = settings("redis://localhost").unwrap();
        assert_eq!(s.mode, RedisMode::List);
        assert_eq!(s.block, Duration::from_secs(1));
        assert_eq!(s.visibility_timeout, Duration::from_secs(30));
        assert_eq!(s.maxlen, None);
        assert!(s.envelope && !s.delete_after_ack);
    }

    #[test]
    fn parameters_are_read_and_checked() {
        let s = settings(
            "redis://:pw@localhost/1?mode=streams&maxlen=1000&claim_idle_ms=500&delete_after_ack=true",
        )
        .unwrap();
        assert_eq!(s.maxlen, Some(1000));
        assert_eq!(s.claim_idle, Duration::from_millis(500));
        assert!(s.delete_after_ack);
        assert!(!s.target.contains("pw"), "{}", s.target);
        let err = settings("redis://localhost?block_ms=soon")
            .unwrap_err()
            .to_string();
        assert!(err.contains("block_ms"), "{err}");
        let err = settings("redis://localhost?block_ms=0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least"), "{err}");
        let err = settings("redis://localhost?envelope=maybe")
            .unwrap_err()
            .to_string();
        assert!(err.contains("envelope"), "{err}");
    }
}
