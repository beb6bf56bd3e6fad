<?php

declare(strict_types=1);

namespace Polybus\Tests\Laravel;

use Polybus\Laravel\MessageHandler;
use Polybus\Message;

/**
 * A handler class for `messaging:consume --handler=...` that records the payloads it saw.
 */
final class RecordingHandler implements MessageHandler
{
    /** @var list<array<mixed>|null> */
    public static array $payloads = [];

    public function handle(Message $message): void
    {
        self::$payloads[] = $message->payload();
    }
}
