<?php

declare(strict_types=1);

namespace Polybus\Tests\Laravel;

use Polybus\Laravel\MessageHandler;
use Polybus\Message;

/**
 * Records the payload, then sends SIGTERM to this process, as a supervisor stopping the worker
 * would while a message is being handled.
 */
final class SigtermHandler implements MessageHandler
{
    /** @var list<array<mixed>|null> */
    public static array $payloads = [];

    public function handle(Message $message): void
    {
        self::$payloads[] = $message->payload();
        posix_kill(getmypid(), SIGTERM);
    }
}
