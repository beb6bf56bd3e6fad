//! `Broker::consume`: the engine's consumer runtime, with the PHP callable as its handler.
//!
//! The runtime (concurrency, per-key order, retries, dead letters, acknowledgements) runs as
//! tokio tasks and hands jobs over through a [`HandlerBridge`]. This thread pulls them
//! in bounded slices, calls the PHP handler for each, and reports the outcome. Between slices
//! and after each message it runs pending pcntl signal handlers and asks the `stop` callable.
//! It never pulls more jobs than it still has to handle, so at the end only jobs nobody
//! pulled are in flight: stopping gives them back to the broker, unprocessed and unacknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ext_php_rs::convert::IntoZval;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendCallable, ZendClassObject, ZendHashTable, Zval};
use ext_php_rs::zend::{ExecutorGlobals, ce};
use polybus::bridge::{HandlerBridge, Job};
use polybus::{
    Consumer, ConsumerOptions, DeadLetter, Dedup, HandlerError, StartPosition, SubscriptionSpec,
};

use crate::broker::Broker;
use crate::convert::seconds;
use crate::errors::{Context, block_error, config_error, engine_error};
use crate::message::Message;
use crate::runtime::block_on;

/// Default time between checks for signals and the `stop` callable.
const DEFAULT_POLL: Duration = Duration::from_millis(200);
/// How long stopping waits for the outcomes already reported to be settled on the broker.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Drain timeout of the runtime: when the loop ends no PHP handler is running, so the only
/// handlers still in flight wait for jobs nobody will pull; they are given back at once.
const DRAIN: Duration = Duration::from_millis(50);

/// How long a handled message id is remembered when `dedup` is on and `dedup_ttl` is not given.
const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(86_400);

const OPTION_NAMES: [&str; 14] = [
    "group",
    "concurrency",
    "prefetch",
    "max_retries",
    "retry_delay",
    "retry_multiplier",
    "retry_max_delay",
    "retry_jitter",
    "dead_letter",
    "start",
    "dedup",
    "dedup_ttl",
    "poll_interval",
    "stop",
];

/// Consume options read from the PHP array.
struct Plan<'a> {
    spec: SubscriptionSpec,
    options: ConsumerOptions,
    poll: Duration,
    stop: Option<ZendCallable<'a>>,
    /// The dedup store (`memory` or a Redis URL), opened when consuming starts.
    dedup: Option<String>,
    dedup_ttl: Duration,
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> PhpException {
    config_error(format!("invalid configuration ({key}): {reason}"))
}

/// What `options` ask for; `prefetch` is the broker's default, for when they name none.
fn plan<'a>(
    destination: &str,
    options: Option<&'a ZendHashTable>,
    prefetch: usize,
) -> PhpResult<Plan<'a>> {
    let mut spec = SubscriptionSpec::new([destination], destination).with_prefetch(prefetch);
    let mut consumer = ConsumerOptions {
        drain_timeout: DRAIN,
        ..ConsumerOptions::default()
    };
    let mut poll = DEFAULT_POLL;
    let mut stop = None;
    let mut dedup = None;
    let mut dedup_ttl = DEFAULT_DEDUP_TTL;
    let Some(options) = options else {
        return Ok(Plan {
            spec,
            options: consumer,
            poll,
            stop,
            dedup,
            dedup_ttl,
        });
    };
    for (key, value) in options.iter() {
        let key = key.to_string();
        let value = value.dereference();
        let int = |min: i64| -> PhpResult<i64> {
            value
                .long()
                .filter(|n| *n >= min)
                .ok_or_else(|| invalid(&key, format!("expected an integer of at least {min}")))
        };
        let secs = || -> PhpResult<Duration> {
            let n = value
                .double()
                .or_else(|| value.long().map(|n| n as f64))
                .ok_or_else(|| invalid(&key, "expected a number of seconds"))?;
            seconds(n, &key).map_err(|reason| invalid(&key, reason))
        };
        let float = || -> PhpResult<f64> {
            value
                .double()
                .or_else(|| value.long().map(|n| n as f64))
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| invalid(&key, "expected a number, at least 0"))
        };
        match key.as_str() {
            "group" => {
                spec.group = value
                    .str()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| invalid(&key, "expected a non-empty string"))?
                    .to_owned();
            }
            "concurrency" => spec.concurrency = int(1)? as usize,
            "prefetch" => spec.prefetch = int(1)? as usize,
            "max_retries" => {
                consumer.retry.max_retries = if value.is_null() {
                    None
                } else {
                    Some(u32::try_from(int(0)?).map_err(|_| invalid(&key, "too large"))?)
                };
            }
            "retry_delay" => {
                let delay = secs()?;
                consumer.retry.initial_delay = delay;
                consumer.retry.max_delay = consumer.retry.max_delay.max(delay);
            }
            "retry_multiplier" => consumer.retry.multiplier = float()?.max(1.0),
            "retry_max_delay" => consumer.retry.max_delay = secs()?,
            "retry_jitter" => consumer.retry.jitter = float()?.min(1.0),
            "dead_letter" => {
                consumer.dead_letter = if value.is_false() {
                    DeadLetter::Reject
                } else {
                    value
                        .str()
                        .ok_or_else(|| invalid(&key, "expected a destination name, or false"))?
                        .parse()
                        .map_err(|err: polybus::Error| invalid(&key, err.to_string()))?
                };
            }
            "start" => {
                spec.start = value
                    .str()
                    .ok_or_else(|| {
                        invalid(&key, "expected earliest, latest, offset:N or timestamp:MS")
                    })?
                    .parse::<StartPosition>()
                    .map_err(|err| invalid(&key, err.to_string()))?;
            }
            "dedup" => {
                dedup = if value.is_true() {
                    Some("memory".to_owned())
                } else if value.is_null() || value.is_false() {
                    None
                } else {
                    Some(
                        value
                            .str()
                            .ok_or_else(|| {
                                invalid(&key, "expected true, \"memory\" or a redis:// URL")
                            })?
                            .to_owned(),
                    )
                };
            }
            "dedup_ttl" => {
                dedup_ttl = secs()?;
                if dedup_ttl.is_zero() {
                    return Err(invalid(&key, "must be more than 0 seconds"));
                }
            }
            "poll_interval" => {
                poll = secs()?.clamp(Duration::from_millis(10), Duration::from_secs(5));
            }
            "stop" => {
                if !value.is_null() {
                    stop = Some(
                        ZendCallable::new(value)
                            .map_err(|_| invalid(&key, "expected a callable"))?,
                    );
                }
            }
            _ => {
                return Err(invalid(
                    &key,
                    format!(
                        "unknown consume option; expected one of {}",
                        OPTION_NAMES.join(", ")
                    ),
                ));
            }
        }
    }
    if consumer.retry.max_delay < consumer.retry.initial_delay {
        consumer.retry.max_delay = consumer.retry.initial_delay;
    }
    Ok(Plan {
        spec,
        options: consumer,
        poll,
        stop,
        dedup,
        dedup_ttl,
    })
}

/// Why the loop ended early, when it did not reach its limit or deadline.
enum Interrupted {
    /// A PHP exception (from a signal handler, the `stop` callable, `exit()` in the handler)
    /// is pending: it propagates once consume returns.
    Php,
    /// The subscription ended or failed; `Consumer::stop` reports why.
    Subscription,
}

/// Runs `Broker::consume`.
pub fn consume(
    broker: &Broker,
    destination: String,
    handler: ZendCallable,
    limit: i64,
    timeout: f64,
    options: Option<&ZendHashTable>,
) -> PhpResult<i64> {
    if limit < 1 {
        return Err(invalid("limit", "must be at least 1"));
    }
    let deadline = if timeout == f64::INFINITY {
        None
    } else {
        let limit = seconds(timeout, "timeout").map_err(|reason| invalid("timeout", reason))?;
        Some(Instant::now() + limit)
    };
    let shared = broker.open()?.clone();
    let plan = plan(&destination, options, shared.default_prefetch())?;
    let mut options = plan.options;
    // One message at a time (the default) is handled in the order received, and the runtime
    // hands up to `prefetch` messages over at once (never more than `limit`), so this thread
    // crosses into the runtime once per slice rather than once per message.
    if plan.spec.concurrency == 1 {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        options.sequential_ahead = Some(plan.spec.prefetch.min(limit).max(1));
    }
    let bridge = HandlerBridge::new(
        options
            .sequential_ahead
            .unwrap_or(1)
            .max(plan.spec.concurrency),
    );
    let bridge_handler = bridge.handler();
    let (dedup, dedup_ttl) = (plan.dedup, plan.dedup_ttl);
    let consumer = block_on(broker.timeout(), async move {
        if let Some(store) = dedup {
            options.dedup = Some(Dedup::open(&store, dedup_ttl).await?);
        }
        Consumer::start(shared, plan.spec, bridge_handler, options).await
    })
    .map_err(|err| block_error(err, &format!("subscribing to {destination:?}")))?
    .map_err(|err| engine_error(&err, Context::Consume))?;

    let signals = ZendCallable::try_from_name("pcntl_signal_dispatch").ok();
    let mut handled: i64 = 0;
    let mut interrupted = None;
    'consume: while handled < limit {
        if let Some(why) = checkpoint(signals.as_ref(), plan.stop.as_ref()) {
            interrupted = why;
            break;
        }
        let mut wait = plan.poll;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait = wait.min(left);
        }
        let want = usize::try_from(limit - handled).unwrap_or(usize::MAX);
        let pulled = block_on(wait + Duration::from_secs(1), async {
            tokio::select! {
                biased;
                jobs = bridge.next_batch(want, wait) => Some(jobs),
                _ = consumer.fetch_ended() => None,
            }
        });
        crate::logs::forward();
        let jobs = match pulled {
            Ok(Some(jobs)) => jobs,
            Ok(None) => {
                interrupted = Some(Interrupted::Subscription);
                break;
            }
            Err(_) => Vec::new(),
        };
        // Outcomes of a slice are reported together (one wake-up of the runtime), when the
        // slice is done or the loop ends early.
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let token = job.token;
            match call(&handler, job) {
                Ok(outcome) => {
                    outcomes.push((token, outcome));
                    handled += 1;
                }
                // The handler did not finish (exit() or a fatal unwind): its job goes back.
                Err(()) => {
                    interrupted = Some(Interrupted::Php);
                    bridge.complete(outcomes);
                    break 'consume;
                }
            }
            if handled < limit
                && let Some(why) = checkpoint(signals.as_ref(), plan.stop.as_ref())
            {
                interrupted = why;
                bridge.complete(outcomes);
                break 'consume;
            }
        }
        bridge.complete(outcomes);
    }

    let stopped = finish(&bridge, consumer, handled, broker.timeout());
    crate::logs::forward();
    match interrupted {
        // The pending PHP exception wins; returning an error lets it propagate.
        Some(Interrupted::Php) => Err(PhpException::from_message("consume interrupted".into())),
        _ => stopped.map(|()| handled),
    }
}

/// Runs pending signal handlers, then asks the `stop` callable. `Some(None)`: stop asked;
/// `Some(Some(Php))`: a PHP exception is pending; `None`: carry on.
fn checkpoint(
    signals: Option<&ZendCallable>,
    stop: Option<&ZendCallable>,
) -> Option<Option<Interrupted>> {
    if let Some(dispatch) = signals
        && dispatch.try_call(vec![]).is_err()
        && ExecutorGlobals::has_exception()
    {
        return Some(Some(Interrupted::Php));
    }
    let stop = stop?;
    match stop.try_call(vec![]) {
        Ok(answer) => answer.coerce_to_bool().then_some(None),
        Err(_) if ExecutorGlobals::has_exception() => Some(Some(Interrupted::Php)),
        Err(_) => None,
    }
}

/// Calls the handler with the job's message. `Ok` carries the outcome to report (a thrown
/// exception is a failure of that message); `Err` means the handler did not finish and a
/// PHP exception that is not the handler's (`exit()`'s unwind) must propagate.
fn call(handler: &ZendCallable, job: Job) -> Result<Result<(), HandlerError>, ()> {
    let message = ZendClassObject::new(Message::from_job(job));
    let argument: Zval = match message.into_zval(false) {
        Ok(zval) => zval,
        Err(err) => {
            return Ok(Err(HandlerError::retryable(format!(
                "the message could not be handed to PHP: {err}"
            ))));
        }
    };
    match handler.try_call(vec![&argument]) {
        Ok(_) => Ok(Ok(())),
        Err(err) => {
            if !ExecutorGlobals::has_exception() {
                return Ok(Err(HandlerError::retryable(format!(
                    "the handler could not be called: {err}"
                ))));
            }
            let throwable = ExecutorGlobals::get()
                .exception()
                .is_some_and(|e| e.instance_of(ce::throwable()));
            if !throwable {
                return Err(());
            }
            let Some(exception) = ExecutorGlobals::take_exception() else {
                return Ok(Err(HandlerError::retryable("the handler failed")));
            };
            let class = exception
                .get_class_name()
                .unwrap_or_else(|_| "Throwable".into());
            let text = exception
                .try_call_method("getMessage", vec![])
                .ok()
                .and_then(|m| m.str().map(str::to_owned))
                .unwrap_or_default();
            let text = if text.is_empty() {
                format!("{class} thrown")
            } else {
                text
            };
            Ok(Err(HandlerError::retryable(text).with_kind(class)))
        }
    }
}

/// Stops the consumer gracefully: waits (bounded) until every reported outcome was settled,
/// then stops; jobs nobody pulled are given back to the broker.
fn finish(
    bridge: &Arc<HandlerBridge>,
    consumer: Consumer,
    handled: i64,
    bound: Duration,
) -> PhpResult<()> {
    let reported = u64::try_from(handled).unwrap_or(0);
    let settled = block_on(SETTLE_WAIT, async {
        loop {
            let stats = consumer.stats();
            if stats.succeeded + stats.failed >= reported {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    if settled.is_err() {
        tracing::warn!("outcomes not settled within {SETTLE_WAIT:?}; stopping anyway");
    }
    let stopped = block_on(DRAIN + bound, consumer.stop());
    if bridge.in_flight() > 0 {
        tracing::warn!(
            jobs = bridge.in_flight(),
            "jobs still waiting after the consumer stopped"
        );
    }
    stopped
        .map_err(|err| block_error(err, "stopping the consumer"))?
        .map(drop)
        .map_err(|err| engine_error(&err, Context::Consume))
}
