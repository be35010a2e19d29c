"""The event-loop lag and GC pause monitor: a blocked loop and a long collection show."""

from __future__ import annotations

import asyncio
import gc
import time

from server.loopwatch import TICK, LoopWatch, Peak
from server.metrics import Metrics


def test_a_peak_is_kept_for_at_least_half_a_window_and_at_most_a_whole_one() -> None:
    peak = Peak(window=10.0)
    start = peak.started
    peak.add(0.5, start + 1)
    peak.add(0.2, start + 2)
    assert peak.value(start + 4.9) == 0.5
    assert peak.value(start + 9.0) == 0.5  # the previous half still holds it
    peak.add(0.1, start + 9.5)
    assert peak.value(start + 14.9) == 0.1  # 0.5 is more than a window old
    assert peak.value(start + 30.0) == 0.0  # nothing at all for two half-windows


async def test_a_blocked_loop_shows_as_lag_in_metrics() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics).start()
    try:
        for _ in range(3):  # let the probe take its normal pace first
            await asyncio.sleep(TICK)
        quiet = watch.lag.value()
        time.sleep(0.3)  # noqa: ASYNC251 - the point: hold the loop as bad code would
        await asyncio.sleep(TICK * 2)
        assert watch.lag.value() >= 0.25 > quiet
        lines = metrics.render().splitlines()
        (shown,) = [line for line in lines if line.startswith("cart_event_loop_lag_seconds ")]
        assert float(shown.split()[1]) >= 0.25
    finally:
        await watch.close()


async def test_a_gc_pass_is_timed() -> None:
    watch = LoopWatch(Metrics()).start()
    try:
        junk = [[n] for n in range(300_000)]  # many tracked objects: a full pass takes time
        gc.collect()
        assert watch.gc_pause.value() > 0.0
        del junk
    finally:
        await watch.close()
    before = watch.gc_pause.value()
    gc.collect()
    assert watch.gc_pause.value() == before  # unhooked when closed
