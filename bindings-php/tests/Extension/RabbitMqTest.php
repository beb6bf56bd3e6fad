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

    /**
     * While PHP runs its own code between calls, the engine still keeps the connection alive:
     * with a 1 s heartbeat, RabbitMQ closes a connection that stays silent for 2 s.
     */
    public function testTheConnectionStaysOpenWhilePhpIsBusyBetweenCalls(): void
    {
        $url = $this->url();
        $broker = new \Polybus\Broker($url . (str_contains($url, '?') ? '&' : '?') . 'heartbeat=1');
        $topic = $this->prepare($broker, $this->destination('idle'));
        $broker->publish($topic, ['n' => 1]);
        $before = self::connections();
        self::assertNotEmpty($before, 'the broker lists no client connection');

        usleep(4_000_000);

        $closed = array_values(array_diff($before, self::connections()));
        self::assertSame([], $closed, 'the server closed connections while PHP was busy');
        $broker->publish($topic, ['n' => 2]);
        $numbers = [];
        $broker->consume($topic, static function (\Polybus\Message $m) use (&$numbers): void {
            $numbers[] = $m->payload()['n'];
        }, 2, $this->patience());
        self::assertSame([1, 2], $numbers);
    }

    /** @return list<string> the client ports of the connections the server holds. */
    private static function connections(): array
    {
        $script = dirname(__DIR__, 3) . '/scripts/broker-rabbitmq.sh';
        $command = 'bash ' . escapeshellarg($script) . ' ctl list_connections peer_port --quiet --no-table-headers';
        exec($command . ' 2>&1', $lines, $status);
        self::assertSame(0, $status, "rabbitmqctl list_connections failed:\n" . implode("\n", $lines));

        return array_values(array_filter(array_map('trim', $lines), static fn (string $l): bool => $l !== ''));
    }
}
