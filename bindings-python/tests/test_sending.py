"""What ``send`` returns: a native future of the receipt that asyncio takes as its own.

A memory topic of capacity 1 that no group reads keeps a publish waiting: the first message
fills it, the next waits for room. That gives a ``Sending`` that stays pending as long as a test
needs.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import traceback
import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from unittest import mock

import polybus
import pytest
from conftest import EventLoops, run_handlers
from polybus import get_producer, message_handler
from polybus._polybus import Broker, ClosedError, Sending

CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("CURRENT", default="none")


def _full_topic() -> str:
    """Configures a memory broker whose topics hold one message; returns a topic to use."""
    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}?capacity=1")
    return "full"


async def _pending(topic: str) -> Sending:
    """A send that stays pending: the topic is full once the first message is in."""
    await get_producer().send(topic, {"n": 0})
    sending = get_producer().send(topic, {"n": 1})
    await asyncio.sleep(0.05)
    assert not sending.done()
    return sending


async def _failed() -> Sending:
    """A send that failed: its broker was closed."""
    broker = Broker.connect(url=f"memory://closed-{uuid.uuid4().hex[:8]}")
    await broker.close()
    sending = polybus.Producer(broker).send("t", {"n": 1})
    while not sending.done():
        await asyncio.sleep(0.005)
    return sending


def test_a_thousand_gathered_sends_resolve_in_order(
    broker_url: str, topic: str, loops: EventLoops
) -> None:
    seen: list[int] = []

    @message_handler(topic=topic, concurrency=8)
    async def handle(message: dict) -> None:
        seen.append(message["n"])

    receipts: list[polybus.Receipt] = []

    async def send() -> None:
        producer = get_producer()
        receipts.extend(
            await asyncio.gather(*(producer.send(topic, {"n": n}) for n in range(1000)))
        )

    loops.run(run_handlers(topic, send, until=lambda: len(seen) >= 1000))
    assert sorted(seen) == list(range(1000))
    assert len(receipts) == 1000 and len({r.id for r in receipts}) == 1000
    if broker_url.startswith("memory"):
        assert [r.offset for r in receipts] == list(range(1000))


def test_it_is_a_future_for_asyncio(loops: EventLoops) -> None:
    topic = _full_topic()

    async def main() -> None:
        sending = await _pending(topic)
        assert asyncio.isfuture(sending) and asyncio.iscoroutine(sending)
        assert sending.get_loop() is asyncio.get_running_loop()
        assert repr(sending) == "<Sending pending>"
        with pytest.raises(asyncio.InvalidStateError, match="Result is not set"):
            sending.result()
        with pytest.raises(asyncio.InvalidStateError, match="Exception is not set"):
            sending.exception()
        # shield() takes it as a future and keeps it going.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(sending), 0.02)
        assert not sending.done()
        # wait_for() cancels it at its timeout: the wait stops, the publish carries on.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sending, 0.02)
        assert sending.cancelled() and repr(sending) == "<Sending cancelled>"

    loops.run(main())


def test_done_callbacks_run_in_their_context_and_can_be_removed(loops: EventLoops) -> None:
    async def main() -> None:
        producer = get_producer()
        calls: list[tuple[str, Any]] = []

        def record(name: str) -> Any:
            return lambda fut: calls.append((name, CURRENT.get(), fut.result().offset))

        CURRENT.set("at add")
        sending = producer.send("cb", {"n": 0})
        first, second, removed = record("first"), record("second"), record("removed")
        sending.add_done_callback(first)
        explicit = contextvars.copy_context()
        explicit.run(CURRENT.set, "explicit")
        sending.add_done_callback(second, context=explicit)
        sending.add_done_callback(removed)
        sending.add_done_callback(removed)
        assert sending.remove_done_callback(removed) == 2
        assert sending.remove_done_callback(removed) == 0
        CURRENT.set("later")
        receipt = await sending
        assert calls == [("first", "at add", receipt.offset), ("second", "explicit", 0)]
        # Added once done: scheduled with call_soon, not run on the spot.
        sending.add_done_callback(record("late"))
        assert len(calls) == 2
        await asyncio.sleep(0)
        assert calls[-1] == ("late", "later", 0)

    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    loops.run(main())


def test_a_callback_that_raises_goes_to_the_exception_handler_and_the_others_run(
    loops: EventLoops,
) -> None:
    async def main() -> None:
        reported: list[dict[str, Any]] = []

        def handler(_: Any, ctx: dict[str, Any]) -> None:
            # The handler may use the future (it is not held while the handler runs).
            ctx["future"].add_done_callback(lambda _: None)
            ctx["late_receipt"] = ctx["future"].result()
            reported.append(ctx)

        asyncio.get_running_loop().set_exception_handler(handler)
        producer = get_producer()
        ran: list[int] = []

        def boom(_: Sending) -> None:
            raise ValueError("callback broke")

        first, second = producer.send("cb", {"n": 0}), producer.send("cb", {"n": 1})
        first.add_done_callback(boom)
        first.add_done_callback(lambda _: ran.append(0))
        second.add_done_callback(lambda _: ran.append(1))
        await asyncio.gather(first, second)
        assert ran == [0, 1]
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], ValueError)
        assert reported[0]["future"] is first
        assert reported[0]["message"].startswith("Exception in callback")
        assert reported[0]["late_receipt"] == first.result()

    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    loops.run(main())


def test_keyboard_interrupt_in_a_callback_propagates_and_no_callback_is_lost(
    loops: EventLoops,
) -> None:
    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    ran: list[str] = []

    def interrupt(_: Sending) -> None:
        raise KeyboardInterrupt

    sent: list[Sending] = []

    async def main() -> None:
        # The sends may complete at once: the interrupt must find this loop run under way.
        first, second = get_producer().send("kb", {"n": 0}), get_producer().send("kb", {"n": 1})
        first.add_done_callback(interrupt)
        first.add_done_callback(lambda _: ran.append("first"))
        second.add_done_callback(lambda _: ran.append("second"))
        sent.extend((first, second))
        await asyncio.sleep(5)

    loop = loops.new_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())
        first, second = sent
        assert first.done() and second.done()
        # asyncio runs the callbacks not run yet on its next iteration; uvloop may run what
        # was scheduled in the same one before the interrupt leaves it. Either way none is lost.
        assert ran == [] or loops.name == "uvloop"
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ran == ["first", "second"]
    finally:
        waiting = asyncio.all_tasks(loop)
        for task in waiting:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*waiting, return_exceptions=True))
        loop.close()


def test_cancel_stops_the_wait_and_the_awaiting_task(loops: EventLoops) -> None:
    topic = _full_topic()

    async def main() -> None:
        sending = await _pending(topic)
        waiter = asyncio.ensure_future(asyncio.gather(sending))
        await asyncio.sleep(0)
        assert sending.cancel("enough") and not sending.cancel()
        assert sending.cancelled() and sending.done()
        assert sending._cancel_message == "enough"
        with pytest.raises(asyncio.CancelledError, match="enough"):
            sending.result()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert isinstance(sending._make_cancelled_error(), asyncio.CancelledError)
        # A task awaiting a send is cancelled through it.
        other = get_producer().send(topic, {"n": 2})
        task = asyncio.ensure_future(other)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert other.cancelled()
        # gather(return_exceptions=True) hands the cancellation back as a value.
        third = get_producer().send(topic, {"n": 3})
        gathering = asyncio.ensure_future(asyncio.gather(third, return_exceptions=True))
        await asyncio.sleep(0)
        third.cancel()
        [outcome] = await gathering
        assert isinstance(outcome, asyncio.CancelledError)

    loops.run(main())


def test_a_failed_send_raises_and_an_unread_failure_is_reported(loops: EventLoops) -> None:
    async def main() -> None:
        sending = await _failed()
        with pytest.raises(ClosedError):
            sending.result()
        assert isinstance(sending.exception(), ClosedError)
        assert repr(sending).startswith("<Sending finished exception=ClosedError")
        depths = []
        for _ in range(3):
            try:
                await sending
            except ClosedError as err:
                depths.append(len(traceback.extract_tb(err.__traceback__)))
        assert depths[0] == depths[1] == depths[2], "each raise starts from the same traceback"
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        unread = await _failed()
        del unread
        gc.collect()
        assert [ctx["message"] for ctx in reported] == ["Sending exception was never retrieved"]
        assert isinstance(reported[0]["exception"], ClosedError)
        read = await _failed()
        read.exception()
        del read
        gc.collect()
        assert len(reported) == 1

    loops.run(main())


def test_the_coroutine_protocol(loops: EventLoops) -> None:
    async def main() -> None:
        producer = get_producer()
        receipt = await asyncio.get_running_loop().create_task(producer.send("co", {"n": 0}))
        assert receipt.offset == 0
        done = producer.send("co", {"n": 1})
        await done
        with pytest.raises(StopIteration) as stop:
            done.send(None)
        assert stop.value.value == done.result()
        with pytest.raises(TypeError, match="non-None"):
            done.send(1)
        with pytest.raises(ValueError, match="thrown"):
            done.throw(ValueError("thrown"))
        with pytest.raises(ValueError, match="typed"):
            done.throw(ValueError, "typed")
        with pytest.raises(KeyError, match="a") as raised:
            done.throw(KeyError, ("a",))
        assert raised.value.args == ("a",)
        with pytest.raises(TypeError, match="separate value"):
            done.throw(ValueError("x"), "y")
        with pytest.raises(TypeError, match="BaseException"):
            done.throw(1)
        done.close()

    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    loops.run(main())


def test_headers_may_be_any_mapping_and_anything_else_is_named(loops: EventLoops) -> None:
    seen: list[dict[str, str]] = []

    @message_handler(topic="hdr")
    async def handle(message: dict, context: polybus.MessageContext) -> None:
        seen.append(dict(context.headers))

    async def send() -> None:
        producer = get_producer()
        tenant = MappingProxyType({"tenant": "eu"})
        await producer.send("hdr", {"n": 0}, headers=tenant)
        await producer.send_batch("hdr", [{"n": 1}], headers=tenant)
        await asyncio.to_thread(producer.send_sync, "hdr", {"n": 2}, headers=tenant)
        # One conversion for every way of publishing, with the same errors.
        ways: list[Callable[[Any], Any]] = [
            lambda h: producer.send("hdr", {"n": 9}, headers=h),
            lambda h: producer.send_batch("hdr", [{"n": 9}], headers=h),
            lambda h: producer.send_sync("hdr", {"n": 9}, headers=h),
        ]
        bad = [
            ([("tenant", "eu")], "headers must be a mapping of str to str, not list"),
            ({"tenant": 7}, 'header "tenant" must be a str, not int'),
            ({b"tenant": "eu"}, "header names must be str, not bytes"),
        ]
        for way in ways:
            for headers, error in bad:
                with pytest.raises(TypeError, match=error):
                    sent = way(headers)
                    if asyncio.iscoroutine(sent):
                        await sent

    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    loops.run(run_handlers("hdr", send, until=lambda: len(seen) == 3))
    assert [h["tenant"] for h in seen] == ["eu", "eu", "eu"]


def test_send_can_be_overridden_and_mocked(loops: EventLoops) -> None:
    polybus.configure_messaging(url=f"memory://sending-{uuid.uuid4().hex[:8]}")
    producer = get_producer()
    with mock.patch.object(polybus.Producer, "send") as send:
        producer.send("mocked", {"n": 0})
    send.assert_called_once_with("mocked", {"n": 0})

    class Tagging(polybus.Producer):
        def send(self, topic: str, message: Any, **options: Any) -> Sending:
            return super().send(topic, {**message, "tag": 1}, **options)

    async def main() -> None:
        tagging = Tagging(producer.broker)
        assert (await tagging.send("tagged", {"n": 1})).offset == 0
        assert asyncio.isfuture(producer.send("plain", {"n": 2}))

    loops.run(main())


def test_a_publish_that_fails_after_its_wait_was_cancelled_is_reported(loops: EventLoops) -> None:
    topic = _full_topic()

    async def main() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        sending = await _pending(topic)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sending, 0.01)
        assert not reported
        # Closing the broker fails the publish still waiting for room.
        await get_producer().broker.close()
        deadline = asyncio.get_running_loop().time() + 5
        while not reported:
            assert asyncio.get_running_loop().time() < deadline, "the failure was not reported"
            await asyncio.sleep(0.01)
        assert "wait was cancelled" in reported[0]["message"]
        assert isinstance(reported[0]["exception"], ClosedError)
        assert reported[0]["future"] is sending

    loops.run(main())
