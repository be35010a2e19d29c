"""WAL checkpoints on their own thread (server/store/checkpoints.py): the database file
catches up with the WAL without a commit doing the copying, a failing checkpoint is
retried, and closing the store ends the thread."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.cart import AddItem
from server.config import Settings
from server.store.checkpoints import Checkpointer
from server.store.sqlite import SQLiteStore
from tests.test_store import PRODUCTS, commit_all, fresh, writer_pragma


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(Settings(database_url=f"sqlite:///{tmp_path}/c.db"))
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


def in_file_alone(db: Path, cart_id: str) -> bool:
    """Whether the database file, read without its WAL, holds the cart."""
    alone = db.with_name("alone.db")
    shutil.copyfile(db, alone)
    conn = sqlite3.connect(alone)
    try:
        found = conn.execute("SELECT 1 FROM cart_sessions WHERE id = ?", (cart_id,)).fetchone()
    finally:
        conn.close()
        alone.unlink()
    return found is not None


async def ran(checkpoints: Checkpointer) -> None:
    checkpoints.ran.clear()
    assert await asyncio.to_thread(checkpoints.ran.wait, 10), "no checkpoint ran"


async def test_the_file_catches_up_without_a_commit_copying_the_wal(
    store: SQLiteStore, tmp_path: Path
) -> None:
    # The writer checkpoints by itself past 1,000 pages, far more than these writes make.
    assert await writer_pragma(store, "wal_autocheckpoint") == 1000
    await commit_all(store, fresh(), [AddItem("p-001", 2), AddItem("p-002", 1)])
    for _ in range(20):  # each round waits for a checkpoint that began after the last
        await ran(store._checkpoints)
        if in_file_alone(tmp_path / "c.db", "cart-1"):
            break
    else:
        pytest.fail("the database file never received the committed cart")
    busy, frames, folded = store._checkpoints.last or (1, 0, -1)
    assert (busy, folded) == (0, frames)


async def test_closing_the_store_ends_the_checkpoint_thread(tmp_path: Path) -> None:
    store = await SQLiteStore.open(Settings(database_url=f"sqlite:///{tmp_path}/c.db"))
    await store.upsert_products(PRODUCTS)
    names = {thread.name for thread in threading.enumerate()}
    assert "sqlite-checkpoints" in names
    await store.close()
    assert "sqlite-checkpoints" not in {thread.name for thread in threading.enumerate()}


class Failing(sqlite3.Connection):
    """A connection whose first checkpoints fail, as one would with a disk error."""

    failures = 0  # set by the test

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.startswith("PRAGMA wal_checkpoint") and Failing.failures > 0:
            Failing.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_a_failing_checkpoint_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "f.db"
    Failing.failures = 3
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("PRAGMA wal_autocheckpoint = 0")
    setup.execute("CREATE TABLE t (x)")
    checkpoints = Checkpointer(lambda: sqlite3.connect(db, factory=Failing), pause=0)
    caplog.set_level(logging.WARNING, logger="server.store")
    checkpoints.start()
    try:
        for x in range(4):  # three failures, then a checkpoint that folds every frame
            setup.execute("INSERT INTO t VALUES (?)", (x,))
            checkpoints.poke()
            await ran(checkpoints)
    finally:
        await asyncio.to_thread(checkpoints.close)
        setup.close()
    failed = [r for r in caplog.records if "a checkpoint failed" in r.getMessage()]
    assert len(failed) == 1  # once for the run of failures, not once per attempt
    assert Failing.failures == 0
    busy, frames, folded = checkpoints.last or (1, 0, -1)
    assert busy == 0 and frames > 0 and folded == frames  # the retry folded everything
