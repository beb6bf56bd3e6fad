<?php

declare(strict_types=1);

namespace Polybus\Laravel;

use Polybus\MessageBrokerInterface;

/**
 * Accepts and drops every message: local development and tests. It counts what it was given
 * so tests can assert on it.
 */
final class NullMessageBroker implements MessageBrokerInterface
{
    /** @var list<array{destination: string, payload: array<mixed>}> */
    private array $published = [];

    /**
     * Drops the message (remembering it for {@see published()}).
     */
    public function publish(string $destination, array $payload): void
    {
        $this->published[] = ['destination' => $destination, 'payload' => $payload];
    }

    /**
     * What was published so far, oldest first.
     *
     * @return list<array{destination: string, payload: array<mixed>}>
     */
    public function published(): array
    {
        return $this->published;
    }
}
