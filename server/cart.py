"""Pure cart domain: values, and the one `apply` that turns an operation into a new cart
and a change (render.py makes wire documents of both). No asyncio, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from msgspec import Struct, structs

from . import errors
from .protocol import (
    MAX_LINES,
    MAX_QUANTITY,
)


class Status(StrEnum):
    ACTIVE = "active"
    CHECKING_OUT = "checking_out"
    CHECKED_OUT = "checked_out"
    ABANDONED = "abandoned"
    MERGED = "merged"
    EXPIRED = "expired"


# Shoppers may edit only these; an edit re-activates an abandoned cart.
MUTABLE = frozenset({Status.ACTIVE, Status.ABANDONED})
# A request holding a cart in one of these is given another cart (fresh, or the merge target).
FINISHED = frozenset({Status.CHECKED_OUT, Status.MERGED, Status.EXPIRED})


class Product(Struct, frozen=True):
    id: str
    sku: str
    name: str
    price_cents: int
    stock: int  # units that can still be reserved now
    image_url: str | None = None
    active: bool = True  # False: archived, not addable, lines holding it are unavailable


class Line(Struct, frozen=True):
    product_id: str
    quantity: int
    unit_price_cents: int  # price snapshot taken when the line was first added
    position: int  # the cart version that added it: lines are shown in this order
    added_at: datetime | None = None  # when the price snapshot was taken


class Cart(Struct, frozen=True):
    id: str
    updated_at: datetime
    version: int = 0
    status: Status = Status.ACTIVE
    lines: tuple[Line, ...] = ()
    user_id: str | None = None
    abandon_at: datetime | None = None
    merged_into: str | None = None

    @property
    def item_count(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def subtotal_cents(self) -> int:
        return sum(line.quantity * line.unit_price_cents for line in self.lines)

    def line(self, product_id: str) -> Line | None:
        index = self.index(product_id)
        return None if index < 0 else self.lines[index]

    def index(self, product_id: str) -> int:
        """Where the line of `product_id` is in `lines`; -1 if there is none."""
        for index, line in enumerate(self.lines):
            if line.product_id == product_id:
                return index
        return -1


# --- operations ---------------------------------------------------------------------


class AddItem(Struct, frozen=True):
    product_id: str
    quantity: int


class SetQuantity(Struct, frozen=True):
    product_id: str
    quantity: int  # 0 removes the line


class RemoveItem(Struct, frozen=True):
    product_id: str


class ClearCart(Struct, frozen=True):
    pass


class StartCheckout(Struct, frozen=True):
    """Lock an editable, non-empty cart while its stock is reserved and paid for."""


class SetStatus(Struct, frozen=True):
    """A system transition (checkout end, abandonment timer, merge): not a shopper edit.
    `successor` is the cart a finished cart's shoppers move on to."""

    status: Status
    successor: str | None = None


class Abandon(Struct, frozen=True):
    """The abandonment timer: only an active, non-empty cart past its abandon_at."""


class Expire(Struct, frozen=True):
    """The expiry sweep: only an editable cart idle for `ttl` seconds."""

    ttl: float
    successor: str


class Absorb(Struct, frozen=True):
    """Login merge: take another cart's lines into this one and make it the user's."""

    lines: tuple[Line, ...]
    user_id: str


Op = (
    AddItem
    | SetQuantity
    | RemoveItem
    | ClearCart
    | StartCheckout
    | SetStatus
    | Abandon
    | Expire
    | Absorb
)


class Change(Struct, frozen=True):
    """What one accepted operation changed; rendered into a patch's ops."""

    upserted: tuple[Line, ...] = ()
    removed: tuple[str, ...] = ()
    status: Status | None = None


def apply(
    cart: Cart, op: Op, catalog: Mapping[str, Product], now: datetime, abandon_after: float
) -> tuple[Cart, Change]:
    """Apply `op` to `cart`: the next version and what changed, or a CartError."""
    status: Status | None = None
    successor = cart.merged_into
    if isinstance(op, SetStatus):
        lines, change = cart.lines, Change(status=op.status)
        status = op.status
        successor = op.successor or successor
    elif isinstance(op, Abandon):
        due = cart.abandon_at is not None and cart.abandon_at <= now
        if cart.status is not Status.ACTIVE or not cart.lines or not due:
            raise errors.NotDue("the cart is not due to be abandoned")
        lines, change = cart.lines, Change(status=Status.ABANDONED)
        status = Status.ABANDONED
    elif isinstance(op, Expire):
        if cart.status not in MUTABLE or cart.updated_at + timedelta(seconds=op.ttl) > now:
            raise errors.NotDue("the cart is not due to expire")
        lines, change = cart.lines, Change(status=Status.EXPIRED)
        status, successor = Status.EXPIRED, op.successor
    elif isinstance(op, StartCheckout):
        if cart.status not in MUTABLE:
            raise errors.CartLocked(
                f"the cart is {cart.status.value} and cannot be checked out",
                status=cart.status.value,
            )
        if not cart.lines:
            raise errors.EmptyCart("the cart is empty; add something before checking out")
        gone = [line.product_id for line in cart.lines if not _available(line, catalog)]
        if gone:
            raise errors.ProductUnavailable(
                "some lines hold products that are no longer available; remove them first",
                lines=[{"product_id": product_id} for product_id in gone],
            )
        lines, change = cart.lines, Change(status=Status.CHECKING_OUT)
        status = Status.CHECKING_OUT
    else:
        if cart.status not in MUTABLE:
            raise errors.CartLocked(
                f"the cart is {cart.status.value} and cannot be edited", status=cart.status.value
            )
        lines, change = _edit(cart, op, catalog, now)
        if cart.status is Status.ABANDONED:
            status = Status.ACTIVE
            change = structs.replace(change, status=status)
    new_status = status or cart.status
    idle = new_status is Status.ACTIVE and lines
    return (
        structs.replace(
            cart,
            user_id=op.user_id if isinstance(op, Absorb) else cart.user_id,
            version=cart.version + 1,
            status=new_status,
            lines=lines,
            updated_at=now,
            abandon_at=now + timedelta(seconds=abandon_after) if idle else None,
            merged_into=successor,
        ),
        change,
    )


def _check_quantity(quantity: int, low: int) -> None:
    # The decoders already refuse these; the domain refuses them too, since the store's
    # CHECK constraint would otherwise be the first to notice.
    if not low <= quantity <= MAX_QUANTITY:
        raise errors.InvalidRequest(f"quantity must be {low} to {MAX_QUANTITY}, got {quantity}")


def _edit(
    cart: Cart, op: Op, catalog: Mapping[str, Product], now: datetime
) -> tuple[tuple[Line, ...], Change]:
    match op:
        case AddItem(product_id, quantity):
            _check_quantity(quantity, 1)
            product = catalog.get(product_id)
            if product is None:
                raise errors.UnknownProduct(
                    f"no product with id {product_id!r}", product_id=product_id
                )
            _check_active(product)
            index = cart.index(product_id)
            existing = cart.lines[index] if index >= 0 else None
            held = existing.quantity if existing else 0
            available = max(0, min(product.stock, MAX_QUANTITY) - held)
            if quantity > available:
                if product.stock < MAX_QUANTITY:  # stock is the tighter bound
                    raise errors.InsufficientStock(
                        f"only {available} more of {product.name} can be added",
                        product_id=product_id,
                        available=available,
                    )
                raise errors.QuantityLimit(
                    f"a line holds at most {MAX_QUANTITY}; this one has {held}",
                    product_id=product_id,
                    max_quantity=MAX_QUANTITY,
                    available=available,
                )
            if existing is None:
                if len(cart.lines) >= MAX_LINES:
                    raise errors.TooManyLines(
                        f"a cart holds at most {MAX_LINES} lines", max_lines=MAX_LINES
                    )
                line = Line(product_id, quantity, product.price_cents, cart.version + 1, now)
                return (*cart.lines, line), Change(upserted=(line,))
            line = structs.replace(existing, quantity=held + quantity)
            return _replace(cart.lines, index, line), Change(upserted=(line,))

        case SetQuantity(product_id, 0) | RemoveItem(product_id):
            index = cart.index(product_id)
            if index < 0:
                raise errors.NotInCart(f"{product_id!r} is not in the cart", product_id=product_id)
            kept = cart.lines[:index] + cart.lines[index + 1 :]
            return kept, Change(removed=(product_id,))

        case SetQuantity(product_id, quantity):
            _check_quantity(quantity, 1)
            index = cart.index(product_id)
            if index < 0:
                raise errors.NotInCart(f"{product_id!r} is not in the cart", product_id=product_id)
            existing = cart.lines[index]
            product = catalog.get(product_id)
            if quantity > existing.quantity and product is not None:
                _check_active(product)  # lowering is always allowed, raising is not
            # Lowering a quantity is always allowed, even when stock fell below it meanwhile.
            if quantity > existing.quantity and (product is None or quantity > product.stock):
                stock = product.stock if product else 0
                raise errors.InsufficientStock(
                    f"only {stock} of {product.name if product else product_id} in stock",
                    product_id=product_id,
                    available=stock,
                )
            line = structs.replace(existing, quantity=quantity)
            return _replace(cart.lines, index, line), Change(upserted=(line,))

        case ClearCart():
            return (), Change(removed=tuple(line.product_id for line in cart.lines))

        case Absorb(incoming):
            return _absorb(cart, incoming, catalog)

    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover


def _absorb(
    cart: Cart, incoming: tuple[Line, ...], catalog: Mapping[str, Product]
) -> tuple[tuple[Line, ...], Change]:
    """Quantities summed per product, capped by stock and the per-line limit (never below
    what this cart already held); the earlier price snapshot kept; lines past the cart's
    limit, or out of stock, left out."""
    lines = list(cart.lines)
    upserted: dict[str, Line] = {}
    for line in incoming:
        product = catalog.get(line.product_id)
        stock = product.stock if product else 0
        index = next((i for i, x in enumerate(lines) if x.product_id == line.product_id), None)
        if index is None:
            quantity = min(line.quantity, stock, MAX_QUANTITY)
            if quantity < 1 or len(lines) >= MAX_LINES:
                continue
            new = structs.replace(line, quantity=quantity, position=cart.version + 1)
            lines.append(new)
        else:
            held = lines[index]
            quantity = max(held.quantity, min(held.quantity + line.quantity, stock, MAX_QUANTITY))
            older = _earlier(line, held)
            new = structs.replace(
                held,
                quantity=quantity,
                unit_price_cents=older.unit_price_cents,
                added_at=older.added_at,
            )
            if new == held:
                continue
            lines[index] = new
        upserted[new.product_id] = new
    return tuple(lines), Change(upserted=tuple(upserted.values()))


def _check_active(product: Product) -> None:
    if not product.active:
        message = f"{product.name} is no longer available"
        raise errors.ProductUnavailable(message, product_id=product.id)


def _available(line: Line, catalog: Mapping[str, Product]) -> bool:
    product = catalog.get(line.product_id)
    return product is not None and product.active


def _earlier(a: Line, b: Line) -> Line:
    if a.added_at is not None and (b.added_at is None or a.added_at < b.added_at):
        return a
    return b


def _replace(lines: tuple[Line, ...], index: int, new: Line) -> tuple[Line, ...]:
    return (*lines[:index], new, *lines[index + 1 :])
