"""The stores' one SQL: named parameters numbered for asyncpg, every shared statement
accepted by both databases, and one plan giving the same results on both."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.config import Settings
from server.store import ProductConflict, Store, carts, effects, open_store, records, shop
from server.store.postgres import PostgresStore
from server.store.sql import POSTGRES, SQLITE, Lock, Many, Pair, Plan, Rows, Run, numbered
from server.store.sqlite import SQLiteStore

SHARED = (
    [
        (module.__name__.rsplit(".", 1)[1], name, value)
        for module in (carts, effects, records, shop)
        for name, value in vars(module).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith(("SELECT", "INSERT", "UPDATE", "DELETE"))
        and value != carts.EDITS  # SQLite's alone: an insert into its temporary view
    ]
    + [("carts", f"PURGES[{n}]", sql) for n, sql in enumerate(carts.PURGES)]
    + [("records", f"RECORD_PURGES[{n}]", sql) for n, sql in enumerate(records.RECORD_PURGES)]
)


def test_named_parameters_are_numbered_in_order_of_first_use() -> None:
    sql = "UPDATE t SET a = :a, b = :b WHERE id = :id AND a <> :a"
    assert numbered(sql) == (
        "UPDATE t SET a = $1, b = $2 WHERE id = $3 AND a <> $1",
        ("a", "b", "id"),
    )


def test_quoted_text_and_casts_are_not_parameters() -> None:
    sql = "SELECT ':x', 'it''s :y', \":z\", :w::text[] FROM t WHERE s = '?' AND u = :u"
    assert numbered(sql) == (
        "SELECT ':x', 'it''s :y', \":z\", $1::text[] FROM t WHERE s = '?' AND u = $2",
        ("w", "u"),
    )


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM t WHERE id = ?", "SELECT ?1", "SELECT 'open FROM t WHERE id = :id"],
)
def test_positional_marks_and_unclosed_quotes_are_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="stray"):
        numbered(sql)


def test_each_dialect_fills_the_slots_and_numbers_the_parameters_its_own_way() -> None:
    sql = "SELECT id FROM products WHERE id {in_ids} AND stock > :n ORDER BY id{bytewise}"
    assert SQLITE.render(sql)[:2] == (
        "SELECT id FROM products WHERE id IN (SELECT value FROM json_each(?1)) AND stock > ?2"
        " ORDER BY id",
        ("ids", "n"),
    )
    assert POSTGRES.render(sql)[:2] == (
        'SELECT id FROM products WHERE id = ANY($1) AND stock > $2 ORDER BY id COLLATE "C"',
        ("ids", "n"),
    )
    assert POSTGRES.render(sql) is POSTGRES.render(sql)  # rendered once


def test_values_are_bound_in_the_numbered_order_a_list_as_each_driver_takes_it() -> None:
    params = {"n": 3, "ids": ["a", "b"], "unused": 0}
    sql = "SELECT id FROM products WHERE id {in_ids} AND stock > :n"
    assert SQLITE.render(sql).bind(params) == ('["a", "b"]', 3)
    assert POSTGRES.render(sql).bind(params) == (["a", "b"], 3)
    assert SQLITE.render("SELECT :n, :n").bind(params) == (3,)
    assert SQLITE.render("SELECT 1").bind(params) == ()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url))
    try:
        yield opened
    finally:
        await opened.close()


async def test_every_shared_statement_is_accepted_by_both_databases(store: Store) -> None:
    assert len(SHARED) > 40
    refused = []
    for module, name, sql in SHARED:
        if name.endswith("_LOCK") and isinstance(store, SQLiteStore):
            continue  # a Lock step: PostgreSQL's alone
        try:
            await prepare(store, sql)
        except Exception as exc:
            refused.append(f"{module}.{name}: {exc}")
    assert refused == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_statements_of_edits_together_find_their_rows_by_key(store: Store) -> None:
    """write_many's trigger: each of its statements planned as lookups by key from the
    rows it is given. A scan would make a batch's cost grow with the carts stored."""
    assert isinstance(store, SQLiteStore) and len(carts.EDIT_STEPS) == 8
    for sql in carts.EDIT_STEPS:
        # The trigger's row as parameters; RAISE() is refused outside a trigger.
        text = re.sub(r"^SELECT RAISE\(.*?\) WHERE", "SELECT 1 WHERE", sql.replace("NEW.", ":"))
        names = SQLITE.render(text).names
        found = await store._read(f"EXPLAIN QUERY PLAN {text}", dict.fromkeys(names, "[]"))
        plan = [row[3] for row in found]
        scans = [step for step in plan if step.startswith("SCAN")]
        assert all(("VIRTUAL TABLE" in step or "CONSTANT ROW" in step) for step in scans), plan
        assert any(step.startswith("SEARCH") for step in plan) or "INSERT" in sql, (sql, plan)


async def prepare(store: Store, sql: str) -> None:
    """Parse and plan the statement in the store's database, without running it."""
    if isinstance(store, SQLiteStore):
        explain = f"EXPLAIN {sql}"
        await store._read(explain, dict.fromkeys(SQLITE.render(explain).names))
        return
    assert isinstance(store, PostgresStore)
    async with store._connection("prepare") as conn:
        await conn.prepare(POSTGRES.render(sql)[0])


PRODUCT = (
    "INSERT INTO products (id, sku, name, price_cents, stock, created_at, updated_at)"
    " VALUES (:id, :sku, :id, 100, :stock, '', '')"
)


def plan_of_every_step() -> Plan[dict[str, Any]]:
    yield Many(PRODUCT, [{"id": "a", "sku": "A", "stock": 1}, {"id": "b", "sku": "B", "stock": 2}])
    taken = yield Run("UPDATE products SET stock = stock - 1 WHERE stock >= :n", {"n": 1})
    yield Lock("SELECT 1 FROM products WHERE id {in_ids} FOR UPDATE", {"ids": ["a", "b"]})
    yield Pair(
        "DELETE FROM products WHERE id = :gone",
        "UPDATE products SET name = :name WHERE id = :kept",
        {"gone": "a", "kept": "b", "name": "Bee"},
    )
    found = yield Rows(shop.PRODUCTS_BY_ID, {"ids": ["a", "b", "c"]})
    return {"taken": taken, "found": [tuple(row) for row in found]}


async def test_one_plan_gives_the_same_results_on_both_stores(store: Store) -> None:
    assert isinstance(store, SQLiteStore | PostgresStore)
    result = await store._change("run every step", plan_of_every_step())
    assert result == {"taken": 2, "found": [("b", "B", "Bee", 100, 1, None, 1)]}
    assert [p.name for p in await store.products_by_id(["a", "b"])] == ["Bee"]


def clashing_plan() -> Plan[None]:
    yield Run(PRODUCT, {"id": "c", "sku": "C", "stock": 0})
    clash = {"id": "d", "sku": "C", "stock": 0}
    yield Run(PRODUCT, clash, refused=lambda exc: ProductConflict("d", str(exc)))


async def test_a_refused_step_raises_its_refusal_and_stores_nothing(store: Store) -> None:
    assert isinstance(store, SQLiteStore | PostgresStore)
    with pytest.raises(ProductConflict) as info:
        await store._change("run a clash", clashing_plan())
    assert info.value.product_id == "d"
    assert await store.products_by_id(["c", "d"]) == []
