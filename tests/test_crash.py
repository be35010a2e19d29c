"""SIGKILL at random instants under load from tabs and REST clients: after every kill, each
acknowledged mutation is in the database at its version and nothing is half-applied.

CI runs 50 kills. By hand: `CRASH_KILLS=1000 CRASH_SECONDS=3600 python -m pytest
tests/test_crash.py` (or `python -m bench crash --kills 1000`)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bench.crash import Checkpoint, Ledger, Mismatch, Op, crash_loop, verify

KILLS = int(os.environ.get("CRASH_KILLS", "50"))
SECONDS = float(os.environ.get("CRASH_SECONDS", "90"))
SEED = int(os.environ.get("CRASH_SEED", "8"))


@pytest.mark.timeout(SECONDS + 60)
async def test_every_acknowledged_mutation_survives_sigkill(tmp_path: Path) -> None:
    result = await crash_loop(KILLS, SECONDS, SEED, workdir=tmp_path)
    assert result["kills"] == KILLS
    assert result["acknowledged"] >= KILLS  # every cycle had load when it was killed
    # Acknowledged ones are a subset of what the store holds (checked cart by cart inside).
    assert result["applied"] >= result["acknowledged"]
    assert result["applied"] - result["applied_unacknowledged"] == result["acknowledged"]


def _ledger_with(cart: str, *ops: tuple[str, Op, int | None]) -> Ledger:
    ledger = Ledger()
    for key, op, acked in ops:
        ledger.send(key, cart, op)
        if acked is not None:
            ledger.ack(key, acked)
    return ledger


def _database(path: Path, cart: str, version: int, lines: dict[str, int], keys: list[str]) -> Path:
    """A database file shaped like the server's, holding what a test says it holds."""
    db = path / "cart.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "CREATE TABLE cart_sessions (id TEXT, version INT, status TEXT);"
            "CREATE TABLE cart_items (cart_id TEXT, product_id TEXT, quantity INT);"
            "CREATE TABLE applied_mutations (cart_id TEXT, key TEXT, version INT);"
            "CREATE TABLE cart_patches (cart_id TEXT, version INT, body TEXT);"
        )
        conn.execute("INSERT INTO cart_sessions VALUES (?, ?, 'active')", (cart, version))
        conn.executemany(
            "INSERT INTO cart_items VALUES (?, ?, ?)", [(cart, p, q) for p, q in lines.items()]
        )
        conn.executemany(
            "INSERT INTO applied_mutations VALUES (?, ?, ?)",
            [(cart, key, v) for v, key in enumerate(keys, 1)],
        )
        conn.executemany(  # ADD_A then ADD_B: 2 units, then 3
            "INSERT INTO cart_patches VALUES (?, ?, ?)",
            [(cart, v, f'{{"item_count": {count}}}') for v, count in [(1, 2), (2, 3)][:version]],
        )
    return db


ADD_A = Op("add", "b-000", 2)
ADD_B = Op("add", "b-001", 1)


def test_the_check_accepts_a_consistent_file(tmp_path: Path) -> None:
    ledger = _ledger_with("c", ("k1", ADD_A, 1), ("k2", ADD_B, None))  # k2 committed, unacked
    db = _database(tmp_path, "c", 2, {"b-000": 2, "b-001": 1}, ["k1", "k2"])
    assert verify(db, ledger, "c") == {"applied": 2, "applied_unacked": 1}
    assert ledger.carts["c"] == Checkpoint(2, {"b-000": 2, "b-001": 1})


@pytest.mark.parametrize(
    ("version", "lines", "keys", "complaint"),
    [
        (1, {"b-000": 2}, ["k1"], "acknowledged at v2"),  # an acked mutation is missing
        (2, {"b-000": 2}, ["k1", "k2"], "replay"),  # its key is stored, its line is not
        (2, {"b-000": 2, "b-001": 1}, ["k1"], "versions with a mutation"),  # a version lacks one
        (2, {"b-000": 2, "b-001": 1}, ["k1", "zz"], "never sent"),
    ],
)
def test_the_check_finds_lost_and_half_applied_mutations(
    tmp_path: Path, version: int, lines: dict[str, int], keys: list[str], complaint: str
) -> None:
    """The checker itself must fail on the damage it is there to find."""
    ledger = _ledger_with("c", ("k1", ADD_A, 1), ("k2", ADD_B, 2))
    db = _database(tmp_path, "c", version, lines, keys)
    with pytest.raises(Mismatch, match=complaint):
        verify(db, ledger, "c")
