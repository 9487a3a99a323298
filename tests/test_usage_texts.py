"""The /animate-usage text: costs per backend kind, and what the daily budget counts."""

from __future__ import annotations

from bot.owner.quotas import DAY, DayUsage, MemberUsage, Prices, UsageReport
from bot.storage.base import GpuSeconds
from bot.texts.formatting import DESCRIPTION_LIMIT
from bot.texts.owner import usage_text

TODAY = 1_796_083_200.0  # a UTC midnight: 2026-12-01
SINCE = TODAY - 29 * DAY
REPLICATE = 0.000725
MEMBER, OTHER_MEMBER = 10, 11


def _report(
    today: GpuSeconds, *, earlier: GpuSeconds | None = None, own_price: float = 0.0, budget=0.0
) -> UsageReport:
    """Two members' use: `earlier` on the day before (if any) and `today`."""
    days = [DayUsage(TODAY, 2, today)]
    if earlier is not None:
        days.insert(0, DayUsage(TODAY - DAY, 1, earlier))
    everything = sum((day.gpu for day in days), GpuSeconds())
    return UsageReport(
        since=SINCE,
        days=tuple(days),
        members=(
            MemberUsage(OTHER_MEMBER, 2, GpuSeconds(0, everything.own)),
            MemberUsage(MEMBER, len(days), GpuSeconds(everything.replicate, 0)),
        ),
        prices=Prices(replicate=REPLICATE, own=own_price),
        today=today,
        daily_budget=budget,
    )


def test_replicate_only_usage_reads_as_before() -> None:
    text = usage_text(_report(GpuSeconds(300, 0), budget=600))
    assert "cost estimated at $0.000725 per GPU second)" in text
    assert "Total: 2 predictions · 300.0 GPU seconds · ≈ $0.22\n" in text
    assert "Today: 300.0 of the 600 GPU seconds the server may use per day." in text
    assert "2026-12-01 · 2 · 300.0 s · $0.22" in text
    assert f"<@{MEMBER}> · 1 · 300.0 s · $0.22" in text
    assert "own GPUs" not in text and "Replicate" not in text


def test_free_own_gpus_are_shown_apart_and_left_out_of_the_budget() -> None:
    text = usage_text(_report(GpuSeconds(120, 300), earlier=GpuSeconds(0, 1000), budget=600))
    assert "$0.000725 per GPU second on Replicate and nothing on your own GPUs)" in text
    assert (
        "Total: 3 predictions · 1,420.0 GPU seconds · ≈ $0.09: "
        "Replicate 120.0 s ≈ $0.09 · own GPUs 1,300.0 s (free)" in text
    )
    assert (
        "Today: Replicate 120.0 s ≈ $0.09 · own GPUs 300.0 s (free). The daily budget counts "
        "only paid seconds: 120.0 of the 600 GPU seconds the server may use per day." in text
    )
    assert "2026-12-01 · 2 · Replicate 120.0 s $0.09 · own 300.0 s\n" in text
    assert "2026-11-30 · 1 · Replicate 0.0 s $0.00 · own 1,000.0 s\n" in text
    assert f"<@{OTHER_MEMBER}> · 2 · Replicate 0.0 s $0.00 · own 1,300.0 s\n" in text
    assert text.endswith(f"<@{MEMBER}> · 2 · Replicate 120.0 s $0.09 · own 0.0 s")


def test_priced_own_gpus_are_costed_and_counted_by_the_budget() -> None:
    text = usage_text(_report(GpuSeconds(120, 300), own_price=0.001, budget=600))
    assert "$0.000725 per GPU second on Replicate and $0.001 on your own GPUs)" in text
    assert "≈ $0.39: Replicate 120.0 s ≈ $0.09 · own GPUs 300.0 s ≈ $0.30" in text
    assert (
        "Today: 420.0 of the 600 GPU seconds the server may use per day "
        "(Replicate 120.0 s ≈ $0.09 · own GPUs 300.0 s ≈ $0.30)." in text
    )
    assert "2026-12-01 · 2 · Replicate 120.0 s $0.09 · own 300.0 s $0.30\n" in text
    assert "(free)" not in text


def test_without_a_budget_today_is_split_too() -> None:
    text = usage_text(_report(GpuSeconds(0, 42)))
    assert (
        "Today: 42.0 GPU seconds (Replicate 0.0 s ≈ $0.00 · own GPUs 42.0 s (free); "
        "no daily budget)." in text
    )


def test_thirty_split_days_and_every_member_shown_fit_one_embed() -> None:
    big = GpuSeconds(86_399.9, 86_399.9)
    report = UsageReport(
        since=SINCE,
        days=tuple(DayUsage(SINCE + i * DAY, 9_999, big) for i in range(30)),
        members=tuple(MemberUsage(10**18 + n, 9_999, big) for n in range(20)),
        prices=Prices(replicate=REPLICATE, own=0.000_125),
        today=big,
        daily_budget=8_640_000,
    )
    text = usage_text(report)
    assert len(text) <= DESCRIPTION_LIMIT
    assert text.endswith("…and 5 more members.")  # nothing was cut off
