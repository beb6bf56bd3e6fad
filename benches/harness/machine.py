"""What the numbers came from: the machine, the brokers, and the versions of every client."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from . import brokers
from .tools import PHP_EXTENSION, ROOT, jar_version


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return ""


def _run(argv: list[str]) -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (done.stdout + done.stderr).strip()
    return ""


def _first(pattern: str, text: str) -> Optional[str]:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else None


def _dist(name: str) -> Optional[str]:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(name)
    return None


def _php_ext_version(flags: list[str], extension: str) -> Optional[str]:
    out = _run(["php", "-n", *flags, "-r", f"echo phpversion('{extension}') ?: '';"])
    return out or None


def _dpkg(package: str) -> Optional[str]:
    out = _run(["dpkg-query", "-W", "-f=${Version}", package])
    return out if out and "no packages" not in out else None


def describe() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    meminfo = _read("/proc/meminfo")
    mem_kib = _first(r"^MemTotal:\s+(\d+)", meminfo)
    librdkafka = None
    with contextlib.suppress(Exception):
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    git = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": _first(r"^model name\s*:\s*(.+)$", cpuinfo) or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": _first(r'^PRETTY_NAME="?([^"\n]+)', _read("/etc/os-release")),
        "loadavg_at_start": list(os.getloadavg()),
        "git_commit": (git + ("-dirty" if dirty else "")) if git else None,
        "brokers": brokers.versions(),
        "runtimes": {
            "python": sys.version.split()[0],
            "php": _first(r"^PHP (\S+)", _run(["php", "-n", "-v"])),
            "java": _first(r'version "([^"]+)"', _run(["java", "-version"])),
            "rustc": _first(r"^rustc (\S+)", _run(["rustc", "-V"])),
        },
        "clients": {
            "polybus": _dist("polybus"),
            "confluent-kafka": _dist("confluent-kafka"),
            "librdkafka": librdkafka,
            "aiokafka": _dist("aiokafka"),
            "faststream": _dist("faststream"),
            "aio-pika": _dist("aio-pika"),
            "aiormq": _dist("aiormq"),
            "redis-py": _dist("redis"),
            "hiredis": _dist("hiredis"),
            "polybus-php": _php_ext_version(["-d", f"extension={PHP_EXTENSION}"], "polybus"),
            "php-amqplib": _dpkg("php-amqplib"),
            "php-amqp": _php_ext_version(["-d", "extension=amqp"], "amqp"),
            "phpredis": _php_ext_version(
                ["-d", "extension=igbinary", "-d", "extension=redis"], "redis"
            ),
            "kafka-tools": jar_version("kafka-tools", "kafka-tools"),
            "rabbitmq-perf-test": jar_version("perf-test", "perf-test"),
            "redis-benchmark": _first(
                r"redis-benchmark (\S+)", _run(["redis-benchmark", "--version"])
            ),
        },
    }


def summary(info: dict[str, Any]) -> str:
    """One line for the top of the markdown report."""
    b = info.get("brokers", {})
    load = info.get("loadavg_at_start") or [None]
    return (
        f"{info.get('cpu')}, {info.get('cores')} cores, {info.get('ram_gib')} GiB RAM, "
        f"{info.get('os')}, kernel {info.get('kernel')}; Kafka {b.get('kafka')}, "
        f"RabbitMQ {b.get('rabbitmq')}, Redis {b.get('redis')}; load average at start "
        f"{load[0]}; commit {info.get('git_commit')}"
    )
