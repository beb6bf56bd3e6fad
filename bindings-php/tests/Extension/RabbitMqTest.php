<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

/**
 * The contract on RabbitMQ (the real server on 127.0.0.1:5672).
 */
final class RabbitMqTest extends BrokerContractTest
{
    protected function url(): string
    {
        return getenv('POLYBUS_TEST_AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/';
    }

    /**
     * RabbitMQ refuses (mandatory publish) a message no queue is bound for: a first, empty
     * consume declares the group's queue.
     */
    protected function prepare(\Polybus\Broker $broker, string $destination): string
    {
        $broker->consume($destination, static function (): void {
        }, 1, 0.2);

        return $destination;
    }
}
