"""Online backup and restore of the SQLite store (`python -m server backup|restore PATH`).

A backup is `VACUUM INTO`: one read transaction on the live file, which in WAL mode never
holds the writer, so the server keeps committing while it runs and the copy is exactly
the database as of the moment it began (every mutation acknowledged before then). A
restore needs the server stopped: every process with the store open holds a shared lock
on `<db>.lock` (see `hold_open`), and the restore takes it exclusively or refuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .clock import utcnow

PROGRESS_EVERY = 2.0  # seconds between progress lines of a long backup
_TABLES = ("cart_sessions", "cart_items", "cart_patches", "products")


class BackupError(Exception):
    """A backup or restore that was refused or failed; the message says what to do."""


class DatabaseInUse(BackupError):
    """Another process has the database open."""


@dataclass(frozen=True)
class Summary:
    path: Path
    size: int  # bytes
    carts: int
    newest_version: int  # the version of the most recently changed cart
    newest_cart: str
    newest_at: str

    def describe(self) -> str:
        newest = (
            f"newest cart version {self.newest_version} (cart {self.newest_cart[:8]}…,"
            f" changed {self.newest_at})"
            if self.carts
            else "no carts yet"
        )
        return f"{self.path}: {_size(self.size)}, {self.carts} carts, {newest}"


def lock_path(db: str | Path) -> Path:
    return Path(f"{db}.lock")


def hold_open(db: str | Path) -> int:
    """Taken by every process that opens the database (a shared lock on `<db>.lock`,
    released when the returned descriptor is closed): a restore cannot run under it."""
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(f"{db} is being restored; start again when that is done") from None
    return fd


@contextlib.contextmanager
def _exclusive(db: Path) -> Iterator[None]:
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseInUse(
                f"{db} is open in a running server (or another `python -m server` command):"
                " stop it first; nothing was changed"
            ) from None
        yield
    finally:
        os.close(fd)


def backup(
    db: Path, target: Path, force: bool = False, say: Callable[[str], None] = print
) -> Summary:
    """Copy the live database to `target`, checked; refuses an existing target unless forced."""
    if not db.exists():
        raise BackupError(f"{db} does not exist: nothing to back up")
    if target.exists() and not force:
        raise BackupError(f"{target} exists: choose another path or pass --force")
    if target.resolve() == db.resolve():
        raise BackupError(f"{target} is the live database itself")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    held = hold_open(db)
    source = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        started = last = time.monotonic()
        total = db.stat().st_size + _wal_size(db)

        def progress() -> int:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                done = partial.stat().st_size if partial.exists() else 0
                say(f"  … {_size(done)} of about {_size(total)} copied ({now - started:.0f} s)")
            return 0  # 0: carry on

        # Called every N virtual-machine steps: cheap, and a progress line only on a long copy.
        source.set_progress_handler(progress, 100_000)
        source.execute("VACUUM INTO ?", (str(partial),))
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {db} failed: {exc}") from exc
    finally:
        source.close()
        os.close(held)
    try:
        summary = check(partial)
        os.chmod(partial, 0o600)  # every cart, user id and order: for the service's user only
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Summary(target, *_fields(summary))


def check(path: Path) -> Summary:
    """The file's summary if it is a sound cart database: integrity_check passes and the
    cart tables are there. BackupError otherwise."""
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"{path} cannot be opened as SQLite: {exc}") from exc
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if result != ["ok"]:
            problems = "; ".join(result[:5])
            raise BackupError(f"{path} is damaged: the integrity check found {problems}")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in _TABLES if t not in names]
        if missing:
            raise BackupError(f"{path} is not a cart database (no {', '.join(missing)} table)")
        (carts,) = conn.execute("SELECT count(*) FROM cart_sessions").fetchone()
        newest = conn.execute(
            "SELECT id, version, updated_at FROM cart_sessions"
            " ORDER BY updated_at DESC, version DESC LIMIT 1"
        ).fetchone() or ("", 0, "")
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a sound SQLite database: {exc}") from exc
    finally:
        conn.close()
    return Summary(path, path.stat().st_size, carts, newest[1], newest[0], newest[2])


def restore(db: Path, source: Path, say: Callable[[str], None] = print) -> Path | None:
    """Put a checked backup in place of `db` while no process has it open; the file it
    replaces is kept beside it under a timestamped name, which is returned."""
    summary = check(source)
    say(f"checked {summary.describe()}")
    db.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db):
        incoming = db.with_name(f".{db.name}.restoring")
        shutil.copyfile(source, incoming)
        _fsync(incoming)
        kept = None
        if db.exists():
            _settle(db)
            kept = db.with_name(f"{db.name}.replaced-{utcnow():%Y%m%dT%H%M%SZ}")
            os.replace(db, kept)
            wal = Path(f"{db}-wal")
            if wal.exists() and wal.stat().st_size:  # a WAL _settle could not fold in: kept
                os.replace(wal, f"{kept}-wal")
        for suffix in ("-wal", "-shm"):  # empty, or the index of a WAL kept above
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.replace(incoming, db)
        _fsync(db.parent)
    return kept


def _settle(db: Path) -> None:
    """Fold the WAL into the file, so the replaced copy is whole on its own."""
    try:
        conn = sqlite3.connect(db, isolation_level=None, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        pass  # a damaged file is kept as it is, with its WAL beside it


def _fields(summary: Summary) -> tuple[int, int, int, str, str]:
    s = summary
    return s.size, s.carts, s.newest_version, s.newest_cart, s.newest_at


def _wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
