"""Estimates from measured history: the pure rules, and the history kept in SQLite."""

from __future__ import annotations

from pathlib import Path

from bot.core.eta import (
    FINISH_ALLOWANCE,
    MIN_LEFT,
    Estimate,
    Timing,
    TimingHistory,
    granularity,
    observed,
    queue_finishes,
    running_finish,
    steady,
)
from bot.storage.sqlite import TIMINGS_KEPT, SQLiteStore

TOON, LYRIEL = "toonyou_beta3.safetensors", "lyriel_v16.safetensors"


def test_no_history_means_no_estimate() -> None:
    assert TimingHistory().estimate(TOON, 25) is None


def test_estimate_is_the_median_of_the_newest_runs_of_that_model_and_steps() -> None:
    history = TimingHistory(
        [Timing(TOON, 25, wait, run) for wait, run in ((1, 30), (2, 40), (100, 500), (3, 50))]
        + [Timing(TOON, 10, 0, 5), Timing(LYRIEL, 25, 9, 99)]
    )
    assert history.estimate(TOON, 25) == Estimate(queue_wait=2.5, run_time=45)
    assert history.estimate(TOON, 10) == Estimate(queue_wait=0, run_time=5)


def test_old_runs_drop_out() -> None:
    history = TimingHistory(keep=3)
    for run in (1000, 1000, 10, 20, 30):
        history.add(Timing(TOON, 25, 0, run))
    assert history.estimate(TOON, 25) == Estimate(0, 20)


def test_another_model_with_the_same_steps_stands_in_and_other_steps_do_not() -> None:
    history = TimingHistory([Timing(LYRIEL, 25, 4, 60)])
    assert history.estimate(TOON, 25) == Estimate(4, 60)
    assert history.estimate(TOON, 30) is None


def test_adding_a_run_says_whether_any_estimate_moved() -> None:
    history = TimingHistory()
    assert history.add(Timing(TOON, 25, 0, 40))  # the first estimate for 25 steps
    assert history.add(Timing(TOON, 25, 0, 60))  # the median is now 50
    assert not history.add(Timing(TOON, 25, 0, 50))  # still 50, for the model and the steps
    # Another model's run moves the fallback for these steps, which models without runs use.
    assert history.add(Timing(LYRIEL, 25, 0, 90))
    assert history.estimate(TOON, 25) == Estimate(0, 50)


def test_observed_reads_the_apis_own_timestamps() -> None:
    timing = observed(
        TOON,
        25,
        created_at="2024-05-01T10:00:00.000000Z",
        started_at="2024-05-01T10:00:07.500000Z",
        completed_at="2024-05-01T10:01:00.000000Z",
        predict_time=51.25,
    )
    assert timing == Timing(TOON, 25, queue_wait=7.5, run_time=51.25)
    # Without predict_time the run time is completed - started; without created_at, no wait.
    assert observed(
        TOON,
        25,
        created_at=None,
        started_at="2024-05-01T10:00:07+00:00",
        completed_at="2024-05-01T10:01:00+00:00",
        predict_time=None,
    ) == Timing(TOON, 25, 0.0, 53.0)
    assert (
        observed(TOON, 25, created_at=None, started_at=None, completed_at=None, predict_time=None)
        is None
    )
    assert observed(
        TOON, 25, created_at="garbage", started_at=None, completed_at=None, predict_time=2.0
    ) == Timing(TOON, 25, 0.0, 2.0)


def test_a_running_job_finishes_after_its_wait_and_run_time() -> None:
    estimate = Estimate(queue_wait=20, run_time=60)
    now = 1000.0
    # Just submitted: wait, then run.
    assert running_finish(estimate, now=now, submitted_at=now) == now + 80
    # Waiting for a GPU longer than usual: it still needs the whole run once it starts.
    assert running_finish(estimate, now=now, submitted_at=now - 50) == now + 60
    # On a GPU since 30 s ago (the API's started_at): half done.
    assert running_finish(estimate, now=now, submitted_at=now - 40, started_at=now - 30) == (
        now + 30
    )
    # Past its estimate: never "ago".
    assert (
        running_finish(estimate, now=now, submitted_at=now - 500, started_at=now - 400)
        == now + MIN_LEFT
    )
    # The model's progress bar wins, even without history.
    assert running_finish(None, now=now, submitted_at=now, seconds_left=12) == (
        now + 12 + FINISH_ALLOWANCE
    )
    assert running_finish(None, now=now, submitted_at=now) is None


def test_the_queue_is_simulated_over_the_servers_slots() -> None:
    ten = Estimate(0, 10)
    # One slot, busy for 5 more seconds: jobs follow one another.
    assert queue_finishes([5.0], [ten, ten, ten], slots=1) == [15, 25, 35]
    # Two slots, one free: the first starts now, the second when the running one ends.
    assert queue_finishes([5.0], [ten, ten, ten], slots=2) == [10, 15, 20]
    # Nothing running: the slots are free.
    assert queue_finishes([], [ten, Estimate(2, 3)], slots=1) == [10, 15]
    # More running than slots (resumed past the limit): both must end before any start.
    assert queue_finishes([5.0, 8.0], [ten], slots=1) == [18]


def test_no_estimate_behind_a_job_without_one() -> None:
    ten = Estimate(0, 10)
    assert queue_finishes([None], [ten], slots=1) == [None]
    assert queue_finishes([], [ten, None, ten], slots=1) == [10, None, None]


def test_shown_estimates_are_rounded_and_kept_while_about_right() -> None:
    now = 1_000_003.0
    assert granularity(30) == 10 and granularity(300) == 30 and granularity(3000) == 60
    assert granularity(5000) == 300
    first = steady(None, now + 42.3, now)
    assert first == 1_000_050  # rounded up to 10 s
    # It wobbles by a few seconds from poll to poll: what is shown stays.
    for wobble in (-4, -1, 2, 6):
        assert steady(first, now + 42.3 + wobble, now) == first
    # A real change shows.
    assert steady(first, now + 80, now) == 1_000_090
    # Once the shown time has passed it is never kept.
    assert steady(first, first + 1, first + 0.5) == first + 10
    # Far away, coarser steps.
    assert steady(None, now + 1000, now) % 60 == 0


async def test_the_store_keeps_the_newest_timings_per_model_and_steps(tmp_path: Path) -> None:
    path = tmp_path / "timings.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        for run in range(TIMINGS_KEPT + 5):
            await store.record_timing(Timing(TOON, 25, 1.0, float(run)))
        await store.record_timing(Timing(LYRIEL, 10, 2.0, 7.0))
    finally:
        await store.close()
    store = await SQLiteStore.open(path)  # survives a restart
    try:
        newest = await store.recent_timings(3)
        assert newest == [
            Timing(TOON, 25, 1.0, float(TIMINGS_KEPT + 2)),
            Timing(TOON, 25, 1.0, float(TIMINGS_KEPT + 3)),
            Timing(TOON, 25, 1.0, float(TIMINGS_KEPT + 4)),
            Timing(LYRIEL, 10, 2.0, 7.0),
        ]
        every = await store.recent_timings(10_000)
        assert len(every) == TIMINGS_KEPT + 1  # the oldest were pruned
        assert min(t.run_time for t in every if t.model == TOON) == 5.0
    finally:
        await store.close()
