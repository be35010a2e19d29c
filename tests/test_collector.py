"""The garbage collector's set-up: survivors of start-up and of each full collection are
frozen, which is safe only because a closed tab leaves no reference cycle behind."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from websockets.asyncio.client import connect

from server import collector
from server.app import create_app
from server.config import Settings
from server.serving import CartServer, StallGuardedProtocol, stall_guarded
from tests.support import SECRET, free_port

TABS = 20


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[CartServer]:
    """The real server (uvicorn, our WebSocket protocol) in this process, so that its
    objects can be inspected."""
    settings = Settings(database_url=f"sqlite:///{tmp_path}/cart.db", secret=SECRET)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        loop="none",
        ws=stall_guarded(settings),
        lifespan="on",
        log_level="warning",
    )
    server = CartServer(config, app)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        collector.stop()


def connections(kind: type) -> list[object]:
    return [o for o in gc.get_objects() if isinstance(o, kind)]


async def test_closed_tabs_leave_no_reference_cycles(served: CartServer) -> None:
    port = served.config.port
    tabs = [await connect(f"ws://127.0.0.1:{port}/api/cart/ws") for _ in range(TABS)]
    for tab in tabs:
        assert json.loads(await tab.recv())["type"] == "snapshot"
    assert len(connections(StallGuardedProtocol)) >= TABS
    for tab in tabs:
        await tab.close()
    async with asyncio.timeout(10):  # the server's side of each close, then its task's end
        while served.server_state.connections or len(served.server_state.tasks) > 0:
            await asyncio.sleep(0.01)
    collector.stop()  # unfrozen: the collection below sees every object
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # Freed by reference counting alone: nothing of a connection was left to the collector.
    assert not kinds & {"StallGuardedProtocol", "ServerProtocol", "Tab", "TCPTransport"}
    assert connections(StallGuardedProtocol) == []


def test_the_collector_freezes_what_survives_a_full_collection() -> None:
    defaults = gc.get_threshold()
    collector.start()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # A full collection after every middle-generation pass: each walks less.
        assert gc.get_threshold() == (defaults[0], defaults[1], collector.FULL_AFTER)
        kept = [[n] for n in range(1000)]  # lists are always tracked
        gc.collect()
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        collector.stop()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == defaults
