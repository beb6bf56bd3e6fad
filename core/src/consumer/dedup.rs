//! Idempotent consumption: a message id handled successfully within a time window is not
//! handled again (a redelivery after a lost acknowledgement, a producer's retried publish).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Result;

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
