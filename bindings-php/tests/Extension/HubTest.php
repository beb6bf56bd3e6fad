<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\Exception\ConfigurationException;
use Polybus\Hub;
use Polybus\Message;

/**
 * Tasks to RabbitMQ, events to Kafka, and events replayed from a point in time.
 */
final class HubTest extends TestCase
{
    private function hub(): Hub
    {
        return new Hub(
            new Broker(getenv('POLYBUS_TEST_AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/'),
            new Broker(getenv('POLYBUS_TEST_KAFKA_URL') ?: 'kafka://127.0.0.1:9092?polybus.topic.partitions=2'),
        );
    }

    public function testTasksAndEventsGoToTheirBrokersAndEventsReplayFromATime(): void
    {
        $hub = $this->hub();
        self::assertSame('rabbitmq', $hub->tasks()->driver());
        self::assertSame('kafka', $hub->events()->driver());
        $suffix = bin2hex(random_bytes(4));
        $tasks = 'php.hub.task.' . $suffix;
        // Declare the workers' queue first, as a worker pool would have.
        $hub->tasks()->consume($tasks, static function (): void {
        }, 1, 0.2);
        $id = $hub->publishTask($tasks, ['task' => 1]);
        $done = [];
        self::assertSame(1, $hub->tasks()->consume($tasks, static function (Message $m) use (&$done): void {
            $done[] = $m->id();
        }, 1, 20.0));
        self::assertSame([$id], $done);

        $events = 'php.hub.event.' . $suffix;
        $hub->publishEvent($events, ['event' => 'early']);
        usleep(50_000);
        $since = (int) (microtime(true) * 1000);
        usleep(50_000);
        $hub->publishEvent($events, ['event' => 'late-1']);
        $hub->publishEvent($events, ['event' => 'late-2']);
        $replayed = [];
        self::assertSame(2, $hub->replayEvents($events, $since, static function (Message $m) use (&$replayed): void {
            $replayed[] = $m->payload()['event'];
        }, 2, 30.0, ['group' => 'audit-' . $suffix]));
        sort($replayed);
        self::assertSame(['late-1', 'late-2'], $replayed);
    }

    public function testReplayOnABrokerWithoutHistoryIsAClearError(): void
    {
        $broker = new Broker(getenv('POLYBUS_TEST_AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/');
        $hub = new Hub($broker, $broker);
        $this->expectException(ConfigurationException::class);
        $this->expectExceptionMessageMatches('/rabbitmq/');
        $hub->replayEvents('php.hub.none', 0, static function (): void {
        }, 1, 1.0);
    }
}
