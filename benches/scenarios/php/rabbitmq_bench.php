<?php

/**
 * RabbitMQ from PHP: the Polybus extension against php-amqplib and the php-amqp C extension.
 *
 *   php rabbitmq_bench.php produce|consume --impl IMPL --url amqp://... --topic T ...
 *
 * Every implementation publishes the same AMQP message with publisher confirms: persistent JSON to
 * the durable topic exchange `polybus` with the topic as routing key, `mandatory` (an unroutable
 * message is an error, not dropped), a message id, a timestamp and two headers (the millisecond
 * timestamp and the topic), as Polybus does and as a hand-written producer does
 * (`../shared/reference/002_*`). The exchange routes to the durable queue `<topic>.g`, consumed
 * with manual acknowledgements after the handler.
 * Producers: `polybus` (`publish`, which returns once the broker confirmed), `polybus-batch`
 * (`publishBatch` per 1000), `php-amqplib` / `php-amqp` (publish, then wait for the confirm,
 * per message), `php-amqplib-batch` / `php-amqp-batch` (1000 publishes, then wait for their
 * confirms). Consumers: `polybus` (`consume` with its defaults), `php-amqplib` (`basic_consume`
 * and `wait`, prefetch 100), `php-amqp` (`AMQPQueue::consume`, prefetch 100).
 */

declare(strict_types=1);

require __DIR__ . '/common.php';

const PREFETCH = 100;

/** The exchange Polybus publishes to by default (durable, topic). */
const EXCHANGE = 'polybus';

/** A random (version 4) UUID, as a hand-written producer sets for `message_id`. */
function uuid4(): string
{
    $b = random_bytes(16);
    $b[6] = chr(ord($b[6]) & 0x0f | 0x40);
    $b[8] = chr(ord($b[8]) & 0x3f | 0x80);
    return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($b), 4));
}

/**
 * The properties of one message (what Polybus sends): content type, persistent, message id,
 * timestamp in seconds, app id, and the headers `polybus-timestamp` (milliseconds) and
 * `polybus-topic`.
 *
 * @return array{array<string, mixed>, array<string, mixed>} properties, headers
 */
function amqp_properties(string $topic): array
{
    $ms = (int) (microtime(true) * 1000);
    return [
        [
            'content_type' => 'application/json',
            'delivery_mode' => 2,
            'message_id' => uuid4(),
            'timestamp' => intdiv($ms, 1000),
            'app_id' => 'polybus',
        ],
        ['polybus-timestamp' => $ms, 'polybus-topic' => $topic],
    ];
}

/** @return array{host: string, port: int, login: string, password: string, vhost: string} */
function amqp_parts(string $url): array
{
    $p = parse_url($url);
    $vhost = isset($p['path']) && $p['path'] !== '/' && $p['path'] !== '' ? rawurldecode(substr($p['path'], 1)) : '/';
    return [
        'host' => $p['host'] ?? '127.0.0.1',
        'port' => $p['port'] ?? 5672,
        'login' => rawurldecode($p['user'] ?? 'guest'),
        'password' => rawurldecode($p['pass'] ?? 'guest'),
        'vhost' => $vhost,
    ];
}

// ---------------------------------------------------------------------------------------------
// Producers: [$produce(int $count), $send(array $message)]

/** @return array{callable, callable} */
function polybus_producer(array $args, bool $batch): array
{
    $broker = new Polybus\Broker($args['url']);
    $topic = $args['topic'];
    if ($args['role'] === 'main') {
        // Declares the consumer group's queue, so published messages are routed.
        $broker->consume($topic, static fn () => null, 1, 0.5, ['group' => "$topic.g"]);
    }
    $body = bench_message($args['size']);
    $produce = static function (int $count) use ($broker, $topic, $body, $batch): void {
        if ($batch) {
            foreach (bench_chunks($count) as $n) {
                $broker->publishBatch($topic, array_fill(0, $n, $body));
            }
            return;
        }
        for ($i = 0; $i < $count; $i++) {
            $broker->publish($topic, $body);
        }
    };
    return [$produce, static fn (array $m) => $broker->publish($topic, $m)];
}

/** @return array{callable, callable} */
function amqplib_producer(array $args, bool $batch): array
{
    require_once '/usr/share/php/PhpAmqpLib/autoload.php';
    $c = amqp_parts($args['url']);
    $connection = new PhpAmqpLib\Connection\AMQPStreamConnection($c['host'], $c['port'], $c['login'], $c['password'], $c['vhost']);
    $channel = $connection->channel();
    $channel->confirm_select();
    $channel->set_nack_handler(static function (): void {
        throw new RuntimeException('the broker nacked a message');
    });
    $channel->set_return_listener(static function (): void {
        throw new RuntimeException('the broker returned an unroutable message');
    });
    $topic = $args['topic'];
    $channel->exchange_declare(EXCHANGE, 'topic', false, true, false);
    $channel->queue_declare("$topic.g", false, true, false, false);
    $channel->queue_bind("$topic.g", EXCHANGE, $topic);
    $publish = static function (array $m) use ($channel, $topic): void {
        [$properties, $headers] = amqp_properties($topic);
        $properties['application_headers'] = new PhpAmqpLib\Wire\AMQPTable($headers);
        $message = new PhpAmqpLib\Message\AMQPMessage(json_encode($m), $properties);
        $channel->basic_publish($message, EXCHANGE, $topic, true);
    };
    $body = bench_message($args['size']);
    $produce = static function (int $count) use ($channel, $publish, $body, $batch): void {
        foreach (bench_chunks($count) as $n) {
            for ($i = 0; $i < $n; $i++) {
                $publish($body);
                if (!$batch) {
                    $channel->wait_for_pending_acks(30);
                }
            }
            $channel->wait_for_pending_acks(30);
        }
    };
    $send = static function (array $m) use ($channel, $publish): void {
        $publish($m);
        $channel->wait_for_pending_acks(30);
    };
    return [$produce, $send];
}

/** @return array{callable, callable} */
function amqp_ext_producer(array $args, bool $batch): array
{
    $connection = new AMQPConnection(amqp_parts($args['url']) + ['read_timeout' => 30, 'write_timeout' => 30]);
    $connection->connect();
    $channel = new AMQPChannel($connection);
    $channel->confirmSelect();
    $outstanding = [];
    $low = 1;
    $next = 1;
    $channel->setConfirmCallback(
        static function (int $tag, bool $multiple) use (&$outstanding, &$low): bool {
            if ($multiple) {
                for (; $low <= $tag; $low++) {
                    unset($outstanding[$low]);
                }
            } else {
                unset($outstanding[$tag]);
            }
            return count($outstanding) > 0; // false: every confirm is in, stop waiting
        },
        static function (): bool {
            throw new RuntimeException('the broker nacked a message');
        }
    );
    $channel->setReturnCallback(static function (): bool {
        throw new RuntimeException('the broker returned an unroutable message');
    });
    $topic = $args['topic'];
    $exchange = new AMQPExchange($channel);
    $exchange->setName(EXCHANGE);
    $exchange->setType(AMQP_EX_TYPE_TOPIC);
    $exchange->setFlags(AMQP_DURABLE);
    $exchange->declareExchange();
    $queue = new AMQPQueue($channel);
    $queue->setName("$topic.g");
    $queue->setFlags(AMQP_DURABLE);
    $queue->declareQueue();
    $queue->bind(EXCHANGE, $topic);
    $publish = static function (array $m) use ($exchange, $topic, &$outstanding, &$next): void {
        [$properties, $headers] = amqp_properties($topic);
        $exchange->publish(json_encode($m), $topic, AMQP_MANDATORY, $properties + ['headers' => $headers]);
        $outstanding[$next++] = true;
    };
    $confirm = static function () use ($channel, &$outstanding): void {
        while (count($outstanding) > 0) {
            $channel->waitForConfirm(30.0);
        }
    };
    $body = bench_message($args['size']);
    $produce = static function (int $count) use ($publish, $confirm, $body, $batch): void {
        foreach (bench_chunks($count) as $n) {
            for ($i = 0; $i < $n; $i++) {
                $publish($body);
                if (!$batch) {
                    $confirm();
                }
            }
            $confirm();
        }
    };
    $send = static function (array $m) use ($publish, $confirm): void {
        $publish($m);
        $confirm();
    };
    return [$produce, $send];
}

/** @return array{callable, callable} */
function producer(array $args): array
{
    // The filler of a consume scenario publishes its backlog the fastest way the client has.
    $fill = $args['role'] === 'fill';
    return match ($args['impl']) {
        'polybus' => polybus_producer($args, $fill),
        'polybus-batch' => polybus_producer($args, true),
        'php-amqplib' => amqplib_producer($args, $fill),
        'php-amqplib-batch' => amqplib_producer($args, true),
        'php-amqp' => amqp_ext_producer($args, $fill),
        'php-amqp-batch' => amqp_ext_producer($args, true),
        default => throw new InvalidArgumentException("unknown implementation {$args['impl']}"),
    };
}

// ---------------------------------------------------------------------------------------------
// Consumers

final class PolybusConsumer implements BenchConsumer
{
    private Polybus\Broker $broker;

    public function __construct(private array $args)
    {
        $this->broker = new Polybus\Broker($args['url']);
    }

    private function options(): array
    {
        return ['group' => $this->args['topic'] . '.g'];
    }

    public function idle(float $seconds): void
    {
        $this->broker->consume($this->args['topic'], static fn () => null, 1, $seconds, $this->options());
    }

    public function until(Tally $tally, callable $done, float $timeout): void
    {
        $handler = static function (Polybus\Message $m) use ($tally): void {
            $tally->seen($m->payload());
        };
        $this->broker->consume($this->args['topic'], $handler, PHP_INT_MAX, $timeout, $this->options() + ['stop' => $done]);
        if (!$done()) {
            throw new RuntimeException("timed out after {$timeout}s");
        }
    }

    public function stop(): void
    {
        $this->broker->close();
    }
}

final class AmqplibConsumer implements BenchConsumer
{
    private PhpAmqpLib\Connection\AMQPStreamConnection $connection;
    private PhpAmqpLib\Channel\AMQPChannel $channel;
    private ?Tally $tally = null;
    private ?string $tag = null;

    public function __construct(private array $args)
    {
        require_once '/usr/share/php/PhpAmqpLib/autoload.php';
        $c = amqp_parts($args['url']);
        $this->connection = new PhpAmqpLib\Connection\AMQPStreamConnection($c['host'], $c['port'], $c['login'], $c['password'], $c['vhost']);
        $this->channel = $this->connection->channel();
        $this->channel->basic_qos(0, PREFETCH, false);
        $this->channel->queue_declare($args['topic'] . '.g', false, true, false, false);
    }

    /** Subscribes on first use: the drain phase's clock starts before, once connected. */
    private function subscribe(): void
    {
        $this->tag ??= $this->channel->basic_consume($this->args['topic'] . '.g', '', false, false, false, false, function ($message): void {
            $this->tally?->seen(json_decode($message->getBody(), true));
            $message->ack();
        });
    }

    public function idle(float $seconds): void
    {
        $this->subscribe();
        try {
            $this->channel->wait(null, false, $seconds);
        } catch (PhpAmqpLib\Exception\AMQPTimeoutException) {
        }
    }

    public function until(Tally $tally, callable $done, float $timeout): void
    {
        $this->tally = $tally;
        $this->subscribe();
        $deadline = microtime(true) + $timeout;
        while (!$done()) {
            if (microtime(true) > $deadline) {
                throw new RuntimeException("timed out after {$timeout}s");
            }
            try {
                $this->channel->wait(null, false, 0.1);
            } catch (PhpAmqpLib\Exception\AMQPTimeoutException) {
            }
        }
    }

    public function stop(): void
    {
        if ($this->tag !== null) {
            $this->channel->basic_cancel($this->tag);
        }
        $this->channel->close();
        $this->connection->close();
    }
}

final class AmqpExtConsumer implements BenchConsumer
{
    private AMQPConnection $connection;
    private AMQPQueue $queue;
    private bool $subscribed = false;

    public function __construct(private array $args)
    {
        $this->connection = new AMQPConnection(amqp_parts($args['url']) + ['read_timeout' => 0.1]);
        $this->connection->connect();
        $channel = new AMQPChannel($this->connection);
        $channel->setPrefetchCount(PREFETCH);
        $this->queue = new AMQPQueue($channel);
        $this->queue->setName($args['topic'] . '.g');
        $this->queue->setFlags(AMQP_DURABLE);
        $this->queue->declareQueue();
    }

    /** Subscribes on first use: the drain phase's clock starts before, once connected. */
    private function subscribe(): void
    {
        if (!$this->subscribed) {
            $this->queue->consume(null); // basic.consume only
            $this->subscribed = true;
        }
    }

    public function idle(float $seconds): void
    {
        $this->subscribe();
        usleep((int) ($seconds * 1e6));
    }

    public function until(Tally $tally, callable $done, float $timeout): void
    {
        $deadline = microtime(true) + $timeout;
        $handler = static function (AMQPEnvelope $envelope, AMQPQueue $queue) use ($tally, $done) {
            $tally->seen(json_decode($envelope->getBody(), true));
            $queue->ack($envelope->getDeliveryTag());
            return $done() ? false : null; // false stops consume()
        };
        $this->subscribe();
        while (!$done()) {
            if (microtime(true) > $deadline) {
                throw new RuntimeException("timed out after {$timeout}s");
            }
            try {
                $this->queue->consume($handler, AMQP_JUST_CONSUME);
            } catch (AMQPQueueException | AMQPConnectionException $e) {
                // The read timeout (0.1 s) passed with nothing to read: ask $done() again.
                if (!str_contains($e->getMessage(), 'timeout') && !str_contains($e->getMessage(), 'Resource temporarily unavailable')) {
                    throw $e;
                }
            }
        }
    }

    public function stop(): void
    {
        $this->connection->disconnect();
    }
}

function consumer(array $args): BenchConsumer
{
    return match ($args['impl']) {
        'polybus' => new PolybusConsumer($args),
        'php-amqplib' => new AmqplibConsumer($args),
        'php-amqp' => new AmqpExtConsumer($args),
        default => throw new InvalidArgumentException("unknown implementation {$args['impl']}"),
    };
}

bench_run(static function (): void {
    $args = bench_args();
    if ($args['role'] !== 'main') {
        [$produce, $send] = producer($args);
        $args['role'] === 'pacer' ? bench_paced($args, $send) : $produce($args['messages']);
    } elseif ($args['mode'] === 'produce') {
        [$produce] = producer($args);
        bench_produce($args, $produce);
    } else {
        bench_consume($args, static fn () => consumer($args));
    }
});
