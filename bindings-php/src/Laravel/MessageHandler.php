<?php

declare(strict_types=1);

namespace Polybus\Laravel;

use Polybus\Message;

/**
 * Handles messages for `php artisan messaging:consume`. Returning acknowledges the message;
 * throwing retries it, then dead-letters it, as the consumer options say.
 */
interface MessageHandler
{
    /**
     * Handles one message.
     */
    public function handle(Message $message): void;
}
