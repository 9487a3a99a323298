"""The status relay: one drainer, throttled and coalesced per key, on a fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.core.relay import StatusRelay


@dataclass
class FakeTime:
    """A clock that moves only when told to, and sleeps that end when it has moved far enough."""

    now: float = 1000.0
    sleepers: list[tuple[float, asyncio.Future[None]]] = field(default_factory=list)

    def clock(self) -> float:
        """Return the fake now."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been moved `seconds` on."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock on, wake the sleeps that are over and let them run."""
        self.now += seconds
        for until, future in list(self.sleepers):
            if until <= self.now and not future.done():
                future.set_result(None)
        self.sleepers = [(u, f) for u, f in self.sleepers if not f.done()]
        await settle_loop()


async def settle_loop() -> None:
    """Let every ready callback run (a few rounds: sends start sends)."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class Recorder:
    """A send target that records each value, optionally held until released."""

    sent: list[tuple[int, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    started: list[tuple[int, str]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)

    async def send(self, key: int, value: str) -> None:
        """Record a value once the gate (if any) opens; fail on the values told to."""
        self.started.append((key, value))
        if self.gate is not None:
            await self.gate.wait()
        if value in self.fail_on:
            raise RuntimeError("Discord said no")
        self.sent.append((key, value))


def relay(
    recorder: Recorder, time: FakeTime, *, interval: float = 5.0, concurrency: int = 8
) -> StatusRelay[int, str]:
    """Make a relay on the fake clock that sends to the recorder."""
    return StatusRelay(
        recorder.send,
        interval=interval,
        clock=time.clock,
        sleep=time.sleep,
        concurrency=concurrency,
    )


async def test_first_value_goes_at_once_then_one_per_interval_with_the_newest_winning() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time)
    statuses.publish(1, "a")
    await settle_loop()
    assert recorder.sent == [(1, "a")]
    statuses.publish(1, "b")
    statuses.publish(1, "c")
    await time.advance(4.9)
    assert recorder.sent == [(1, "a")]  # still inside the interval
    await time.advance(0.1)
    assert recorder.sent == [(1, "a"), (1, "c")]  # "b" was replaced before its turn
    await time.advance(60)
    assert recorder.sent == [(1, "a"), (1, "c")]
    await statuses.close()


async def test_repeats_and_values_back_to_what_is_shown_are_not_sent() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time)
    statuses.publish(1, "a")
    await settle_loop()
    statuses.publish(1, "a")
    statuses.publish(1, "b")
    statuses.publish(1, "a")  # changed back before "b" went out
    await time.advance(10)
    assert recorder.sent == [(1, "a")]
    statuses.prime(2, "shown by the first message")
    statuses.publish(2, "shown by the first message")
    await time.advance(10)
    assert recorder.sent == [(1, "a")]
    await statuses.close()


async def test_many_keys_share_one_drainer_and_a_bounded_number_of_sends() -> None:
    time, recorder = FakeTime(), Recorder(gate=asyncio.Event())
    statuses = relay(recorder, time, concurrency=3)
    before = len(asyncio.all_tasks())
    for key in range(1000):
        statuses.publish(key, "queued")
    await settle_loop()
    # One drainer and three sends in flight, not a task per key.
    assert len(asyncio.all_tasks()) - before == 4
    assert len(recorder.started) == 3
    assert recorder.gate is not None
    recorder.gate.set()
    await settle_loop()
    for _ in range(10_000):  # loop turns, not time: each round of sends takes a few
        if len(recorder.sent) == 1000:
            break
        await asyncio.sleep(0)
    assert sorted(key for key, _ in recorder.sent) == list(range(1000))
    assert statuses.waiting() == 0
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before  # the drainer ends when nothing is left
    await statuses.close()


async def test_keys_take_turns_by_when_each_may_send_next() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time, concurrency=1)
    statuses.publish(1, "a1")
    await settle_loop()
    await time.advance(3)
    statuses.publish(2, "b1")
    statuses.publish(1, "a2")  # due at 5 s, after the new key that may go now
    await settle_loop()
    assert recorder.sent == [(1, "a1"), (2, "b1")]
    await time.advance(2)
    assert recorder.sent == [(1, "a1"), (2, "b1"), (1, "a2")]
    await statuses.close()


async def test_a_value_published_during_a_send_follows_it_after_the_interval() -> None:
    time, recorder = FakeTime(), Recorder(gate=asyncio.Event())
    statuses = relay(recorder, time)
    statuses.publish(1, "a")
    await settle_loop()
    statuses.publish(1, "b")
    assert recorder.gate is not None
    recorder.gate.set()
    await settle_loop()
    assert recorder.sent == [(1, "a")]
    await time.advance(5)
    assert recorder.sent == [(1, "a"), (1, "b")]
    await statuses.close()


async def test_settle_drops_what_is_waiting_and_waits_for_the_send_in_flight() -> None:
    time, recorder = FakeTime(), Recorder(gate=asyncio.Event())
    statuses = relay(recorder, time)
    statuses.publish(1, "a")
    await settle_loop()
    statuses.publish(1, "b")  # waits behind "a"
    settling = asyncio.ensure_future(statuses.settle(1))
    await settle_loop()
    assert not settling.done()  # "a" is still being sent
    assert recorder.gate is not None
    recorder.gate.set()
    await settling
    await time.advance(60)
    assert recorder.sent == [(1, "a")]
    # A key waiting out its interval settles at once, and its value is never sent.
    recorder.gate = None
    statuses.publish(2, "x")
    await settle_loop()
    statuses.publish(2, "y")
    await statuses.settle(2)
    await time.advance(60)
    assert recorder.sent == [(1, "a"), (2, "x")]
    await statuses.close()


async def test_a_settled_key_takes_no_edit_over_its_final_message_until_forgotten() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time)
    statuses.publish(1, "running")
    await settle_loop()
    await statuses.settle(1)
    await statuses.settle(2)  # settled before anything was published for it
    recorder.sent.append((1, "final"))  # the final message, written by other means
    statuses.publish(1, "late")  # e.g. a store outage's note, restored after the final word
    statuses.publish(2, "late")
    await time.advance(60)
    assert recorder.sent == [(1, "running"), (1, "final")]
    # Forgotten (the job left the queues), the key is a new one: a rerun is shown again.
    statuses.forget(1)
    statuses.publish(1, "again")
    await time.advance(60)
    assert recorder.sent[-1] == (1, "again")
    await statuses.close()


async def test_a_failed_send_is_logged_and_the_key_goes_on() -> None:
    time, recorder = FakeTime(), Recorder(fail_on={"bad"})
    statuses = relay(recorder, time)
    statuses.publish(1, "bad")
    await settle_loop()
    statuses.publish(1, "good")
    await time.advance(5)
    assert recorder.sent == [(1, "good")]
    await statuses.close()


async def test_close_accepts_nothing_more() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time)
    statuses.publish(1, "a")
    await settle_loop()
    statuses.publish(1, "b")
    await statuses.close()
    statuses.publish(1, "c")
    statuses.publish(2, "d")
    await time.advance(60)
    assert recorder.sent == [(1, "a")]


async def test_zero_interval_sends_each_change_as_soon_as_the_last_one_landed() -> None:
    time, recorder = FakeTime(), Recorder()
    statuses = relay(recorder, time, interval=0)
    for value in ("a", "b", "c"):
        statuses.publish(1, value)
        await settle_loop()
    assert recorder.sent == [(1, "a"), (1, "b"), (1, "c")]
    await statuses.close()
