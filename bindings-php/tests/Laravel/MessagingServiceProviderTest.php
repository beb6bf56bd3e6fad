<?php

declare(strict_types=1);

namespace Polybus\Tests\Laravel;

use Illuminate\Contracts\Console\Kernel;
use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\Laravel\BrokerFactory;
use Polybus\Laravel\NullMessageBroker;
use Polybus\Message;
use Polybus\MessageBrokerInterface;
use Symfony\Component\Console\Output\BufferedOutput;

/**
 * The package in a booted Laravel application: the interface binding per driver, overrides,
 * and `messaging:consume` through the console kernel.
 */
final class MessagingServiceProviderTest extends TestCase
{
    /** @return array<string, array{string, array<string, mixed>, string}> */
    public static function drivers(): array
    {
        return [
            'memory' => ['memory', [], 'memory'],
            'redis list' => ['redis', ['redis_mode' => 'list', 'connections' => ['redis' => ['host' => '127.0.0.1', 'port' => 6379]]], 'redis'],
            'redis pubsub' => ['redis', ['redis_mode' => 'pubsub', 'connections' => ['redis' => ['host' => '127.0.0.1', 'port' => 6379]]], 'redis'],
            'rabbitmq' => ['rabbitmq', ['connections' => ['rabbitmq' => ['host' => '127.0.0.1', 'port' => 5672, 'user' => 'guest', 'password' => 'guest']]], 'rabbitmq'],
            'kafka' => ['kafka', ['connections' => ['kafka' => ['brokers' => '127.0.0.1:9092']]], 'kafka'],
        ];
    }

    /**
     * @dataProvider drivers
     * @param array<string, mixed> $config
     */
    public function testTheInterfaceResolvesToTheConfiguredDriverAndPublishes(string $driver, array $config, string $expected): void
    {
        $app = TestApplication::boot(['driver' => $driver] + $config, new MemoryLogger());
        $broker = $app->make(MessageBrokerInterface::class);
        self::assertInstanceOf(Broker::class, $broker);
        self::assertSame($expected, $broker->driver());
        self::assertSame($broker, $app->make('messaging'));
        $destination = 'php.laravel.' . $driver . '.' . bin2hex(random_bytes(4));
        if ($driver === 'rabbitmq') {
            // RabbitMQ refuses messages no queue is bound for: a consumer's queue must exist.
            $broker->consume($destination, static function (): void {
            }, 1, 0.2);
        }
        $broker->publish($destination, ['source_id' => 42, 'reason' => 'timeout']);
        if (isset($config['redis_mode'])) {
            self::assertStringContainsString('mode=' . $config['redis_mode'], $broker->url());
        }
    }

    public function testTheEngineLogsToTheApplicationsLogAtTheConfiguredLevel(): void
    {
        $socket = stream_socket_server('tcp://127.0.0.1:0');
        self::assertNotFalse($socket);
        $name = (string) stream_socket_get_name($socket, false);
        fclose($socket);
        $spool = sys_get_temp_dir() . '/polybus-laravel-logs-' . bin2hex(random_bytes(4));
        $logger = new MemoryLogger();
        $app = TestApplication::boot([
            'driver' => 'redis',
            'redis_mode' => 'list',
            'log_level' => 'info',
            'failover' => ['spool_dir' => $spool],
            'connections' => ['redis' => ['host' => '127.0.0.1', 'port' => (int) substr($name, strrpos($name, ':') + 1)]],
        ], $logger);
        try {
            $app->make(MessageBrokerInterface::class)->publish('laravel.logs', ['n' => 1]);
        } finally {
            Broker::setLogger(null, 'warning');
            exec('rm -rf ' . escapeshellarg($spool));
        }
        $warnings = array_values(array_filter(
            $logger->records,
            static fn (array $r): bool => $r['message'] === 'failover: the primary is unreachable at start; spooling',
        ));
        self::assertCount(1, $warnings, (string) json_encode($logger->records));
        self::assertSame('warning', $warnings[0]['level']);
        self::assertSame('polybus.failover.broker', $warnings[0]['context']['logger']);
    }

    public function testTheNullDriverIsTheNullMessageBroker(): void
    {
        $app = TestApplication::boot(['driver' => 'null'], new MemoryLogger());
        $broker = $app->make(MessageBrokerInterface::class);
        self::assertInstanceOf(NullMessageBroker::class, $broker);
        $broker->publish('source.fetch.failed', ['source_id' => 1]);
        self::assertSame([['destination' => 'source.fetch.failed', 'payload' => ['source_id' => 1]]], $broker->published());
    }

    public function testAnApplicationCanOverrideTheBindingOrOneDriver(): void
    {
        $app = TestApplication::boot(['driver' => 'kafka'], new MemoryLogger());
        $app->make(BrokerFactory::class)->extend('kafka', static fn (array $settings): MessageBrokerInterface => new NullMessageBroker());
        self::assertInstanceOf(NullMessageBroker::class, $app->make(MessageBrokerInterface::class));

        $app = TestApplication::boot(['driver' => 'kafka'], new MemoryLogger());
        $mine = new NullMessageBroker();
        $app->bind(MessageBrokerInterface::class, static fn (): MessageBrokerInterface => $mine);
        self::assertSame($mine, $app->make(MessageBrokerInterface::class));
    }

    public function testMessagingConsumeHandsMessagesToTheDefaultLogHandler(): void
    {
        $logger = new MemoryLogger();
        $name = 'laravel-' . bin2hex(random_bytes(4));
        $app = TestApplication::boot(['driver' => 'memory', 'connections' => ['memory' => ['name' => $name]]], $logger);
        $app->make(MessageBrokerInterface::class)->publish('source.fetch.failed', ['source_id' => 1]);
        $app->make(MessageBrokerInterface::class)->publish('source.fetch.failed', ['source_id' => 2]);
        $app->make(MessageBrokerInterface::class)->publish('source.fetch.failed', ['source_id' => 3]);

        $output = new BufferedOutput();
        $status = $app->make(Kernel::class)->call('messaging:consume', ['--limit' => 2, '--timeout' => 10], $output);

        $text = $output->fetch();
        self::assertSame(0, $status, $text);
        self::assertStringContainsString('Handled 2 message(s) from source.fetch.failed', $text);
        $payloads = array_column(array_column($logger->records, 'context'), 'payload');
        self::assertSame([['source_id' => 1], ['source_id' => 2]], $payloads);
    }

    public function testMessagingConsumeUsesTheHandlerClassGivenAndStopsAtItsTimeout(): void
    {
        RecordingHandler::$payloads = [];
        $topic = 'php.laravel.handler.' . bin2hex(random_bytes(4));
        $app = TestApplication::boot(['driver' => 'redis', 'redis_mode' => 'list', 'connections' => ['redis' => ['host' => '127.0.0.1']]], new MemoryLogger());
        $app->make(MessageBrokerInterface::class)->publish($topic, ['n' => 1]);

        $started = microtime(true);
        $status = $app->make(Kernel::class)->call('messaging:consume', [
            'destination' => $topic,
            '--limit' => 5,
            '--timeout' => 2,
            '--handler' => RecordingHandler::class,
        ], new BufferedOutput());

        self::assertSame(0, $status);
        self::assertSame([['n' => 1]], RecordingHandler::$payloads);
        self::assertLessThan(15.0, microtime(true) - $started);
    }

    public function testMessagingConsumeStopsAfterTheCurrentMessageOnSigterm(): void
    {
        SigtermHandler::$payloads = [];
        $name = 'laravel-sigterm-' . bin2hex(random_bytes(4));
        $app = TestApplication::boot(['driver' => 'memory', 'connections' => ['memory' => ['name' => $name]]], new MemoryLogger());
        $broker = $app->make(MessageBrokerInterface::class);
        $broker->publishBatch('jobs', [['n' => 1], ['n' => 2], ['n' => 3]]);
        // The handler sends SIGTERM to this process while it handles the first message.
        $app->bind(SigtermHandler::class, static fn (): SigtermHandler => new SigtermHandler());

        $status = $app->make(Kernel::class)->call('messaging:consume', [
            'destination' => 'jobs',
            '--limit' => 3,
            '--timeout' => 10,
            '--handler' => SigtermHandler::class,
        ], new BufferedOutput());

        self::assertSame(0, $status);
        self::assertSame([['n' => 1]], SigtermHandler::$payloads);
        $rest = [];
        $broker->consume('jobs', static function (Message $m) use (&$rest): void {
            $rest[] = $m->payload();
        }, 2, 5.0);
        self::assertSame([['n' => 2], ['n' => 3]], $rest);
    }

    public function testMessagingDlqCountsListsAndRedrivesDeadLetters(): void
    {
        $name = 'laravel-dlq-' . bin2hex(random_bytes(4));
        $app = TestApplication::boot(['driver' => 'memory', 'connections' => ['memory' => ['name' => $name]]], new MemoryLogger());
        $broker = $app->make(MessageBrokerInterface::class);
        $broker->publishBatch('jobs', [['n' => 1], ['n' => 2]]);
        $broker->consume('jobs', static function (): void {
            throw new \RuntimeException('upstream timeout');
        }, 2, 5.0, ['max_retries' => 0]);
        $kernel = $app->make(Kernel::class);

        $output = new BufferedOutput();
        self::assertSame(0, $kernel->call('messaging:dlq', ['action' => 'count', 'destination' => 'jobs.dlq'], $output));
        self::assertSame('2', trim($output->fetch()));
        self::assertSame(0, $kernel->call('messaging:dlq', ['action' => 'list', 'destination' => 'jobs.dlq'], $output));
        $listed = $output->fetch();
        self::assertStringContainsString('RuntimeException: upstream timeout', $listed);
        self::assertStringContainsString('{"n":2}', $listed);
        self::assertSame(0, $kernel->call('messaging:dlq', ['action' => 'redrive', 'destination' => 'jobs.dlq'], $output));
        self::assertStringContainsString('Redriven 2 dead letter(s)', $output->fetch());
        self::assertSame(0, $broker->deadLetterCount('jobs.dlq'));
        $seen = [];
        $broker->consume('jobs', static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload()['n'];
        }, 2, 5.0);
        self::assertSame([1, 2], $seen);

        self::assertSame(1, $kernel->call('messaging:dlq', ['action' => 'drop', 'destination' => 'jobs.dlq'], $output));
        self::assertStringContainsString('Unknown action "drop"', $output->fetch());
    }

    public function testTheHubUsesTheConfiguredDriversAndFailoverGetsASpoolPerDriver(): void
    {
        $spool = sys_get_temp_dir() . '/polybus-laravel-spool-' . bin2hex(random_bytes(4));
        $app = TestApplication::boot([
            'driver' => 'redis',
            'redis_mode' => 'list',
            'failover' => ['spool_dir' => $spool, 'fsync' => 'never'],
            'hub' => ['tasks' => 'redis', 'events' => 'memory'],
            'connections' => ['redis' => ['host' => '127.0.0.1'], 'memory' => ['name' => 'laravel-hub']],
        ], new MemoryLogger());
        $hub = $app->make(\Polybus\Hub::class);
        self::assertSame('redis', $hub->tasks()->driver());
        self::assertSame('memory', $hub->events()->driver());
        self::assertSame('primary', $app->make(MessageBrokerInterface::class)->failoverStatus()['state']);
        self::assertDirectoryExists($spool . '/redis');
        self::assertNull($hub->events()->failoverStatus(), 'the memory broker needs no spool');
        $topic = 'php.laravel.hub.' . bin2hex(random_bytes(4));
        $hub->publishTask($topic, ['n' => 1]);
        $seen = [];
        $hub->tasks()->consume($topic, static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload();
        }, 1, 10.0);
        self::assertSame([['n' => 1]], $seen);
        exec('rm -rf ' . escapeshellarg($spool));
    }
}
