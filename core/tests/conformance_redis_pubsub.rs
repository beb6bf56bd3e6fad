//! The behaviour suite on a real Redis server in pub/sub mode (`make test` starts one on
//! 127.0.0.1:6379; `POLYBUS_TEST_REDIS_URL` points elsewhere, its `mode` replaced).

mod conformance;

use polybus::SharedBroker;

async fn redis() -> SharedBroker {
    polybus::connect_url(&conformance::common::redis_url("pubsub"))
        .await
        .unwrap_or_else(|err| panic!("connecting to the test Redis server: {err}"))
}

conformance::suite!(redis);
