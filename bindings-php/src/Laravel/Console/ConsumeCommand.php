<?php

declare(strict_types=1);

namespace Polybus\Laravel\Console;

use Illuminate\Console\Command;
use Polybus\Broker;
use Polybus\Laravel\LogMessageHandler;
use Polybus\Laravel\MessageHandler;
use Polybus\Message;
use Polybus\MessageBrokerInterface;

/**
 * `php artisan messaging:consume source.fetch.failed --limit=100`: consumes with the bound
 * broker and hands each message to a handler class. SIGTERM and SIGINT stop it cleanly after
 * the current message; messages fetched but not handled go back to the broker.
 */
class ConsumeCommand extends Command
{
    /** @var string */
    protected $signature = 'messaging:consume
        {destination=source.fetch.failed : The destination (topic, queue, list) to consume}
        {--limit=100 : Stop after this many messages}
        {--timeout= : Stop after this many seconds (default: no time limit)}
        {--handler= : Handler class (default: messaging.consumer.handlers, then messaging.consumer.handler)}';

    /** @var string */
    protected $description = 'Consume messages from a destination and hand them to a handler';

    private bool $stopRequested = false;

    /**
     * Runs the consumer; the exit code is 0 when it stopped normally.
     */
    public function handle(MessageBrokerInterface $broker): int
    {
        $destination = (string) $this->argument('destination');
        $limit = filter_var($this->option('limit'), FILTER_VALIDATE_INT);
        if ($limit === false || $limit < 1) {
            $this->error('--limit must be a whole number of at least 1.');

            return self::FAILURE;
        }
        $timeoutOption = $this->option('timeout');
        $timeout = INF;
        if ($timeoutOption !== null && $timeoutOption !== '') {
            if (!is_numeric($timeoutOption) || (float) $timeoutOption <= 0) {
                $this->error('--timeout must be a number of seconds greater than 0.');

                return self::FAILURE;
            }
            $timeout = (float) $timeoutOption;
        }
        if (!$broker instanceof Broker) {
            $this->error(sprintf(
                'The bound broker (%s) cannot consume; choose the redis, kafka, rabbitmq or memory driver.',
                get_class($broker),
            ));

            return self::FAILURE;
        }
        $handler = $this->resolveHandler($destination);
        if ($handler === null) {
            return self::FAILURE;
        }

        $options = (array) $this->laravel['config']->get('messaging.consumer.options', []);
        $options['stop'] = fn (): bool => $this->stopRequested;
        $restore = $this->trapSignals();
        try {
            $handled = $broker->consume(
                $destination,
                static function (Message $message) use ($handler): void {
                    $handler->handle($message);
                },
                $limit,
                $timeout,
                $options,
            );
        } finally {
            $restore();
        }
        $this->info(sprintf('Handled %d message(s) from %s.', $handled, $destination));

        return self::SUCCESS;
    }

    /**
     * Asks the consumer to stop after the current message.
     */
    public function requestStop(): void
    {
        $this->stopRequested = true;
    }

    private function resolveHandler(string $destination): ?MessageHandler
    {
        $config = $this->laravel['config'];
        $class = $this->option('handler')
            ?: ($config->get('messaging.consumer.handlers', [])[$destination] ?? null)
            ?: $config->get('messaging.consumer.handler')
            ?: LogMessageHandler::class;
        if (!class_exists($class)) {
            $this->error(sprintf('Handler class %s does not exist.', $class));

            return null;
        }
        $handler = $this->laravel->make($class);
        if (!$handler instanceof MessageHandler) {
            $this->error(sprintf('Handler class %s must implement %s.', $class, MessageHandler::class));

            return null;
        }

        return $handler;
    }

    /**
     * Installs SIGTERM/SIGINT handlers that request a stop; returns what restores the old ones.
     *
     * @return callable(): void
     */
    private function trapSignals(): callable
    {
        if (!function_exists('pcntl_signal')) {
            return static function (): void {
            };
        }
        $previous = [];
        foreach ([SIGTERM, SIGINT] as $signal) {
            $previous[$signal] = pcntl_signal_get_handler($signal);
            pcntl_signal($signal, function (): void {
                $this->requestStop();
            });
        }

        return static function () use ($previous): void {
            foreach ($previous as $signal => $handler) {
                pcntl_signal($signal, $handler);
            }
        };
    }
}
