"""Reading a catalog file (CSV or JSON) into products, naming the first bad row."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from .cart import Product
from .config import PACKAGE_DIR
from .protocol import ImageUrl, PriceCents, ProductKey, ProductName, Sku, StockUnits

DEMO_CATALOG = PACKAGE_DIR / "demo_catalog.json"

FIELDS = ("id", "sku", "name", "price_cents", "stock", "image_url", "active")
REQUIRED = FIELDS[:5]
OPTIONAL = FIELDS[5:]  # left empty in a CSV row: their defaults


class ProductRow(Struct, forbid_unknown_fields=True):
    id: ProductKey
    sku: Sku
    name: ProductName
    price_cents: PriceCents
    stock: StockUnits
    image_url: ImageUrl | None = None
    active: bool = True


# What each field of ProductRow allows, as an error message says it to a shop owner.
ALLOWED = {
    "id": "one word (no spaces) of 1 to 64 characters",
    "sku": "1 to 64 characters",
    "name": "1 to 200 characters",
    "price_cents": "a whole number of cents from 0 to 100000000",
    "stock": "a whole number from 0 to 1000000000",
    "image_url": "a URL of at most 2000 characters",
    "active": "true or false",
}
_DECIMAL = re.compile(r"\d+[.,]\d{1,2}")


class CatalogFileError(ValueError):
    """A catalog file that cannot be imported; the message names the file and the row."""


def read_products(path: Path) -> list[Product]:
    """Products from a .csv (header row: id,sku,name,price_cents,stock[,image_url][,active]) or a
    .json file (a list of objects, or {"products": [...]}); all rows valid or none."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise CatalogFileError(f"{path}: expected a .csv or .json file")
    text = _text(path)
    if suffix == ".csv":
        rows, label = _csv_rows(path, text), "line"
    else:
        rows, label = list(enumerate(_json_rows(path, text), start=1)), "item"
    products: list[Product] = []
    seen_ids: dict[str, int] = {}
    seen_skus: dict[str, int] = {}
    for number, raw in rows:
        where = f"{path} {label} {number}"
        row = _row(raw, where, strict=suffix == ".json")
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


def _text(path: Path) -> str:
    """The file as text: UTF-8 (a byte order mark, as spreadsheets write, is dropped)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CatalogFileError(
            f"{path} line {line}: the file is not UTF-8 text;"
            ' save it as UTF-8 (in a spreadsheet: "CSV UTF-8") and import it again'
        ) from None
    if not text.strip():
        raise CatalogFileError(f"{path}: the file is empty")
    return text


def _row(raw: Any, where: str, strict: bool) -> ProductRow:
    """One product, or an error naming the field, what it holds and what it may hold."""
    if isinstance(raw, dict):
        unknown = [str(key) for key in raw if key not in FIELDS]
        if unknown:
            raise CatalogFileError(
                f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}"
            )
        missing = [key for key in REQUIRED if key not in raw]
        if missing:
            raise CatalogFileError(f"{where}: no {', '.join(missing)} (every product needs it)")
        price = raw["price_cents"]
        if isinstance(price, float | str) and _DECIMAL.fullmatch(str(price).strip()):
            cents = round(Decimal(str(price).strip().replace(",", ".")) * 100)
            raise CatalogFileError(
                f"{where}: price_cents is {price}: prices are integer cents: {cents}"
            )
    try:
        return msgspec.convert(raw, ProductRow, strict=strict)
    except msgspec.ValidationError as exc:
        field = re.search(r"at `\$\.(\w+)`", str(exc))
        if field is None or not isinstance(raw, dict):
            raise CatalogFileError(f"{where}: expected a product ({exc})") from None
        name = field.group(1)
        value = raw.get(name)
        held = "empty" if value == "" else repr(value)
        raise CatalogFileError(f"{where}: {name} is {held}; it must be {ALLOWED[name]}") from None


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line where the record starts, record), counting blank lines and quoted newlines."""
    consumed = 0

    def counted(lines: Iterator[str]) -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed += 1
            yield line

    reader = csv.reader(counted(iter(io.StringIO(text, newline=""))))
    header = [name.strip() for name in next(reader, [])]
    _check_header(path, header)
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
        for optional in OPTIONAL:
            if fields.get(optional) == "":
                del fields[optional]
        rows.append((start, fields))


def _check_header(path: Path, header: list[str]) -> None:
    where = f"{path} line 1"
    columns = ", ".join(FIELDS)
    unknown = [name for name in header if name not in FIELDS]
    if unknown:
        raise CatalogFileError(f"{where}: unknown column {unknown[0]!r}; the columns are {columns}")
    repeated = [name for name in FIELDS if header.count(name) > 1]
    if repeated:
        raise CatalogFileError(f"{where}: the column {repeated[0]!r} appears twice")
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise CatalogFileError(
            f"{where}: the header row lacks the column {', '.join(missing)};"
            f" it names the columns {columns} (image_url and active may be left out)"
        )


def _json_rows(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogFileError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("products"), list):
        data = data["products"]
    if not isinstance(data, list):
        raise CatalogFileError(f'{path}: expected a list of products or {{"products": [...]}}')
    return data
