<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\DeadLetter;
use Polybus\Message;
use Polybus\MessageBrokerInterface;
use RuntimeException;

/**
 * What every consumable backend does through the extension. Each backend's test case says
 * how to reach it; the scenarios are the same.
 */
abstract class BrokerContractTest extends TestCase
{
    /** The broker URL of the backend under test. */
    abstract protected function url(): string;

    /** Seconds a consume may wait for the first message (Kafka needs a group assignment). */
    protected function patience(): float
    {
        return 20.0;
    }

    /** A destination no other test (or earlier run) uses. */
    protected function destination(string $name): string
    {
        $backend = strtolower(substr(strrchr(static::class, '\\'), 1, -strlen('Test')));

        return sprintf('php.%s.%s.%s', $backend, $name, bin2hex(random_bytes(4)));
    }

    protected function broker(): Broker
    {
        return new Broker($this->url());
    }

    /**
     * Makes sure messages published to `$destination` are kept for its consumer group (the
     * destination itself) before anything is published. Most brokers keep them anyway.
     */
    protected function prepare(Broker $broker, string $destination): string
    {
        return $destination;
    }

    public function testPublishThenConsumePreservesPayloadHeadersKeyAndId(): void
    {
        $broker = $this->broker();
        self::assertInstanceOf(MessageBrokerInterface::class, $broker);
        $topic = $this->prepare($broker, $this->destination('roundtrip'));
        $payload = ['order_id' => 7, 'items' => [1, 2, 3], 'customer' => ['name' => 'Zoë', 'vip' => true], 'note' => null];
        $id = $broker->publishMessage($topic, $payload, ['key' => 'customer-7', 'headers' => ['trace' => 'abc', 'n' => 5]]);
        $broker->publish($topic, ['second' => 2.5]);

        $seen = [];
        $handled = $broker->consume($topic, static function (Message $message) use (&$seen): void {
            $seen[] = $message;
        }, 2, $this->patience());

        self::assertSame(2, $handled);
        self::assertSame($id, $seen[0]->id());
        self::assertSame($topic, $seen[0]->topic());
        self::assertSame('customer-7', $seen[0]->key());
        self::assertSame('abc', $seen[0]->header('trace'));
        self::assertSame('5', $seen[0]->headers()['n']);
        self::assertSame($payload, $seen[0]->payload());
        self::assertSame($payload, json_decode($seen[0]->body(), true));
        self::assertSame('application/json', $seen[0]->contentType());
        self::assertSame(1, $seen[0]->attempt());
        self::assertEqualsWithDelta(microtime(true) * 1000, $seen[0]->timestamp(), 120_000);
        self::assertSame(['second' => 2.5], $seen[1]->payload());
    }

    /**
     * A child made by pcntl_fork after the parent used the extension gets an engine of its own
     * (the parent's threads do not exist in it) and can publish and consume.
     */
    public function testAForkedChildPublishesAndConsumesOnItsOwnEngine(): void
    {
        $parent = $this->broker();
        $topic = $this->prepare($parent, $this->destination('fork'));
        $parent->publish($topic, ['from' => 'parent']);

        $pid = pcntl_fork();
        self::assertNotSame(-1, $pid, 'pcntl_fork failed');
        if ($pid === 0) {
            // The child leaves by exec, so no destructor of the parent's objects runs here.
            $ok = false;
            try {
                $child = $this->broker();
                $child->publish($topic, ['from' => 'child']);
                $seen = [];
                $child->consume($topic, static function (Message $m) use (&$seen): void {
                    $seen[] = $m->payload()['from'];
                }, 2, $this->patience());
                $ok = $seen === ['parent', 'child'] || ($seen === ['child'] && $this->processLocal());
            } catch (\Throwable $e) {
                fwrite(STDERR, "child: {$e->getMessage()}\n");
            }
            pcntl_exec($ok ? '/bin/true' : '/bin/false');
        }
        pcntl_waitpid($pid, $status);
        self::assertTrue(pcntl_wifexited($status), 'the child did not exit');
        self::assertSame(0, pcntl_wexitstatus($status), 'the child could not publish and consume');
        $parent->publish($topic, ['from' => 'parent again']);
    }

    /** Whether the broker lives in the process (a child starts with its own, empty one). */
    protected function processLocal(): bool
    {
        return false;
    }

    public function testPublishBatchPublishesEveryPayloadInOrder(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('batch'));
        self::assertSame(5, $broker->publishBatch($topic, array_map(static fn (int $n): array => ['n' => $n], range(1, 5))));
        $numbers = [];
        $broker->consume($topic, static function (Message $message) use (&$numbers): void {
            $numbers[] = $message->payload()['n'];
        }, 5, $this->patience());
        self::assertSame([1, 2, 3, 4, 5], $numbers);
    }

    public function testAPublishBatchLongerThanOneChunkArrivesWholeAndInOrder(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('chunks'));
        // Sent in chunks of 256, one in flight while the next is encoded.
        self::assertSame(700, $broker->publishBatch($topic, array_map(static fn (int $n): array => ['n' => $n], range(1, 700))));
        $numbers = [];
        $broker->consume($topic, static function (Message $message) use (&$numbers): void {
            $numbers[] = $message->payload()['n'];
        }, 700, $this->patience());
        self::assertSame(range(1, 700), $numbers);
    }

    public function testConsumeStopsAtItsLimitAndLeavesTheRestForLater(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('limit'));
        $broker->publishBatch($topic, [['n' => 1], ['n' => 2], ['n' => 3]]);
        $first = [];
        self::assertSame(2, $broker->consume($topic, static function (Message $m) use (&$first): void {
            $first[] = $m->payload()['n'];
        }, 2, $this->patience()));
        $rest = [];
        self::assertSame(1, $broker->consume($topic, static function (Message $m) use (&$rest): void {
            $rest[] = $m->payload()['n'];
        }, 10, 3.0));
        self::assertSame([1, 2, 3], array_merge($first, $rest));
    }

    public function testConsumeReturnsWhenItsTimeoutPasses(): void
    {
        $broker = $this->broker();
        $started = microtime(true);
        $handled = $broker->consume($this->destination('empty'), static function (): void {
            throw new RuntimeException('nothing should arrive');
        }, 10, 1.0);
        $elapsed = microtime(true) - $started;
        self::assertSame(0, $handled);
        self::assertGreaterThanOrEqual(0.9, $elapsed);
        self::assertLessThan(10.0, $elapsed);
    }

    public function testAThrowingHandlerIsRetriedThenDeadLettered(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('failing'));
        // The inspecting group subscribes first, as a monitoring consumer would: brokers that
        // keep messages per group (RabbitMQ queues) keep the dead letter for it.
        $broker->consume($topic . '.dlq', static function (): void {
        }, 1, 0.2, ['group' => 'inspect']);
        $broker->publish($topic, ['poison' => true]);
        $attempts = [];
        $handled = $broker->consume($topic, static function (Message $m) use (&$attempts): void {
            $attempts[] = $m->attempt();
            throw new \DomainException('cannot process order');
        }, 3, $this->patience(), ['max_retries' => 2, 'retry_delay' => 0.05]);
        self::assertSame(3, $handled);
        self::assertSame([1, 2, 3], $attempts);

        $letters = [];
        $broker->consume($topic . '.dlq', static function (Message $m) use (&$letters): void {
            $letters[] = $m;
        }, 1, $this->patience(), ['group' => 'inspect']);
        self::assertCount(1, $letters);
        self::assertSame(['poison' => true], $letters[0]->payload());
        self::assertSame('cannot process order', $letters[0]->header('polybus-dlq-error'));
        self::assertSame('DomainException', $letters[0]->header('polybus-dlq-error-type'));
        self::assertSame($topic, $letters[0]->header('polybus-dlq-topic'));
    }

    public function testTheStopOptionEndsConsumeAndGivesUnhandledMessagesBack(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('stop'));
        $broker->publishBatch($topic, [['n' => 1], ['n' => 2], ['n' => 3]]);
        $seen = [];
        $handled = $broker->consume($topic, static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload()['n'];
        }, 3, $this->patience(), ['stop' => static function () use (&$seen): bool {
            return count($seen) >= 1;
        }, 'concurrency' => 3]);
        self::assertSame(1, $handled);
        $broker->consume($topic, static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload()['n'];
        }, 2, $this->patience());
        sort($seen);
        self::assertSame([1, 2, 3], $seen);
    }

    /** @return iterable<string, array{bool|string}> */
    public static function dedupStores(): iterable
    {
        yield 'memory' => [true];
        yield 'redis' => [getenv('POLYBUS_TEST_REDIS_URL') ?: 'redis://127.0.0.1:6379/0'];
    }

    /** @dataProvider dedupStores */
    public function testDedupHandlesAMessageIdOnce(bool|string $store): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('dedup'));
        $id = 'dedup-' . bin2hex(random_bytes(8));
        $broker->publishMessage($topic, ['n' => 1], ['id' => $id, 'key' => 'k']);
        $broker->publishMessage($topic, ['n' => 1], ['id' => $id, 'key' => 'k']);
        $broker->publishMessage($topic, ['n' => 2], ['key' => 'k']);
        $seen = [];
        $handler = static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload()['n'];
        };
        $options = ['dedup' => $store, 'dedup_ttl' => 60];
        self::assertSame(2, $broker->consume($topic, $handler, 2, $this->patience(), $options));
        self::assertSame(0, $broker->consume($topic, $handler, 1, 1.0, $options));
        self::assertSame([1, 2], $seen);
    }

    public function testDeadLettersAreCountedListedAndRedriven(): void
    {
        $broker = $this->broker();
        $topic = $this->prepare($broker, $this->destination('dead'));
        $broker->publishBatch($topic, [['order' => 1], ['order' => 2]]);
        $failed = $broker->consume($topic, static function (Message $m): void {
            throw new \DomainException('card declined');
        }, 2, $this->patience(), ['max_retries' => 0]);
        self::assertSame(2, $failed);

        $dlq = $topic . '.dlq';
        self::assertSame(2, $broker->deadLetterCount($dlq));
        $letters = $broker->deadLetters($dlq);
        self::assertCount(2, $letters);
        $orders = array_map(static fn (DeadLetter $d): int => $d->message()->payload()['order'], $letters);
        sort($orders);
        self::assertSame([1, 2], $orders);
        self::assertSame('card declined', $letters[0]->error());
        self::assertSame('DomainException', $letters[0]->errorType());
        self::assertSame(1, $letters[0]->attempts());
        self::assertSame($topic, $letters[0]->originalTopic());
        self::assertSame($dlq, $letters[0]->message()->topic());
        self::assertLessThanOrEqual($letters[0]->lastFailureMs(), $letters[0]->firstFailureMs());
        self::assertCount(1, $broker->deadLetters($dlq, 1));
        self::assertSame(2, $broker->deadLetterCount($dlq), 'listing leaves them in place');

        self::assertSame(['moved' => 1, 'left' => []], $broker->redriveDeadLetters($dlq, 1));
        self::assertSame(1, $broker->deadLetterCount($dlq));
        self::assertSame(['moved' => 1, 'left' => []], $broker->redriveDeadLetters($dlq));
        self::assertSame(0, $broker->deadLetterCount($dlq));

        $attempts = [];
        self::assertSame(2, $broker->consume($topic, static function (Message $m) use (&$attempts): void {
            $attempts[$m->payload()['order']] = $m->attempt();
        }, 2, $this->patience()));
        ksort($attempts);
        self::assertSame([1 => 1, 2 => 1], $attempts, 'redriven messages start again at attempt 1');
    }
}
