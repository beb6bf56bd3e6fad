//! The behaviour suite on a real Redis server in pub/sub mode (`make test` starts one on
//! 127.0.0.1:6379; `POLYBUS_TEST_REDIS_URL` points elsewhere, its `mode` replaced).

mod conformance;

use polybus::SharedBroker;

fn redis_url() -> String {
    let base = std::env::var("POLYBUS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let (address, query) = base.split_once('?').unwrap_or((&base, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .collect();
    params.push("mode=pubsub");
    format!("{address}?{}", params.join("&"))
}

async fn redis() -> SharedBroker {
    polybus::connect_url(&redis_url())
        .await
        .unwrap_or_else(|err| panic!("connecting to the test Redis server: {err}"))
}

conformance::suite!(redis);
