"""Rate limits (token buckets) and the count of open connections per client address."""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Iterator

from . import errors


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; take() is False when empty."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self, now: float | None = None) -> None:
        if now is None:
            now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, cost: float = 1.0, now: float | None = None) -> bool:
        self._refill(now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def wait(self, cost: float = 1.0, now: float | None = None) -> float:
        """Seconds until `cost` tokens are there; 0 if they are now."""
        self._refill(now)
        return max(0.0, (cost - self.tokens) / self.rate)


def admit(*buckets: TokenBucket | None) -> None:
    """Take a token from every bucket, or from none and raise RateLimited: a refusal by one
    limit spends nothing from the others."""
    # Every mutation passes here: one reading of the clock, no generator.
    now = time.monotonic()
    wait = 0.0
    for bucket in buckets:
        if bucket is not None:
            wait = max(wait, bucket.wait(now=now))
    if wait > 0:
        seconds = math.ceil(wait * 1000) / 1000
        raise errors.RateLimited(
            f"too many changes; try again in {seconds:g} s", retry_after=seconds
        )
    for bucket in buckets:
        if bucket is not None:
            bucket.take(now=now)


class AddressRate:
    """A token bucket per client address, for the addresses seen lately: a bounded
    number, the least recently seen forgotten first."""

    def __init__(self, rate: float, burst: float, what: str, size: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.what = what
        self.size = size
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, address: str) -> None:
        """Take a token for `address`, or raise RateLimited."""
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst)
            if len(self.buckets) > self.size:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(address)
        wait = bucket.wait()
        if wait > 0:
            seconds = math.ceil(wait * 1000) / 1000
            raise errors.RateLimited(
                f"too many {self.what} from this address; try again in {seconds:g} s",
                retry_after=seconds,
            )
        bucket.take()


class ConnectionCounter:
    """Open long-lived connections (WebSockets, long-polls) per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def total(self) -> int:
        return sum(self.open.values())

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[bool]:
        """Count one connection from `address` for the block; yields False (and counts
        nothing) when the address is at the limit already."""
        count = self.open.get(address, 0)
        if count >= self.limit:
            yield False
            return
        self.open[address] = count + 1
        try:
            yield True
        finally:
            left = self.open[address] - 1
            if left:
                self.open[address] = left
            else:
                del self.open[address]


class AddressCount:
    """Open sockets per client address, against a limit: take() before, give() after.

    Shared by the connection layer, which counts TCP peers, and the proxy-header middleware,
    which counts requests a trusted proxy forwards, by the client address it reports."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.limit:
            return False
        self.open[address] = count + 1
        return True

    def give(self, address: str) -> None:
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)
