"""The garbage collector, set up for a long-lived server holding many connections.

A full collection walks every object the collector tracks, and stops the event loop while
it does: each open tab holds some sixty (uvicorn's protocol, websockets' parser, the
handler's coroutines), so with 20,000 tabs a full collection took over a second. Here what
survived start-up, and then what survived each full collection, is frozen (`gc.freeze`):
the next full collection walks only what is newer than the last one.

Frozen objects are still freed by reference counting; only reference cycles among them
would never be collected. A closed tab leaves none (serving.StallGuardedProtocol breaks
the two it had), which tests/test_collector.py checks."""

from __future__ import annotations

import gc
from typing import Any


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


# A full collection after every middle-generation pass, not every tenth: it walks only
# what was promoted since the last one (the rest is frozen), so a tenth as much at a time.
# While thousands of tabs connect, that was 30-70 ms of CPU a pass at 20,000 tabs.
FULL_AFTER = 1
_DEFAULTS = gc.get_threshold()


def start() -> None:
    """Once start-up is done: freeze what it made, and what each full collection keeps."""
    gc.collect()
    gc.freeze()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)
    young, middle, _ = _DEFAULTS
    gc.set_threshold(young, middle, FULL_AFTER)


def stop() -> None:
    """Back to the collector's defaults (the app is shutting down)."""
    if _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)
    gc.set_threshold(*_DEFAULTS)
    gc.unfreeze()
