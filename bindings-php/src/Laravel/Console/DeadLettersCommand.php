<?php

declare(strict_types=1);

namespace Polybus\Laravel\Console;

use Illuminate\Console\Command;
use Polybus\Broker;
use Polybus\DeadLetter;
use Polybus\Exception\PolybusException;
use Polybus\MessageBrokerInterface;

/**
 * `php artisan messaging:dlq count|list|redrive source.fetch.failed.dlq`: counts, shows or
 * redrives the dead letters of a destination with the bound broker. A redrive republishes
 * each to the destination it failed on (or `--to`) and removes it once the broker accepted it.
 */
class DeadLettersCommand extends Command
{
    /** @var string */
    protected $signature = 'messaging:dlq
        {action : count, list or redrive}
        {destination : The dead-letter destination, e.g. source.fetch.failed.dlq}
        {--limit= : list: how many to show (default 10); redrive: at most this many}
        {--to= : redrive: publish to this destination instead of the original one}';

    /** @var string */
    protected $description = 'Count, list or redrive dead letters';

    /**
     * Runs the action; the exit code is 0 when it succeeded (and a redrive left nothing behind).
     */
    public function handle(MessageBrokerInterface $broker): int
    {
        $action = (string) $this->argument('action');
        $destination = (string) $this->argument('destination');
        if (!in_array($action, ['count', 'list', 'redrive'], true)) {
            $this->error(sprintf('Unknown action "%s": use count, list or redrive.', $action));

            return self::FAILURE;
        }
        $limit = null;
        if ($this->option('limit') !== null && $this->option('limit') !== '') {
            $limit = filter_var($this->option('limit'), FILTER_VALIDATE_INT);
            if ($limit === false || $limit < 1) {
                $this->error('--limit must be a whole number of at least 1.');

                return self::FAILURE;
            }
        }
        if (!$broker instanceof Broker) {
            $this->error(sprintf(
                'The bound broker (%s) keeps no dead letters; choose the redis, kafka, rabbitmq or memory driver.',
                get_class($broker),
            ));

            return self::FAILURE;
        }
        try {
            return match ($action) {
                'count' => $this->count($broker, $destination),
                'list' => $this->list($broker, $destination, $limit ?? 10),
                default => $this->redrive($broker, $destination, $limit),
            };
        } catch (PolybusException $e) {
            $this->error(sprintf('%s: %s', (new \ReflectionClass($e))->getShortName(), $e->getMessage()));

            return self::FAILURE;
        }
    }

    private function count(Broker $broker, string $destination): int
    {
        $this->line((string) $broker->deadLetterCount($destination));

        return self::SUCCESS;
    }

    private function list(Broker $broker, string $destination, int $limit): int
    {
        $rows = array_map(static function (DeadLetter $letter): array {
            $body = $letter->message()->body();

            return [
                $letter->id(),
                $letter->originalTopic() ?? '?',
                (string) ($letter->attempts() ?? '?'),
                sprintf('%s: %s', $letter->errorType() ?? 'error', $letter->error() ?? '?'),
                strlen($body) > 80 ? substr($body, 0, 77) . '...' : $body,
            ];
        }, $broker->deadLetters($destination, $limit));
        $this->table(['id', 'failed on', 'attempts', 'error', 'body'], $rows);

        return self::SUCCESS;
    }

    private function redrive(Broker $broker, string $destination, ?int $limit): int
    {
        $to = $this->option('to');
        $result = $broker->redriveDeadLetters($destination, $limit, $to === '' ? null : $to);
        $this->info(sprintf('Redriven %d dead letter(s) from %s.', $result['moved'], $destination));
        foreach ($result['left'] as $id => $reason) {
            $this->warn(sprintf('Left in place: %s: %s', $id, $reason));
        }

        return $result['left'] === [] ? self::SUCCESS : self::FAILURE;
    }
}
