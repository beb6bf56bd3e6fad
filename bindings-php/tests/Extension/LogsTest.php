<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\Exception\ConfigurationException;
use Psr\Log\AbstractLogger;

/**
 * The engine's log records reach PHP: a PSR-3 logger set with `Broker::setLogger()`, or else
 * `error_log()`. A Redis URL on a port nothing listens on makes the failover broker warn.
 */
final class LogsTest extends TestCase
{
    private string $dir;

    protected function setUp(): void
    {
        $this->dir = sys_get_temp_dir() . '/polybus-php-logs-' . bin2hex(random_bytes(4));
        mkdir($this->dir, 0777, true);
    }

    protected function tearDown(): void
    {
        Broker::setLogger(null, 'warning');
        ini_restore('error_log');
        exec('rm -rf ' . escapeshellarg($this->dir));
    }

    private static function deadUrl(): string
    {
        $socket = stream_socket_server('tcp://127.0.0.1:0');
        self::assertNotFalse($socket);
        $name = (string) stream_socket_get_name($socket, false);
        fclose($socket);

        return sprintf('redis://127.0.0.1:%d/0?mode=list', (int) substr($name, strrpos($name, ':') + 1));
    }

    private function spooling(): Broker
    {
        return new Broker(['url' => self::deadUrl(), 'failover' => ['spool_dir' => $this->dir . '/spool']]);
    }

    public function testAnEngineWarningReachesThePsr3LoggerWithItsFields(): void
    {
        $logger = new class () extends AbstractLogger {
            /** @var list<array{level: mixed, message: string, context: array<mixed>}> */
            public array $records = [];

            public function log($level, $message, array $context = []): void
            {
                $this->records[] = ['level' => $level, 'message' => (string) $message, 'context' => $context];
            }
        };
        Broker::setLogger($logger);
        $broker = $this->spooling();
        $broker->close();

        $warnings = array_values(array_filter(
            $logger->records,
            static fn (array $r): bool => $r['message'] === 'failover: the primary is unreachable at start; spooling',
        ));
        self::assertCount(1, $warnings, (string) json_encode($logger->records));
        self::assertSame('warning', $warnings[0]['level']);
        self::assertSame('polybus.failover.broker', $warnings[0]['context']['logger']);
        self::assertStringStartsWith('redis://127.0.0.1:', $warnings[0]['context']['primary']);
        self::assertStringContainsStringIgnoringCase('refused', $warnings[0]['context']['error']);
        foreach ($logger->records as $record) {
            self::assertContains($record['level'], ['warning', 'error'], 'nothing below the level');
        }
    }

    public function testWithoutALoggerRecordsGoToTheErrorLog(): void
    {
        $file = $this->dir . '/error.log';
        ini_set('error_log', $file);
        $this->spooling()->close();

        $log = (string) @file_get_contents($file);
        self::assertStringContainsString('polybus warning: failover: the primary is unreachable at start; spooling (primary=redis://127.0.0.1:', $log);
        self::assertStringContainsString('[polybus.failover.broker]', $log);
    }

    public function testALowerLevelPassesDebugRecordsOn(): void
    {
        $logger = new class () extends AbstractLogger {
            /** @var list<string> */
            public array $messages = [];

            public function log($level, $message, array $context = []): void
            {
                $this->messages[] = $level . ' ' . $message . ' ' . ($context['logger'] ?? '');
            }
        };
        Broker::setLogger($logger, 'debug');
        $broker = new Broker((getenv('POLYBUS_TEST_REDIS_URL') ?: 'redis://127.0.0.1:6379/0') . '?mode=list');
        $broker->close();
        self::assertContains('debug connected to redis polybus.brokers.redis', $logger->messages);
    }

    public function testALoggerMayCallIntoPolybusWhileLogging(): void
    {
        $logger = new class () extends AbstractLogger {
            public int $calls = 0;

            public function log($level, $message, array $context = []): void
            {
                ++$this->calls;
                // Setting a logger from inside the logger, as a misbehaving one could.
                Broker::setLogger($this, 'warning');
            }
        };
        Broker::setLogger($logger);
        $this->spooling()->close();
        self::assertGreaterThanOrEqual(1, $logger->calls);
    }

    public function testALoggerThatThrowsHasItsExceptionSurfaceAndKeepsLogging(): void
    {
        $logger = new class () extends AbstractLogger {
            /** @var list<string> */
            public array $messages = [];
            public bool $thrown = false;

            public function log($level, $message, array $context = []): void
            {
                if (!$this->thrown) {
                    $this->thrown = true;
                    throw new \RuntimeException('the log is full');
                }
                $this->messages[] = (string) $message;
            }
        };
        Broker::setLogger($logger, 'debug');
        try {
            $this->spooling();
            self::fail('the logger\'s exception did not surface');
        } catch (\RuntimeException $e) {
            self::assertSame('the log is full', $e->getMessage());
        }
        // Later records still reach it.
        $this->spooling()->close();
        self::assertContains('failover: the primary is unreachable at start; spooling', $logger->messages);
    }

    public function testAnUnknownLevelOrALoggerWithoutLogIsRefused(): void
    {
        try {
            Broker::setLogger(null, 'loud');
            self::fail('an unknown level was taken');
        } catch (ConfigurationException $e) {
            self::assertStringContainsString('unknown log level "loud"', $e->getMessage());
        }
        $this->expectException(ConfigurationException::class);
        $this->expectExceptionMessage('expected a PSR-3 logger');
        Broker::setLogger(new \stdClass());
    }
}
