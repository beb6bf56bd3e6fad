//! The behaviour suite on a real RabbitMQ server (`make test` starts one on 127.0.0.1:5672;
//! `POLYBUS_TEST_AMQP_URL` points elsewhere).

mod conformance;

use polybus::SharedBroker;

async fn rabbitmq() -> SharedBroker {
    polybus::connect_url(&conformance::common::amqp_url())
        .await
        .unwrap_or_else(|err| panic!("connecting to the test RabbitMQ server: {err}"))
}

conformance::suite!(rabbitmq);
