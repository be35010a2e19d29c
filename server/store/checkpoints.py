"""WAL checkpoints on a thread and a connection of their own, beside the commits.

SQLite folds the WAL back into the database file inside the COMMIT that takes it past
`wal_autocheckpoint` pages (1,000): that commit, and every write queued behind it, waits
while the pages are copied and the file synced. Here the writer pokes this thread after
each batch, and the thread runs a PASSIVE checkpoint (it never waits for a lock, and
holds none the writer needs) at most every PAUSE seconds, while the writer goes on
committing. When a pass copies every frame, the writer's next commit starts the WAL
again from its beginning. The writer's own automatic checkpoint stays as it is, for when
commits beside the passes keep them from finishing: then it is the writer's that lets the
WAL start again (the file stays a few MiB), with only the frames since the thread's last
pass left to copy. (At 1,000 mutations/s every pass finished: README, ninth round.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("server.store")

PAUSE = 0.05  # seconds between two checkpoints: a few hundred WAL pages each under load


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], pause: float = PAUSE) -> None:
        self._connect = connect
        self._pause = pause
        self._due = threading.Event()  # a commit since the last checkpoint
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: tuple[int, int, int] | None = None  # (busy, WAL frames, frames folded)
        self.ran = threading.Event()  # set after each checkpoint (tests wait on it)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A batch was committed (any thread)."""
        self._due.set()

    def close(self) -> None:
        """Stop the thread and close its connection (blocks until it has)."""
        if self._thread is None:
            return
        self._stop.set()
        self._due.set()
        self._thread.join()
        self._thread = None

    def _main(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:  # the writer's automatic checkpoints still run
            log.warning("SQLite: no checkpoint thread (%s); the writer checkpoints", exc)
            return
        failed = False
        try:
            while True:
                self._due.wait()
                if self._stop.is_set():
                    return
                self._due.clear()
                try:
                    self.last = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    failed = False
                except sqlite3.Error as exc:
                    if not failed:  # once per run of failures, not once per commit
                        log.warning("SQLite: a checkpoint failed (%s); retrying", exc)
                    failed = True
                self.ran.set()
                if self._stop.wait(self._pause):
                    return
        finally:
            conn.close()
