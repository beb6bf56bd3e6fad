"""Runs registered handlers on the asyncio loop, fed by the engine's consumer in batches."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _polybus
from ._codec import decode
from ._config import default_group, get_broker
from ._handlers import HandlerSpec, providers
from ._types import MessageContext

if TYPE_CHECKING:
    # (token, run, body, payload, content_type, topic, id, key, headers, timestamp_ms,
    #  attempt, partition, offset): jobs of one run (one key's or partition's queue) are
    #  handled in order; body is the payload the engine decoded, or NOT_DECODED. For a handler
    #  of the message alone, jobs are the first five items (payload and content_type None
    #  when the body was decoded).
    from ._polybus import Job, Outcome

_NOT_DECODED = _polybus.NOT_DECODED

_BATCH = 256
_POLL_SECONDS = 0.2


class _Validation(Exception):
    """A payload that does not fit the handler's schema: dead-lettered without retries."""


class HandlerRunner:
    """One registered handler consuming its topics through the engine."""

    def __init__(
        self,
        spec: HandlerSpec,
        broker: Optional[_polybus.Broker] = None,
        *,
        group: Optional[str] = None,
        concurrency: Optional[int] = None,
    ) -> None:
        self.spec = spec
        self._broker = broker
        self.group = group or spec.group or f"{default_group()}.{spec.name}"
        self._concurrency = concurrency or spec.concurrency
        self._native: Optional[_polybus.NativeConsumer] = None
        self._pump: Optional[asyncio.Task[None]] = None
        self._stopping: Optional[asyncio.Future[dict[str, int]]] = None
        self._outcomes: list[Outcome] = []
        self._flush_scheduled = False
        # Jobs handed out by the engine wait here for one of `concurrency` workers: a job on its
        # own (a tuple) or the id of a run (one key's or partition's queue, handled in order).
        self._ready: deque[Union[Job, int]] = deque()
        self._runs: dict[int, deque[Job]] = {}
        self._idle: list[asyncio.Future[None]] = []
        # Workers woken that have not run yet: while one is on its way, no other is woken.
        self._waking = 0
        self._draining = False
        # Stopping: jobs not started go back to the broker instead of to a worker.
        self._releasing = False
        self._call = _Caller(spec)

    async def start(self) -> None:
        """Subscribes and starts handling messages in the background."""
        broker = self._broker or get_broker()
        spec = self.spec
        self._native = await broker.consumer(
            {
                "topics": list(spec.topics),
                "group": self.group,
                "concurrency": self._concurrency,
                # Up to `prefetch` jobs (None: the broker's default) wait on this side for a
                # free worker, so the workers never idle while the engine refills. With one at a
                # time, every message is handled in the order received (the engine hands them
                # over as ordered runs).
                "sequential": self._concurrency == 1,
                "prefetch": spec.prefetch,
                "start": spec.start,
                "max_retries": spec.max_retries,
                "retry_delay": spec.retry_delay,
                "retry_backoff": spec.retry_backoff,
                "max_retry_delay": spec.max_retry_delay,
                "jitter": spec.jitter,
                "dead_letter": spec.dead_letter,
                "dedup": spec.dedup,
                "dedup_ttl": spec.dedup_ttl,
                "drain_timeout": 30.0,
                "body_only": self._call.direct is not None,
            }
        )
        self._pump = asyncio.ensure_future(self._run())

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until the subscription receives (for Kafka: partitions assigned)."""
        assert self._native is not None, "start() first"
        await self._native.wait_ready(timeout)

    def stats(self) -> dict[str, int]:
        """The engine's counters for this handler."""
        return dict(self._native.stats()) if self._native is not None else {}

    async def stop(self) -> dict[str, int]:
        """Stops fetching, lets the handlers already running finish (and their messages be
        acknowledged), gives the messages not started back to the broker, and closes."""
        native = self._native
        if native is None:
            return {}
        if self._stopping is None:
            self._release_waiting()
            self._stopping = asyncio.ensure_future(native.stop())
        stats = await self._stopping
        if self._pump is not None:
            await self._pump
        return dict(stats)

    async def _run(self) -> None:
        native = self._native
        assert native is not None
        workers = [asyncio.ensure_future(self._work()) for _ in range(self._concurrency)]
        ready = self._ready
        runs = self._runs
        # Keep pumping until the engine's stop has drained: jobs it still hands out need us.
        while self._stopping is None or not self._stopping.done():
            jobs: list[Job] = await native.next_batch(_BATCH, _POLL_SECONDS)
            if self._releasing:
                for job in jobs:
                    self._report((job[0],))
                continue
            for job in jobs:
                run = job[1]
                if run is None:
                    ready.append(job)
                elif run in runs:
                    runs[run].append(job)
                else:
                    runs[run] = deque((job,))
                    ready.append(run)
            self._wake_workers()
        self._draining = True
        self._wake_workers(everyone=True)
        await asyncio.gather(*workers, return_exceptions=True)
        self._flush()

    def _release_waiting(self) -> None:
        """Gives back every job not started: the engine releases their messages to the broker
        as they came (no attempt counted), and jobs handed out from now on go the same way."""
        self._releasing = True
        for item in self._ready:
            if type(item) is int:
                for job in self._runs.pop(item, ()):
                    self._report((job[0],))
            else:
                self._report((item[0],))
        self._ready.clear()
        # The runs a worker is in the middle of: it finishes its current job and stops there.
        for queue in self._runs.values():
            for job in queue:
                self._report((job[0],))
            queue.clear()

    def _wake_workers(self, everyone: bool = False) -> None:
        """Wakes one idle worker for waiting jobs (every idle one when `everyone`). A worker
        that takes a job while more wait wakes the next, so workers join one by one as
        handlers suspend, instead of all of them for every batch: with handlers that do not
        suspend, one worker handles a whole batch and at most one other wakes for nothing."""
        idle = self._idle
        if not everyone and (self._waking or not self._ready):
            return
        while idle:
            waiter = idle.pop()
            if waiter.done():
                continue
            self._waking += 1
            waiter.set_result(None)
            if not everyone:
                return

    async def _work(self) -> None:
        """One of `concurrency` workers: handles waiting jobs one at a time (a run's jobs in
        order), and sleeps when there are none."""
        loop = asyncio.get_running_loop()
        ready = self._ready
        runs = self._runs
        while True:
            while ready:
                item = ready.popleft()
                if ready:
                    self._wake_workers()
                if type(item) is not int:
                    await self._handle(item)
                    continue
                queue = runs[item]
                try:
                    while queue:
                        await self._handle(queue.popleft())
                finally:
                    # A worker stopped midway (cancelled) gives back the rest of its run.
                    for job in queue:
                        self._report((job[0],))
                    del runs[item]
            if self._draining:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle.append(waiter)
            try:
                await waiter
            finally:
                if waiter.done() and not waiter.cancelled():
                    self._waking -= 1

    async def _handle(self, job: Job) -> None:
        token = job[0]
        call = self._call
        try:
            if call.direct is not None:
                # An async handler of the message alone: called here, one frame less per message.
                body = job[2]
                await call.direct(call.decode(job) if body is _NOT_DECODED else body)
            else:
                await call(job)
        except _Validation as err:
            self._report((token, str(err), "ValidationError", True))
        except Exception as err:  # the handler's failure is the message's outcome
            self._report((token, str(err) or repr(err), type(err).__name__, False))
        except asyncio.CancelledError:
            if _worker_cancelled():
                self._report((token,))  # not handled: back to the broker
                raise
            # The handler's own (it awaited something cancelled elsewhere): a failure.
            self._report((token, "the handler was cancelled", "CancelledError", False))
        except BaseException:
            self._report((token,))
            raise
        else:
            self._report(token)

    def _report(self, outcome: Outcome) -> None:
        # Outcomes of one loop tick cross into the engine together.
        self._outcomes.append(outcome)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outcomes and self._native is not None:
            outcomes, self._outcomes = self._outcomes, []
            self._native.complete(outcomes)


class _Caller:
    """Calls a handler with the decoded message and its resolved parameters."""

    def __init__(self, spec: HandlerSpec) -> None:
        self.spec = spec
        func = spec.func
        self.is_async = inspect.iscoroutinefunction(func)
        params = list(inspect.signature(func).parameters.values())
        self.extra = [p for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        available = providers()
        missing = [
            p.name
            for p in self.extra
            if p.name != "context"
            and p.annotation is not MessageContext
            and p.name not in available
            and p.default is p.empty
        ]
        if missing:
            raise TypeError(
                f"handler {spec.name} needs {', '.join(missing)}: "
                "register them with polybus.provide(name, value)"
            )
        # The common cases (no parameter but the message, or only the context) skip resolving
        # providers per message.
        self.context_names = [
            p.name for p in self.extra if p.name == "context" or p.annotation is MessageContext
        ]
        self.resolves = len(self.context_names) < len(self.extra)
        # The handler itself when nothing but the decoded message is passed to it.
        plain = spec.schema is None and not self.extra
        self.direct: Optional[Callable[[Any], Any]] = func if self.is_async and plain else None

    @staticmethod
    def decode(job: Job) -> Any:
        """The message of a job whose payload the engine left to Python."""
        content_type = job[4]
        try:
            return decode(job[3], content_type)
        except ValueError as err:
            raise _Validation(f"payload is not valid {content_type}: {err}") from err

    async def __call__(self, job: Job) -> None:
        body: Any = job[2]
        payload, content_type, topic, msg_id, key, headers, ts, attempt, partition, offset = job[3:]
        if body is _NOT_DECODED:
            body = self.decode(job)
        if self.spec.schema is not None:
            body = _validate(self.spec.schema, body)
        if not self.resolves and not self.context_names:
            await self._invoke(body, {})
            return
        context = MessageContext(
            msg_id, topic, key, headers, payload, content_type, ts, attempt, partition, offset
        )
        if not self.resolves:
            await self._invoke(body, dict.fromkeys(self.context_names, context))
            return
        async with _resolved(self.extra, context) as kwargs:
            await self._invoke(body, kwargs)

    async def _invoke(self, body: Any, kwargs: dict[str, Any]) -> None:
        if self.is_async:
            await self.spec.func(body, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, functools.partial(self.spec.func, body, **kwargs))


def _worker_cancelled() -> bool:
    """Whether the running task is being cancelled (rather than a handler raising a
    CancelledError of its own). Before Python 3.11 the two cannot be told apart: a cancel."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


def _validate(schema: type, body: Any) -> Any:
    validate: Optional[Callable[[Any], Any]] = getattr(schema, "model_validate", None)
    try:
        if validate is not None:
            return validate(body)
        return schema(**body) if isinstance(body, dict) else schema(body)
    except Exception as err:  # pydantic.ValidationError and constructor errors alike
        raise _Validation(f"payload does not match {schema.__name__}: {err}") from err


@contextlib.asynccontextmanager
async def _resolved(
    params: Sequence[inspect.Parameter], context: MessageContext
) -> AsyncIterator[dict[str, Any]]:
    available = providers()
    kwargs: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        for param in params:
            if param.name == "context" or param.annotation is MessageContext:
                kwargs[param.name] = context
                continue
            if param.name not in available:
                continue
            provider = available[param.name]
            if inspect.isasyncgenfunction(provider):
                kwargs[param.name] = await stack.enter_async_context(
                    contextlib.asynccontextmanager(provider)()
                )
            elif callable(provider) and not isinstance(provider, type):
                value = provider()
                kwargs[param.name] = await value if inspect.isawaitable(value) else value
            else:
                kwargs[param.name] = provider
        yield kwargs
