"""Pure rendering of carts into wire documents: the cart document, its items, patches and
money. No asyncio, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from .cart import Cart, Change, Line, Product
from .clock import iso
from .protocol import CartDoc, ItemDoc, PatchMsg, PatchOp, RemoveOp, StatusOp, UpsertOp

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}
_ZERO_DECIMAL = {"jpy", "krw", "vnd", "clp", "isk", "huf"}


def format_money(cents: int, currency: str) -> str:
    """'$39.98' for 3998 usd; '1,500 ¥' style amounts for zero-decimal currencies."""
    sign = "-" if cents < 0 else ""
    symbol = _SYMBOLS.get(currency)
    if currency in _ZERO_DECIMAL:
        amount = f"{abs(cents):,}"
    else:
        amount = f"{abs(cents) // 100:,}.{abs(cents) % 100:02d}"
    return f"{sign}{symbol}{amount}" if symbol else f"{sign}{amount} {currency.upper()}"


def item_doc(line: Line, catalog: Mapping[str, Product]) -> ItemDoc:
    product = catalog.get(line.product_id)
    return ItemDoc(
        product_id=line.product_id,
        sku=product.sku if product else "",
        name=product.name if product else line.product_id,
        quantity=line.quantity,
        unit_price_cents=line.unit_price_cents,
        line_total_cents=line.quantity * line.unit_price_cents,
        image_url=product.image_url if product else None,
        current_price_cents=product.price_cents if product else line.unit_price_cents,
        available=product is not None and product.active,
    )


class ItemDocs:
    """item_doc(), remembered per line and catalog revision: a mutation changes one line,
    and the cart's other lines (immutable values) are not rendered again."""

    __slots__ = ("_docs",)

    def __init__(self) -> None:
        self._docs: dict[str, tuple[Line, int, ItemDoc]] = {}

    def render(self, cart: Cart, catalog: Mapping[str, Product], revision: int) -> list[ItemDoc]:
        docs = self._docs
        if len(docs) > len(cart.lines) + 8:  # lines removed since: forget them
            docs = self._docs = {}
        out = []
        for line in cart.lines:
            known = docs.get(line.product_id)
            if known is None or known[0] is not line or known[1] != revision:
                known = docs[line.product_id] = (line, revision, item_doc(line, catalog))
            out.append(known[2])
        return out


def cart_doc(
    cart: Cart, catalog: Mapping[str, Product], currency: str, items: list[ItemDoc] | None = None
) -> CartDoc:
    """The cart document; `items` if its lines are rendered already (ItemDocs)."""
    subtotal = cart.subtotal_cents
    return CartDoc(
        id=cart.id,
        version=cart.version,
        status=cart.status.value,
        items=items if items is not None else [item_doc(line, catalog) for line in cart.lines],
        item_count=cart.item_count,
        subtotal_cents=subtotal,
        currency=currency,
        total_formatted=format_money(subtotal, currency),
        updated_at=iso(cart.updated_at),
        abandon_at=iso(cart.abandon_at) if cart.abandon_at else None,
    )


def patch_msg(
    cart: Cart, change: Change, catalog: Mapping[str, Product], origin: str | None
) -> PatchMsg:
    """The patch that takes a tab from version cart.version - 1 to cart.version."""
    ops: list[PatchOp] = [UpsertOp(item_doc(line, catalog)) for line in change.upserted]
    ops.extend(RemoveOp(product_id) for product_id in change.removed)
    if change.status is not None:
        ops.append(StatusOp(change.status.value))
    return PatchMsg(
        version=cart.version,
        ops=ops,
        item_count=cart.item_count,
        subtotal_cents=cart.subtotal_cents,
        origin=origin,
    )
