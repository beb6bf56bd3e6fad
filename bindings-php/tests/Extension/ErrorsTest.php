<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\Exception\ConfigurationException;
use Polybus\Exception\ConnectionException;
use Polybus\Exception\InvalidMessageException;
use Polybus\Exception\PolybusException;
use Polybus\Exception\PublishException;
use Polybus\Exception\TimeoutException;
use Polybus\Message;
use RuntimeException;
use Throwable;

/**
 * Engine errors become typed PHP exceptions whose messages name the bad part and never show
 * a password.
 */
final class ErrorsTest extends TestCase
{
    /** @return array<string, array{string, string}> */
    public static function badUrls(): array
    {
        return [
            'scheme' => ['ftp://example.com', 'scheme'],
            'kafka port' => ['kafka://k1:x', 'port'],
            'redis mode' => ['redis://:hunter2@127.0.0.1:6379/0?mode=fanout', 'mode'],
            'amqp query parameter' => ['amqp://guest:hunter2@127.0.0.1:5672/?hartbeat=5', 'hartbeat'],
        ];
    }

    /**
     * @dataProvider badUrls
     */
    public function testABadUrlIsAConfigurationExceptionNamingTheBadPart(string $url, string $part): void
    {
        $error = $this->thrown(static fn () => new Broker($url));
        self::assertInstanceOf(ConfigurationException::class, $error);
        self::assertStringContainsString($part, $error->getMessage());
        self::assertStringNotContainsString('hunter2', $error->getMessage());
    }

    public function testABadConfigurationArrayNamesTheKey(): void
    {
        $error = $this->thrown(static fn () => new Broker(['driver' => 'rabbitmq', 'port' => 'abc']));
        self::assertInstanceOf(ConfigurationException::class, $error);
        self::assertStringContainsString('port', $error->getMessage());

        $error = $this->thrown(static fn () => new Broker(['driver' => 'carrier-pigeon']));
        self::assertInstanceOf(ConfigurationException::class, $error);
        self::assertStringContainsString('driver', $error->getMessage());

        $error = $this->thrown(static fn () => new Broker(['driver' => 'redis', 'colour' => 'blue']));
        self::assertStringContainsString('colour', $error->getMessage());

        $error = $this->thrown(static fn () => new Broker(42));
        self::assertInstanceOf(ConfigurationException::class, $error);
    }

    public function testAnUnreachableRedisIsAConnectionExceptionWithoutThePassword(): void
    {
        $error = $this->thrown(static fn () => new Broker('redis://:hunter2@127.0.0.1:1/0'));
        self::assertInstanceOf(ConnectionException::class, $error);
        self::assertStringContainsString('127.0.0.1:1', $error->getMessage());
        self::assertStringNotContainsString('hunter2', $error->getMessage());
    }

    public function testAnUnreachableRabbitMqFailsThePublishWithoutThePassword(): void
    {
        $broker = new Broker('amqp://app:hunter2@127.0.0.1:1/?connection_timeout=2000');
        $error = $this->thrown(static fn () => $broker->publish('orders', ['a' => 1]));
        self::assertInstanceOf(ConnectionException::class, $error);
        self::assertStringNotContainsString('hunter2', $error->getMessage());
    }

    public function testAnUnreachableKafkaFailsThePublishInBoundedTime(): void
    {
        $broker = new Broker('kafka://127.0.0.1:1?message.timeout.ms=2000&polybus.topic.create=false');
        $started = microtime(true);
        $error = $this->thrown(static fn () => $broker->publish('orders', ['a' => 1]));
        self::assertInstanceOf(PolybusException::class, $error);
        self::assertLessThan(20.0, microtime(true) - $started);
    }

    public function testAPublishThatCannotFinishInTimeIsATimeoutException(): void
    {
        $broker = new Broker(['driver' => 'memory', 'name' => 'php-full-' . bin2hex(random_bytes(4)), 'capacity' => 1, 'timeout' => 0.3]);
        $broker->publish('full', ['n' => 1]);
        $error = $this->thrown(static fn () => $broker->publish('full', ['n' => 2]));
        self::assertInstanceOf(TimeoutException::class, $error);
    }

    public function testPayloadsJsonCannotEncodeAreInvalidMessages(): void
    {
        $broker = new Broker('memory://');
        $error = $this->thrown(static fn () => $broker->publish('t', ['x' => NAN]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        self::assertStringContainsString('"x"', $error->getMessage());
        $error = $this->thrown(static fn () => $broker->publish('bad topic', ['x' => 1]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        $error = $this->thrown(static fn () => $broker->publishMessage('t', [], ['headers' => ['polybus-id' => 'x']]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
    }

    public function testABatchWithAPayloadThatIsNotAnArrayPublishesNothing(): void
    {
        $broker = new Broker('memory://');
        $error = $this->thrown(static fn () => $broker->publishBatch('batch.bad', [['n' => 1], 'text', ['n' => 3]]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        self::assertStringContainsString('payload 1 for "batch.bad" is not an array', $error->getMessage());
        $error = $this->thrown(static fn () => $broker->publishBatch('bad topic', [['n' => 1]]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        self::assertSame(0, $broker->consume('batch.bad', static fn () => null, 1, 0.2));
    }

    public function testABatchStopsAtAPayloadJsonCannotEncodeAndSaysWhatWasPublished(): void
    {
        $broker = new Broker('memory://');
        $payloads = array_map(static fn (int $n): array => ['n' => $n], range(0, 599));
        $payloads[300]['x'] = INF;
        $error = $this->thrown(static fn () => $broker->publishBatch('batch.inf', $payloads));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        self::assertStringContainsString('payload 300 for "batch.inf" cannot be encoded as JSON', $error->getMessage());
        self::assertStringContainsString('300 payloads before it were published, none after it', $error->getMessage());
        $numbers = [];
        $broker->consume('batch.inf', static function (Message $m) use (&$numbers): void {
            $numbers[] = $m->payload()['n'];
        }, 600, 0.5);
        self::assertSame(range(0, 299), $numbers);
    }

    public function testPayloadsAreEncodedAsJsonEncodeDoes(): void
    {
        $payload = [
            'name' => "caf\u{e9} \"quoted\" a/b",
            7 => 'integer key',
            'list' => [1, 2.5, true, null],
            'sparse' => [3 => 'c', 1 => 'a'],
            'nested' => ['inner' => ['deep' => -1]],
            'empty' => [],
        ];
        $broker = new Broker('memory://');
        $broker->publish('encoding', $payload);
        $seen = [];
        $broker->consume('encoding', static function (Message $m) use (&$seen): void {
            $seen[] = $m;
        }, 1, 5.0);
        self::assertCount(1, $seen);
        self::assertSame(json_encode($payload, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES), $seen[0]->body());
        self::assertSame($payload, $seen[0]->payload());

        $error = $this->thrown(static fn () => $broker->publish('t', ['ok' => 1, 42 => ['x' => INF]]));
        self::assertInstanceOf(InvalidMessageException::class, $error);
        self::assertStringContainsString('["42"]["x"]', $error->getMessage());
    }

    public function testEveryExceptionIsAPolybusExceptionAndARuntimeException(): void
    {
        foreach ([ConfigurationException::class, ConnectionException::class, PublishException::class, TimeoutException::class, InvalidMessageException::class] as $class) {
            self::assertTrue(is_subclass_of($class, PolybusException::class), $class);
        }
        self::assertTrue(is_subclass_of(PolybusException::class, RuntimeException::class));
        $own = new PublishException('constructible from PHP', 3);
        self::assertSame(3, $own->getCode());
    }

    public function testConsumeRequiresAPositiveLimit(): void
    {
        $broker = new Broker('memory://');
        $error = $this->thrown(static fn () => $broker->consume('t', static function (): void {
        }, 0));
        self::assertInstanceOf(ConfigurationException::class, $error);
        $error = $this->thrown(static fn () => $broker->consume('t', static function (): void {
        }, 1, 1.0, ['colour' => 'blue']));
        self::assertStringContainsString('colour', $error->getMessage());
    }

    public function testAClosedBrokerRefusesToPublish(): void
    {
        $broker = new Broker('memory://');
        $broker->close();
        self::assertInstanceOf(PolybusException::class, $this->thrown(static fn () => $broker->publish('t', [])));
    }

    private function thrown(callable $action): Throwable
    {
        try {
            $action();
        } catch (Throwable $error) {
            return $error;
        }
        self::fail('expected an exception');
    }
}
