"""Reading a catalog file (CSV or JSON) into products, naming the first bad row."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from .cart import Product
from .config import PACKAGE_DIR

DEMO_CATALOG = PACKAGE_DIR / "demo_catalog.json"

FIELDS = ("id", "sku", "name", "price_cents", "stock", "image_url")


class ProductRow(Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^\S+$")]
    sku: Annotated[str, Meta(min_length=1, max_length=64)]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    price_cents: Annotated[int, Meta(ge=0, le=100_000_000)]
    stock: Annotated[int, Meta(ge=0, le=1_000_000_000)]
    image_url: Annotated[str, Meta(max_length=2000)] | None = None


class CatalogFileError(ValueError):
    """A catalog file that cannot be imported; the message names the file and the row."""


def read_products(path: Path) -> list[Product]:
    """Products from a .csv (header row: id,sku,name,price_cents,stock[,image_url]) or a
    .json file (a list of objects, or {"products": [...]}); all rows valid or none."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, first = _csv_rows(path), 2  # line 1 is the header
        label = "line"
    elif suffix == ".json":
        rows, first = _json_rows(path), 1
        label = "item"
    else:
        raise CatalogFileError(f"{path}: expected a .csv or .json file")
    products: list[Product] = []
    seen_ids: dict[str, int] = {}
    seen_skus: dict[str, int] = {}
    for number, raw in enumerate(rows, start=first):
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
        products.append(
            Product(row.id, row.sku, row.name, row.price_cents, row.stock, row.image_url or None)
        )
    if not products:
        raise CatalogFileError(f"{path}: no products in the file")
    return products


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [name for name in FIELDS[:5] if name not in header]
        if missing:
            raise CatalogFileError(f"{path} line 1: header lacks {', '.join(missing)}")
        rows = []
        for row in reader:
            if None in row:
                raise CatalogFileError(
                    f"{path} line {reader.line_num}: more fields than the header"
                )
            rows.append({k: v for k, v in row.items() if not (k == "image_url" and v == "")})
        return rows


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
