//! The Rust core's ceiling, measured like the brokers' own perf tools measure theirs.
//!
//! ```text
//! ceiling produce --url URL --topic T --messages N --size S [--batch B] [--inflight K]
//! ceiling pubsub  --url URL --topic T --messages N --size S [--batch B] [--inflight K]
//! ```
//!
//! `produce` publishes N messages with `publish_batch` in batches of B (default 1000), K
//! batches in flight (default 4); `--batch 1` publishes one message at a time, each awaited.
//! `pubsub` first starts a consumer group `<T>.g` (so RabbitMQ routes to its queue), then
//! publishes the same way while it consumes, like RabbitMQ PerfTest with one producer and one
//! consumer: msgs/s from the first publish to the last message handled, and the end-to-end
//! latency of every message (its payload starts with its send time). Prints one line,
//! `BENCH-RESULT {json}`, for the harness in `benches/harness`.
//!
//! It allocates with the Python and PHP extensions' allocator
//! (`polybus::allocator::EngineAllocator`), so it measures the engine as they run it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use polybus::{Consumer, ConsumerOptions, Message, SharedBroker, SubscriptionSpec, handler_fn};
use polybus_bench::{
    RESULT_PREFIX, cpu_seconds, now_micros, payload_micros, peak_rss_mib, percentile,
    reset_peak_rss, timestamped_payload,
};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: polybus::allocator::EngineAllocator = polybus::allocator::EngineAllocator;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    mode: String,
    url: String,
    topic: String,
    messages: usize,
    size: usize,
    batch: usize,
    inflight: usize,
}

fn options() -> Result<Options, AnyError> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("usage: ceiling produce|pubsub --url URL --topic T ...")?;
    let mut options = Options {
        mode,
        url: String::new(),
        topic: String::new(),
        messages: 1000,
        size: 100,
        batch: 1000,
        inflight: 4,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => options.url = value,
            "--topic" => options.topic = value,
            "--messages" => options.messages = value.parse()?,
            "--size" => options.size = value.parse()?,
            "--batch" => options.batch = value.parse::<usize>()?.max(1),
            "--inflight" => options.inflight = value.parse::<usize>()?.max(1),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if options.url.is_empty() || options.topic.is_empty() {
        return Err("--url and --topic are required".into());
    }
    Ok(options)
}

/// Publishes `count` messages: batches of `batch`, `inflight` of them at a time, or one
/// awaited message at a time when `batch` is 1.
async fn publish(broker: &SharedBroker, o: &Options, count: usize) -> Result<(), AnyError> {
    if o.batch == 1 {
        for _ in 0..count {
            let payload = Bytes::from(timestamped_payload(o.size));
            broker.publish(Message::bytes(&o.topic, payload)).await?;
        }
        return Ok(());
    }
    let sizes: Vec<usize> = (0..count)
        .step_by(o.batch)
        .map(|start| o.batch.min(count - start))
        .collect();
    let mut batches = futures::stream::iter(sizes)
        .map(|n| {
            let batch = (0..n)
                .map(|_| Message::bytes(&o.topic, Bytes::from(timestamped_payload(o.size))))
                .collect();
            broker.publish_batch(batch)
        })
        .buffer_unordered(o.inflight);
    while let Some(receipts) = batches.next().await {
        for receipt in receipts {
            receipt?;
        }
    }
    Ok(())
}

fn emit(fields: serde_json::Value) {
    println!("{RESULT_PREFIX}{fields}");
}

async fn produce(o: &Options) -> Result<(), AnyError> {
    let broker = polybus::connect_url(&o.url).await?;
    // One untimed message: connections and metadata are ready before the clock starts.
    publish(&broker, o, 1).await?;
    reset_peak_rss();
    let cpu = cpu_seconds();
    let started = Instant::now();
    publish(&broker, o, o.messages).await?;
    broker.flush(Duration::from_secs(60)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    emit(json!({
        "messages": o.messages,
        "seconds": seconds,
        "msgs_per_s": o.messages as f64 / seconds,
        "cpu_s": cpu,
        "peak_rss_mib": peak_rss_mib(),
        "batch": o.batch,
        "inflight": if o.batch == 1 { 1 } else { o.inflight },
    }));
    broker.close().await?;
    Ok(())
}

async fn pubsub(o: &Options) -> Result<(), AnyError> {
    let broker = polybus::connect_url(&o.url).await?;
    let handled = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(o.messages + 1)));
    let (counter, samples) = (handled.clone(), latencies.clone());
    let handler = handler_fn(move |received| {
        if let Some(sent) = payload_micros(&received.message.payload) {
            let micros = now_micros().saturating_sub(sent);
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(micros as f64 / 1000.0);
        }
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok(()) }
    });
    let spec = SubscriptionSpec::new([o.topic.as_str()], format!("{}.g", o.topic))
        .with_concurrency(64)
        .with_prefetch(5_000);
    let consumer = Consumer::start(
        broker.clone(),
        spec,
        Arc::new(handler),
        ConsumerOptions::default(),
    )
    .await?;
    consumer.ready().wait(Duration::from_secs(60)).await?;
    // One untimed message through the whole path first.
    publish(&broker, o, 1).await?;
    wait_for(&handled, 1, Duration::from_secs(60)).await?;
    latencies.lock().unwrap_or_else(|e| e.into_inner()).clear();

    reset_peak_rss();
    let cpu = cpu_seconds();
    let started = Instant::now();
    publish(&broker, o, o.messages).await?;
    let published = started.elapsed().as_secs_f64();
    wait_for(&handled, o.messages as u64 + 1, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let peak = peak_rss_mib();
    consumer.stop().await?;
    broker.close().await?;

    let mut samples = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    samples.sort_by(f64::total_cmp);
    emit(json!({
        "messages": o.messages,
        "seconds": seconds,
        "msgs_per_s": o.messages as f64 / seconds,
        "publish_msgs_per_s": o.messages as f64 / published,
        "cpu_s": cpu,
        "peak_rss_mib": peak,
        "p50_ms": percentile(&samples, 50.0),
        "p99_ms": percentile(&samples, 99.0),
        "latency_samples": samples.len(),
        "batch": o.batch,
    }));
    Ok(())
}

async fn wait_for(counter: &AtomicU64, target: u64, timeout: Duration) -> Result<(), AnyError> {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            let seen = counter.load(Ordering::Relaxed);
            return Err(format!("only {seen} of {target} messages handled in {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// One awaited publish at a time (`produce --batch 1`) runs on a current-thread runtime, like
/// the single-threaded perf tool it is compared with and like the PHP extension: the loop and
/// the connection's I/O share one thread, so a round trip is a write and a read with no hand-off
/// between threads. Batches in flight, and `pubsub`, get worker threads.
fn main() -> Result<(), AnyError> {
    let o = options()?;
    if o.mode != "produce" && o.mode != "pubsub" {
        return Err(format!("unknown mode {}; expected produce or pubsub", o.mode).into());
    }
    let mut runtime = if o.mode == "produce" && o.batch == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(async {
        if o.mode == "produce" {
            produce(&o).await
        } else {
            pubsub(&o).await
        }
    })
}
