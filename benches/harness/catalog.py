"""The scenarios, their implementations, and the targets of issue 9."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Optional


@dataclass(frozen=True)
class Impl:
    """One implementation of a scenario: Polybus or a comparator."""

    name: str
    polybus: bool
    how: str
    # Runs messages x scale (the full suite; smoke runs are not scaled), so that each run lasts
    # seconds: fast implementations would finish 100,000 messages in a fraction of a second,
    # where start-up and noise decide the rate, and one publish confirmed at a time is ~100x
    # slower than the rest.
    scale: float = 1.0
    # The Polybus implementation this comparator is compared with (default: the scenario's
    # primary one): batches with batches, one call per message with one call per message.
    versus: Optional[str] = None


@dataclass(frozen=True)
class Scenario:
    """One measurement, run by every implementation on the same broker in the same run.

    ``lang`` is ``python``, ``php`` or ``rust``; ``broker`` is ``kafka``, ``rabbitmq``,
    ``redis-list`` or ``redis-streams``; ``mode`` is ``produce`` (publish N messages, timed),
    ``consume`` (idle consumer, paced end-to-end latency, drain a backlog of N) or ``pubsub``
    (publish N while consuming them, end-to-end). ``primary`` is the Polybus implementation the
    ratio column divides by each comparator."""

    name: str
    lang: str
    broker: str
    mode: str
    title: str
    impls: tuple[Impl, ...]
    primary: str

    def impl(self, name: str) -> Impl:
        return next(i for i in self.impls if i.name == name)

    def reference(self, impl: Impl) -> str:
        """The Polybus implementation a comparator's ratio divides by."""
        return impl.versus or self.primary


def _p(name: str, how: str, scale: float = 1.0) -> Impl:
    return Impl(name, True, how, scale)


def _c(name: str, how: str, scale: float = 1.0, versus: Optional[str] = None) -> Impl:
    return Impl(name, False, how, scale, versus)


# Scales (see `Impl.scale`): a tenth of N for one confirmed publish at a time; N x 2 to 10 for
# fast implementations, chosen from the rates seen so that a run lasts at least ~2 s.
ONE_AT_A_TIME = 0.1


PY_SEND = "one `send` per message, gathered 1000 at a time, 4 chunks in flight"
PY_BATCH = "`send_batch` per 1000 messages, 4 batches in flight"
PY_CONSUMER = "manual consumer (`@message_handler` runtime), async handler, defaults"

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "py-kafka-produce",
        "python",
        "kafka",
        "produce",
        "Python, Kafka produce (idempotent, acks=all, linger 1 ms for every client)",
        (
            _p("polybus-batch", PY_BATCH, 5),
            _p("polybus-send", PY_SEND, 5),
            _c("confluent-kafka", "`produce` + `poll(0)`, `flush` at the end", 5),
            _c("aiokafka", "`send` futures gathered 1000 at a time, 4 chunks in flight", 5),
            _c("faststream", "`KafkaBroker.publish` gathered 1000 at a time, 4 chunks in flight"),
        ),
        "polybus-batch",
    ),
    Scenario(
        "py-kafka-consume",
        "python",
        "kafka",
        "consume",
        "Python, Kafka consume with a trivial handler",
        (
            _p("polybus", PY_CONSUMER, 3),
            _c("confluent-kafka", "sync `poll` loop in a thread, auto commit", 3),
            _c("aiokafka", "`getmany` + async handler per message, auto commit", 3),
            _c("faststream", "async subscriber"),
        ),
        "polybus",
    ),
    Scenario(
        "py-rabbitmq-produce",
        "python",
        "rabbitmq",
        "produce",
        "Python, RabbitMQ confirmed persistent publish to a topic exchange (mandatory)",
        (
            _p("polybus-batch", PY_BATCH),
            _p("polybus-send", PY_SEND),
            _c(
                "aio-pika",
                "publisher confirms, `publish` gathered 1000 at a time, 4 chunks in flight",
            ),
            _c(
                "faststream",
                "`RabbitBroker.publish(persist=True)` gathered 1000 at a time, 4 chunks in flight",
            ),
        ),
        "polybus-batch",
    ),
    Scenario(
        "py-rabbitmq-consume",
        "python",
        "rabbitmq",
        "consume",
        "Python, RabbitMQ consume with a trivial handler (manual acks)",
        (
            _p("polybus", PY_CONSUMER),
            _c("aio-pika", "`queue.consume` + `message.process()`, prefetch 100"),
            _c("faststream", "async subscriber"),
        ),
        "polybus",
    ),
    Scenario(
        "py-redis-list-produce",
        "python",
        "redis-list",
        "produce",
        "Python, Redis list produce (LPUSH)",
        (
            _p("polybus-batch", PY_BATCH, 10),
            _p("polybus-send", PY_SEND, 3),
            _c(
                "redis-py",
                "one `LPUSH` awaited per message (asyncio, hiredis)",
                versus="polybus-send",
            ),
            _c("redis-py-pipeline", "a pipeline per 1000 `LPUSH`", 3),
        ),
        "polybus-batch",
    ),
    Scenario(
        "py-redis-list-consume",
        "python",
        "redis-list",
        "consume",
        "Python, Redis list consume with a trivial handler",
        (
            _p("polybus", PY_CONSUMER + " (reliable BLMOVE)", 2),
            _c("redis-py", "`BLMOVE` + `LREM` per message (at least once, like Polybus)"),
            _c("redis-py-brpop", "`BRPOP` loop (at most once)"),
        ),
        "polybus",
    ),
    Scenario(
        "py-redis-streams-produce",
        "python",
        "redis-streams",
        "produce",
        "Python, Redis streams produce (XADD)",
        (
            _p("polybus-batch", PY_BATCH, 5),
            _p("polybus-send", PY_SEND, 3),
            _c(
                "redis-py",
                "one `XADD` awaited per message (asyncio, hiredis)",
                versus="polybus-send",
            ),
            _c("redis-py-pipeline", "a pipeline per 1000 `XADD`", 3),
        ),
        "polybus-batch",
    ),
    Scenario(
        "py-redis-streams-consume",
        "python",
        "redis-streams",
        "consume",
        "Python, Redis streams consume with a trivial handler",
        (
            _p("polybus", PY_CONSUMER + " (XREADGROUP + XACK)", 3),
            _c("redis-py", "`XREADGROUP COUNT 100` + one `XACK` per batch", 3),
        ),
        "polybus",
    ),
    Scenario(
        "php-rabbitmq-produce",
        "php",
        "rabbitmq",
        "produce",
        "PHP, RabbitMQ confirmed persistent publish to a topic exchange (mandatory)",
        (
            _p("polybus", "`publish` per message (returns once confirmed)", ONE_AT_A_TIME),
            _p("polybus-batch", "`publishBatch` per 1000 messages"),
            _c(
                "php-amqplib",
                "`basic_publish` + `wait_for_pending_acks` per message",
                ONE_AT_A_TIME,
            ),
            _c(
                "php-amqplib-batch",
                "1000 `basic_publish`, then `wait_for_pending_acks`",
                versus="polybus-batch",
            ),
            _c("php-amqp", "`AMQPExchange::publish` + `waitForConfirm` per message", ONE_AT_A_TIME),
            _c("php-amqp-batch", "1000 `publish`, then `waitForConfirm`", versus="polybus-batch"),
        ),
        "polybus",
    ),
    Scenario(
        "php-rabbitmq-consume",
        "php",
        "rabbitmq",
        "consume",
        "PHP, RabbitMQ consume with a trivial handler (manual acks)",
        (
            _p("polybus", "`Broker::consume` with its defaults"),
            _c("php-amqplib", "`basic_consume` + `wait`, prefetch 100"),
            _c("php-amqp", "`AMQPQueue::consume`, prefetch 100"),
        ),
        "polybus",
    ),
    Scenario(
        "php-redis-produce",
        "php",
        "redis-list",
        "produce",
        "PHP, Redis list produce",
        (
            _p("polybus", "`publish` per message"),
            _p("polybus-batch", "`publishBatch` per 1000 messages", 10),
            _c("phpredis", "`lPush` per message"),
            _c(
                "phpredis-pipeline",
                "1000 `lPush` in a `Redis::PIPELINE`",
                10,
                versus="polybus-batch",
            ),
        ),
        "polybus",
    ),
    Scenario(
        "php-redis-consume",
        "php",
        "redis-list",
        "consume",
        "PHP, Redis list consume with a trivial handler",
        (
            _p("polybus", "`Broker::consume` (reliable BLMOVE)", 2),
            _c("phpredis", "`brpoplpush` + `lRem` per message (at least once)"),
        ),
        "polybus",
    ),
    Scenario(
        "rust-kafka-produce",
        "rust",
        "kafka",
        "produce",
        "Rust core ceiling, Kafka produce",
        (
            _p("polybus-core", "`publish_batch` per 1000, 4 batches in flight", 5),
            _c("kafka-producer-perf", "Kafka's ProducerPerformance (acks=all, idempotent)", 5),
        ),
        "polybus-core",
    ),
    Scenario(
        "rust-rabbitmq-pubsub",
        "rust",
        "rabbitmq",
        "pubsub",
        "Rust core ceiling, RabbitMQ confirmed publish + consume at once",
        (
            _p(
                "polybus-core",
                "`publish_batch` per 250, 4 in flight (1000 unconfirmed), consumer prefetch 5000",
            ),
            _c("rabbitmq-perf-test", "PerfTest -x1 -y1, confirms 1000, persistent, -q 5000"),
        ),
        "polybus-core",
    ),
    Scenario(
        "rust-redis-produce",
        "rust",
        "redis-list",
        "produce",
        "Rust core ceiling, Redis LPUSH",
        (
            _p("polybus-core", "`publish_batch` per 1000, 4 batches in flight", 10),
            _p("polybus-core-single", "one awaited `publish` at a time (current-thread runtime)"),
            _c("redis-benchmark", "redis-benchmark LPUSH, 1 connection, pipeline 1000", 10),
            _c(
                "redis-benchmark-single",
                "redis-benchmark LPUSH, 1 connection, no pipeline",
                versus="polybus-core-single",
            ),
        ),
        "polybus-core",
    ),
)


@dataclass(frozen=True)
class Target:
    """A ratio issue 9 asks for, at 100-byte messages: polybus impl / comparator >= ratio."""

    scenario: str
    polybus: str
    comparator: str
    ratio: float


TARGETS: tuple[Target, ...] = (
    Target("py-kafka-produce", "polybus-batch", "confluent-kafka", 1.5),
    Target("py-kafka-produce", "polybus-send", "confluent-kafka", 1.0),
    Target("py-kafka-produce", "polybus-batch", "aiokafka", 10.0),
    Target("py-kafka-consume", "polybus", "confluent-kafka", 1.5),
    Target("py-kafka-consume", "polybus", "faststream", 10.0),
    Target("py-rabbitmq-produce", "polybus-batch", "aio-pika", 10.0),
    Target("py-rabbitmq-consume", "polybus", "aio-pika", 5.0),
    Target("py-redis-list-produce", "polybus-send", "redis-py", 3.0),
    Target("py-redis-list-produce", "polybus-batch", "redis-py-pipeline", 3.0),
    Target("py-redis-list-consume", "polybus", "redis-py", 3.0),
    Target("py-redis-streams-produce", "polybus-send", "redis-py", 3.0),
    Target("py-redis-streams-produce", "polybus-batch", "redis-py-pipeline", 3.0),
    Target("py-redis-streams-consume", "polybus", "redis-py", 3.0),
    Target("php-rabbitmq-produce", "polybus", "php-amqplib", 5.0),
    Target("php-rabbitmq-produce", "polybus", "php-amqp", 1.5),
    Target("php-rabbitmq-produce", "polybus-batch", "php-amqplib-batch", 5.0),
    Target("php-rabbitmq-produce", "polybus-batch", "php-amqp-batch", 1.5),
    Target("php-redis-produce", "polybus", "phpredis", 1.0),
    Target("php-redis-produce", "polybus-batch", "phpredis-pipeline", 1.5),
    Target("rust-kafka-produce", "polybus-core", "kafka-producer-perf", 0.9),
    Target("rust-rabbitmq-pubsub", "polybus-core", "rabbitmq-perf-test", 0.9),
    Target("rust-redis-produce", "polybus-core", "redis-benchmark", 0.9),
    Target("rust-redis-produce", "polybus-core-single", "redis-benchmark-single", 0.9),
)


def select(patterns: list[str]) -> list[tuple[Scenario, Impl]]:
    """Every (scenario, implementation) that a glob matches, as ``scenario`` or
    ``scenario/impl``; everything when no glob is given."""
    chosen = []
    for scenario in SCENARIOS:
        for impl in scenario.impls:
            full = f"{scenario.name}/{impl.name}"
            if not patterns or any(
                fnmatchcase(scenario.name, p) or fnmatchcase(full, p) for p in patterns
            ):
                chosen.append((scenario, impl))
    return chosen
