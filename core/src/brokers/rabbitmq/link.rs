//! One AMQP connection, opened lazily and opened again after it is lost.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// A connection that reconnects on demand. Callers that find it broken simply ask again.
pub(super) struct Link {
    uri: String,
    target: String,
    name: String,
    connect_timeout: Duration,
    current: Mutex<Option<Arc<Connection>>>,
}

impl Link {
    /// `uri` carries the credentials; `target` is the redacted form used in errors.
    pub fn new(uri: String, target: String, name: &str, connect_timeout: Duration) -> Self {
        Link {
            uri,
            target,
            name: name.to_owned(),
            connect_timeout,
            current: Mutex::new(None),
        }
    }

    /// The open connection, opening a new one if there is none or it was lost.
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let connection = tokio::time::timeout(
            self.connect_timeout,
            Connection::connect(&self.uri, properties),
        )
        .await
        .map_err(|_| Error::Connection {
            target: self.target.clone(),
            reason: format!("no answer within {:?}", self.connect_timeout),
        })?
        .map_err(|err| self.error(err))?;
        let connection = Arc::new(connection);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// A connection error naming the (redacted) server.
    pub fn error(&self, err: lapin::Error) -> Error {
        Error::Connection {
            target: self.target.clone(),
            reason: err.to_string(),
        }
    }

    /// Closes the connection, if open.
    pub async fn close(&self) {
        if let Some(connection) = self.current.lock().await.take()
            && connection.status().connected()
        {
            let _ = connection.close(200, "polybus closing".into()).await;
        }
    }
}
