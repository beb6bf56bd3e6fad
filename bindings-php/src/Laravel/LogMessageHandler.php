<?php

declare(strict_types=1);

namespace Polybus\Laravel;

use Polybus\Message;
use Psr\Log\LoggerInterface;

/**
 * The default handler of `messaging:consume`: logs each message's payload at info level.
 */
final class LogMessageHandler implements MessageHandler
{
    /**
     * @param LoggerInterface $logger where the messages go
     */
    public function __construct(private readonly LoggerInterface $logger)
    {
    }

    /**
     * Logs the message's destination, id, attempt and payload (or raw body when not JSON).
     */
    public function handle(Message $message): void
    {
        $this->logger->info('messaging: message received', [
            'destination' => $message->topic(),
            'id' => $message->id(),
            'attempt' => $message->attempt(),
            'payload' => $message->payload() ?? $message->body(),
        ]);
    }
}
