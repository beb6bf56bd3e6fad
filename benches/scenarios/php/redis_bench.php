<?php

/**
 * Redis lists from PHP: the Polybus extension against phpredis.
 *
 *   php redis_bench.php produce|consume --impl IMPL --url 'redis://HOST:PORT/0?mode=list' --topic T ...
 *
 * Producers: `polybus` (`publish` per message), `polybus-batch` (`publishBatch` per 1000),
 * `phpredis` (`lPush` per message), `phpredis-pipeline` (`lPush` x 1000 in a pipeline).
 * Consumers: `polybus` (`consume`: a reliable BLMOVE into a processing list, removed after the
 * handler), `phpredis` (the same at-least-once pattern by hand: `brpoplpush` + `lRem`).
 */

declare(strict_types=1);

require __DIR__ . '/common.php';

function redis_client(string $url): Redis
{
    $p = parse_url($url);
    $redis = new Redis();
    $redis->connect($p['host'] ?? '127.0.0.1', $p['port'] ?? 6379, 5.0);
    $db = (int) trim($p['path'] ?? '/0', '/');
    if ($db) {
        $redis->select($db);
    }
    return $redis;
}

/** @return array{callable, callable} [$produce(int $count), $send(array $message)] */
function producer(array $args): array
{
    $topic = $args['topic'];
    $body = bench_message($args['size']);
    switch ($args['impl']) {
        case 'polybus':
        case 'polybus-batch':
            $broker = new Polybus\Broker($args['url']);
            $batch = $args['impl'] === 'polybus-batch' || $args['role'] === 'fill';
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
        case 'phpredis':
        case 'phpredis-pipeline':
            $redis = redis_client($args['url']);
            // The filler of a consume scenario publishes its backlog the fastest way there is.
            $pipeline = $args['impl'] === 'phpredis-pipeline' || $args['role'] === 'fill';
            $produce = static function (int $count) use ($redis, $topic, $body, $pipeline): void {
                if (!$pipeline) {
                    for ($i = 0; $i < $count; $i++) {
                        $redis->lPush($topic, json_encode($body));
                    }
                    return;
                }
                foreach (bench_chunks($count) as $n) {
                    $redis->multi(Redis::PIPELINE);
                    for ($i = 0; $i < $n; $i++) {
                        $redis->lPush($topic, json_encode($body));
                    }
                    $redis->exec();
                }
            };
            return [$produce, static fn (array $m) => $redis->lPush($topic, json_encode($m))];
        default:
            throw new InvalidArgumentException("unknown implementation {$args['impl']}");
    }
}

final class PolybusConsumer implements BenchConsumer
{
    private Polybus\Broker $broker;

    public function __construct(private array $args)
    {
        $this->broker = new Polybus\Broker($args['url']);
    }

    public function idle(float $seconds): void
    {
        $this->broker->consume($this->args['topic'], static fn () => null, 1, $seconds, ['group' => $this->args['topic'] . '.g']);
    }

    public function until(Tally $tally, callable $done, float $timeout): void
    {
        $handler = static function (Polybus\Message $m) use ($tally): void {
            $tally->seen($m->payload());
        };
        $options = ['group' => $this->args['topic'] . '.g', 'stop' => $done];
        $this->broker->consume($this->args['topic'], $handler, PHP_INT_MAX, $timeout, $options);
        if (!$done()) {
            throw new RuntimeException("timed out after {$timeout}s");
        }
    }

    public function stop(): void
    {
        $this->broker->close();
    }
}

final class PhpredisConsumer implements BenchConsumer
{
    private Redis $redis;

    public function __construct(private array $args)
    {
        $this->redis = redis_client($args['url']);
    }

    public function idle(float $seconds): void
    {
        usleep((int) ($seconds * 1e6));
    }

    public function until(Tally $tally, callable $done, float $timeout): void
    {
        $topic = $this->args['topic'];
        $processing = "$topic.processing";
        $deadline = microtime(true) + $timeout;
        while (!$done()) {
            if (microtime(true) > $deadline) {
                throw new RuntimeException("timed out after {$timeout}s");
            }
            $data = $this->redis->brpoplpush($topic, $processing, 1);
            if (is_string($data)) {
                $tally->seen(json_decode($data, true));
                $this->redis->lRem($processing, $data, 1);
            }
        }
    }

    public function stop(): void
    {
        $this->redis->close();
    }
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
        bench_consume($args, static fn (): BenchConsumer => match ($args['impl']) {
            'polybus' => new PolybusConsumer($args),
            'phpredis' => new PhpredisConsumer($args),
            default => throw new InvalidArgumentException("unknown implementation {$args['impl']}"),
        });
    }
});
