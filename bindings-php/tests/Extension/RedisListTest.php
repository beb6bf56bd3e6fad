<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

/**
 * The contract on Redis lists (the real server `make brokers-up` starts on 127.0.0.1:6379).
 */
final class RedisListTest extends BrokerContractTest
{
    protected function url(): string
    {
        return (getenv('POLYBUS_TEST_REDIS_URL') ?: 'redis://127.0.0.1:6379/0') . '?mode=list';
    }
}
