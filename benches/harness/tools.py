"""Where things are, and the command line of each implementation (or why it cannot run)."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .catalog import Impl, Scenario

ROOT = Path(__file__).resolve().parents[2]
BENCHES = ROOT / "benches"
CACHE = Path(os.environ.get("POLYBUS_CACHE", Path.home() / ".cache" / "polybus"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
JARS = CACHE / "bench" / "jars"
# release for measurements; debug for smoke runs (scripts/bench.sh sets it).
PROFILE = os.environ.get("BENCH_PROFILE", "release")
PHP_EXTENSION = TARGET / PROFILE / "libpolybus_php.so"
CEILING = TARGET / PROFILE / "examples" / "ceiling"
AMQPLIB_AUTOLOAD = Path("/usr/share/php/PhpAmqpLib/autoload.php")

URLS = {
    "kafka": os.environ.get("BENCH_KAFKA_URL", "kafka://127.0.0.1:9092?polybus.topic.partitions=4"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "redis-list": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0") + "?mode=list",
    "redis-streams": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    + "?mode=streams",
}

PY_SCRIPTS = {
    "kafka": "kafka_bench.py",
    "rabbitmq": "rabbitmq_bench.py",
    "redis-list": "redis_bench.py",
    "redis-streams": "redis_bench.py",
}
PHP_SCRIPTS = {"rabbitmq": "rabbitmq_bench.php", "redis-list": "redis_bench.php"}

# The Python module each comparator needs.
PY_MODULES = {
    "polybus": "polybus",
    "confluent-kafka": "confluent_kafka",
    "aiokafka": "aiokafka",
    "faststream": "faststream",
    "aio-pika": "aio_pika",
    "redis-py": "redis",
}

# The PHP extensions (besides none at all, `php -n`) each implementation loads.
PHP_EXTENSIONS = {
    "polybus": [str(PHP_EXTENSION)],
    "php-amqplib": ["sockets", "mbstring"],
    "php-amqp": ["amqp"],
    "phpredis": ["igbinary", "redis"],
}


@dataclass
class Run:
    """Everything needed to run one (scenario, implementation, size)."""

    scenario: Scenario
    impl: Impl
    size: int
    messages: int
    topic: str
    latency_messages: int
    latency_rate: float
    idle_seconds: float
    timeout: float


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    parser: str = "result-line"


def family(impl: str) -> str:
    """``polybus-batch`` -> ``polybus``, ``redis-py-pipeline`` -> ``redis-py``, ..."""
    for prefix in ("polybus", "redis-py", "php-amqplib", "php-amqp", "phpredis"):
        if impl == prefix or impl.startswith(prefix + "-"):
            return prefix
    return impl


@functools.cache
def python_module_missing(module: str) -> Optional[str]:
    found = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if found.returncode == 0:
        return None
    last = (found.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"Python module {module} is not installed in the bench venv ({last})"


@functools.cache
def php_extensions_missing(extensions: tuple[str, ...]) -> Optional[str]:
    """Why ``php -n`` cannot load ``extensions`` (in this order), or None."""
    if shutil.which("php") is None:
        return "php is not installed"
    for ext in extensions:
        if ext.endswith(".so") and not Path(ext).is_file():
            return f"{ext} is not built (scripts/bench-tools.sh php)"
    found = subprocess.run(
        ["php", "-n", *php_extension_flags(list(extensions)), "-r", "echo 'ok';"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.stdout.strip() == "ok" and not found.stderr.strip():
        return None
    names = ", ".join(Path(e).name for e in extensions)
    return f"PHP extensions {names} cannot be loaded (apt package missing?)"


def php_extension_flags(extensions: list[str]) -> list[str]:
    flags = []
    for ext in extensions:
        flags += ["-d", f"extension={ext}"]
    return flags


def jar_dir(name: str) -> Optional[Path]:
    """The newest complete jar directory ``$JARS/<name>-*`` scripts/bench-tools.sh made."""
    complete = sorted(glob.glob(str(JARS / f"{name}-*" / ".complete")))
    return Path(complete[-1]).parent / "libs" if complete else None


def jar_version(name: str, artifact: str) -> Optional[str]:
    libs = jar_dir(name)
    if libs is None:
        return None
    jars = sorted(libs.glob(f"{artifact}-*.jar"))
    return jars[0].stem[len(artifact) + 1 :] if jars else None


def command(run: Run) -> Union[Command, str]:
    """The command line of ``run``, or why it cannot run here."""
    scenario, impl = run.scenario, run.impl
    url = URLS[scenario.broker]
    common = [
        "--impl",
        impl.name,
        "--messages",
        str(run.messages),
        "--size",
        str(run.size),
        "--topic",
        run.topic,
        "--url",
        url,
        "--latency-messages",
        str(run.latency_messages),
        "--latency-rate",
        str(run.latency_rate),
        "--idle-seconds",
        str(run.idle_seconds),
        "--timeout",
        str(max(10.0, run.timeout - 5)),
    ]
    if scenario.lang == "python":
        missing = python_module_missing(PY_MODULES[family(impl.name)])
        if missing:
            return missing
        script = BENCHES / "scenarios" / "python" / PY_SCRIPTS[scenario.broker]
        return Command([sys.executable, str(script), scenario.mode, *common])
    if scenario.lang == "php":
        extensions = PHP_EXTENSIONS[family(impl.name)]
        missing = php_extensions_missing(tuple(extensions))
        if missing:
            return missing
        if family(impl.name) == "php-amqplib" and not AMQPLIB_AUTOLOAD.is_file():
            return "php-amqplib is not installed (apt-get install php-amqplib)"
        php = ["php", "-n", "-d", "memory_limit=1G", *php_extension_flags(extensions)]
        script = BENCHES / "scenarios" / "php" / PHP_SCRIPTS[scenario.broker]
        return Command(
            [*php, str(script), scenario.mode, *common], {"BENCH_PHP_CMD": json.dumps(php)}
        )
    return rust_command(run, url)


def rust_command(run: Run, url: str) -> Union[Command, str]:
    name, n, size = run.impl.name, run.messages, run.size
    if name.startswith("polybus-core"):
        if not CEILING.is_file():
            return f"{CEILING} is not built (scripts/bench-tools.sh rust)"
        mode = "pubsub" if run.scenario.mode == "pubsub" else "produce"
        argv = [str(CEILING), mode, "--url", url, "--topic", run.topic]
        argv += ["--messages", str(n), "--size", str(size)]
        if name.endswith("-single"):
            argv += ["--batch", "1"]
        elif run.scenario.broker == "rabbitmq":
            # At most 1000 messages unconfirmed, as PerfTest's `-c 1000`: 4 batches of 250.
            argv += ["--batch", "250", "--inflight", "4"]
        return Command(argv)
    java = shutil.which("java")
    if name == "kafka-producer-perf":
        libs = jar_dir("kafka-tools")
        if java is None or libs is None:
            return "kafka-tools jars or java missing (scripts/bench-tools.sh jars)"
        bootstrap = url.split("://", 1)[1].split("?", 1)[0]
        argv = [java, "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance"]
        argv += ["--topic", run.topic, "--num-records", str(n), "--record-size", str(size)]
        argv += ["--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}"]
        argv += ["acks=all", "enable.idempotence=true", "linger.ms=1"]
        return Command(argv, parser="producer-performance")
    if name == "rabbitmq-perf-test":
        libs = jar_dir("perf-test")
        if java is None or libs is None:
            return "perf-test jars or java missing (scripts/bench-tools.sh jars)"
        argv = [java, "-Xmx512m", "-cp", f"{libs}/*", "com.rabbitmq.perf.PerfTest"]
        # The Java client reads the path "/" as the empty vhost; the default vhost is "%2F".
        uri = url.split("?", 1)[0]
        if uri.endswith("/") and uri.count("/") == 3:
            uri += "%2F"
        argv += ["-h", uri, "-x", "1", "-y", "1", "-s", str(size), "-C", str(n), "-D", str(n)]
        argv += ["-c", "1000", "-f", "persistent", "-u", f"{run.topic}.g", "-ad", "false"]
        argv += ["-q", "5000"]
        return Command(argv, parser="perf-test")
    if name.startswith("redis-benchmark"):
        tool = shutil.which("redis-benchmark")
        if tool is None:
            return "redis-benchmark is not installed (apt-get install redis-tools)"
        host_port = url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        # 1000 in the pipeline, but at least 100 round trips: with more in the pipeline than
        # requests it aborts at random ("All clients disconnected"), and a run of one round
        # trip can take less than its millisecond clock (a smoke run's 200 requests).
        pipeline = "1" if name.endswith("-single") else str(min(1000, max(1, n // 100)))
        argv = [tool, "-h", host, "-p", port or "6379", "-c", "1", "-n", str(n), "-P", pipeline]
        argv += ["--csv", "LPUSH", run.topic, "x" * size]
        return Command(argv, parser="redis-benchmark")
    return f"unknown implementation {name}"
