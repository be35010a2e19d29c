"""The SQLite writer's thread: it owns the writer connection and commits jobs in groups.

A job submitted while a transaction runs joins the next one (group commit), up to
MAX_BATCH jobs in one. The thread takes the next batch itself as soon as a commit ends,
and hands a batch's results back with one wake-up of the event loop, where one callback
settles every future of it: no executor work item, no task and no loop round trip
between two batches. At 1,000 mutations/s a batch holds one or two writes, so these
per-batch costs are the writer's cost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from asyncio import AbstractEventLoop, Future
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
Fail = Callable[[Exception], Exception] | None
Entry = tuple[Job, "Future[Any]", float, Fail]
# A batch's outcome: each job's (ok, value), or the error that failed the whole transaction.
Outcome = list[tuple[bool, Any]] | BaseException
# Called with a batch, its outcome and the seconds its transaction took on the thread.
Settle = Callable[[list[Entry], Outcome, float], None]
# Jobs in one transaction at most. The first of a batch is answered only when the whole
# batch is committed: past about this many, the loop and the clients wait on a larger
# commit longer than the extra commits cost (measured: README, eighth round).
MAX_BATCH = 64


class Writer:
    """Jobs in, in the order submitted; `settle` gets each batch's entries, outcome and
    transaction time on the loop, in the order committed; `committed` is told on this
    thread."""

    def __init__(
        self, loop: AbstractEventLoop, settle: Settle, committed: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._settle = settle
        self._committed = committed  # called on this thread after each transaction
        self._wake = threading.Condition(threading.Lock())
        self._queue: list[Entry] = []
        self._kicked = False  # a wake-up is scheduled for the end of this loop turn
        self._idle = True  # the thread waits for jobs (guarded by _wake)
        self._closing = False
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread; it opens its connection (a connection serves one thread)."""
        opened: Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(connect, opened), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        await opened

    def submit(self, job: Job, failed: Fail) -> Future[Any]:
        fut: Future[Any] = self._loop.create_future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the SQLite writer is closed")
            self._queue.append((job, fut, time.perf_counter(), failed))
            kick = self._idle and not self._kicked
            self._kicked |= kick
        if kick:
            # Woken at the end of the loop turn, so the turn's writes share a transaction.
            self._loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        with self._wake:
            self._kicked = False
            self._wake.notify()

    async def close(self) -> None:
        """Commit what was submitted, then close the connection and end the thread."""
        if self._thread is None:
            return
        with self._wake:
            self._closing = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _main(self, connect: Callable[[], sqlite3.Connection], opened: Future[None]) -> None:
        try:
            self._conn = connect()
        except BaseException as exc:
            self._loop.call_soon_threadsafe(_fail, opened, exc)
            return
        self._loop.call_soon_threadsafe(_done, opened)
        try:
            while (batch := self._next()) is not None:
                outcome: Outcome
                began = time.perf_counter()
                try:
                    outcome = run_batch(self._conn, [job for job, _, _, _ in batch])
                except Exception as exc:  # the transaction failed as a whole
                    outcome = exc
                took = time.perf_counter() - began
                self._loop.call_soon_threadsafe(self._settle, batch, outcome, took)
                self._committed()
        finally:
            self._conn.close()

    def _next(self) -> list[Entry] | None:
        with self._wake:
            while not self._queue:
                if self._closing:
                    return None
                self._idle = True
                self._wake.wait()
            self._idle = False
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            return batch

    @property
    def connection(self) -> sqlite3.Connection | None:
        """For tests that look at the file's settings (from the writer's thread only)."""
        return self._conn


class Joinable:
    """A job that runs with the jobs of its kind next to it in a batch, in one statement
    for all of them (`together`): the same rows for fewer trips into SQLite, each of which
    lets go of the GIL and waits to take it back from the event loop. Called alone, it
    runs by itself. It returns nothing."""

    __slots__ = ()

    def __call__(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

    def together(self, conn: sqlite3.Connection, jobs: list[Any]) -> None:
        """Run `jobs` (this one first) in one statement: all of them, or (raising) none."""
        raise NotImplementedError


def run_batch(conn: sqlite3.Connection, jobs: list[Job]) -> list[tuple[bool, Any]]:
    """One transaction; each job in its own savepoint, so one bad write fails alone, and
    a run of joinable jobs in one, run one at a time if it fails together. A batch that
    is one such run, the usual one, is its one statement and nothing else: its own
    transaction, one trip into SQLite. If it fails, nothing of it is written, and each
    job runs alone in a transaction."""
    first = jobs[0]
    one_run = isinstance(first, Joinable) and all(type(job) is type(first) for job in jobs)
    if isinstance(first, Joinable) and one_run and _at_once(conn, first, jobs):
        return [(True, None)] * len(jobs)
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = _each(conn, jobs, join=not one_run)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _at_once(conn: sqlite3.Connection, first: Joinable, jobs: list[Job]) -> bool:
    try:
        first.together(conn, jobs)
    except Exception:  # each job alone tells its own outcome
        if conn.in_transaction:  # a statement that failed leaves none; just in case
            conn.execute("ROLLBACK")
        return False
    return True


def _each(conn: sqlite3.Connection, jobs: list[Job], join: bool) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    start = 0
    while start < len(jobs):
        first = jobs[start]
        end = start + 1
        kind = type(first) if join and isinstance(first, Joinable) else None
        while end < len(jobs) and type(jobs[end]) is kind:
            end += 1
        run = jobs[start:end]
        if kind is not None and _together(conn, first, run):  # type: ignore[arg-type]
            results.extend([(True, None)] * len(run))
        else:
            results.extend(_alone(conn, job) for job in run)
        start = end
    return results


def _together(conn: sqlite3.Connection, first: Joinable, run: list[Job]) -> bool:
    conn.execute("SAVEPOINT jobs")
    try:
        first.together(conn, run)
        done = True
    except Exception:  # run one at a time, each job gets its own outcome
        done = False
        conn.execute("ROLLBACK TO jobs")
    conn.execute("RELEASE jobs")
    return done


def _alone(conn: sqlite3.Connection, job: Job) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT job")
    try:
        result: tuple[bool, Any] = (True, job(conn))
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        result = (False, exc)
    conn.execute("RELEASE job")
    return result


def _done(fut: Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
