"""How late the event loop runs and how long the garbage collector stops it: the longest
of each over the last minute, as /metrics gauges. Every tab and commit of a process shares
one loop, so a stall here is a stall everywhere."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from .metrics import Metrics

TICK = 0.1  # seconds between lag probes: a stall shorter than this can still be seen
WINDOW = 60.0  # "recent": the peaks cover the last 30 to 60 seconds


class Peak:
    """The largest value seen in the current and the previous half-window."""

    def __init__(self, window: float = WINDOW) -> None:
        self.half = window / 2
        self.started = time.monotonic()
        self.current = 0.0
        self.previous = 0.0

    def add(self, value: float, now: float | None = None) -> None:
        self._turn(time.monotonic() if now is None else now)
        self.current = max(self.current, value)

    def value(self, now: float | None = None) -> float:
        self._turn(time.monotonic() if now is None else now)
        return max(self.current, self.previous)

    def _turn(self, now: float) -> None:
        elapsed = now - self.started
        if elapsed >= self.half:
            # Two half-windows or more gone: nothing seen then is recent any more.
            self.previous = self.current if elapsed < 2 * self.half else 0.0
            self.current = 0.0
            self.started = now


class LoopWatch:
    """Probes the running loop every TICK and times every GC pass (gc.callbacks)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.lag = Peak()
        self.gc_pause = Peak()
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.gauge("cart_event_loop_lag_seconds", self.lag.value)
            metrics.gauge("cart_gc_pause_seconds", self.gc_pause.value)

    def start(self) -> LoopWatch:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._probe())
        return self

    async def _probe(self) -> None:
        while True:
            due = time.perf_counter() + TICK
            await asyncio.sleep(TICK)
            self.lag.add(max(0.0, time.perf_counter() - due))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause.add(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    async def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
