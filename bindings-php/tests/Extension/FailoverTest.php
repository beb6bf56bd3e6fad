<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;
use Polybus\Exception\ConfigurationException;
use Polybus\Message;

/**
 * A broker behind a durable spool: publishes while Redis is down go to disk and drain, in
 * order, once it is up. The test runs a Redis server of its own on a free port.
 */
final class FailoverTest extends TestCase
{
    private string $dir;
    private int $port;
    /** @var resource|null */
    private $server = null;

    protected function setUp(): void
    {
        $this->dir = sys_get_temp_dir() . '/polybus-php-failover-' . bin2hex(random_bytes(4));
        mkdir($this->dir . '/redis', 0777, true);
        $socket = stream_socket_server('tcp://127.0.0.1:0');
        self::assertNotFalse($socket);
        $name = (string) stream_socket_get_name($socket, false);
        $this->port = (int) substr($name, strrpos($name, ':') + 1);
        fclose($socket);
    }

    protected function tearDown(): void
    {
        if ($this->server !== null) {
            proc_terminate($this->server, 9);
            proc_close($this->server);
        }
        exec('rm -rf ' . escapeshellarg($this->dir));
    }

    private function startRedis(): void
    {
        $command = ['redis-server', '--bind', '127.0.0.1', '--port', (string) $this->port, '--dir', $this->dir . '/redis', '--save', '', '--appendonly', 'no'];
        $this->server = proc_open($command, [1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $deadline = microtime(true) + 20;
        while (@fsockopen('127.0.0.1', $this->port) === false) {
            self::assertLessThan($deadline, microtime(true), 'redis did not start');
            usleep(50_000);
        }
    }

    public function testPublishesWhileTheBrokerIsDownAreSpooledAndDrainInOrder(): void
    {
        $url = sprintf('redis://127.0.0.1:%d/0?mode=list', $this->port);
        $broker = new Broker(['url' => $url, 'failover' => ['spool_dir' => $this->dir . '/spool', 'probe_interval' => '100ms']]);
        for ($n = 0; $n < 20; $n++) {
            $broker->publish('php.failover', ['n' => $n]);
        }
        $status = $broker->failoverStatus();
        self::assertSame('spooling', $status['state']);
        self::assertSame(20, $status['spool_depth']);
        self::assertNotNull($status['last_error']);

        $this->startRedis();
        $deadline = microtime(true) + 30;
        while ($broker->failoverStatus()['state'] !== 'primary') {
            self::assertLessThan($deadline, microtime(true), 'the spool did not drain');
            usleep(50_000);
        }
        self::assertSame(0, $broker->failoverStatus()['spool_depth']);
        self::assertSame(20, $broker->failoverStatus()['replayed_total']);

        $seen = [];
        (new Broker($url))->consume('php.failover', static function (Message $m) use (&$seen): void {
            $seen[] = $m->payload()['n'];
        }, 20, 10.0);
        self::assertSame(range(0, 19), $seen);
    }

    public function testABrokerWithoutFailoverHasNoStatus(): void
    {
        self::assertNull((new Broker('memory://no-failover'))->failoverStatus());
    }

    public function testBadFailoverSettingsNameTheBadPart(): void
    {
        $this->expectException(ConfigurationException::class);
        $this->expectExceptionMessageMatches('/fsync/');
        new Broker(['driver' => 'memory', 'failover' => ['spool_dir' => $this->dir, 'fsync' => 'sometimes']]);
    }
}
