//! The producer: librdkafka's, with its delivery reports served by whoever waits for them.
//!
//! librdkafka puts delivery reports (and client errors) on the producer's main queue, and the
//! messages it allocated on the producing thread are freed when their report is served.
//! rust-rdkafka's `FutureProducer` serves that queue on a thread of its own, so every message
//! was freed on another thread than the one that made it, and glibc's allocator serves such
//! frees under the owning arena's lock: a third of a producer's CPU went there. Here the tasks
//! that wait for deliveries serve the queue themselves, usually on the thread that queued the
//! messages:
//!
//! - the queue wakes one waiting task when it gets something while empty (librdkafka's queue
//!   event callback); that task serves what is queued, completing the deliveries of other tasks
//!   too, which are woken by their own [`Deliveries`];
//! - a thread of the producer is woken the same way. While no task waits (blocking publishes,
//!   fire-and-forget, client errors between publishes) it serves at once; while tasks wait it
//!   gives them [`GRACE`] and serves only if none did (the task woken may not be polled: a
//!   future parked after its first poll, a runtime busy elsewhere). A report is never left
//!   unserved.
//!
//! A batch shares one [`Deliveries`] (each message's report lands in its slot), instead of one
//! channel per message.

use std::future::poll_fn;
use std::os::raw::c_void;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use rdkafka::ClientConfig;
use rdkafka::bindings as rdsys;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use tokio::sync::Notify;

use super::client_errors::ClientReports;

/// A record to produce; its delivery report goes to the [`Ticket`].
pub(super) type Record<'a> = BaseRecord<'a, str, [u8], Box<Ticket>>;

/// Where a message landed (partition, offset), or why it was not delivered.
pub(super) type Delivered = Result<(i32, i64), KafkaError>;

/// How long a task waits for room while librdkafka's local queue is full, before it tries
/// again anyway.
const ROOM_WAIT: Duration = Duration::from_millis(5);

/// How long the serving thread leaves the queue to the waiting tasks before it serves itself.
const GRACE: Duration = Duration::from_millis(2);

/// The delivery reports of a batch of messages: one slot per message, and the waker of the
/// task that waits for them.
pub(super) struct Deliveries {
    slots: Box<[OnceLock<Delivered>]>,
    pending: AtomicUsize,
    waker: AtomicWaker,
}

impl Deliveries {
    /// Room for `count` reports.
    pub(super) fn new(count: usize) -> Arc<Deliveries> {
        Arc::new(Deliveries {
            slots: (0..count).map(|_| OnceLock::new()).collect(),
            pending: AtomicUsize::new(count),
            waker: AtomicWaker::new(),
        })
    }

    /// What to attach to the record of message `slot`.
    pub(super) fn ticket(self: &Arc<Self>, slot: usize) -> Box<Ticket> {
        Box::new(Ticket {
            deliveries: self.clone(),
            slot,
        })
    }

    /// Records the outcome of message `slot` (its report, or why it was never queued); the
    /// last one wakes the waiting task. A slot is settled once: a second outcome is ignored.
    pub(super) fn settle(&self, slot: usize, outcome: Delivered) {
        if self.slots[slot].set(outcome).is_ok() && self.pending.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.waker.wake();
        }
    }

    /// Every message has its outcome.
    pub(super) fn is_done(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// The outcome of message `slot`; a slot not settled yet reads as cancelled.
    pub(super) fn outcome(&self, slot: usize) -> Delivered {
        self.slots[slot]
            .get()
            .cloned()
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// A message's place in its [`Deliveries`], travelling with it through librdkafka.
pub(super) struct Ticket {
    deliveries: Arc<Deliveries>,
    slot: usize,
}

impl Ticket {
    /// Settles the message's slot with `outcome` (a record that was never queued).
    pub(super) fn settle(&self, outcome: Delivered) {
        self.deliveries.settle(self.slot, outcome);
    }
}

impl Drop for Ticket {
    /// A ticket dropped without its report (a record that was never queued and not settled)
    /// still settles its slot, as cancelled. A message librdkafka destroys without a report
    /// (the producer dropped with messages still queued) never hands its ticket back: that
    /// ticket is leaked, and nothing waits for it any more.
    fn drop(&mut self) {
        self.deliveries.settle(self.slot, Err(KafkaError::Canceled));
    }
}

impl ProducerContext for ClientReports {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        use rdkafka::Message as _;
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((err, _)) => Err(err.clone()),
        };
        ticket.settle(outcome);
    }
}

/// How the main queue tells that it got something while empty.
struct Signal {
    /// Tasks waiting for deliveries (inside [`KafkaProducer::wait`]).
    waiting: AtomicUsize,
    /// Wakes one waiting task.
    tasks: Notify,
    /// Set when the serving thread should look at the queue, with its condition variable.
    thread_due: Mutex<bool>,
    thread_wake: Condvar,
    stop: AtomicBool,
}

impl Signal {
    fn wake_thread(&self) {
        let mut due = self.thread_due.lock().unwrap_or_else(|e| e.into_inner());
        if !*due {
            *due = true;
            self.thread_wake.notify_one();
        }
    }

    /// Sleeps until the thread is due; false when it should stop instead.
    fn sleep_until_due(&self) -> bool {
        let mut due = self.thread_due.lock().unwrap_or_else(|e| e.into_inner());
        while !*due && !self.stop.load(Ordering::Acquire) {
            due = self
                .thread_wake
                .wait(due)
                .unwrap_or_else(|e| e.into_inner());
        }
        *due = false;
        !self.stop.load(Ordering::Acquire)
    }

    /// Sleeps for `how_long`; false when the thread should stop instead.
    fn pause(&self, how_long: Duration) -> bool {
        let deadline = Instant::now() + how_long;
        let mut due = self.thread_due.lock().unwrap_or_else(|e| e.into_inner());
        while !self.stop.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            due = self
                .thread_wake
                .wait_timeout(due, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        false
    }
}

/// librdkafka's queue event callback, called when the main queue gets an event while empty:
/// on whichever thread queued it (a broker thread with a delivery report, an application
/// thread in `rd_kafka_producev` with a log line, which rust-rdkafka forwards there), with the
/// queue's lock held. So it calls no librdkafka function and does nothing that could wait:
/// it wakes a task (tokio's wakers only schedule) and the serving thread.
unsafe extern "C" fn on_queued(_client: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Signal` of the `Core` that enabled this callback; `Core::drop`
    // disables it (under the same queue lock) before the `Signal` can go.
    let signal = unsafe { &*(opaque as *const Signal) };
    if signal.waiting.load(Ordering::SeqCst) > 0 {
        signal.tasks.notify_one();
    }
    signal.wake_thread();
}

/// The producer's main queue (a reference of its own, released before the producer).
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles may be used from any thread.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the reference was taken with `rd_kafka_queue_get_main` and is released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) };
    }
}

/// What the waiting tasks and the serving thread share.
struct Served {
    // Declared first, so released before the producer is destroyed.
    queue: MainQueue,
    client: BaseProducer<ClientReports>,
    /// Counts the calls of [`Served::serve`], so the thread can tell whether a task served.
    rounds: AtomicU64,
}

impl Served {
    /// Serves the events on the main queue when called (not those that come meanwhile, so a
    /// busy producer cannot keep the caller here): delivery reports complete their
    /// deliveries, client errors are logged.
    fn serve(&self) {
        self.rounds.fetch_add(1, Ordering::AcqRel);
        for _ in 0..self.queued() {
            self.client.poll(Duration::ZERO);
        }
    }

    fn queued(&self) -> usize {
        // SAFETY: the queue reference lives as long as `self`.
        unsafe { rdsys::rd_kafka_queue_length(self.queue.0) }
    }
}

struct Core {
    served: Arc<Served>,
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // SAFETY: the queue lives in `served`; passing no callback disables it, and does so
        // under the queue's lock, so no callback is running with the `Signal` afterwards.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.served.queue.0, None, std::ptr::null_mut())
        };
        self.signal.stop.store(true, Ordering::Release);
        self.signal.wake_thread();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The broker's producer; clones share it.
#[derive(Clone)]
pub(super) struct KafkaProducer {
    core: Arc<Core>,
}

impl KafkaProducer {
    /// Creates the producer and its serving thread. Connections are made lazily.
    pub(super) fn new(config: &ClientConfig, context: ClientReports) -> KafkaResult<Self> {
        let client: BaseProducer<ClientReports> = config.create_with_context(context)?;
        // SAFETY: the client is valid; the returned reference is released by `MainQueue`.
        let queue =
            MainQueue(unsafe { rdsys::rd_kafka_queue_get_main(client.client().native_ptr()) });
        let served = Arc::new(Served {
            queue,
            client,
            rounds: AtomicU64::new(0),
        });
        let signal = Arc::new(Signal {
            waiting: AtomicUsize::new(0),
            tasks: Notify::new(),
            thread_due: Mutex::new(false),
            thread_wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let (served, signal) = (served.clone(), signal.clone());
            std::thread::Builder::new()
                .name("polybus-kafka-reports".into())
                .spawn(move || serve_while_idle(&served, &signal))
                .map_err(|err| {
                    KafkaError::ClientCreation(format!("cannot start the report thread: {err}"))
                })?
        };
        // SAFETY: the `Signal` outlives the callback (see `on_queued` and `Core::drop`).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                served.queue.0,
                Some(on_queued),
                Arc::as_ptr(&signal) as *mut c_void,
            )
        };
        // Anything queued before the callback was enabled would never trigger it.
        signal.wake_thread();
        Ok(KafkaProducer {
            core: Arc::new(Core {
                served,
                signal,
                thread: Some(thread),
            }),
        })
    }

    /// The librdkafka client, for calls rust-rdkafka does not wrap.
    pub(super) fn native_ptr(&self) -> *mut rdsys::rd_kafka_t {
        self.core.served.client.client().native_ptr()
    }

    /// Queues `record` without waiting. A record librdkafka refuses gets the error in its
    /// ticket's slot.
    fn try_send<'a>(&self, record: Record<'a>) -> Attempt<'a> {
        match self.core.served.client.send(record) {
            Ok(()) => Attempt::Queued,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                Attempt::Full(back)
            }
            Err((err, refused)) => {
                refused.delivery_opaque.settle(Err(err.clone()));
                Attempt::Refused(err)
            }
        }
    }

    /// Queues `record`; while librdkafka's local queue is full, serves reports and waits for
    /// room. A record that cannot be queued gets the error in its ticket's slot too.
    pub(super) async fn send(&self, mut record: Record<'_>) -> Result<(), KafkaError> {
        loop {
            match self.try_send(record) {
                Attempt::Queued => return Ok(()),
                Attempt::Full(back) => {
                    record = back;
                    self.wait_for_room().await;
                }
                Attempt::Refused(err) => return Err(err),
            }
        }
    }

    /// Queues `record` on the calling thread; while librdkafka's local queue is full, serves
    /// reports and sleeps [`ROOM_WAIT`] at a time. False when it is still full at `deadline`
    /// (the record is dropped, its slot reads as cancelled). A record that cannot be queued
    /// gets the error in its ticket's slot.
    pub(super) fn send_blocking(&self, mut record: Record<'_>, deadline: Instant) -> bool {
        let mut served = false;
        loop {
            match self.try_send(record) {
                Attempt::Queued | Attempt::Refused(_) => return true,
                Attempt::Full(_) if Instant::now() >= deadline => return false,
                Attempt::Full(back) => {
                    record = back;
                    if served {
                        std::thread::sleep(ROOM_WAIT);
                    } else {
                        // Served reports make room at once (a task meant to serve them may
                        // not be polled while this thread is here).
                        self.serve();
                    }
                    served = !served;
                }
            }
        }
    }

    /// Queues the record `build` makes for a ticket, and waits for its delivery.
    pub(super) async fn deliver<'a>(
        &self,
        build: impl FnOnce(Box<Ticket>) -> Record<'a>,
    ) -> Delivered {
        let deliveries = Deliveries::new(1);
        if self.send(build(deliveries.ticket(0))).await.is_ok() {
            self.wait(&deliveries).await;
        }
        deliveries.outcome(0)
    }

    /// Serves what is queued; then, if nothing was, waits (at most [`ROOM_WAIT`]) for the
    /// next report.
    async fn wait_for_room(&self) {
        let signal = &self.core.signal;
        let _waiting = Waiting::enter(&self.core);
        self.core.served.serve();
        let notified = pin!(signal.tasks.notified());
        let _ = tokio::time::timeout(ROOM_WAIT, notified).await;
        self.core.served.serve();
    }

    /// Waits until every message of `deliveries` has its outcome, serving the main queue
    /// meanwhile. Cancelled, it leaves the rest to the serving thread.
    pub(super) async fn wait(&self, deliveries: &Deliveries) {
        if deliveries.is_done() {
            return;
        }
        let signal = &self.core.signal;
        let _waiting = Waiting::enter(&self.core);
        loop {
            self.core.served.serve();
            if deliveries.is_done() {
                return;
            }
            let mut notified = pin!(signal.tasks.notified());
            notified.as_mut().enable();
            if self.core.served.queued() > 0 {
                // More came while serving: let other tasks run before serving again.
                tokio::task::yield_now().await;
                continue;
            }
            poll_fn(|cx| {
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                deliveries.waker.register(cx.waker());
                if deliveries.is_done() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Serves what is queued on the main queue, on the calling thread.
    pub(super) fn serve(&self) {
        self.core.served.serve();
    }

    /// Waits until everything queued was delivered (or failed), at most `timeout`, serving
    /// reports on the calling thread.
    pub(super) fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.core.served.client.flush(timeout)
    }
}

/// What became of one attempt to queue a record.
enum Attempt<'a> {
    Queued,
    /// librdkafka's local queue is full: the record, to try again.
    Full(Record<'a>),
    /// Refused for good; the error is in the record's slot too.
    Refused(KafkaError),
}

/// A task inside [`KafkaProducer::wait`]: while there is one, the queue wakes a task first and
/// the serving thread only steps in after [`GRACE`]. A task that leaves with events queued
/// hands them on.
struct Waiting<'a>(&'a Core);

impl<'a> Waiting<'a> {
    fn enter(core: &'a Core) -> Waiting<'a> {
        core.signal.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(core)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // What is still queued (left by a bounded serve, or queued after this task last
        // served) may have had its one wake-up spent on this task.
        let others = self.0.signal.waiting.fetch_sub(1, Ordering::SeqCst) > 1;
        if self.0.served.queued() > 0 {
            if others {
                self.0.signal.tasks.notify_one();
            }
            self.0.signal.wake_thread();
        }
    }
}

/// The serving thread: sleeps until the queue gets something; serves it at once while no
/// task waits, and after [`GRACE`] if no task served meanwhile.
fn serve_while_idle(served: &Served, signal: &Signal) {
    while signal.sleep_until_due() {
        if signal.waiting.load(Ordering::SeqCst) > 0 {
            // A round that starts after this read started after the event that woke the
            // thread was queued, so it serves that event.
            let rounds = served.rounds.load(Ordering::Acquire);
            if !signal.pause(GRACE) {
                return;
            }
            if served.rounds.load(Ordering::Acquire) != rounds {
                continue;
            }
        }
        served.serve();
    }
}

/// These run against the test broker `make test` starts (`POLYBUS_TEST_KAFKA_BOOTSTRAP`,
/// default 127.0.0.1:9092), which creates topics on first use.
#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const WAIT: Duration = Duration::from_secs(60);

    fn producer(extra: &[(&str, &str)]) -> KafkaProducer {
        let mut config = ClientConfig::new();
        let bootstrap = std::env::var("POLYBUS_TEST_KAFKA_BOOTSTRAP")
            .unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        config.set("bootstrap.servers", bootstrap);
        config.set("enable.idempotence", "true");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        KafkaProducer::new(&config, ClientReports::new("producer")).unwrap()
    }

    fn topic(name: &str) -> String {
        let id = crate::message::new_message_id().replace('-', "");
        format!("polybus-test.producer-{name}.{}", &id[20..])
    }

    fn record<'a>(topic: &'a str, payload: &'a [u8], ticket: Box<Ticket>) -> Record<'a> {
        BaseRecord::with_opaque_to(topic, ticket).payload(payload)
    }

    /// Queues `count` records without waiting for them.
    fn queue(producer: &KafkaProducer, topic: &str, count: usize) -> Arc<Deliveries> {
        let deliveries = Deliveries::new(count);
        for slot in 0..count {
            let sent = producer.try_send(record(topic, b"hello", deliveries.ticket(slot)));
            assert!(
                matches!(sent, Attempt::Queued),
                "record {slot} was not queued"
            );
        }
        deliveries
    }

    fn assert_delivered(deliveries: &Deliveries, count: usize) {
        assert!(deliveries.is_done());
        let mut places = HashSet::new();
        for slot in 0..count {
            let place = deliveries.outcome(slot).unwrap_or_else(|err| {
                panic!("record {slot} was not delivered: {err}");
            });
            assert!(places.insert(place), "two records reported at {place:?}");
        }
    }

    #[test]
    fn reports_are_served_while_no_task_waits() {
        let producer = producer(&[]);
        let topic = topic("unwaited");
        let deliveries = queue(&producer, &topic, 100);
        let deadline = Instant::now() + WAIT;
        while !deliveries.is_done() {
            assert!(Instant::now() < deadline, "the reports were never served");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_delivered(&deliveries, 100);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_its_reports_to_the_thread() {
        // The linger keeps the reports from coming before the wait is cancelled.
        let producer = producer(&[("linger.ms", "300")]);
        let topic = topic("cancelled");
        let deliveries = queue(&producer, &topic, 100);
        {
            let mut wait = std::pin::pin!(producer.wait(&deliveries));
            assert!(futures::poll!(wait.as_mut()).is_pending());
            assert_eq!(producer.core.signal.waiting.load(Ordering::SeqCst), 1);
        }
        assert_eq!(producer.core.signal.waiting.load(Ordering::SeqCst), 0);
        let deadline = Instant::now() + WAIT;
        while !deliveries.is_done() {
            assert!(Instant::now() < deadline, "the reports were never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_delivered(&deliveries, 100);
    }

    /// The task a report wakes may never be polled again (a future parked after its first
    /// poll): the serving thread steps in, and the others get their reports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_task_that_is_not_polled_holds_up_no_one() {
        let producer = producer(&[("linger.ms", "50")]);
        let topic = topic("parked");
        let parked = queue(&producer, &topic, 10);
        let mut parked_wait = Box::pin(producer.wait(&parked));
        assert!(futures::poll!(parked_wait.as_mut()).is_pending());
        for _ in 0..20 {
            let delivered = tokio::time::timeout(
                WAIT,
                producer.deliver(|ticket| record(&topic, b"hello", ticket)),
            )
            .await
            .expect("a report went to the parked task and stayed there");
            delivered.unwrap();
        }
        assert_delivered(&parked, 10);
        drop(parked_wait);
        assert_eq!(producer.core.signal.waiting.load(Ordering::SeqCst), 0);
    }

    /// One task on a single thread: it must make the room itself, by serving the reports.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_local_queue_waits_for_room_and_loses_nothing() {
        let producer = producer(&[("queue.buffering.max.messages", "100")]);
        let topic = topic("full");
        let deliveries = Deliveries::new(2_000);
        for slot in 0..2_000 {
            let sent = producer
                .send(record(&topic, b"hello", deliveries.ticket(slot)))
                .await;
            sent.unwrap();
        }
        tokio::time::timeout(WAIT, producer.wait(&deliveries))
            .await
            .unwrap();
        assert_delivered(&deliveries, 2_000);
    }

    /// Many tasks wait at once; whichever the queue wakes serves the others' reports too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiting_task_gets_its_report() {
        let producer = producer(&[]);
        let topic = Arc::new(topic("concurrent"));
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let (producer, topic) = (producer.clone(), topic.clone());
                tokio::spawn(async move {
                    producer
                        .deliver(|ticket| record(&topic, b"hello", ticket))
                        .await
                })
            })
            .collect();
        let mut places = HashSet::new();
        for task in tasks {
            let place = tokio::time::timeout(WAIT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(places.insert(place), "two records reported at {place:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_record_has_the_error_in_its_slot() {
        let producer = producer(&[("message.max.bytes", "1000")]);
        let topic = topic("refused");
        let payload = vec![b'x'; 2_000];
        let delivered = producer
            .deliver(|ticket| record(&topic, &payload, ticket))
            .await;
        assert!(
            matches!(
                delivered,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                ))
            ),
            "{delivered:?}"
        );
    }

    #[test]
    fn a_ticket_dropped_without_its_report_settles_its_slot() {
        let deliveries = Deliveries::new(2);
        drop(deliveries.ticket(0));
        assert!(matches!(deliveries.outcome(0), Err(KafkaError::Canceled)));
        assert!(!deliveries.is_done());
        deliveries.settle(1, Ok((0, 7)));
        // Settled once: a second outcome is ignored.
        deliveries.settle(1, Ok((0, 8)));
        assert!(deliveries.is_done());
        assert!(matches!(deliveries.outcome(1), Ok((0, 7))));
    }
}
