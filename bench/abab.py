"""Interleaved benchmark rounds: every figure beside its reference.

On a shared machine the speed of the CPU drifts by tens of percent over
seconds (other processes, frequency scaling), so a figure measured once and
a reference measured a second later are not comparable. Here each round
runs every case once, back to back, and a ratio is only ever taken between
two cases of the same round; the order of the cases is reversed every
other round (A B, B A, A B, ...), so neither side always runs first.
Reported: the median of the per-round ratios and their spread (min-max).

    cases = {"ours": measure_ours, "ref": measure_ref}   # each -> ops/s
    runs = interleave(cases, rounds=7)
    print(fmt_ratio(ratios(runs["ours"], runs["ref"])))   # 0.83x (0.79-0.88, n=7)

No timed assertions are made anywhere: these are reports, not tests.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

__all__ = ["MIN_ROUNDS", "CPU", "rate", "batch_rate", "interleave", "ratios", "summary",
           "fmt_ratio", "fmt_rate"]

MIN_ROUNDS = 5  # at least five pairs per ratio, or the median says little
# For single-threaded, CPU-bound cases in this process: CPU time, not wall
# time, so that time spent descheduled (other processes on a shared
# machine) is not charged to whichever case was running.
CPU = time.process_time


def rate(fn: Callable[[], object], seconds: float, batch: int = 50,
         clock: Callable[[], float] = time.perf_counter) -> float:
    """Calls per second of ``fn()`` over about ``seconds`` of ``clock``
    (read every ``batch`` calls, so rarely)."""
    n = 0
    t0 = clock()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        dt = clock() - t0
        if dt >= seconds:
            return n / dt


def batch_rate(run: Callable[[], int], clock: Callable[[], float] = time.perf_counter) -> float:
    """Operations per second of ``run()``, which does its work and returns
    how many operations it did (its set-up belongs before the call)."""
    t0 = clock()
    n = run()
    return n / (clock() - t0)


def interleave(cases: dict[str, Callable[[], float]], rounds: int = MIN_ROUNDS,
               warmup: bool = True) -> dict[str, list[float]]:
    """Runs every case once per round, reversing the order every other
    round; returns each case's figures in round order. With ``warmup``, one
    unrecorded round first (imports, caches, allocator)."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"at least {MIN_ROUNDS} rounds")
    names = list(cases)
    out: dict[str, list[float]] = {n: [] for n in names}
    if warmup:
        for n in names:
            cases[n]()
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(cases[n]())
    return out


def ratios(ours: Sequence[float], ref: Sequence[float]) -> list[float]:
    """Per-round ratios ``ours[i] / ref[i]`` (same round, never across)."""
    return [a / b for a, b in zip(ours, ref)]


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)``."""
    return statistics.median(values), min(values), max(values)


def fmt_ratio(rs: Sequence[float], unit: str = "x") -> str:
    """``0.83x (0.79-0.88, n=7)``: median ratio, spread, pairs."""
    med, lo, hi = summary(rs)
    if unit == "%":
        return f"{med:4.0%} ({lo:.0%}-{hi:.0%}, n={len(rs)})"
    return f"{med:5.2f}x ({lo:.2f}-{hi:.2f}, n={len(rs)})"


def fmt_rate(values: Sequence[float]) -> str:
    """``131.2k/s (125.0-140.9k)``: median rate and spread."""
    med, lo, hi = summary(values)
    if med >= 1000:
        return f"{med / 1000:7.1f}k/s ({lo / 1000:.1f}-{hi / 1000:.1f}k)"
    return f"{med:7.0f}/s ({lo:.0f}-{hi:.0f})"
