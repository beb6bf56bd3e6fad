<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

/**
 * The contract on Redis streams (the real server on 127.0.0.1:6379).
 */
final class RedisStreamsTest extends BrokerContractTest
{
    protected function url(): string
    {
        return (getenv('POLYBUS_TEST_REDIS_URL') ?: 'redis://127.0.0.1:6379/0') . '?mode=streams';
    }
}
