"""Catalog files (CSV, JSON) and the `python -m server import|migrate` command line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.__main__ import main
from server.cart import Product
from server.importer import DEMO_CATALOG, CatalogFileError, read_products
from server.store.tables import SCHEMA_TABLES
from tests.support import fresh_schema

CSV_HEADER = "id,sku,name,price_cents,stock,image_url\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def product(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "p-1",
        "sku": "SKU-1",
        "name": "Thing one",
        "price_cents": 1999,
        "stock": 5,
        **overrides,
    }


# --- read_products: valid files -------------------------------------------------------


def test_valid_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.csv",
        CSV_HEADER + 'p-1,SKU-1,Thing one,1999,5,/img/1.svg\np-2,SKU-2,"Two, a pair",250,0,\n',
    )
    assert read_products(path) == [
        Product("p-1", "SKU-1", "Thing one", 1999, 5, "/img/1.svg"),
        Product("p-2", "SKU-2", "Two, a pair", 250, 0, None),
    ]


def test_csv_without_the_optional_image_url_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,sku,name,price_cents,stock\np-1,SKU-1,One,100,1\n")
    assert read_products(path) == [Product("p-1", "SKU-1", "One", 100, 1, None)]


def test_csv_with_a_byte_order_mark_and_columns_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffstock,price_cents,name,sku,id\n3,100,One,SKU-1,p-1\n".encode())
    assert read_products(path) == [Product("p-1", "SKU-1", "One", 100, 3, None)]


def test_valid_json_list(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.json",
        json.dumps([product(image_url="/img/1.svg"), product(id="p-2", sku="SKU-2")]),
    )
    assert read_products(path) == [
        Product("p-1", "SKU-1", "Thing one", 1999, 5, "/img/1.svg"),
        Product("p-2", "SKU-2", "Thing one", 1999, 5, None),
    ]


def test_valid_json_object_with_products(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.json",
        json.dumps({"products": [product(image_url=None), product(id="p-2", sku="SKU-2")]}),
    )
    result = read_products(path)
    assert [p.id for p in result] == ["p-1", "p-2"]
    assert result[0].image_url is None


def test_uppercase_extension_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "catalog.JSON", json.dumps([product()]))
    assert read_products(path) == [Product("p-1", "SKU-1", "Thing one", 1999, 5, None)]


def test_the_demo_catalog_is_valid() -> None:
    products = read_products(DEMO_CATALOG)
    assert products
    assert len({p.id for p in products}) == len(products)


# --- read_products: errors name the file and the row ----------------------------------


def error_of(path: Path) -> str:
    with pytest.raises(CatalogFileError) as info:
        read_products(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_csv_bad_price(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", CSV_HEADER + "p-1,SKU-1,One,100,1,\np-2,SKU-2,Two,abc,1,\n")
    message = error_of(path)
    assert "line 3" in message
    assert "price_cents" in message


@pytest.mark.parametrize(
    "body",
    [
        "\np-1,SKU-1,One,100,1,\np-2,SKU-2,Two,abc,1,\n",  # a blank line after the header
        'p-1,SKU-1,"One,\nsecond line",100,1,\np-2,SKU-2,Two,abc,1,\n',  # a multi-line name
    ],
    ids=["blank-line", "multi-line-field"],
)
def test_csv_error_names_the_physical_line_of_the_bad_row(tmp_path: Path, body: str) -> None:
    # The bad row is on line 4 of the file, as an editor shows it.
    path = write(tmp_path / "c.csv", CSV_HEADER + body)
    assert path.read_text().splitlines()[3].startswith("p-2,SKU-2,Two,abc")
    message = error_of(path)
    assert "line 4" in message


def test_csv_negative_stock(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", CSV_HEADER + "p-1,SKU-1,One,100,-4,\n")
    message = error_of(path)
    assert "line 2" in message
    assert "stock" in message


def test_csv_header_missing_a_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,sku,name,stock\np-1,SKU-1,One,1\n")
    message = error_of(path)
    assert "line 1: the header row lacks the column price_cents" in message


def test_csv_duplicate_id(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        CSV_HEADER + "p-1,SKU-1,One,100,1,\np-2,SKU-2,Two,100,1,\np-1,SKU-3,Three,100,1,\n",
    )
    message = error_of(path)
    assert "line 4" in message
    assert "'p-1'" in message
    assert "line 2" in message


def test_csv_duplicate_sku(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", CSV_HEADER + "p-1,SKU-1,One,100,1,\np-2,SKU-1,Two,100,1,\n")
    message = error_of(path)
    assert "line 3" in message
    assert "sku 'SKU-1'" in message


def test_csv_extra_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", CSV_HEADER + "p-1,SKU-1,One,100,1,,surprise\n")
    message = error_of(path)
    assert "line 2" in message
    assert "more fields" in message


@pytest.mark.parametrize("name", ["c.csv", "c.json"])
@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_an_empty_file_is_called_empty(tmp_path: Path, name: str, text: str) -> None:
    assert error_of(write(tmp_path / name, text)).endswith(": the file is empty")


@pytest.mark.parametrize("name", ["c.csv", "c.json"])
def test_a_file_that_is_not_utf8_is_named_as_such(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    # What a spreadsheet saving "CSV" in Windows-1252 writes: é as one byte, on line 3.
    path.write_bytes(
        (CSV_HEADER + "p-1,SKU-1,One,100,1,\np-2,SKU-2,Caf\xe9,100,1,\n").encode("cp1252")
    )
    message = error_of(path)
    assert "line 3: the file is not UTF-8 text" in message
    assert "CSV UTF-8" in message


@pytest.mark.parametrize("price", ["12.50", "12,50", "0.5"])
def test_csv_price_in_units_names_the_cents(tmp_path: Path, price: str) -> None:
    cents = {"12.50": 1250, "12,50": 1250, "0.5": 50}[price]
    path = write(tmp_path / "c.csv", CSV_HEADER + f'p-1,SKU-1,One,"{price}",1,\n')
    message = error_of(path)
    assert f"line 2: price_cents is {price}: prices are integer cents: {cents}" in message


@pytest.mark.parametrize(("price", "shown"), [(12.5, "12.5"), ("12.50", "12.50")])
def test_json_price_in_units_names_the_cents(tmp_path: Path, price: object, shown: str) -> None:
    message = error_of(write(tmp_path / "c.json", json.dumps([product(price_cents=price)])))
    assert f"item 1: price_cents is {shown}: prices are integer cents: 1250" in message


def test_csv_unknown_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,sku,name,price_cents,stock,colour\np-1,S,One,1,1,red\n")
    message = error_of(path)
    assert "line 1: unknown column 'colour'" in message
    assert "id, sku, name, price_cents, stock, image_url" in message


def test_csv_repeated_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,sku,name,price_cents,stock,sku\np-1,S,One,1,1,T\n")
    assert "line 1: the column 'sku' appears twice" in error_of(path)


def test_errors_speak_plainly(tmp_path: Path) -> None:
    # No msgspec wording ("Expected `int`, got `str`", "Object contains unknown field").
    cases = {
        "abc": "price_cents is 'abc'; it must be a whole number of cents from 0 to 100000000",
        "-1": "price_cents is '-1'; it must be a whole number of cents",
    }
    for price, expected in cases.items():
        path = write(tmp_path / "c.csv", CSV_HEADER + f"p-1,SKU-1,One,{price},1,\n")
        message = error_of(path)
        assert expected in message
        assert "Expected" not in message and "`" not in message
    blank_name = write(tmp_path / "n.csv", CSV_HEADER + "p-1,SKU-1,,100,1,\n")
    assert "line 2: name is empty; it must be 1 to 200 characters" in error_of(blank_name)
    spaced = write(tmp_path / "s.csv", CSV_HEADER + "p 1,SKU-1,One,100,1,\n")
    assert "id is 'p 1'; it must be one word (no spaces)" in error_of(spaced)


def test_csv_header_only(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.csv", CSV_HEADER))
    assert "no products" in message


def test_json_bad_price(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", json.dumps([product(), product(id="p-2", price_cents="abc")]))
    message = error_of(path)
    assert "item 2" in message
    assert "price_cents" in message


def test_json_price_as_a_numeric_string_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.json", json.dumps([product(price_cents="100")])))
    assert "item 1" in message


def test_json_negative_stock(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.json", json.dumps([product(stock=-1)])))
    assert "item 1" in message
    assert "stock" in message


def test_json_missing_field(tmp_path: Path) -> None:
    row = product()
    del row["sku"]
    message = error_of(write(tmp_path / "c.json", json.dumps([row])))
    assert "item 1: no sku (every product needs it)" in message


def test_json_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", json.dumps([product(), product(id="p-2", color="red")]))
    message = error_of(path)
    assert "item 2: unknown field 'color'; the fields are id, sku" in message


def test_json_duplicate_id_and_sku(tmp_path: Path) -> None:
    dup_id = write(tmp_path / "a.json", json.dumps([product(), product(sku="SKU-2")]))
    assert "item 2" in error_of(dup_id)
    dup_sku = write(tmp_path / "b.json", json.dumps([product(), product(id="p-2")]))
    message = error_of(dup_sku)
    assert "item 2" in message
    assert "sku" in message


def test_not_json(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.json", "id,sku\n"))
    assert "not valid JSON" in message


@pytest.mark.parametrize("text", ["", "[]", '{"products": []}'])
def test_empty_json(tmp_path: Path, text: str) -> None:
    error_of(write(tmp_path / "c.json", text))


@pytest.mark.parametrize("text", ['{"items": []}', '"p-1"', "42"])
def test_json_of_the_wrong_shape(tmp_path: Path, text: str) -> None:
    assert "expected a list" in error_of(write(tmp_path / "c.json", text))


@pytest.mark.parametrize("name", ["catalog.txt", "catalog.xlsx", "catalog"])
def test_wrong_extension(tmp_path: Path, name: str) -> None:
    message = error_of(write(tmp_path / name, json.dumps([product()])))
    assert ".csv or .json" in message


# --- the command line -----------------------------------------------------------------


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "CART_SECRET": "x"}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        cwd=db.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def db_products(db: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id, sku, name, price_cents, stock, image_url FROM products"
        ).fetchall()
    conn.close()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_cli_import_inserts_then_updates(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    csv_path = write(
        tmp_path / "catalog.csv",
        CSV_HEADER + "p-1,SKU-1,One,100,5,/img/1.svg\np-2,SKU-2,Two,200,6,\n",
    )
    first = cli(db, "import", str(csv_path))
    assert first.returncode == 0, first.stderr
    assert "2 new, 0 updated" in first.stdout
    assert db_products(db) == {
        "p-1": ("SKU-1", "One", 100, 5, "/img/1.svg"),
        "p-2": ("SKU-2", "Two", 200, 6, None),
    }

    json_path = write(
        tmp_path / "catalog.json",
        json.dumps(
            [
                {"id": "p-2", "sku": "SKU-2", "name": "Two", "price_cents": 250, "stock": 6},
                {"id": "p-3", "sku": "SKU-3", "name": "Three", "price_cents": 300, "stock": 1},
            ]
        ),
    )
    second = cli(db, "import", str(json_path))
    assert second.returncode == 0, second.stderr
    assert "1 new, 1 updated" in second.stdout
    products = db_products(db)
    assert products["p-2"] == ("SKU-2", "Two", 250, 6, None)
    assert products["p-3"] == ("SKU-3", "Three", 300, 1, None)
    assert products["p-1"] == ("SKU-1", "One", 100, 5, "/img/1.svg")


def test_cli_import_of_a_bad_file_fails_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    good = write(tmp_path / "good.csv", CSV_HEADER + "p-1,SKU-1,One,100,5,\n")
    assert cli(db, "import", str(good)).returncode == 0
    before = db_products(db)

    bad = write(
        tmp_path / "bad.csv",
        CSV_HEADER + "p-1,SKU-1,One,999,5,\np-2,SKU-2,Two,abc,1,\n",
    )
    result = cli(db, "import", str(bad))
    assert result.returncode != 0
    assert "line 3" in result.stderr
    assert str(bad) in result.stderr
    assert db_products(db) == before


def test_cli_import_with_a_sku_clash_in_the_database_imports_nothing(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    good = write(tmp_path / "good.csv", CSV_HEADER + "p-1,SKU-1,One,100,5,\n")
    assert cli(db, "import", str(good)).returncode == 0
    before = db_products(db)

    # Valid on its own, but p-9 takes the sku p-1 holds in the database.
    clash = write(
        tmp_path / "clash.csv",
        CSV_HEADER + "p-2,SKU-2,Two,200,1,\np-9,SKU-1,Nine,900,1,\n",
    )
    result = cli(db, "import", str(clash))
    assert result.returncode != 0
    assert "p-9" in result.stderr
    assert "nothing was imported" in result.stderr
    assert db_products(db) == before


def test_cli_import_may_swap_skus_between_products(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    first = write(tmp_path / "a.csv", CSV_HEADER + "p-1,SKU-A,One,100,5,\np-2,SKU-B,Two,200,5,\n")
    assert cli(db, "import", str(first)).returncode == 0
    swapped = write(tmp_path / "b.csv", CSV_HEADER + "p-1,SKU-B,One,100,5,\np-2,SKU-A,Two,200,5,\n")
    result = cli(db, "import", str(swapped))
    assert result.returncode == 0, result.stderr
    products = db_products(db)
    assert products["p-1"][0] == "SKU-B" and products["p-2"][0] == "SKU-A"


def test_cli_import_of_a_missing_file_fails(tmp_path: Path) -> None:
    result = cli(tmp_path / "cart.db", "import", str(tmp_path / "nope.csv"))
    assert result.returncode != 0
    assert "nope.csv" in result.stderr


def test_cli_migrate_creates_the_tables_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    result = cli(db, "migrate")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    conn = sqlite3.connect(db)
    try:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert {
            "products",
            "cart_sessions",
            "cart_items",
            "cart_patches",
            "applied_mutations",
        } <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    # Idempotent: a second run succeeds on the existing schema.
    assert cli(db, "migrate").returncode == 0


def test_cli_migrate_says_which_tables_it_created(tmp_path: Path) -> None:
    db = tmp_path / "cart.db"
    first = cli(db, "migrate")
    assert first.returncode == 0, first.stderr
    every = ", ".join(SCHEMA_TABLES)
    n = len(SCHEMA_TABLES)
    assert f"created {every} ({n} of {n} tables) in sqlite:///{db}" in first.stdout
    assert "the schema is up to date" in first.stdout
    again = cli(db, "migrate")
    assert f"nothing to create: all {n} tables were there" in again.stdout
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TABLE payment_events")
    repaired = cli(db, "migrate")
    assert f"created payment_events (1 of {n} tables)" in repaired.stdout


async def test_cli_migrate_on_postgresql_says_which_tables_it_created(tmp_path: Path) -> None:
    async with fresh_schema() as url:
        env = {**os.environ, "DATABASE_URL": url, "CART_SECRET": "x"}
        run = functools.partial(
            subprocess.run,
            [sys.executable, "-m", "server", "migrate"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        first = await asyncio.to_thread(run)
        assert first.returncode == 0, first.stderr
        assert f"({len(SCHEMA_TABLES)} of {len(SCHEMA_TABLES)} tables)" in first.stdout
        again = await asyncio.to_thread(run)
        assert "nothing to create" in again.stdout, again.stdout + again.stderr


def test_cli_import_of_a_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes((CSV_HEADER + "p-1,SKU-1,Café,100,1,\n").encode("latin-1"))
    result = cli(tmp_path / "cart.db", "import", str(path))
    assert result.returncode == 1
    assert f"error: {path} line 2: the file is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr


HELP = {
    (): ["serve", "migrate", "import", "events", "DATABASE_URL", "LOG_LEVEL", "--port"],
    ("serve",): ["HOST", "PORT", "DATABASE_URL", "CART_SECRET", "REDIS_URL", "drain"],
    ("migrate",): ["DATABASE_URL", "schema.sql", "Existing tables and their rows are kept"],
    ("import",): ["DATABASE_URL", "price_cents", "integer cents", "every row or none"],
    ("events",): ["DATABASE_URL", "one JSON object per line", "--undelivered", "--limit"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "top")
def test_help_says_what_each_command_does_and_reads(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main([*command, "--help"])
    assert ended.value.code == 0
    shown = capsys.readouterr().out
    missing = [phrase for phrase in HELP[command] if phrase not in shown]
    assert not missing, shown


def test_cli_refuses_a_bad_setting(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/c.db", "PATCH_HISTORY": "none"}
    result = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PATCH_HISTORY" in result.stderr
    assert not (tmp_path / "c.db").exists()


def test_csv_active_that_is_not_true_or_false(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,sku,name,price_cents,stock,active\np-1,S,One,1,1,maybe\n")
    assert "line 2: active is 'maybe'; it must be true or false" in error_of(path)
