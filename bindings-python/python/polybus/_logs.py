"""The engine's log records in Python's ``logging``.

The engine (and librdkafka under it) logs in Rust; a thread of this process takes those records
in batches and logs each under a logger below ``polybus``: ``polybus.brokers.redis.streams``,
``polybus.failover.broker``, ``polybus.librdkafka``... Warnings and errors are passed on by
default; the effective level of the ``polybus`` logger decides, and a change to it is picked up
within a second and whenever a broker is connected (librdkafka reads its level then). The
record's structured fields are in ``record.polybus_fields`` (a dict).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from typing import Optional

from . import _polybus

#: Python's level number for the engine's trace records.
TRACE = 5
_BATCH = 500
_WAIT_SECONDS = 1.0
_STOP_SECONDS = 2.0


class _Forwarder:
    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._level: Optional[int] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is not None or not _polybus.install_logging():
            # Started already, or a Rust program embedding Python has its own subscriber.
            return
        if logging.getLevelName(TRACE) == f"Level {TRACE}":
            logging.addLevelName(TRACE, "TRACE")
        self.sync_level()
        self._spawn()
        atexit.register(self.stop)
        # A forked child has no thread of its parent's: it starts its own. The queue's lock is
        # held across the fork, so the child never inherits it taken by a thread it lacks.
        os.register_at_fork(
            before=_polybus.log_records_before_fork,
            after_in_parent=functools.partial(_polybus.log_records_after_fork, False),
            after_in_child=self._after_fork,
        )

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="polybus-logs", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        _polybus.log_records_after_fork(True)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._spawn()

    def sync_level(self) -> None:
        """Passes on records at the ``polybus`` logger's effective level and above."""
        logger = logging.getLogger("polybus")
        level = logger.getEffectiveLevel() if not logger.disabled else logging.CRITICAL + 1
        with self._lock:
            if level != self._level:
                self._level = level
                _polybus.set_log_level(level)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._emit(_polybus.next_log_records(_BATCH, _WAIT_SECONDS))
                self.sync_level()
            except Exception:  # noqa: BLE001 - a handler's failure must not end forwarding
                logging.getLogger("polybus").exception("passing on engine log records failed")

    def stop(self) -> None:
        """Ends the thread, then logs what is still waiting (at exit: nothing is lost)."""
        self._stopping.set()
        _polybus.wake_log_records()
        if self._thread is not None:
            self._thread.join(_STOP_SECONDS)
        # Bounded: what the queue can hold, not a source that keeps logging.
        for _ in range(_polybus.LOG_QUEUE_CAPACITY // _BATCH + 1):
            records = _polybus.take_log_records(_BATCH)
            if not records:
                break
            self._emit(records)

    @staticmethod
    def _emit(records: list[tuple[int, str, str, dict[str, str]]]) -> None:
        for levelno, name, text, fields in records:
            logger = logging.getLogger(name)
            if logger.isEnabledFor(levelno):
                logger.log(levelno, "%s", text, extra={"polybus_fields": fields})


_forwarder = _Forwarder()


def start() -> None:
    """Starts passing on the engine's records (once; on importing ``polybus``)."""
    _forwarder.start()


def sync_level() -> None:
    """Reads the ``polybus`` logger's level now (before a broker, and librdkafka, starts)."""
    _forwarder.sync_level()
