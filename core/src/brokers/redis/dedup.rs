//! Handled message ids kept in Redis (`SET key NX PX ttl`), shared by every consumer process.

use std::sync::Arc;
use std::time::Duration;

use ::redis::cmd;
use async_trait::async_trait;

use super::Inner;
use crate::consumer::DedupStore;
use crate::error::Result;

/// A [`DedupStore`] on the broker's Redis connection.
pub struct RedisDedupStore {
    inner: Arc<Inner>,
}

impl RedisDedupStore {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        RedisDedupStore { inner }
    }
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool> {
        let millis = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let reply: Option<String> = cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(&mut self.inner.manager())
            .await
            .map_err(|err| self.inner.error(err))?;
        Ok(reply.is_some())
    }

    async fn release(&self, key: &str) -> Result<()> {
        let _: i64 = cmd("DEL")
            .arg(key)
            .query_async(&mut self.inner.manager())
            .await
            .map_err(|err| self.inner.error(err))?;
        Ok(())
    }
}
