<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

/**
 * The contract on Apache Kafka (the real broker on 127.0.0.1:9092).
 */
final class KafkaTest extends BrokerContractTest
{
    protected function url(): string
    {
        return getenv('POLYBUS_TEST_KAFKA_URL') ?: 'kafka://127.0.0.1:9092?polybus.topic.partitions=1';
    }

    protected function patience(): float
    {
        return 40.0;
    }
}
