<?php

/**
 * IDE stubs of the Polybus PHP extension (ext-polybus). They describe the classes the
 * extension declares; they are never loaded at run time. `tests/StubsTest.php` checks them
 * against the loaded extension with Reflection, so they cannot drift.
 */

declare(strict_types=1);

namespace Polybus {
    /**
     * What application code needs from a broker: publish an array payload to a destination.
     */
    interface MessageBrokerInterface
    {
        /**
         * Publishes `$payload`, JSON-encoded (a list as a JSON array, a map as a JSON object),
         * to `$destination`.
         */
        public function publish(string $destination, array $payload): void;
    }

    /**
     * A connection to a broker: publish JSON payloads, consume with a PHP callable.
     */
    class Broker implements MessageBrokerInterface
    {
        /**
         * Connects to the broker a URL (`memory://`, `null://`, `kafka://host:9092`,
         * `amqp://user:pass@host:5672/vhost`, `redis://host:6379/0?mode=list|pubsub|streams`)
         * or a configuration array (`['driver' => 'redis', 'host' => ..., 'redis_mode' => 'list']`)
         * describes. Keys the array leaves out come from the environment (`REDIS_URL`,
         * `KAFKA_BROKERS`, `RABBITMQ_URL`, `RABBITMQ_HOST`, ...), then local defaults.
         *
         * @param string|array<string, mixed> $config
         * @throws Exception\ConfigurationException naming the bad part of the configuration
         * @throws Exception\ConnectionException when a broker that connects eagerly (Redis) is unreachable
         */
        public function __construct(mixed $config) {}

        /**
         * Publishes one message and returns its id.
         *
         * @param array{key?: string, headers?: array<string, scalar>, id?: string}|null $options
         * @throws Exception\PolybusException
         */
        public function publishMessage(string $destination, array $payload, ?array $options = null): string {}

        /**
         * Publishes every array of `$payloads`, pipelined; returns how many the broker accepted.
         * Throws after all were tried when any failed, saying how many. A payload that is not an
         * array fails the call before anything is sent; one that JSON cannot encode stops it
         * there (those before it were published, none after it, and the exception says so).
         *
         * @param list<array<mixed>> $payloads
         * @throws Exception\PolybusException
         */
        public function publishBatch(string $destination, array $payloads): int {}

        /**
         * Waits up to `$timeout` seconds until everything published so far was accepted.
         *
         * @throws Exception\PolybusException
         */
        public function flush(float $timeout = 10.0): void {}

        /**
         * Consumes from `$destination`, calling `$handler(Message $message)` for each message on
         * this thread, until `$limit` messages were handled or `$timeout` seconds passed (`INF`
         * for no time limit). Returns how many were handled. Returning acknowledges the message;
         * throwing applies the retry policy, then sends it to the dead-letter destination
         * (`<destination>.dlq` by default) with the exception's class and message in headers.
         * `prefetch` defaults to the broker's (500 on Kafka, 100 elsewhere).
         * Pending pcntl signal handlers run between messages and at every poll interval; the
         * `stop` callable is asked at the same points. Messages fetched but not handled are
         * given back to the broker.
         *
         * @param callable(Message): mixed $handler
         * @param array{
         *     group?: string,
         *     concurrency?: int,
         *     prefetch?: int,
         *     max_retries?: int|null,
         *     retry_delay?: float,
         *     retry_multiplier?: float,
         *     retry_max_delay?: float,
         *     retry_jitter?: float,
         *     dead_letter?: string|false,
         *     start?: string,
         *     dedup?: bool|string,
         *     dedup_ttl?: float,
         *     poll_interval?: float,
         *     stop?: callable(): bool,
         * }|null $options
         * @throws Exception\PolybusException
         */
        public function consume(string $destination, callable $handler, int $limit, float $timeout = 30.0, ?array $options = null): int {}

        /**
         * Flushes, then releases the connection; later calls throw. For `memory://` brokers only
         * this handle is released.
         *
         * @throws Exception\PolybusException
         */
        public function close(float $timeout = 10.0): void {}

        /**
         * How many dead letters wait in `$destination` (a dead-letter destination such as
         * `orders.dlq`), not redriven yet.
         *
         * @throws Exception\ConfigurationException when the broker keeps no dead letters (Redis pub/sub, null)
         * @throws Exception\PolybusException
         */
        public function deadLetterCount(string $destination): int {}

        /**
         * The oldest `$limit` dead letters of `$destination`, left where they are.
         *
         * @return list<DeadLetter>
         * @throws Exception\PolybusException
         */
        public function deadLetters(string $destination, int $limit = 10): array {}

        /**
         * Republishes dead letters of `$destination` to the destination each failed on (or `$to`),
         * same id, fresh attempt count; each is removed only once the broker acknowledged the
         * republish.
         *
         * @return array{moved: int, left: array<string, string>} `left`: id => why it stayed
         * @throws Exception\PolybusException
         */
        public function redriveDeadLetters(string $destination, ?int $limit = null, ?string $to = null): array {}

        /**
         * Where publishes go and how full the spool is, for a broker configured with `failover`;
         * null otherwise.
         *
         * @return array{state: 'primary'|'spooling'|'replaying', spool_depth: int, spool_bytes: int, replayed_total: int, spooled_total: int, last_error: ?string}|null
         * @throws Exception\PolybusException
         */
        public function failoverStatus(): ?array {}

        /** The backend: `memory`, `null`, `kafka`, `rabbitmq` or `redis`. */
        public function driver(): string {}

        /** The broker URL with any password shown as `***`. */
        public function url(): string {}

        /**
         * Sends the engine's log records (librdkafka's included) at `$level` and above to
         * `$logger`, a PSR-3 logger (`log($level, $message, $context)`; the context holds
         * `logger`, the record's source such as `polybus.brokers.redis.streams`, and its fields),
         * or with `null` to `error_log()`. `$level`: debug, info, notice, warning (null: warning),
         * error, critical, alert, emergency or off. Records are passed on when PHP calls into
         * Polybus (every broker call, between batches while consuming) and at request end.
         *
         * @param \Psr\Log\LoggerInterface|object|null $logger
         * @throws Exception\ConfigurationException for an unknown level or an object without `log()`
         */
        public static function setLogger(mixed $logger, ?string $level = null): void {}

        /**
         * @throws Exception\PolybusException
         */
        public function publish(string $destination, array $payload): void {}
    }

    /**
     * A message received by `Broker::consume()`: read-only.
     */
    class Message
    {
        /**
         * Not constructible from PHP: messages come from `Broker::consume()`.
         */
        public function __construct() {}

        /** The message id (a UUIDv7 unless the producer chose one); stable across retries. */
        public function id(): string {}

        /** The destination it was published to. */
        public function topic(): string {}

        /** The ordering key, if the producer set one. */
        public function key(): ?string {}

        /**
         * The user headers.
         *
         * @return array<string, string>
         */
        public function headers(): array {}

        /** One header, or null when it is absent. */
        public function header(string $name): ?string {}

        /**
         * The payload decoded from JSON (objects as associative arrays), or null when the content
         * type is not JSON or the JSON is not an object or array.
         */
        public function payload(): ?array {}

        /** The raw body, as bytes. */
        public function body(): string {}

        /** The MIME type of the body (`application/json` for payloads published from arrays). */
        public function contentType(): string {}

        /** Which delivery this is: 1 the first time, 2 on the first retry, ... */
        public function attempt(): int {}

        /** When the message was created, in milliseconds since the Unix epoch. */
        public function timestamp(): int {}

        /** True when the broker says it delivered this message before. */
        public function isRedelivered(): bool {}

        /** The partition it was read from, where the broker has partitions (Kafka). */
        public function partition(): ?int {}

        /** The offset it was read from, where the broker has a log (Kafka, memory). */
        public function offset(): ?int {}
    }

    /**
     * Routes tasks (work queues: each task to one worker, e.g. RabbitMQ) and events (streams:
     * every group gets every event, history can be replayed, e.g. Kafka) to their brokers.
     */
    class Hub
    {
        /** Tasks go to `$tasks`, events to `$events` (the same broker may serve both). */
        public function __construct(Broker $tasks, Broker $events) {}

        /**
         * Publishes a task to the task broker; returns its id. `$options` as `publishMessage`.
         *
         * @param array{key?: string, headers?: array<string, scalar>, id?: string}|null $options
         * @throws Exception\PolybusException
         */
        public function publishTask(string $destination, array $payload, ?array $options = null): string {}

        /**
         * Publishes an event to the event broker; returns its id. `$options` as `publishMessage`.
         *
         * @param array{key?: string, headers?: array<string, scalar>, id?: string}|null $options
         * @throws Exception\PolybusException
         */
        public function publishEvent(string $destination, array $payload, ?array $options = null): string {}

        /** The task broker (consume tasks with it). */
        public function tasks(): Broker {}

        /** The event broker (consume events with it). */
        public function events(): Broker {}

        /**
         * Consumes events of `$destination` from the first one at or after `$since`
         * (milliseconds since the epoch), as `Broker::consume` with `start` `timestamp:$since`.
         *
         * @param callable(Message): void $handler
         * @param array<string, mixed>|null $options as `Broker::consume`
         * @throws Exception\ConfigurationException where the event broker keeps no history (RabbitMQ, Redis lists)
         * @throws Exception\PolybusException
         */
        public function replayEvents(string $destination, int $since, callable $handler, int $limit, float $timeout = 30.0, ?array $options = null): int {}
    }

    /**
     * A message waiting in a dead-letter destination, with why it failed: read-only.
     */
    class DeadLetter
    {
        /**
         * Not constructible from PHP: dead letters come from `Broker::deadLetters()`.
         */
        public function __construct() {}

        /**
         * The message as stored: its topic is the dead-letter destination and its headers
         * include the `polybus-dlq-*` ones.
         */
        public function message(): Message {}

        /** The message id (the id it was first published with). */
        public function id(): string {}

        /** Why it failed for good, as the handler's exception said. */
        public function error(): ?string {}

        /** The kind of error: the exception class. */
        public function errorType(): ?string {}

        /** How many deliveries were tried. */
        public function attempts(): ?int {}

        /** The destination it failed on (where a redrive sends it). */
        public function originalTopic(): ?string {}

        /** The consumer group it failed in. */
        public function group(): ?string {}

        /** The partition it was read from, where the broker has partitions. */
        public function partition(): ?int {}

        /** The offset (or Redis stream id) it was read from, where the broker has one. */
        public function offset(): ?string {}

        /** First failure, in milliseconds since the Unix epoch. */
        public function firstFailureMs(): ?int {}

        /** Last failure, in milliseconds since the Unix epoch. */
        public function lastFailureMs(): ?int {}
    }
}

namespace Polybus\Exception {
    /** Base class of every exception the extension throws. */
    class PolybusException extends \RuntimeException
    {
    }

    /** A URL, configuration array or option is invalid; the message names the bad part. */
    class ConfigurationException extends PolybusException
    {
    }

    /** The broker could not be reached, or the connection was lost. */
    class ConnectionException extends PolybusException
    {
    }

    /** The broker refused or failed a publish. */
    class PublishException extends PolybusException
    {
    }

    /** A payload is not JSON-encodable, or a header or destination is invalid. */
    class InvalidMessageException extends PolybusException
    {
    }

    /** Subscribing or consuming failed. */
    class ConsumeException extends PolybusException
    {
    }

    /** An operation did not finish within its time limit. */
    class TimeoutException extends PolybusException
    {
    }
}
