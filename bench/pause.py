"""A probe of the server's event loop from outside: one tab of its own sends a ping every
10 ms and times each pong. While the loop is stopped (a full garbage collection, say)
no pong comes back, so the longest round trip bounds the longest stop from above."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvloop

from .harness import percentiles
from .rig import connect

EVERY = 0.01
PONG_TIMEOUT = 30.0


class PauseProbe:
    """Pings from a thread with its own loop, for as long as the `with` block runs."""

    def __init__(self, url: str, signed: str) -> None:
        self.url = url
        self.signed = signed
        self.rtts: list[float] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: uvloop.run(self._run()), daemon=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []

        def on_text(raw: bytes) -> None:
            if b'"pong"' in raw and waiting and not waiting[0].done():
                waiting[0].set_result(None)

        try:
            ws = await connect(self.url, self.signed, "pause-probe", on_text)
        except Exception as exc:  # reported, not raised: the run it watches goes on
            self.error = f"{type(exc).__name__}: {exc}"
            return
        try:
            while not self._stop.is_set():
                waiting[:] = [loop.create_future()]
                sent = time.perf_counter()
                ws.send(b'{"type":"ping"}')
                try:
                    await asyncio.wait_for(waiting[0], PONG_TIMEOUT)
                except TimeoutError:
                    self.error = f"no pong within {PONG_TIMEOUT:g} s"
                    return
                self.rtts.append(time.perf_counter() - sent)
                await asyncio.sleep(max(0.0, sent + EVERY - time.perf_counter()))
        finally:
            await ws.close()

    def __enter__(self) -> PauseProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PONG_TIMEOUT + 5)

    def result(self) -> dict[str, Any]:
        return {"pings": len(self.rtts), "error": self.error or None, **percentiles(self.rtts)}
