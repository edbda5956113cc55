"""The CPU budget (--max-cpu): its levels of shedding, a step at a time, on fake clocks and
a fake CPU; only a flood sheds. What each level sheds in a real flood is in test_flood.py."""

from __future__ import annotations

import subprocess
import sys

from load import HERE

import lognet
from conftest import FakeClock


def budget_levels(budget, clock, cpu, shares, sockets_a_second):
    """The levels a budget decides each quarter second, with lognet's share of a core and
    the sockets opened or closed a second in each."""
    levels = []
    for share, rate in zip(shares, sockets_a_second):
        clock.now += 0.25
        cpu.now += share * 0.25
        budget.count(int(rate * 0.25))
        levels.append(budget.level())
    return levels


def test_the_budget_sheds_a_step_at_a_time_and_takes_them_back_below_half():
    clock, cpu = FakeClock(), FakeClock()
    cpu.now = 0.0
    budget = lognet.CpuBudget(10, 1.0, cpu=cpu, clock=clock)
    shares = [0.05] * 4 + [0.5] * 12 + [0.07] * 8 + [0.01] * 12  # lognet's share of a core, each quarter second
    levels = budget_levels(budget, clock, cpu, shares, [5_000] * len(shares))  # a flood all along
    # Under 10% over the last second: nothing shed. One quarter second at 50% takes the second
    # to 16%: one step at once (polls stretched: under twice the budget, that may do), then one
    # a quarter second up to the last. Back at 7%, under
    # the budget but above half of it, it holds; below half (from the second quarter at 1%),
    # one step back each quarter second.
    assert levels == [0] * 4 + [1, 2, 3] + [4] * 9 + [4] * 8 + [4, 3, 2, 1, 0] + [0] * 7
    assert budget.spells == 1
    assert lognet.CpuBudget(10, cpu=cpu, clock=clock).level() == 0


def test_lognets_own_cost_at_a_short_interval_is_no_flood():
    # Over its budget, at 50% of a core for 5 s, with 2 connections a second (4 sockets): the
    # interval the user chose costs that much, and nothing is shed. Then a flood: shedding begins.
    clock, cpu = FakeClock(), FakeClock()
    cpu.now = 0.0
    budget = lognet.CpuBudget(10, 0.05, cpu=cpu, clock=clock)
    quiet = budget_levels(budget, clock, cpu, [0.5] * 20, [4] * 20)
    assert quiet == [0] * 20 and budget.spells == 0
    flood = budget_levels(budget, clock, cpu, [0.5] * 8, [2 * lognet.FLOOD_RATE] * 8)
    assert flood[0] == 0 and flood[-1] >= lognet.SHED_WATCHER and flood == sorted(flood)
    # the flood stops; lognet still over its budget: the steps come back one by one
    after = budget_levels(budget, clock, cpu, [0.5] * 40, [0] * 40)
    assert after[-1] == 0 and all(a - b in (0, 1) for a, b in zip([flood[-1]] + after, after))


def test_a_held_floor_stays_for_every_caller_until_held_again():
    # While TCP's close events are paused, no level below the pause: whoever asks, with no CPU used.
    clock = FakeClock()
    budget = lognet.CpuBudget(10, cpu=lambda: 0.0, clock=clock)
    budget.hold(lognet.SHED_PAUSE, floor=lognet.SHED_PAUSE)
    levels = []
    for _ in range(8):
        clock.now += lognet.SHED_STEP * 1.01  # a little more: no float rounding below the step
        levels.append(budget.level())
    assert levels == [lognet.SHED_PAUSE] * 8
    budget.hold(lognet.SHED_CLOSES)  # resumed: counted, not decoded, at first, then taken back
    for _ in range(8):
        clock.now += lognet.SHED_STEP * 1.01  # a little more: no float rounding below the step
        levels.append(budget.level())
    assert levels[8:] == [2, 1, 0, 0, 0, 0, 0, 0]


def test_a_full_polls_burst_is_not_a_flood():
    clock, cpu = FakeClock(), FakeClock()
    cpu.now = 0.0
    budget = lognet.CpuBudget(10, 3.0, cpu=cpu, clock=clock)  # polls every 3 s
    levels = []
    for quarter in range(48):  # 12 s: each poll takes 150 ms of CPU, and the rest of the time 4%
        clock.now += 0.25
        cpu.now += 0.01 + (0.15 if quarter % 12 == 0 else 0)
        budget.count(2 * lognet.FLOOD_RATE)  # sockets come and go fast enough for a flood, all along
        levels.append(budget.level())
    # each second with a poll is at 19%, but each 3 s at 8%: nothing is shed
    assert levels == [0] * 48
    for _ in range(12):  # then a flood: 30% in every second
        clock.now += 0.25
        cpu.now += 0.075
        budget.count(2 * lognet.FLOOD_RATE)
        levels.append(budget.level())
    flood = levels[48:]
    # shedding begins within a second, one step a quarter second, up to the last; the first,
    # far over the budget, stretches the polls and stops the watcher's dumps at once
    assert lognet.SHED_WATCHER in flood[:4] and flood == sorted(flood) and flood[-1] == lognet.SHED_PAUSE
    assert lognet.SHED_POLLS not in flood
    assert all(b - a <= (2 if a == 0 else 1) for a, b in zip(flood, flood[1:]))


def test_max_cpu_refuses_what_is_not_a_share_of_a_core():
    for value in ("0", "-1", "x", "101", "nan"):
        result = subprocess.run([sys.executable, str(HERE.parent / "lognet.py"), "--max-cpu", value, "-n", "1"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, value
        assert result.stderr.startswith("lognet: error: argument --max-cpu: ") and result.stderr.count("\n") == 1
