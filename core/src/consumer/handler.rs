//! What the consumer runtime calls for each message.

use async_trait::async_trait;

use crate::delivery::{Delivery, DeliveryMeta};
use crate::message::Message;

/// Why a handler failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong (it travels to logs and, later, dead-letter headers).
    pub message: String,
    /// The kind of error (an exception class name, an error type), if known.
    pub kind: Option<String>,
    /// True when retrying cannot help (bad input): the message is rejected at once.
    pub permanent: bool,
    /// True when the handler never ran (see [`HandlerError::not_handled`]).
    pub not_handled: bool,
}

impl HandlerError {
    /// A failure worth retrying under the consumer's retry policy.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            kind: None,
            permanent: false,
            not_handled: false,
        }
    }

    /// The message was not handled: its consumer is stopping and it had not been started. It
    /// goes back to the broker as it came (released, no attempt counted), not retried.
    pub fn not_handled() -> Self {
        HandlerError {
            not_handled: true,
            ..HandlerError::retryable("not handled: the consumer stopped first")
        }
    }

    /// A failure no retry can fix: the message is rejected without retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            permanent: true,
            ..HandlerError::retryable(message)
        }
    }

    /// Names the kind of error.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
}

impl From<crate::Error> for HandlerError {
    fn from(err: crate::Error) -> Self {
        let permanent = matches!(
            err,
            crate::Error::Codec(_) | crate::Error::InvalidMessage(_)
        );
        HandlerError {
            message: err.to_string(),
            kind: Some("polybus::Error".into()),
            permanent,
            not_handled: false,
        }
    }
}

/// Processes one message: `Ok` acknowledges it, `Err` applies the retry policy.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery. It must not settle the delivery: the runtime does.
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;

    /// Hands a run of deliveries over at once: they must be handled one after another, in
    /// this order (the queue of one key or partition). Returns a future of each one's outcome,
    /// in order. `None`, the default, makes the runtime call [`handle`](Handler::handle) for
    /// each in turn instead; a handler in another language takes the run to cross over once.
    ///
    /// A lane that keeps receiving hands its deliveries over in several parts with the same
    /// `run` id, the next part before the previous one is handled: a part must be handled
    /// after the parts handed over before it with that id.
    async fn hand_over_run(
        &self,
        run: u64,
        deliveries: &[&Delivery],
    ) -> Option<Vec<OutcomeFuture>> {
        let _ = (run, deliveries);
        None
    }

    /// True when the handler takes groups ([`hand_over_group`](Handler::hand_over_group)):
    /// deliveries without a key that arrive together are then handed over at once instead of
    /// one task each. A handler in another language takes them to cross over once.
    fn takes_groups(&self) -> bool {
        false
    }

    /// Hands over deliveries that may be handled concurrently, in any order. Returns a future
    /// of each one's outcome, in the order given; `None` makes the runtime call
    /// [`handle`](Handler::handle) for each instead.
    async fn hand_over_group(&self, deliveries: &[&Delivery]) -> Option<Vec<OutcomeFuture>> {
        let _ = deliveries;
        None
    }
}

/// The outcome of one delivery of a run handed over with [`Handler::hand_over_run`].
pub type OutcomeFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'static>>;

/// A received message as handed to a closure handler.
#[derive(Clone, Debug)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// Broker metadata.
    pub meta: DeliveryMeta,
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Makes a handler from an async closure taking a [`Received`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        (self.0)(Received {
            message: delivery.message.clone(),
            attempt: delivery.attempt,
            meta: delivery.meta.clone(),
        })
        .await
    }
}
