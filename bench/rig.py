"""The tabs of one load-generator process: open them, read every frame, offer mutations at a
fixed rate (open loop, not waiting for acks) or as fast as they are answered (closed loop,
a window of mutations in flight per cart), and time each until every tab of its cart has
the patch. Ordering is checked on every tab as frames arrive."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec

from .harness import Probe, cpu_spent
from .wsclient import HandshakeError, WsClient
from .wsclient import connect as ws_connect

DRAIN_SECONDS = 15.0  # what is not acked and delivered by then counts as unfinished
OPEN_TIMEOUT = 30.0


class Frame(msgspec.Struct):
    type: str
    version: int | None = None
    id: str | None = None


class SnapshotCart(msgspec.Struct):
    version: int


class Snapshot(msgspec.Struct):
    cart: SnapshotCart


_decode = msgspec.json.Decoder(Frame).decode
_decode_snapshot = msgspec.json.Decoder(Snapshot).decode


def cpu_seconds() -> float:
    """This process's own CPU time: whether the generator kept up is part of the result."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """One measured run: what was sent, acked and delivered, and what went wrong."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[int, float]] = {}  # msg id -> (cart, send time)
        self.acked: dict[str, int] = {}  # msg id -> version
        self.arrived: defaultdict[tuple[int, int], list[float]] = defaultdict(list)
        self.errors = self.gaps = self.duplicates = self.out_of_order = 0


async def connect(
    url: str, signed: str, client_id: str, on_text: Callable[[bytes], None]
) -> WsClient:
    """A tab of cart `signed`. It sends no pings of its own: the server pings every tab
    already, and 20,000 idle tabs must not cost the generator a timer each."""
    ws_url = f"{url}/api/cart/ws?cart={signed}&client_id={client_id}"
    return await ws_connect(ws_url, on_text, OPEN_TIMEOUT)


class TabReader:
    """Files the frames of one tab as they arrive, checking the order of its patches."""

    __slots__ = ("rig", "cart", "last")

    def __init__(self, rig: Rig, cart: int) -> None:
        self.rig = rig
        self.cart = cart
        self.last: int | None = None

    def __call__(self, raw: bytes) -> None:
        frame = _decode(raw)
        now = time.perf_counter()
        rec = self.rig.rec
        if frame.type == "patch" and frame.version is not None:
            last = self.last
            if last is not None:
                if frame.version == last:
                    rec.duplicates += 1
                elif frame.version < last:
                    rec.out_of_order += 1
                elif frame.version > last + 1:
                    rec.gaps += 1
            self.last = frame.version
            rec.arrived[(self.cart, frame.version)].append(now)
        elif frame.type == "snapshot":
            self.last = _decode_snapshot(raw).cart.version
        elif frame.type == "ack" and frame.id is not None:
            rec.acked[frame.id] = frame.version or 0
            self.rig.answered(self.cart)
        elif frame.type == "error":
            rec.errors += 1
            self.rig.answered(self.cart)


class Rig:
    def __init__(self, urls: list[str], products: list[str], seed: int) -> None:
        self.urls = urls  # several processes of one deployment: each cart spans them
        self.products = products
        self.rng = random.Random(seed)
        self.tabs: list[list[WsClient]] = []
        self.tabs_per_cart = 0
        self.rec = Recorder()
        self.opened = self.failed = 0
        self.open_error = ""
        self.runs = 0
        self._loop: tuple[str, float, int] | None = None  # closed: (id prefix, until, window)
        self._sent = 0
        self._in_flight: defaultdict[int, int] = defaultdict(int)  # cart -> unanswered

    async def open(
        self, signed: list[str], tabs_per_cart: int, concurrency: int, seconds: float
    ) -> None:
        """Open every tab with at most `concurrency` handshakes in flight, for at most
        `seconds`; what did not open by then is counted as failed."""
        self.tabs_per_cart = tabs_per_cart
        self.tabs = [[] for _ in signed]
        gate = asyncio.Semaphore(concurrency)

        async def one(cart: int, tab: int) -> None:
            async with gate:
                try:
                    url = self.urls[(cart + tab) % len(self.urls)]
                    ws = await connect(url, signed[cart], f"t{tab}", TabReader(self, cart))
                except (OSError, TimeoutError, HandshakeError) as exc:
                    self.failed += 1
                    self.open_error = self.open_error or f"{type(exc).__name__}: {exc}"
                    return
            self.tabs[cart].append(ws)
            self.opened += 1

        jobs = [
            asyncio.create_task(one(c, t)) for c in range(len(signed)) for t in range(tabs_per_cart)
        ]
        _, pending = await asyncio.wait(jobs, timeout=seconds)
        for job in pending:
            job.cancel()
        if pending:
            self.failed += len(pending)
            self.open_error = self.open_error or f"not open after {seconds:g} s"
            await asyncio.wait(pending)

    def complete_carts(self) -> list[int]:
        """Carts whose every tab opened: only they are measured."""
        return [c for c, row in enumerate(self.tabs) if len(row) == self.tabs_per_cart]

    async def _offer(self, carts: list[int], rate: float, seconds: float, prefix: str) -> int:
        """Send at `rate` per second for `seconds`, on schedule whether or not acks came."""
        total = int(rate * seconds)
        start = time.perf_counter()
        for n in range(total):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 16 == 0:
                await asyncio.sleep(0)  # behind schedule: still let the readers run
            self._send(carts[self.rng.randrange(len(carts))], f"{prefix}{n}")
        return total

    async def _saturate(self, carts: list[int], window: int, seconds: float, prefix: str) -> int:
        """Keep `window` mutations in flight per cart for `seconds`: each answer (ack or
        error) sends the cart's next one."""
        self._sent, self._loop = 0, (prefix, time.perf_counter() + seconds, window)
        for cart in carts:
            while self._in_flight[cart] < window:
                self._next(cart)
        await asyncio.sleep(seconds)
        self._loop = None
        return self._sent

    def answered(self, cart: int) -> None:
        """A mutation of `cart` was answered: in a closed loop, send its next one."""
        self._in_flight[cart] = max(0, self._in_flight[cart] - 1)
        loop = self._loop
        if loop is not None and time.perf_counter() < loop[1] and self._in_flight[cart] < loop[2]:
            self._next(cart)

    def _next(self, cart: int) -> None:
        assert self._loop is not None
        self._send(cart, f"{self._loop[0]}{self._sent}")
        self._sent += 1

    def _send(self, cart: int, msg_id: str) -> None:
        rng, row = self.rng, self.tabs[cart]
        product = self.products[rng.randrange(len(self.products))]
        payload = f'{{"type":"add","id":"{msg_id}","product_id":"{product}","quantity":1}}'
        self.rec.sent[msg_id] = (cart, time.perf_counter())
        self._in_flight[cart] += 1
        if not row[rng.randrange(len(row))].send(payload.encode()):
            self.rec.errors += 1
            self._in_flight[cart] -= 1

    async def run(
        self,
        rate: float,
        seconds: float,
        warmup: float,
        active: int,
        server_pid: int | None,
        window: int = 0,
    ) -> dict[str, Any]:
        """One measured run over the first `active` complete carts: raw samples and counts;
        with a `window`, a closed loop (`rate` is not used)."""
        carts = self.complete_carts()[:active]
        self.runs += 1

        async def offer(seconds: float, prefix: str) -> int:
            if window > 0:
                return await self._saturate(carts, window, seconds, prefix)
            return await self._offer(carts, rate, seconds, prefix)

        if not carts or (rate <= 0 and window <= 0):
            return {
                "latencies": [],
                "offered": 0,
                "elapsed": 0.0,
                "unfinished": 0,
                "errors": 0,
                "gaps": 0,
                "duplicates": 0,
                "out_of_order": 0,
                "client_cpu": 0.0,
                "server_cpu": None,
                "server_loop_cpu": None,
            }
        if warmup > 0:
            self.rec = Recorder()
            await offer(warmup, f"r{self.runs}w")
        warm, self.rec = self.rec, Recorder()
        rec = self.rec
        probe = Probe(server_pid) if server_pid else None
        server_before = probe.cpu_split() if probe else None
        client_cpu, started = cpu_seconds(), time.perf_counter()
        offered = await offer(seconds, f"r{self.runs}m")
        elapsed = time.perf_counter() - started
        client_cpu = cpu_seconds() - client_cpu
        server_cpu, loop_cpu = cpu_spent(probe, server_before)
        deadline = time.perf_counter() + DRAIN_SECONDS
        while time.perf_counter() < deadline:
            if len(rec.acked) + rec.errors >= len(rec.sent) and not self._settle(rec)[1]:
                break
            await asyncio.sleep(0.05)
        latencies, unfinished = self._settle(rec)
        return {
            "latencies": latencies,
            "offered": offered,
            "elapsed": elapsed,
            "unfinished": unfinished,
            "errors": rec.errors + warm.errors,
            "gaps": rec.gaps + warm.gaps,
            "duplicates": rec.duplicates + warm.duplicates,
            "out_of_order": rec.out_of_order + warm.out_of_order,
            "client_cpu": client_cpu,
            "server_cpu": server_cpu,
            "server_loop_cpu": loop_cpu,
        }

    def _settle(self, rec: Recorder) -> tuple[list[float], int]:
        """Latency of each mutation acked and delivered to every tab; how many are not yet."""
        latencies, unfinished = [], 0
        for msg_id, (cart, sent_at) in rec.sent.items():
            version = rec.acked.get(msg_id)
            arrivals = rec.arrived.get((cart, version)) if version is not None else None
            if not arrivals or len(arrivals) < self.tabs_per_cart:
                unfinished += 1
                continue
            latencies.append(max(arrivals) - sent_at)
        return latencies, unfinished

    async def close(self, seconds: float = 30.0) -> None:
        """Close every tab, each with a bounded closing handshake."""
        sockets = [ws for row in self.tabs for ws in row]
        gate = asyncio.Semaphore(256)

        async def one(ws: WsClient) -> None:
            async with gate:
                await ws.close()

        if sockets:
            await asyncio.wait([asyncio.create_task(one(ws)) for ws in sockets], timeout=seconds)
