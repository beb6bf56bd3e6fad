<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

/**
 * The contract on the embedded memory broker.
 */
final class MemoryTest extends BrokerContractTest
{
    protected function url(): string
    {
        return 'memory://php-tests';
    }

    protected function processLocal(): bool
    {
        return true;
    }
}
