<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use Polybus\Broker;

/**
 * The null broker accepts and drops everything.
 */
final class NullBrokerTest extends TestCase
{
    public function testPublishingToTheNullBrokerSucceedsAndNothingArrives(): void
    {
        $broker = new Broker('null://');
        self::assertSame('null', $broker->driver());
        $broker->publish('anything', ['a' => 1]);
        self::assertSame(2, $broker->publishBatch('anything', [['a' => 1], ['b' => 2]]));
        $broker->flush(1.0);
        self::assertSame(0, $broker->consume('anything', static function (): void {
        }, 1, 0.3));
    }

    public function testAConfigurationArraySelectsTheDriver(): void
    {
        self::assertSame('null', (new Broker(['driver' => 'null']))->driver());
        $memory = new Broker(['driver' => 'memory', 'name' => 'php-array', 'capacity' => 10]);
        self::assertSame('memory', $memory->driver());
        self::assertSame('memory://php-array?capacity=10', $memory->url());
        $redis = new Broker(['driver' => 'redis', 'host' => '127.0.0.1', 'port' => '6379', 'redis_mode' => 'list']);
        self::assertSame('redis://127.0.0.1:6379/0?mode=list', $redis->url());
    }

    public function testTheNullBrokerKeepsNoDeadLettersAndSaysSo(): void
    {
        $broker = new Broker('null://');
        $this->expectException(\Polybus\Exception\ConfigurationException::class);
        $this->expectExceptionMessageMatches('/dead-letter/');
        $broker->deadLetterCount('orders.dlq');
    }

    public function testADeadLetterLimitBelowOneIsAConfigurationError(): void
    {
        $broker = new Broker('memory://limits');
        $this->expectException(\Polybus\Exception\ConfigurationException::class);
        $this->expectExceptionMessageMatches('/limit/');
        $broker->deadLetters('orders.dlq', 0);
    }
}
