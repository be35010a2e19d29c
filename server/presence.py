"""Who has a cart open: its tabs in this process, the counts other processes report, and
the `presence` message that tells every tab how many there are in all."""

from __future__ import annotations

from .frames import Tab, broadcast
from .metrics import Metrics
from .protocol import PresenceMsg, encode


class Presence:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.tabs: set[Tab] = set()
        # Tabs of this cart open in other processes: process id -> (count, when heard).
        self.elsewhere: dict[str, tuple[int, float]] = {}
        self._shown = 0  # the count last sent to the tabs here

    @property
    def count(self) -> int:
        """Open tabs of this cart in every process."""
        return len(self.tabs) + sum(count for count, _ in self.elsewhere.values())

    def add(self, tab: Tab) -> None:
        self.tabs.add(tab)
        self._show(always=True)

    def remove(self, tab: Tab) -> None:
        self.tabs.discard(tab)
        self._show(always=True)

    def heard(self, process: str, tabs: int, now: float) -> bool:
        """Another process's tab count; True if that process was not known here before."""
        new = process not in self.elsewhere
        if tabs > 0:
            self.elsewhere[process] = (tabs, now)
        else:
            self.elsewhere.pop(process, None)
        self._show()
        return new

    def forget_before(self, cutoff: float) -> None:
        """Drop the counts of processes not heard from since `cutoff` (gone, or cut off)."""
        for process, (_, heard) in list(self.elsewhere.items()):
            if heard < cutoff:
                del self.elsewhere[process]
        self._show()

    def _show(self, always: bool = False) -> None:
        count = self.count
        if count == self._shown and not always:
            return
        self._shown = count
        broadcast(self.tabs, encode(PresenceMsg(tabs=count)))

    def broadcast(self, message: bytes) -> None:
        """One message to every tab: encoded and framed once, the same bytes for all."""
        broadcast(self.tabs, message)
        self.metrics.inc("cart_patches_sent_total", len(self.tabs))
