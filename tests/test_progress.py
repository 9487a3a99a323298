"""Reading tqdm progress out of prediction logs."""

from __future__ import annotations

from bot.core.progress import Phase, parse_progress, render_bar
from tests.fakes.predictions import tqdm_line


def test_waiting_before_any_bar() -> None:
    progress = parse_progress("Using seed: 99\n", steps=25)
    assert progress.phase is Phase.WAITING and progress.seed == 99 and progress.fraction == 0


def test_latest_sampling_step_and_time_left_from_the_rate() -> None:
    logs = (
        "Using seed: 5\n"
        "  0%|          | 0/25 [00:00<?, ?it/s]\n"
        "  4%|▍         | 1/25 [00:00<00:10,  2.40it/s]\n"
        " 40%|####      | 10/25 [00:04<00:06,  2.50it/s]\n"
    )
    progress = parse_progress(logs, steps=25)
    assert progress.phase is Phase.SAMPLING
    assert (progress.step, progress.total) == (10, 25)
    assert progress.seconds_left == 6.0  # 15 steps at 2.5 it/s
    assert progress.fraction == 0.4


def test_seconds_per_iteration_rates() -> None:
    logs = " 50%|#####     | 5/10 [00:20<00:20,  4.00s/it]\n"
    assert parse_progress(logs, steps=10).seconds_left == 20.0


def test_frame_bar_means_rendering_and_is_not_counted_as_steps() -> None:
    logs = (
        "100%|##########| 25/25 [00:10<00:00,  2.50it/s]\n"
        " 50%|#####     | 8/16 [00:01<00:01,  8.00it/s]\n"
    )
    progress = parse_progress(logs, steps=25)
    assert progress.phase is Phase.RENDERING
    assert (progress.step, progress.total) == (8, 16)
    assert progress.fraction == 1.0


def test_sixteen_steps_is_not_mistaken_for_the_frame_bar() -> None:
    sampling = " 50%|#####     | 8/16 [00:03<00:03,  2.50it/s]\n"
    assert parse_progress(sampling, steps=16).phase is Phase.SAMPLING
    both = "100%|##########| 16/16 [00:06<00:00,  2.50it/s]\n  6%|6         | 1/16 [00:00<00:02]\n"
    assert parse_progress(both, steps=16).phase is Phase.RENDERING


def test_carriage_return_updates_and_the_fake_api_format() -> None:
    logs = "\r".join(tqdm_line(n, 20, n * 0.5) for n in range(8))
    progress = parse_progress(logs, steps=20)
    assert progress.step == 7 and progress.total == 20


def test_unknown_remaining_time() -> None:
    progress = parse_progress("  0%|          | 0/25 [00:00<?, ?it/s]\n", steps=25)
    assert progress.phase is Phase.SAMPLING and progress.seconds_left is None


def test_render_bar_bounds() -> None:
    assert render_bar(0.5, width=10) == "█████░░░░░"
    assert render_bar(-1, width=4) == "░░░░" and render_bar(2, width=4) == "████"
