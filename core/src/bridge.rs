//! The consumer runtime's handler for code in another language: deliveries are handed out in
//! batches to a foreign event loop (Python's asyncio, PHP's consume loop), which reports the
//! outcomes back in batches. Concurrency, per-key order, retries and acknowledgements stay in
//! the runtime; the binding only converts values and calls its handler.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot};

use crate::consumer::{Handler, HandlerError, OutcomeFuture};
use crate::delivery::{Delivery, DeliveryMeta};
use crate::message::Message;

/// One message for the foreign handler, with the token its outcome is reported under.
#[derive(Clone, Debug)]
pub struct Job {
    /// Identifies the job in [`HandlerBridge::complete`].
    pub token: u64,
    /// The message.
    pub message: Message,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// Broker metadata.
    pub meta: DeliveryMeta,
    /// Jobs with the same run id must be handled one after another, in the order they are
    /// handed out (the queue of one key or partition); `None` for a job on its own.
    pub run: Option<u64>,
}

/// Connects the consumer runtime to a foreign handler. Create one, give
/// [`handler`](HandlerBridge::handler) to [`crate::Consumer::start`], then loop on
/// [`next_batch`](HandlerBridge::next_batch) and [`complete`](HandlerBridge::complete).
pub struct HandlerBridge {
    /// Jobs handed out and not taken by the foreign side yet. A run or a group is queued in
    /// one go, so it is taken in one batch.
    queue: Mutex<VecDeque<Job>>,
    /// Wakes the taker when jobs are queued.
    queued: Notify,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<(), HandlerError>>>>,
    next_token: AtomicU64,
}

impl HandlerBridge {
    /// A bridge for a consumer with up to `capacity` messages in flight (use the
    /// subscription's concurrency: the runtime never hands out more than that at once).
    pub fn new(capacity: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(HandlerBridge {
            queue: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 4096))),
            queued: Notify::new(),
            waiting: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        })
    }

    /// The handler to run the consumer with.
    pub fn handler(self: &std::sync::Arc<Self>) -> std::sync::Arc<dyn Handler> {
        std::sync::Arc::new(BridgeHandler(self.clone()))
    }

    /// Waits up to `wait` for at least one job, then takes up to `max` that are ready.
    /// An empty batch means nothing arrived in time.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Job> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Created before looking, so a job queued in between still wakes this wait.
            let queued = self.queued.notified();
            let batch = self.try_next_batch(max);
            if !batch.is_empty() {
                return batch;
            }
            if tokio::time::timeout_at(deadline, queued).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Takes up to `max` jobs that are ready now, without waiting (none: an empty batch).
    pub fn try_next_batch(&self, max: usize) -> Vec<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let taken = queue.len().min(max.max(1));
        let batch: Vec<Job> = queue.drain(..taken).collect();
        if !queue.is_empty() {
            // Left over for another taker.
            self.queued.notify_one();
        }
        batch
    }

    /// Reports outcomes: `Ok` acknowledges, `Err` applies the consumer's retry policy.
    /// Unknown tokens (jobs the runtime gave up on at a stop timeout) are ignored.
    pub fn complete(&self, outcomes: impl IntoIterator<Item = (u64, Result<(), HandlerError>)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for (token, outcome) in outcomes {
            if let Some(reply) = waiting.remove(&token) {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Jobs handed out and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queues `jobs` in one go and wakes the taker.
    fn queue(&self, jobs: impl IntoIterator<Item = Job>) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(jobs);
        self.queued.notify_one();
    }
}

struct BridgeHandler(std::sync::Arc<HandlerBridge>);

impl BridgeHandler {
    /// Hands `deliveries` out as jobs of `run` (or on their own), queued together; a future of
    /// each one's outcome, in order.
    fn hand_out(&self, deliveries: &[&Delivery], run: Option<u64>) -> Vec<OutcomeFuture> {
        let bridge = &self.0;
        let mut jobs = Vec::with_capacity(deliveries.len());
        let mut outcomes: Vec<OutcomeFuture> = Vec::with_capacity(deliveries.len());
        {
            let mut waiting = bridge.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for delivery in deliveries {
                let token = bridge.next_token.fetch_add(1, Ordering::Relaxed);
                let (reply, outcome) = oneshot::channel();
                waiting.insert(token, reply);
                jobs.push(Job {
                    token,
                    message: delivery.message.clone(),
                    attempt: delivery.attempt,
                    meta: delivery.meta.clone(),
                    run,
                });
                outcomes.push(Box::pin(outcome_of(outcome)));
            }
        }
        bridge.queue(jobs);
        outcomes
    }
}

async fn outcome_of(
    outcome: oneshot::Receiver<Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    match outcome.await {
        Ok(result) => result,
        Err(_) => Err(HandlerError::retryable(
            "the foreign handler dropped the message",
        )),
    }
}

#[async_trait]
impl Handler for BridgeHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        match self.hand_out(&[delivery], None).pop() {
            Some(outcome) => outcome.await,
            None => Err(HandlerError::retryable(
                "the handler bridge lost the message",
            )),
        }
    }

    /// Hands the run out at once under its run id (the foreign side handles the jobs of one
    /// run id one after another, in the order handed out, across batches).
    async fn hand_over_run(
        &self,
        run: u64,
        deliveries: &[&Delivery],
    ) -> Option<Vec<OutcomeFuture>> {
        Some(self.hand_out(deliveries, Some(run)))
    }

    fn takes_groups(&self) -> bool {
        true
    }

    /// Hands the group out at once as jobs on their own: one crossing, one wake-up.
    async fn hand_over_group(&self, deliveries: &[&Delivery]) -> Option<Vec<OutcomeFuture>> {
        Some(self.hand_out(deliveries, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, PublishReceipt, Subscriber};
    use crate::brokers::memory::MemoryBroker;
    use crate::delivery::{Acknowledger, DeliveryMeta, Settlement};
    use crate::subscription::Subscription;
    use crate::{
        Capabilities, Consumer, ConsumerOptions, Publisher, RetryPolicy, SubscriptionSpec,
    };
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;

    #[tokio::test]
    async fn jobs_arrive_in_batches_and_outcomes_settle_them() {
        let broker = Arc::new(MemoryBroker::new(Default::default()));
        for n in 0..10 {
            broker
                .publish(Message::text("t", n.to_string()))
                .await
                .unwrap();
        }
        let bridge = HandlerBridge::new(8);
        let options = ConsumerOptions {
            retry: RetryPolicy::fixed(1, Duration::ZERO),
            ..Default::default()
        };
        let spec = SubscriptionSpec::new(["t"], "g").with_concurrency(8);
        let consumer = Consumer::start(broker.clone(), spec, bridge.handler(), options)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut failed_once = false;
        while seen.len() < 10 {
            let batch = bridge.next_batch(100, Duration::from_secs(5)).await;
            assert!(!batch.is_empty(), "jobs should keep coming");
            let outcomes: Vec<_> = batch
                .iter()
                .map(|job| {
                    let text = job.message.payload_str().unwrap().to_owned();
                    if text == "3" && !failed_once {
                        failed_once = true;
                        return (job.token, Err(HandlerError::retryable("once")));
                    }
                    seen.push(text);
                    (job.token, Ok(()))
                })
                .collect();
            bridge.complete(outcomes);
        }
        let report = consumer.stop().await.unwrap();
        assert_eq!((report.stats.succeeded, report.stats.retried), (10, 1));
        assert_eq!(bridge.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_sequential_consumer_hands_over_everything_in_order_in_large_runs() {
        let broker = Arc::new(MemoryBroker::new(Default::default()));
        for n in 0..200 {
            // Different keys: a concurrent consumer would run them in any order.
            let message = Message::text("seq", n.to_string()).with_key(format!("k{}", n % 7));
            broker.publish(message).await.unwrap();
        }
        let bridge = HandlerBridge::new(50);
        let options = ConsumerOptions {
            sequential_ahead: Some(50),
            ..Default::default()
        };
        let spec = SubscriptionSpec::new(["seq"], "g");
        let consumer = Consumer::start(broker.clone(), spec, bridge.handler(), options)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut largest = 0;
        while seen.len() < 200 {
            let batch = bridge.next_batch(100, Duration::from_secs(5)).await;
            assert!(!batch.is_empty(), "jobs should keep coming");
            largest = largest.max(batch.len());
            let outcomes: Vec<_> = batch
                .iter()
                .map(|job| {
                    seen.push(job.message.payload_str().unwrap().parse::<u32>().unwrap());
                    (job.token, Ok(()))
                })
                .collect();
            bridge.complete(outcomes);
        }
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert!(
            largest > 1,
            "the runtime should hand over more than one at a time"
        );
        let report = consumer.stop().await.unwrap();
        assert_eq!(report.stats.succeeded, 200);
    }

    #[tokio::test]
    async fn a_lane_hands_over_what_arrives_before_its_earlier_messages_are_handled() {
        let broker = Arc::new(MemoryBroker::new(Default::default()));
        let publish = |n: u32| broker.publish(Message::text("lane", n.to_string()));
        for n in 0..3 {
            publish(n).await.unwrap();
        }
        let bridge = HandlerBridge::new(16);
        // One lane for every message (the memory broker holds a key's next message back until
        // the one before is settled, so keys would not show it).
        let options = ConsumerOptions {
            sequential_ahead: Some(16),
            ..Default::default()
        };
        let spec = SubscriptionSpec::new(["lane"], "g");
        let consumer = Consumer::start(broker.clone(), spec, bridge.handler(), options)
            .await
            .unwrap();
        let mut jobs = Vec::new();
        while jobs.len() < 3 {
            jobs.extend(bridge.next_batch(100, Duration::from_secs(5)).await);
        }
        // None of these is handled yet; the next messages come anyway, as the same run.
        for n in 3..6 {
            publish(n).await.unwrap();
        }
        while jobs.len() < 6 {
            let batch = bridge.next_batch(100, Duration::from_secs(5)).await;
            assert!(
                !batch.is_empty(),
                "the lane should not wait for its first part's outcomes"
            );
            jobs.extend(batch);
        }
        let runs: Vec<Option<u64>> = jobs.iter().map(|job| job.run).collect();
        assert!(
            runs[0].is_some() && runs.iter().all(|run| *run == runs[0]),
            "{runs:?}"
        );
        let order: Vec<&str> = jobs
            .iter()
            .map(|job| job.message.payload_str().unwrap())
            .collect();
        assert_eq!(order, ["0", "1", "2", "3", "4", "5"]);
        bridge.complete(jobs.iter().map(|job| (job.token, Ok(()))));
        let report = consumer.stop().await.unwrap();
        assert_eq!(report.stats.succeeded, 6);
    }

    #[tokio::test]
    async fn what_the_foreign_side_did_not_handle_goes_back_as_it_came() {
        let broker = Arc::new(MemoryBroker::new(Default::default()));
        for n in 0..3 {
            broker
                .publish(Message::text("stopping", n.to_string()))
                .await
                .unwrap();
        }
        let bridge = HandlerBridge::new(16);
        let spec = SubscriptionSpec::new(["stopping"], "g").with_concurrency(16);
        let consumer = Consumer::start(broker.clone(), spec, bridge.handler(), Default::default())
            .await
            .unwrap();
        let mut jobs = Vec::new();
        while jobs.len() < 3 {
            jobs.extend(bridge.next_batch(100, Duration::from_secs(5)).await);
        }
        // One was handled; the other two were never started when the consumer stopped.
        bridge.complete(jobs.iter().enumerate().map(|(n, job)| {
            let outcome = if n == 0 {
                Ok(())
            } else {
                Err(HandlerError::not_handled())
            };
            (job.token, outcome)
        }));
        let report = consumer.stop().await.unwrap();
        assert_eq!(report.stats.succeeded, 1);
        assert_eq!(report.stats.released, 2);
        assert_eq!((report.stats.failed, report.stats.retried), (0, 0));
        // They come back on their first attempt, to the next consumer of the group.
        let mut again = broker
            .subscribe(SubscriptionSpec::new(["stopping"], "g"))
            .await
            .unwrap();
        for _ in 0..2 {
            let delivery = tokio::time::timeout(Duration::from_secs(5), again.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(delivery.attempt, 1);
            delivery.ack().await.unwrap();
        }
    }

    /// Counts acknowledgements in progress at once; each takes a few milliseconds, as a frame
    /// written by a client's I/O thread does.
    #[derive(Default)]
    struct AckProbe {
        in_progress: AtomicUsize,
        most: AtomicUsize,
        done: AtomicUsize,
    }

    struct ProbeAcker(Arc<AckProbe>);

    #[async_trait::async_trait]
    impl Acknowledger for ProbeAcker {
        async fn settle(
            self: Box<Self>,
            _outcome: Settlement,
            _message: Message,
        ) -> crate::Result<()> {
            let now = self.0.in_progress.fetch_add(1, SeqCst) + 1;
            self.0.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.in_progress.fetch_sub(1, SeqCst);
            self.0.done.fetch_add(1, SeqCst);
            Ok(())
        }
    }

    /// Hands out `count` deliveries of one key, settled through the probe.
    struct ProbeBroker {
        probe: Arc<AckProbe>,
        count: usize,
    }

    #[async_trait::async_trait]
    impl Publisher for ProbeBroker {
        async fn publish(&self, message: Message) -> crate::Result<PublishReceipt> {
            Ok(PublishReceipt {
                id: message.id,
                ..Default::default()
            })
        }
        async fn publish_batch(
            &self,
            messages: Vec<Message>,
        ) -> Vec<crate::Result<PublishReceipt>> {
            crate::broker::publish_each(self, messages).await
        }
        async fn flush(&self, _timeout: Duration) -> crate::Result<()> {
            Ok(())
        }
        async fn close(&self) -> crate::Result<()> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Subscriber for ProbeBroker {
        async fn subscribe(&self, spec: SubscriptionSpec) -> crate::Result<Subscription> {
            let (probe, count) = (self.probe.clone(), self.count);
            Ok(Subscription::spawn(spec.prefetch, move |sink| async move {
                sink.set_ready(true);
                for n in 0..count {
                    let message = Message::text("probe", n.to_string()).with_key("k");
                    let acker = Box::new(ProbeAcker(probe.clone()));
                    let delivery = Delivery::new(message, 1, DeliveryMeta::default(), acker);
                    if sink.send(delivery).await.is_err() {
                        return;
                    }
                }
                sink.cancelled().await;
            }))
        }
    }

    impl Broker for ProbeBroker {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
    }

    #[tokio::test]
    async fn a_run_s_acknowledgements_are_under_way_together() {
        let probe = Arc::new(AckProbe::default());
        let broker = Arc::new(ProbeBroker {
            probe: probe.clone(),
            count: 60,
        });
        let bridge = HandlerBridge::new(30);
        let options = ConsumerOptions {
            sequential_ahead: Some(30),
            ..Default::default()
        };
        let spec = SubscriptionSpec::new(["probe"], "g").with_prefetch(30);
        let consumer = Consumer::start(broker, spec, bridge.handler(), options)
            .await
            .unwrap();
        let mut handled = 0;
        while handled < 60 {
            let batch = bridge.next_batch(100, Duration::from_secs(5)).await;
            assert!(!batch.is_empty(), "jobs should keep coming");
            handled += batch.len();
            bridge.complete(batch.iter().map(|job| (job.token, Ok(()))));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while probe.done.load(SeqCst) < 60 {
            assert!(tokio::time::Instant::now() < deadline, "acks should finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One at a time, each would wait for the one before: a round of I/O per message.
        assert!(
            probe.most.load(SeqCst) > 1,
            "a run's acknowledgements should overlap, at most {} did",
            probe.most.load(SeqCst)
        );
        let report = consumer.stop().await.unwrap();
        assert_eq!(report.stats.succeeded, 60);
    }
}
