//! The behaviour suite on a real Apache Kafka broker (`make test` starts one on 127.0.0.1:9092;
//! `POLYBUS_TEST_KAFKA_URL` points elsewhere).

mod conformance;

use polybus::SharedBroker;

async fn kafka() -> SharedBroker {
    polybus::connect_url(&conformance::common::kafka_url())
        .await
        .unwrap_or_else(|err| panic!("connecting to the test Kafka broker: {err}"))
}

conformance::suite!(kafka);
