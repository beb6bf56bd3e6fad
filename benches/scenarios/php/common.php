<?php

/**
 * What every PHP scenario script shares: arguments, payloads, measurements, the result line.
 *
 * A scenario script runs one implementation (`--impl`) of one scenario and prints one line
 * `BENCH-RESULT {json}`. Produce scenarios time publishing `--messages` messages. Consume
 * scenarios run in three phases in the consumer process, which never publishes itself: an idle
 * consumer (`idle_rss_mib`); the end-to-end latency of `--latency-messages` messages a pacer
 * subprocess (this script again, `--role pacer`, the same implementation) publishes at
 * `--latency-rate` per second after half a second of warm-up messages, each carrying its send
 * time; then a backlog of `--messages`
 * messages a filler subprocess (`--role fill`) publishes, drained by a new consumer in the same
 * group: msgs/s, CPU seconds and peak RSS over that phase. The harness passes the PHP command
 * (binary and `-d extension=...` flags) in the environment variable BENCH_PHP_CMD (JSON).
 */

declare(strict_types=1);

const RESULT_PREFIX = 'BENCH-RESULT ';
const CHUNK = 1000;

/** @return array{mode: string, impl: string, role: string, messages: int, size: int, topic: string, url: string, latency_messages: int, latency_rate: float, idle_seconds: float, timeout: float} */
function bench_args(): array
{
    global $argv;
    $mode = $argv[1] ?? '';
    if (!in_array($mode, ['produce', 'consume'], true)) {
        fwrite(STDERR, "usage: SCRIPT produce|consume --impl IMPL [options]\n");
        exit(2);
    }
    $options = [
        'impl' => '', 'role' => 'main', 'messages' => '1000', 'size' => '100', 'topic' => '',
        'url' => '', 'latency-messages' => '200', 'latency-rate' => '500', 'idle-seconds' => '1',
        'timeout' => '300',
    ];
    $rest = array_slice($argv, 2);
    for ($i = 0; $i < count($rest); $i += 2) {
        $name = substr($rest[$i], 2);
        if (!str_starts_with($rest[$i], '--') || !array_key_exists($name, $options) || !isset($rest[$i + 1])) {
            fwrite(STDERR, "bad option {$rest[$i]}\n");
            exit(2);
        }
        $options[$name] = $rest[$i + 1];
    }
    return [
        'mode' => $mode,
        'impl' => $options['impl'],
        'role' => $options['role'],
        'messages' => (int) $options['messages'],
        'size' => (int) $options['size'],
        'topic' => $options['topic'],
        'url' => $options['url'],
        'latency_messages' => (int) $options['latency-messages'],
        'latency_rate' => (float) $options['latency-rate'],
        'idle_seconds' => (float) $options['idle-seconds'],
        'timeout' => (float) $options['timeout'],
    ];
}

/** A message whose JSON is `$size` bytes: {"ts": send time, "ph": phase, "pad": "xx..."}. */
function bench_message(int $size, string $phase = 'd', float $ts = 1700000000.123456): array
{
    $base = strlen(json_encode(['ts' => 1700000000.123456, 'ph' => $phase, 'pad' => '']));
    return ['ts' => $ts, 'ph' => $phase, 'pad' => str_repeat('x', max(0, $size - $base))];
}

/** @return list<int> `$total` split into chunks of at most CHUNK. */
function bench_chunks(int $total): array
{
    $out = array_fill(0, intdiv($total, CHUNK), CHUNK);
    if ($total % CHUNK) {
        $out[] = $total % CHUNK;
    }
    return $out;
}

/** CPU seconds of this process (every thread), user and system. */
function bench_cpu(): float
{
    $u = getrusage();
    return $u['ru_utime.tv_sec'] + $u['ru_utime.tv_usec'] / 1e6 + $u['ru_stime.tv_sec'] + $u['ru_stime.tv_usec'] / 1e6;
}

function bench_status_kib(string $name): float
{
    $status = (string) @file_get_contents('/proc/self/status');
    return preg_match("/^{$name}:\\s+(\\d+) kB/m", $status, $m) ? (float) $m[1] : 0.0;
}

function bench_rss_mib(): float
{
    return bench_status_kib('VmRSS') / 1024;
}

function bench_peak_rss_mib(): float
{
    return bench_status_kib('VmHWM') / 1024;
}

function bench_reset_peak_rss(): void
{
    @file_put_contents('/proc/self/clear_refs', '5');
}

/** @param list<float> $values */
function bench_percentile(array $values, float $pct): float
{
    sort($values);
    $rank = max(1, min(count($values), (int) ceil($pct / 100 * count($values))));
    return $values[$rank - 1];
}

function bench_emit(array $fields): void
{
    echo RESULT_PREFIX, json_encode($fields), "\n";
}

/** What a consumer's handler records: drain timing and latencies of paced messages. */
final class Tally
{
    public int $drained = 0;
    public float $first = 0.0;
    public float $last = 0.0;
    /** @var list<float> */
    public array $latencies = [];

    public function seen(array $body): void
    {
        $phase = $body['ph'] ?? '';
        if ($phase === 'l') {
            $this->latencies[] = (microtime(true) - (float) $body['ts']) * 1000;
            return;
        }
        if ($phase === 'w') {
            return;
        }
        $now = hrtime(true) / 1e9;
        if ($this->drained === 0) {
            $this->first = $now;
        }
        $this->drained++;
        $this->last = $now;
    }
}

/** A pacer or filler subprocess: this script again, with another role. */
final class Helper
{
    /** @var resource */
    private $proc;
    private ?int $status = null;

    public function __construct(array $args, string $role, private string $name = '')
    {
        $this->name = $role;
        $cmd = json_decode((string) getenv('BENCH_PHP_CMD'), true) ?: [PHP_BINARY];
        global $argv;
        $cmd = array_merge($cmd, [$argv[0], 'consume',
            '--impl', $args['impl'], '--role', $role, '--messages', (string) $args['messages'],
            '--size', (string) $args['size'], '--topic', $args['topic'], '--url', $args['url'],
            '--latency-messages', (string) $args['latency_messages'],
            '--latency-rate', (string) $args['latency_rate'], '--timeout', (string) $args['timeout'],
        ]);
        $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => STDERR], $pipes);
        if ($proc === false) {
            throw new RuntimeException("could not start the $role subprocess");
        }
        $this->proc = $proc;
    }

    public function done(): bool
    {
        if ($this->status === null) {
            $st = proc_get_status($this->proc);
            if (!$st['running']) {
                $this->status = $st['exitcode'];
            }
        }
        return $this->status !== null;
    }

    public function check(): void
    {
        if ($this->done() && $this->status !== 0) {
            throw new RuntimeException("the {$this->name} subprocess exited with status {$this->status}");
        }
    }

    public function wait(float $timeout): void
    {
        $deadline = microtime(true) + $timeout;
        while (!$this->done()) {
            if (microtime(true) > $deadline) {
                throw new RuntimeException("the {$this->name} subprocess did not finish in {$timeout}s");
            }
            usleep(2000);
        }
        $this->check();
    }
}

/**
 * The pacer's loop: `$send(array $message)` at `--latency-rate` per second, each message
 * stamped with the time it is handed to the client.
 */
function bench_paced(array $args, callable $send): void
{
    // Half a second of warm-up messages first, which consumers ignore (see the Python twin).
    $warmup = min($args['latency_messages'], intdiv((int) $args['latency_rate'], 2));
    $start = microtime(true);
    for ($i = 0; $i < $warmup + $args['latency_messages']; $i++) {
        $delay = $start + $i / $args['latency_rate'] - microtime(true);
        if ($delay > 0) {
            usleep((int) ($delay * 1e6));
        }
        $send(bench_message($args['size'], $i < $warmup ? 'w' : 'l', microtime(true)));
    }
}

/** Times `$produce($count)` after one untimed message, and prints the result line. */
function bench_produce(array $args, callable $produce): void
{
    $produce(1);
    bench_reset_peak_rss();
    $cpu = bench_cpu();
    $started = hrtime(true);
    $produce($args['messages']);
    $seconds = (hrtime(true) - $started) / 1e9;
    bench_emit([
        'messages' => $args['messages'],
        'seconds' => $seconds,
        'msgs_per_s' => $args['messages'] / $seconds,
        'cpu_s' => bench_cpu() - $cpu,
        'peak_rss_mib' => bench_peak_rss_mib(),
        'warmup_messages' => 1,
    ]);
}

/**
 * A consumer implementation for bench_consume: `idle($seconds)` subscribes and waits;
 * `until($tally, $done, $timeout)` consumes (calling `$tally->seen($decoded)` per message)
 * until `$done()` is true; `stop()` unsubscribes.
 */
interface BenchConsumer
{
    public function idle(float $seconds): void;

    public function until(Tally $tally, callable $done, float $timeout): void;

    public function stop(): void;
}

/** The broker is quiet when it uses less than this share of one core. */
const QUIET_SHARE = 0.10;

/** CPU seconds process `$pid` has used, or null when it cannot be read. */
function bench_process_cpu(int $pid): ?float
{
    $stat = @file_get_contents("/proc/$pid/stat");
    if ($stat === false) {
        return null;
    }
    $fields = preg_split('/\s+/', trim(substr($stat, strrpos($stat, ')') + 1)));
    return ((int) $fields[11] + (int) $fields[12]) / 100.0; // USER_HZ is 100 on Linux
}

/**
 * Waits (at most `$timeout` s) until the broker's process (BENCH_BROKER_PID, set by the
 * harness) is quiet, so a timed phase does not start while it still works off the previous one:
 * every implementation starts on an equally idle broker.
 */
function bench_broker_quiet(float $timeout = 15.0, float $window = 0.5): void
{
    $pid = (int) (getenv('BENCH_BROKER_PID') ?: 0);
    $deadline = microtime(true) + $timeout;
    while ($pid > 0 && microtime(true) < $deadline) {
        $before = bench_process_cpu($pid);
        usleep((int) ($window * 1e6));
        $after = bench_process_cpu($pid);
        if ($before === null || $after === null || $after - $before < QUIET_SHARE * $window) {
            return;
        }
    }
}

/**
 * The three phases of a consume scenario; `$make()` returns a new BenchConsumer.
 */
function bench_consume(array $args, callable $make): void
{
    $tally = new Tally();
    $consumer = $make();
    $consumer->idle($args['idle_seconds']);
    $idle = bench_rss_mib();
    $pacer = new Helper($args, 'pacer');
    $consumer->until($tally, function () use ($tally, $args, $pacer): bool {
        $pacer->check();
        return count($tally->latencies) >= $args['latency_messages'];
    }, $args['timeout']);
    $consumer->stop();
    $pacer->wait(30);
    $filler = new Helper($args, 'fill');
    $filler->wait($args['timeout']);
    bench_broker_quiet();
    bench_reset_peak_rss();
    $cpu = bench_cpu();
    $consumer = $make();
    // The clock starts once connected: subscribing counts, connecting does not.
    $started = hrtime(true) / 1e9;
    $consumer->until($tally, fn (): bool => $tally->drained >= $args['messages'], $args['timeout']);
    $cpu = bench_cpu() - $cpu;
    $peak = bench_peak_rss_mib();
    $consumer->stop();
    $seconds = $tally->last - min($started, $tally->first ?: $started);
    bench_emit([
        'messages' => $tally->drained,
        'seconds' => $seconds,
        'msgs_per_s' => $seconds > 0 ? $tally->drained / $seconds : null,
        'cpu_s' => $cpu,
        'peak_rss_mib' => $peak,
        'p50_ms' => $tally->latencies ? bench_percentile($tally->latencies, 50) : null,
        'p99_ms' => $tally->latencies ? bench_percentile($tally->latencies, 99) : null,
        'latency_samples' => count($tally->latencies),
        'idle_rss_mib' => $idle,
    ]);
}

/** Runs `$main()`; an uncaught error is printed and exits 1. */
function bench_run(callable $main): void
{
    try {
        $main();
    } catch (Throwable $e) {
        fwrite(STDERR, get_class($e) . ': ' . $e->getMessage() . "\n");
        exit(1);
    }
}
