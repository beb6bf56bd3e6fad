//! Redis stopped and started while messages are in flight, in list and streams mode: every
//! message is delivered at least once, counted. Each test runs its own Redis server with an
//! append-only file (a Redis without persistence loses its data on restart, by design).

mod common;
mod outage;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Redis server of this test's own, persisting to an append-only file.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    fn start(port: u16) -> Arc<Self> {
        let dir = std::env::temp_dir().join(format!(
            "polybus-redis-outage-{port}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let server = Arc::new(RedisServer {
            port,
            dir,
            child: Mutex::new(None),
        });
        server.up();
        server
    }

    fn url(&self, mode: &str) -> String {
        format!("redis://127.0.0.1:{}/0?mode={mode}", self.port)
    }

    fn up(&self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A clean shutdown: Redis writes and syncs its append-only file, then exits.
    fn down(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn restart_mid_stream(mode: &str, port: u16) {
    let server = RedisServer::start(port);
    let url = server.url(&format!(
        "{mode}&visibility_timeout_ms=5000&claim_idle_ms=5000"
    ));
    let broker = polybus::connect_url(&url).await.unwrap();
    let topic = format!(
        "polybus-redis.outage.{}",
        &polybus::message::new_message_id()[24..]
    );
    let restarting = server.clone();
    let outage = async move {
        tokio::task::spawn_blocking(move || {
            restarting.down();
            std::thread::sleep(Duration::from_secs(1));
            restarting.up();
        })
        .await
        .unwrap();
    };
    let total = 10_000;
    let report = outage::stream_through_an_outage(broker, &topic, total, outage).await;
    eprintln!(
        "redis {mode} outage: {total} delivered at least once; {} publishes retried; {} handled in all",
        report.publish_retries, report.handled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_mode_server_restart_loses_nothing() {
    restart_mid_stream("list", 6391).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streams_mode_server_restart_loses_nothing() {
    restart_mid_stream("streams", 6392).await;
}
