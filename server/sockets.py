"""The client connections a process holds: how many sockets one address may hold, and how
many the process may hold.

- A TCP peer may hold MAX_SOCKETS_PER_IP connections of any kind. A trusted proxy's
  connections carry many clients, so they are not counted per address here; the requests
  it forwards are, by the client address it reports (forwarded.ProxyHeaders).
- The process keeps FD_MARGIN descriptors for its listening socket, database, Redis and
  outbound connections: at capacity the oldest connection still waiting for a request
  head (half-open, or idle between requests) is closed for the new one, and without such
  a connection the new one is refused.

connections.HeadGuard admits each HTTP connection here and says when it waits for a
head; ReleasedOnClose gives a connection back once the WebSocket protocol has it."""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from .forwarded import TrustedProxies
from .limits import AddressCount

log = logging.getLogger("server")

FD_MARGIN = 128  # descriptors never given to client connections


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (the default soft limit, often
    1,024, is what a few hundred slow clients exhaust); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # some platforms cap it lower than they say: keep what there is
    return soft


class Sockets:
    """Every client connection the process holds, shared by all of them."""

    def __init__(self, per_address: AddressCount, capacity: int, trusted: TrustedProxies) -> None:
        self.per_address = per_address
        self.capacity = capacity
        self.trusted = trusted
        # transport -> the address it counts against (None: a trusted proxy's)
        self.open: dict[asyncio.BaseTransport, str | None] = {}
        self.waiting: dict[asyncio.BaseTransport, None] = {}  # for a request head, oldest first
        self._warned = -1e9

    def admit(self, transport: asyncio.BaseTransport, peer: str) -> int | None:
        """None if the connection may stay, else the HTTP status to refuse it with."""
        if len(self.open) >= self.capacity and not self._close_oldest_waiting():
            return 503
        address = None if peer in self.trusted else peer
        if address is not None and not self.per_address.take(address):
            return 429
        self.open[transport] = address
        self.waiting[transport] = None
        return None

    def release(self, transport: asyncio.BaseTransport) -> None:
        """The connection is gone (idempotent: called by whichever protocol held it)."""
        self.waiting.pop(transport, None)
        if transport in self.open:
            address = self.open.pop(transport)
            if address is not None:
                self.per_address.give(address)

    def set_waiting(self, transport: asyncio.BaseTransport, waiting: bool) -> None:
        self.waiting.pop(transport, None)
        if waiting and transport in self.open:
            self.waiting[transport] = None  # to the end: the newest

    def _close_oldest_waiting(self) -> bool:
        oldest = next(iter(self.waiting), None)
        now = time.monotonic()
        if now - self._warned > 10.0:  # under a flood, a line now and then, not one each
            self._warned = now
            what = "closing the oldest idle one" if oldest else "none idle, refusing new ones"
            log.warning("at the limit of %d client connections: %s", self.capacity, what)
        if oldest is None:
            return False
        self.release(oldest)
        oldest.close()
        return True


def capacity(limit: int) -> int:
    """Client connections a process with `limit` descriptors may hold."""
    return max(limit - FD_MARGIN, limit // 2)


class ReleasedOnClose(asyncio.Protocol):
    """Mixed into the WebSocket protocol: an upgraded connection is that protocol's from
    then on, and it is its `connection_lost` that is called at the end."""

    sockets: Sockets
    _held: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._held = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._held is not None:
                self.sockets.release(self._held)
