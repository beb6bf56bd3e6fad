"""The engine's log records reach Python's `logging`, under loggers below "polybus"."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polybus
import pytest
from polybus import _logs

REDIS_URL = os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0") + "?mode=list"


def _dead_url() -> str:
    """A Redis URL on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0?mode=list"


def _wait_for(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in caplog.records:
            if text in record.getMessage():
                return record
        time.sleep(0.02)
    seen = [r.getMessage() for r in caplog.records]
    raise AssertionError(f"no record with {text!r} in {seen}")


@pytest.fixture
def polybus_level() -> Iterator[logging.Logger]:
    """The "polybus" logger, its level put back (and passed to the engine) afterwards."""
    logger = logging.getLogger("polybus")
    level = logger.level
    yield logger
    logger.setLevel(level)
    _logs.sync_level()


def test_an_engine_warning_is_logged_with_its_fields(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    dead = _dead_url()
    polybus.configure_messaging(url=dead, failover={"spool_dir": tmp_path / "spool"})
    polybus.get_producer().send_sync("pytest.logs", {"n": 1})
    record = _wait_for(caplog, "failover: the primary is unreachable at start; spooling")
    assert record.name == "polybus.failover.broker"
    assert record.levelno == logging.WARNING
    fields = record.polybus_fields  # type: ignore[attr-defined]
    assert fields["primary"].startswith("redis://127.0.0.1:"), fields
    assert "refused" in fields["error"].lower(), fields


def test_the_polybus_logger_s_level_decides_what_is_passed_on(
    caplog: pytest.LogCaptureFixture, polybus_level: logging.Logger
) -> None:
    caplog.set_level(logging.DEBUG)
    polybus_level.setLevel(logging.DEBUG)
    # Connecting reads the level: the Redis backend's debug record comes through.
    broker = polybus.Broker.connect(url=REDIS_URL)
    try:
        record = _wait_for(caplog, "connected to redis")
    finally:
        broker.close_blocking()
    assert record.levelno == logging.DEBUG
    assert record.name == "polybus.brokers.redis"
    assert record.polybus_fields["mode"] == "list"  # type: ignore[attr-defined]


def test_records_still_waiting_at_exit_are_logged(tmp_path: Path) -> None:
    # No logging configured: Python's last-resort handler prints warnings to stderr.
    script = (
        "import polybus\n"
        f"polybus.configure_messaging(url={_dead_url()!r}, "
        f"failover={{'spool_dir': {str(tmp_path / 'spool')!r}}})\n"
        "polybus.get_producer().send_sync('pytest.logs', {'n': 1})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "failover: the primary is unreachable at start; spooling" in done.stderr, done.stderr


def test_an_unreachable_kafka_is_reported_once_not_per_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    port = _dead_url().split(":")[2].split("/")[0]
    polybus.configure_messaging(url=f"kafka://127.0.0.1:{port}?message.timeout.ms=1500")
    started = time.monotonic()
    with pytest.raises(polybus.PolybusError):
        polybus.get_producer().send_sync("pytest.logs", {"n": 1})
    # Within the delivery timeout, not the admin client's 60 s.
    assert time.monotonic() - started < 15
    time.sleep(2)  # librdkafka retries the connection meanwhile
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if "no broker is reachable" in m]
    assert 1 <= len(down) <= 2, messages  # the producer's and the admin client's
    assert not [m for m in messages if "Global error" in m], messages


def _warn_in_child(spool: str, log_file: str) -> None:
    logging.basicConfig(filename=log_file, level=logging.WARNING, force=True)
    polybus.configure_messaging(url=_dead_url(), failover={"spool_dir": spool})
    polybus.get_producer().send_sync("pytest.logs", {"n": 1})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "spooling" not in Path(log_file).read_text():
        time.sleep(0.05)


def test_a_forked_child_passes_its_records_on_too(tmp_path: Path) -> None:
    import multiprocessing

    log_file = tmp_path / "child.log"
    log_file.touch()
    child = multiprocessing.get_context("fork").Process(
        target=_warn_in_child, args=(str(tmp_path / "spool"), str(log_file))
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert "failover: the primary is unreachable at start; spooling" in log_file.read_text()
