//! Idempotent consumption: a message id handled successfully within a time window is not
//! handled again (a redelivery after a lost acknowledgement, a producer's retried publish).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{Error, Result};

/// Where handled message ids are remembered.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `key` for `ttl`: true when nobody holds it (handle the message), false when it
    /// was handled or is being handled (skip it).
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool>;

    /// Gives a claim back after the handler failed, so the retry is handled.
    async fn release(&self, key: &str) -> Result<()>;
}

/// Idempotency settings of a consumer.
#[derive(Clone)]
pub struct Dedup {
    /// The store.
    pub store: std::sync::Arc<dyn DedupStore>,
    /// How long a handled id is remembered.
    pub ttl: Duration,
}

impl Dedup {
    /// Opens the store `spec` names, remembering ids for `ttl`: `memory` (this process only,
    /// shared by its consumers) or a Redis URL (`redis://host:6379/0`, shared by every process
    /// using that server; ids are kept with `SET NX PX`).
    pub async fn open(spec: &str, ttl: Duration) -> Result<Self> {
        if ttl.is_zero() {
            return Err(Error::config("dedup_ttl", "must be more than zero"));
        }
        let store: std::sync::Arc<dyn DedupStore> = match spec.trim() {
            "memory" => process_memory_store(),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                redis_store(url).await?
            }
            other => {
                return Err(Error::config(
                    "dedup",
                    format!("{other:?} is neither \"memory\" nor a redis:// URL"),
                ));
            }
        };
        Ok(Dedup { store, ttl })
    }
}

/// The memory store every consumer of this process shares.
fn process_memory_store() -> std::sync::Arc<dyn DedupStore> {
    static STORE: std::sync::OnceLock<std::sync::Arc<MemoryDedupStore>> =
        std::sync::OnceLock::new();
    STORE
        .get_or_init(|| std::sync::Arc::new(MemoryDedupStore::new()))
        .clone()
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> Result<std::sync::Arc<dyn DedupStore>> {
    use crate::brokers::redis::RedisBroker;
    use crate::config::BrokerConfig;
    match BrokerConfig::parse(url)? {
        BrokerConfig::Redis(config) => Ok(std::sync::Arc::new(
            RedisBroker::connect(&config).await?.dedup_store(),
        )),
        _ => Err(Error::config("dedup", "expected a redis:// URL")),
    }
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> Result<std::sync::Arc<dyn DedupStore>> {
    Err(Error::BackendNotEnabled {
        backend: "redis",
        feature: "redis",
    })
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Remembers ids in this process (lost at exit; one process only).
#[derive(Default)]
pub struct MemoryDedupStore {
    claims: Mutex<HashMap<String, Instant>>,
}

impl MemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() > 10_000 {
            claims.retain(|_, until| *until > now);
        }
        match claims.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                claims.insert(key.to_owned(), now + ttl);
                Ok(true)
            }
        }
    }

    async fn release(&self, key: &str) -> Result<()> {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_are_named_memory_or_a_redis_url() {
        let ttl = Duration::from_secs(1);
        let a = Dedup::open("memory", ttl).await.unwrap();
        let b = Dedup::open(" memory ", ttl).await.unwrap();
        assert!(a.store.claim("shared", ttl).await.unwrap());
        assert!(
            !b.store.claim("shared", ttl).await.unwrap(),
            "one store per process"
        );
        let err = Dedup::open("memcached://x", ttl)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("dedup") && err.contains("memcached"), "{err}");
        let err = Dedup::open("memory", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("dedup_ttl"), "{err}");
    }

    #[tokio::test]
    async fn a_claim_holds_until_released_or_expired() {
        let store = MemoryDedupStore::new();
        assert!(store.claim("a", Duration::from_secs(60)).await.unwrap());
        assert!(!store.claim("a", Duration::from_secs(60)).await.unwrap());
        store.release("a").await.unwrap();
        assert!(store.claim("a", Duration::from_millis(1)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            store.claim("a", Duration::from_secs(60)).await.unwrap(),
            "expired"
        );
    }
}
