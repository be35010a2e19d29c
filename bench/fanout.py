"""fanout: K carts x T tabs; mutations offered at a fixed rate (open loop) from random tabs;
latency from send until every tab of that cart holds the patch."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import httpx
import msgspec
import websockets

from .harness import LocalServer, percentiles


class Frame(msgspec.Struct):
    type: str
    version: int | None = None
    id: str | None = None


_decode = msgspec.json.Decoder(Frame).decode


class Recorder:
    def __init__(self) -> None:
        self.sent: dict[str, tuple[int, float]] = {}  # msg id -> (cart, send time)
        self.acked: dict[str, int] = {}  # msg id -> version
        self.arrived: defaultdict[tuple[int, int], list[float]] = defaultdict(list)
        self.errors = 0
        self.gaps = self.duplicates = self.out_of_order = 0


async def open_carts(url: str, count: int) -> list[str]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False) as client:
        responses = await asyncio.gather(*(client.get("/api/cart") for _ in range(count)))
    return [r.headers["x-cart-id"] for r in responses]


async def open_tab(url: str, signed: str, client_id: str) -> websockets.ClientConnection:
    ws_url = url.replace("http", "ws", 1) + f"/api/cart/ws?cart={signed}&client_id={client_id}"
    return await websockets.connect(
        ws_url, compression=None, proxy=None, max_queue=None, open_timeout=60
    )


async def read_tab(ws: websockets.ClientConnection, cart: int, rec: Recorder) -> None:
    last: int | None = None
    try:
        async for raw in ws:
            frame = _decode(raw)
            now = time.perf_counter()
            if frame.type == "patch" and frame.version is not None:
                if last is not None:
                    if frame.version == last:
                        rec.duplicates += 1
                    elif frame.version < last:
                        rec.out_of_order += 1
                    elif frame.version > last + 1:
                        rec.gaps += 1
                last = frame.version
                rec.arrived[(cart, frame.version)].append(now)
            elif frame.type == "snapshot":
                last = msgspec.json.decode(raw)["cart"]["version"]
            elif frame.type == "ack" and frame.id is not None:
                rec.acked[frame.id] = frame.version or 0
            elif frame.type == "error":
                rec.errors += 1
    except websockets.ConnectionClosed:
        pass


async def offer(
    tabs: list[list[websockets.ClientConnection]],
    rate: float,
    seconds: float,
    rec: Recorder | None,
    rng: random.Random,
    prefix: str,
) -> int:
    """Send at `rate` per second for `seconds`, on schedule whether or not acks came back."""
    total = int(rate * seconds)
    start = time.perf_counter()
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        cart = rng.randrange(len(tabs))
        ws = tabs[cart][rng.randrange(len(tabs[cart]))]
        msg_id = f"{prefix}{n}"
        product = f"b-{rng.randrange(20):03d}"
        payload = f'{{"type":"add","id":"{msg_id}","product_id":"{product}","quantity":1}}'
        if rec is not None:
            rec.sent[msg_id] = (cart, time.perf_counter())
        await ws.send(payload)
    return total


async def fanout(
    server: LocalServer | None,
    urls: list[str],
    carts: int,
    tabs_per_cart: int,
    rate: float,
    seconds: float,
    warmup: float = 1.0,
    seed: int = 1,
) -> dict[str, Any]:
    rng = random.Random(seed)
    signed = await open_carts(urls[0], carts)
    tabs = [  # tab t of cart c on process (c + t) mod N: every cart spans the processes
        [await open_tab(urls[(c + t) % len(urls)], s, f"c{c}t{t}") for t in range(tabs_per_cart)]
        for c, s in enumerate(signed)
    ]
    rec = Recorder()
    readers = [
        asyncio.create_task(read_tab(ws, c, rec)) for c, row in enumerate(tabs) for ws in row
    ]
    if warmup > 0:
        await offer(tabs, rate, warmup, None, rng, "w")
    started, cpu = time.perf_counter(), server.cpu_seconds() if server else 0.0
    offered = await offer(tabs, rate, seconds, rec, rng, "m")
    elapsed = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu if server else float("nan")
    deadline = time.perf_counter() + 15
    while len(rec.acked) < len(rec.sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # a bounded drain: what is not done by then counts as unfinished
    await asyncio.sleep(0.1)
    latencies, unfinished = [], 0
    for msg_id, (cart, sent_at) in rec.sent.items():
        version = rec.acked.get(msg_id)
        arrivals = rec.arrived.get((cart, version)) if version is not None else None
        if not arrivals or len(arrivals) < tabs_per_cart:
            unfinished += 1
            continue
        latencies.append(max(arrivals) - sent_at)
    for row in tabs:
        for ws in row:
            await ws.close()
    await asyncio.gather(*readers)
    done = len(latencies)
    return {
        "carts": carts,
        "tabs_per_cart": tabs_per_cart,
        "processes": len(urls),
        "offered_rate": rate,
        "achieved_rate": done / elapsed if elapsed else 0.0,
        "mutations": offered,
        "completed": done,
        "unfinished": unfinished,
        "errors": rec.errors,
        "gaps": rec.gaps,
        "duplicates": rec.duplicates,
        "out_of_order": rec.out_of_order,
        "latency_ms": percentiles(latencies),
        "deliveries_per_s": done * tabs_per_cart / elapsed,
        "server_cpu_ms_per_mutation": cpu * 1000 / offered if offered else float("nan"),
    }
