"""Reading a catalog file (CSV or JSON) into products, naming the first bad row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from .cart import Product
from .config import PACKAGE_DIR
from .protocol import ImageUrl, PriceCents, ProductKey, ProductName, Sku, StockUnits

DEMO_CATALOG = PACKAGE_DIR / "demo_catalog.json"

FIELDS = ("id", "sku", "name", "price_cents", "stock", "image_url", "active")


class ProductRow(Struct, forbid_unknown_fields=True):
    id: ProductKey
    sku: Sku
    name: ProductName
    price_cents: PriceCents
    stock: StockUnits
    image_url: ImageUrl | None = None
    active: bool = True


class CatalogFileError(ValueError):
    """A catalog file that cannot be imported; the message names the file and the row."""


def read_products(path: Path) -> list[Product]:
    """Products from a .csv (header row: id,sku,name,price_cents,stock[,image_url]) or a
    .json file (a list of objects, or {"products": [...]}); all rows valid or none."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, label = _csv_rows(path), "line"
    elif suffix == ".json":
        rows, label = list(enumerate(_json_rows(path), start=1)), "item"
    else:
        raise CatalogFileError(f"{path}: expected a .csv or .json file")
    products: list[Product] = []
    seen_ids: dict[str, int] = {}
    seen_skus: dict[str, int] = {}
    for number, raw in rows:
        where = f"{path} {label} {number}"
        try:
            row = msgspec.convert(raw, ProductRow, strict=suffix == ".json")
        except msgspec.ValidationError as exc:
            raise CatalogFileError(f"{where}: {exc}") from None
        for key, seen in (("id", seen_ids), ("sku", seen_skus)):
            value = getattr(row, key)
            if value in seen:
                raise CatalogFileError(f"{where}: {key} {value!r} repeats {label} {seen[value]}")
            seen[value] = number
        products.append(row_product(row))
    if not products:
        raise CatalogFileError(f"{path}: no products in the file")
    return products


def row_product(row: ProductRow) -> Product:
    return Product(
        row.id, row.sku, row.name, row.price_cents, row.stock, row.image_url or None, row.active
    )


def _csv_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line where the record starts, record), counting blank lines and quoted newlines."""
    consumed = 0

    def counted(lines: Iterator[str]) -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed += 1
            yield line

    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(counted(iter(f)))
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in FIELDS[:5] if name not in header]
        if missing:
            raise CatalogFileError(f"{path} line 1: header lacks {', '.join(missing)}")
        rows: list[tuple[int, dict[str, Any]]] = []
        while True:
            start = consumed + 1
            record = next(reader, None)
            if record is None:
                return rows
            if not record:  # a blank line
                continue
            if len(record) > len(header):
                raise CatalogFileError(f"{path} line {start}: more fields than the header")
            fields = dict(zip(header, record, strict=False))
            for optional in ("image_url", "active"):
                if fields.get(optional) == "":
                    del fields[optional]
            rows.append((start, fields))


def _json_rows(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CatalogFileError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("products"), list):
        data = data["products"]
    if not isinstance(data, list):
        raise CatalogFileError(f'{path}: expected a list of products or {{"products": [...]}}')
    return data
