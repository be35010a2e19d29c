"""writer: the SQLite writer's statement for a batch of edits, in this process, with no
server and no event loop. --batches batches of --edits plain edits (an item added, with
its patch and its mutation id, as a tab sends them) on random carts of --carts, written
with `carts.write_many` on a connection opened as the store opens its writer's, after
--warm batches that fill the carts' patch history. Per batch: the WAL frames written
(pages, counted from the WAL's size with automatic checkpoints off), the thread's CPU,
user and system, and the wall clock. The frames do not depend on the machine's noise;
the CPU and the clock do. This is the cost that a storage layout changes.

--without KIND (again for more) runs the same batches with that kind of row left out of
the statement, so each kind's share of the pages is the difference from a full run with
the same --seed (the carts' rows are always written: the run checks them)."""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from datetime import timedelta
from typing import Any

from server import cart as domain
from server import render
from server.cart import AddItem, Cart, Op, Product, RemoveItem
from server.clock import iso, utcnow
from server.config import Settings
from server.metrics import Metrics
from server.protocol import MAX_QUANTITY, encode
from server.store import CartWrite
from server.store.carts import EDIT_STEPS, EDITS_TRIGGER, write_cart, write_many
from server.store.shop import upsert_each
from server.store.sqlite import SQLiteStore, drive

from .harness import percentiles, report

OWN_SERVER = True
PRODUCTS = 1000
LINES = 10  # products each cart draws from: its lines stay few, as a shopper's do
WAL_HEADER, FRAME_HEADER = 32, 24
# The steps of the batch statement (carts.EDIT_STEPS) that write each kind of row.
KINDS = {
    "keys": ("INSERT INTO applied_mutations",),  # mutation ids
    "patches": ("INSERT INTO cart_patches", "DELETE FROM cart_patches"),  # with their trims
    "trims": ("DELETE FROM cart_patches",),  # patches past PATCH_HISTORY
    "lines": ("INSERT INTO cart_items", "DELETE FROM cart_items"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carts", type=int, default=100)
    parser.add_argument("--edits", type=int, default=52, help="edits per batch (one statement)")
    parser.add_argument("--warm", type=int, default=200, help="batches before measuring")
    parser.add_argument("--batches", type=int, default=100, help="batches measured")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--without", action="append", choices=sorted(KINDS), default=[],
        help="leave this kind of row out of every batch (again for more)",
    )  # fmt: skip


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (
        0 < args.carts <= 10_000
        and 0 < args.edits <= 64
        and 0 <= args.warm <= 2000
        and 0 < args.batches <= 2000
    ):
        parser.error("bounded: --carts 1..10000, --edits 1..64, --warm 0..2000, --batches 1..2000")


def trigger_without(kinds: list[str]) -> str:
    """The writer's trigger (carts.EDITS_TRIGGER), less the steps that write `kinds`."""
    left_out = tuple(prefix for kind in kinds for prefix in KINDS[kind])
    kept = [step for step in EDIT_STEPS if not step.startswith(left_out)]
    return EDITS_TRIGGER.replace("; ".join(EDIT_STEPS), "; ".join(kept))


class Shoppers:
    """Carts and their next edits, applied as the room applies them."""

    def __init__(self, carts: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.products = {
            f"p-{n:04d}": Product(f"p-{n:04d}", f"P-{n:04d}", f"Product {n}", 100 + n, 10**9)
            for n in range(PRODUCTS)
        }
        ids = list(self.products)
        self.carts = [Cart(id=f"bench-writer-{n:05d}", updated_at=utcnow()) for n in range(carts)]
        self.picks = [self.rng.sample(ids, LINES) for _ in range(carts)]

    def edit(self, n: int) -> CartWrite:
        cart = self.carts[n]
        product_id = self.rng.choice(self.picks[n])
        line = next((line for line in cart.lines if line.product_id == product_id), None)
        # A line at the most a cart takes is removed instead, so any run stays valid.
        op: Op = AddItem(product_id, 1)
        if line is not None and line.quantity >= MAX_QUANTITY:
            op = RemoveItem(product_id)
        new, change = domain.apply(cart, op, self.products, utcnow(), 1800.0)
        patch = encode(render.patch_msg(new, change, self.products, "bench-tab")).decode()
        self.carts[n] = new
        return CartWrite(new, cart.version, change, patch, f"ws:bench-tab:{new.version}")

    def batch(self, edits: int) -> list[CartWrite]:
        return [self.edit(self.rng.randrange(len(self.carts))) for _ in range(edits)]


def main(args: argparse.Namespace, _target: Any) -> None:
    workdir = tempfile.mkdtemp(prefix="cart-writer-")
    path = os.path.join(workdir, "writer.db")
    settings = Settings(database_url=f"sqlite:///{path}", sqlite_synchronous=args.synchronous)
    # The store's own setup of its writer's connection (pragmas, schema, the edits view):
    # the statement measured is the one the server runs.
    conn = SQLiteStore(path, settings, Metrics())._open_writer()
    if args.without:
        conn.execute("DROP TRIGGER edits_write")
        conn.execute(trigger_without(args.without))
    ttl, history = timedelta(seconds=settings.cart_ttl_seconds), settings.patch_history
    try:
        shoppers = Shoppers(args.carts, args.seed)
        drive(upsert_each(list(shoppers.products.values()), iso(utcnow())), conn)
        for n in range(args.carts):  # each cart's first write, as the store makes it
            drive(write_cart(shoppers.edit(n), ttl, history), conn)
        for _ in range(args.warm):
            drive(write_many(shoppers.batch(args.edits), ttl, history), conn)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        wal = path + "-wal"
        frames: list[int] = []
        wall: list[float] = []
        # Made first: the room's part (apply, render, encode) is not the writer's.
        batches = [shoppers.batch(args.edits) for _ in range(args.batches)]
        before = resource.getrusage(resource.RUSAGE_THREAD)
        size = os.path.getsize(wal) if os.path.exists(wal) else 0
        for batch in batches:
            started = time.perf_counter()
            drive(write_many(batch, ttl, history), conn)
            wall.append(time.perf_counter() - started)
            grown = os.path.getsize(wal)
            frames.append((grown - max(size, WAL_HEADER)) // (FRAME_HEADER + page))
            size = grown
        after = resource.getrusage(resource.RUSAGE_THREAD)
        stored = dict(conn.execute("SELECT id, version FROM cart_sessions").fetchall())
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    held = {cart.id: cart.version for cart in shoppers.carts}
    user = (after.ru_utime - before.ru_utime) / args.batches
    system = (after.ru_stime - before.ru_stime) / args.batches
    ordered = sorted(frames)
    result = {
        "carts": args.carts,
        "edits_per_batch": args.edits,
        "batches": args.batches,
        "synchronous": args.synchronous,
        "without": sorted(args.without),
        "frames_per_batch": sum(frames) / args.batches,
        "frames_per_batch_max": ordered[-1],
        "frames_per_edit": sum(frames) / args.batches / args.edits,
        "cpu_ms_per_batch": {"user": user * 1000, "system": system * 1000},
        "wall_ms": percentiles(wall),
        "stored_as_applied": stored == held,  # every edit landed: the versions agree
    }
    table = [
        ("rows left out", ", ".join(result["without"]) or "none"),
        ("WAL frames per batch", f"{result['frames_per_batch']:.1f} (max {ordered[-1]}),"
         f" {result['frames_per_edit']:.2f} per edit"),
        ("CPU per batch", f"user {user * 1000:.2f} ms, system {system * 1000:.2f} ms"),
        ("wall clock per batch", f"p50 {result['wall_ms']['p50']:.2f} ms,"
         f" p99 {result['wall_ms']['p99']:.2f} ms"),
        ("stored as applied", str(result["stored_as_applied"])),
    ]  # fmt: skip
    report("writer", table, result)
