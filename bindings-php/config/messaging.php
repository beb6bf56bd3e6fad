<?php

declare(strict_types=1);

/*
 * Messaging (Polybus). Publish this file with
 * `php artisan vendor:publish --tag=messaging-config`.
 */

return [
    // redis | kafka | rabbitmq | memory | null (MESSAGING_ENABLED=false forces null).
    'driver' => filter_var(env('MESSAGING_ENABLED', true), FILTER_VALIDATE_BOOLEAN)
        ? env('MESSAGING_DRIVER', 'redis')
        : 'null',

    // How the redis driver carries messages: list (queue-like) or pubsub (event stream);
    // streams (consumer groups with replay) is available too.
    'redis_mode' => env('MESSAGING_REDIS_MODE', 'list'),

    // Seconds a connect, publish or flush may take.
    'timeout' => env('MESSAGING_TIMEOUT', 30),

    // The engine's own log records (reconnects, failovers, librdkafka) go to Laravel's log at
    // this level and above: debug, info, notice, warning, error... or off.
    'log_level' => env('MESSAGING_LOG_LEVEL', 'warning'),

    // Spool publishes to local disk while the broker is unreachable and replay them, in order,
    // once it is back (set MESSAGING_SPOOL_DIR to turn it on; each driver gets a subdirectory).
    // fsync: always (no accepted message lost, even on power loss), never, or interval:100ms.
    'failover' => [
        'spool_dir' => env('MESSAGING_SPOOL_DIR'),
        'fsync' => env('MESSAGING_SPOOL_FSYNC', 'always'),
    ],

    // Polybus\Hub: tasks (work queues) and events (streams, replayable) on their own drivers.
    'hub' => [
        'tasks' => env('MESSAGING_TASKS_DRIVER', 'rabbitmq'),
        'events' => env('MESSAGING_EVENTS_DRIVER', 'kafka'),
    ],

    'connections' => [
        'redis' => [
            // A REDIS_URL wins over the separate settings.
            'url' => env('REDIS_URL'),
            'host' => env('REDIS_HOST', '127.0.0.1'),
            'port' => env('REDIS_PORT', 6379),
            'username' => env('REDIS_USERNAME'),
            'password' => env('REDIS_PASSWORD'),
            'database' => env('REDIS_DB', 0),
        ],
        'kafka' => [
            'brokers' => env('KAFKA_BROKERS', env('KAFKA_BOOTSTRAP_SERVERS', '127.0.0.1:9092')),
            'client_id' => env('KAFKA_CLIENT_ID'),
            'group_id' => env('KAFKA_GROUP_ID'),
            // librdkafka properties, passed through (acks, compression.type, ...).
            'options' => [],
        ],
        'rabbitmq' => [
            // A RABBITMQ_URL wins over the separate settings.
            'url' => env('RABBITMQ_URL'),
            'host' => env('RABBITMQ_HOST', '127.0.0.1'),
            'port' => env('RABBITMQ_PORT', 5672),
            'user' => env('RABBITMQ_USER', 'guest'),
            'password' => env('RABBITMQ_PASSWORD', 'guest'),
            'vhost' => env('RABBITMQ_VHOST', '/'),
        ],
        'memory' => [
            // Every memory broker of this name in the process is the same broker.
            'name' => env('MESSAGING_MEMORY_NAME', 'laravel'),
        ],
    ],

    'consumer' => [
        // The handler class used by `messaging:consume` when neither --handler nor
        // `handlers` names one: it must implement Polybus\Laravel\MessageHandler.
        'handler' => Polybus\Laravel\LogMessageHandler::class,

        // Handler classes per destination.
        'handlers' => [
            // 'source.fetch.failed' => App\Messaging\SourceFetchFailedHandler::class,
        ],

        // Options of Polybus\Broker::consume(): group, concurrency, max_retries, retry_delay,
        // dead_letter, start, poll_interval...
        'options' => [
            'max_retries' => 3,
            'retry_delay' => 1.0,
        ],
    ],
];
