"""Many predictions at once on a small API budget: the limit holds and results are not late."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bench.figures import peak
from bench.rig import ScaledTime
from bot.backends.replicate import PredictionClient
from bot.core.budgets import ApiUse, Budgets, LocalApiBudget, LocalDiscordBudget
from bot.core.limits import SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI, request_kind
from tests.scheduling import RecordingReporter, submit

SCALE = 0.01  # a 20 s prediction takes 0.2 s
JOBS = 20
BUDGET = 120  # API requests a minute, besides creates


async def test_progress_polls_thin_out_so_the_api_budget_holds_and_results_are_prompt(
    tmp_path: Path,
) -> None:
    async with FakePredictionAPI(time_scale=SCALE) as api, aiohttp.ClientSession() as http:
        epoch, mono0 = api.timeline
        clock = ScaledTime(SCALE, origin=mono0, wall_origin=epoch)
        api.behaviour_for = lambda _data: Behaviour(
            queue_time=1.0, step_time=(20.0 - 1.6) / 25, frame_time=0.1
        )
        store = await SQLiteStore.open(tmp_path / "jobs.sqlite3", clock=clock.wall)
        api_budget = LocalApiBudget(BUDGET, clock=clock.monotonic, sleep=clock.sleep)
        client = PredictionClient(
            http, base_url=api.base_url, token=api.token, version=api.version, sleep=clock.sleep
        )
        scheduler = Scheduler(
            store,
            client,
            limits=SchedulerLimits(
                running_per_guild=1,
                running_total=JOBS,
                status_interval=0,
                progress_poll_seconds=5,
            ),
            clock=clock.monotonic,
            wall_clock=clock.wall,
            sleep=clock.sleep,
            work_root=tmp_path / "work",
            budgets=Budgets(api_budget, LocalDiscordBudget(clock=clock.monotonic)),
        )
        reporter = RecordingReporter()
        scheduler.attach(reporter)
        await scheduler.start()
        try:
            for guild in range(1, JOBS + 1):
                await submit(scheduler, guild=guild, seed=guild, steps=25)
            await reporter.wait_for(lambda: len(reporter.delivered) == JOBS, timeout=30)
        finally:
            await scheduler.stop()
            await store.close()
    others = [
        (r.time - mono0) / SCALE for r in api.requests if request_kind(r.method, r.path) != "create"
    ]
    assert peak(others, 60.0) <= BUDGET
    # Each job alone would read its bar three times (at 5, 10 and 15 s); twenty of them share
    # what the ending requests leave of 108 a minute, so they read it less often, not never.
    progress = api_budget.spent[ApiUse.PROGRESS]
    assert 0 < progress < JOBS * 3
    assert api_budget.spent[ApiUse.ENDING] >= 2 * JOBS  # an aimed poll and a download each
    assert not reporter.failures
    assert len(reporter.delivered) == JOBS
    # No request that ends a job waited for the budget: progress polls left them room. (The
    # lag itself is measured on the manual clock, in tests/test_progress_polling.py: at this
    # time scale a busy machine's millisecond reads as seconds.)
    assert api_budget.waited == 0.0
