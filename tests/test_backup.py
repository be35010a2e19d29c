"""`python -m server backup` and `restore`: a consistent copy taken under load, refused
where it would be wrong, and a server on the restored copy carrying on from it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from server import backup
from server.backup import BackupError, check
from tests.support import ServerProcess, Tab, rest

CARTS = 8


async def _load(server: ServerProcess, signed: str, acked: list[int], stop: asyncio.Event) -> None:
    """Add one unit at a time until told to stop, recording each acknowledged version."""
    async with rest(server, signed) as client:
        for _ in range(100_000):
            if stop.is_set():
                return
            response = await client.post("/api/cart/items", json={"product_id": "p-001"})
            assert response.status_code == 200, response.text
            acked.append(response.json()["version"])


async def _cli(server: ServerProcess, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        env=server.env,
        cwd=server.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _versions(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT id, version FROM cart_sessions").fetchall())


async def test_backup_under_load_holds_every_acknowledged_mutation_and_restore_carries_on(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = make_server().start()
    carts: list[tuple[str, str]] = []
    async with rest(server) as client:
        for _ in range(CARTS):
            response = await client.get("/api/cart")
            carts.append((response.json()["id"], response.headers["x-cart-id"]))
    acked: dict[str, list[int]] = {cart_id: [] for cart_id, _ in carts}
    stop = asyncio.Event()
    load = [asyncio.create_task(_load(server, s, acked[c], stop)) for c, s in carts]
    while min(map(len, acked.values())) < 5:  # every cart is being written
        await asyncio.sleep(0.01)
    before = {cart_id: versions[-1] for cart_id, versions in acked.items()}
    copy = tmp_path / "copy.db"
    code, out = await _cli(server, "backup", str(copy))
    during = {cart_id: len(versions) for cart_id, versions in acked.items()}
    stop.set()
    await asyncio.gather(*load)
    assert code == 0, out
    assert any(len(acked[c]) > n for c, n in during.items() if n)  # load went on beside it

    # Every mutation acknowledged before the backup began is in the copy.
    stored = _versions(copy)
    for cart_id, version in before.items():
        assert stored[cart_id] >= version
    summary = check(copy)
    assert summary.carts == len(stored) and stored[summary.newest_cart] == summary.newest_version
    last = out.strip().splitlines()[-1]  # names the path, its size and the newest version
    assert str(copy) in last and " KB," in last
    assert f"newest cart version {summary.newest_version} " in last
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # An existing path is refused, and nothing is written to it.
    copy_bytes = copy.read_bytes()
    code, out = await _cli(server, "backup", str(copy))
    assert code == 1 and "exists" in out and "--force" in out
    assert copy.read_bytes() == copy_bytes

    # The live database is not replaced while the server has it open.
    live = _versions(server.db)
    code, out = await _cli(server, "restore", str(copy))
    assert code == 1 and "stop it first" in out
    server.stop()
    assert _versions(server.db) == live

    code, out = await _cli(server, "restore", str(copy))
    assert code == 0, out
    kept = [p for p in server.workdir.iterdir() if p.name.startswith("cart.db.replaced-")]
    assert len(kept) == 1 and _versions(kept[0]) == live  # the replaced file, beside it
    assert _versions(server.db) == stored

    server.start()
    cart_id, signed = carts[0]
    version = stored[cart_id]
    async with rest(server, signed) as client:
        document = (await client.get("/api/cart")).json()
        assert document["id"] == cart_id and document["version"] == version
        assert document["items"][0]["quantity"] == version
        changes = (await client.get(f"/api/cart/changes?since={version - 3}&wait=0")).json()
        assert [p["version"] for p in changes["patches"]] == [version - 2, version - 1, version]
        response = await client.post("/api/cart/items", json={"product_id": "p-002"})
        assert response.json()["version"] == version + 1  # versions go on from the copy
    # A tab that saw versions the copy does not hold gets a snapshot of what it holds.
    tab = await Tab.open(server, signed, since=max(acked[cart_id]) + 1)
    snapshot = await tab.next()
    assert snapshot["type"] == "snapshot" and snapshot["cart"]["version"] == version + 1
    await tab.close()


async def test_backup_refuses_postgres_naming_pg_dump(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = make_server(catalog=False)
    server.env["DATABASE_URL"] = "postgresql://someone:hunter2@127.0.0.1:5432/test"
    code, out = await _cli(server, "backup", str(tmp_path / "x.db"))
    assert code == 2 and "pg_dump" in out and "hunter2" not in out
    code, out = await _cli(server, "restore", str(tmp_path / "x.db"))
    assert code == 2 and "pg_restore" in out
    assert not (tmp_path / "x.db").exists()


async def test_restore_refuses_a_file_that_is_not_a_sound_cart_database(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = make_server()
    live = server.db.read_bytes()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path, words in ((junk, "not a sound"), (other, "not a cart database")):
        code, out = await _cli(server, "restore", str(path))
        assert code == 1 and words in out, out
    code, out = await _cli(server, "restore", str(tmp_path / "missing.db"))
    assert code == 1 and "not a file" in out
    assert server.db.read_bytes() == live
    assert not [p for p in server.workdir.iterdir() if ".replaced-" in p.name]


def test_check_names_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("CREATE TABLE cart_sessions (id TEXT PRIMARY KEY, v TEXT)")
        conn.executemany(
            "INSERT INTO cart_sessions VALUES (?, ?)", [(str(n), "x" * 300) for n in range(500)]
        )
    data = bytearray(path.read_bytes())
    data[1024 * 5 : 1024 * 5 + 200] = b"\xff" * 200  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    try:
        check(path)
    except BackupError as exc:
        assert "damaged" in str(exc) or "not a sound" in str(exc)
    else:
        raise AssertionError("a damaged file passed the check")


async def test_a_server_does_not_start_on_a_database_being_restored(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server()
    fd = os.open(f"{server.db}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a restore holds while it works
        code, out = await _cli(server, "migrate")
        assert code != 0 and "being restored" in out
    finally:
        os.close(fd)


def test_a_long_backup_says_how_far_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "big.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE cart_sessions (id TEXT PRIMARY KEY, updated_at TEXT, version)")
        for table in ("cart_items", "cart_patches", "products"):
            conn.execute(f"CREATE TABLE {table} (x)")
        at = [f"2026-12-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z" for n in range(20_000)]
        rows = [(f"c{n}", at[n], n) for n in range(20_000)]
        conn.executemany("INSERT INTO cart_sessions VALUES (?, ?, ?)", rows)
        conn.commit()
    monkeypatch.setattr(backup, "PROGRESS_EVERY", 0.0)  # every progress callback prints
    said: list[str] = []
    summary = backup.backup(db, tmp_path / "copy.db", say=said.append)
    assert said and all("copied" in line for line in said)
    assert summary.carts == 20_000 and summary.newest_version == 19_999
    assert (tmp_path / "copy.db").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*partial"))
