//! The behaviour suite on a real Apache Kafka broker (`make test` starts one on 127.0.0.1:9092;
//! `POLYBUS_TEST_KAFKA_URL` points elsewhere).

mod conformance;

use polybus::SharedBroker;

fn kafka_url() -> String {
    std::env::var("POLYBUS_TEST_KAFKA_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092?polybus.topic.partitions=4".to_owned())
}

async fn kafka() -> SharedBroker {
    polybus::connect_url(&kafka_url())
        .await
        .unwrap_or_else(|err| panic!("connecting to the test Kafka broker: {err}"))
}

conformance::suite!(kafka);
