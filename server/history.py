"""What a reader that is behind needs from a cart: its recent patches, for a tab or a
long-poll resuming with ?since=, and a wake-up for the long-polls waiting for the next."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable


class History:
    __slots__ = ("_patches", "_changed")

    def __init__(self, size: int) -> None:
        self._patches: deque[tuple[int, str]] = deque(maxlen=size)  # (version, patch frame)
        self._changed: asyncio.Future[None] | None = None

    def reset(self, patches: Iterable[tuple[int, str]]) -> None:
        self._patches.clear()
        self._patches.extend(patches)

    def add(self, version: int, patch: str) -> None:
        self._patches.append((version, patch))

    def after(self, since: int, version: int) -> list[str] | None:
        """The patch frames after `since` up to `version`, or None if they are not all
        held any more."""
        held = self._patches
        if since == version:
            return []
        if since > version or not held or held[0][0] > since + 1:
            return None
        return [frame for number, frame in held if number > since]

    async def wait(self, timeout: float) -> None:
        """Return at the next wake(), or after `timeout` seconds."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
        except TimeoutError:
            pass

    def wake(self) -> None:
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None
