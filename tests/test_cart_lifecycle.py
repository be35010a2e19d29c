"""The pure lifecycle operations: Abandon, Expire and the login merge's Absorb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from msgspec import structs

from server import errors
from server.cart import (
    Abandon,
    Absorb,
    AddItem,
    Cart,
    Change,
    ClearCart,
    Expire,
    Line,
    Product,
    SetStatus,
    Status,
    apply,
)
from server.protocol import MAX_LINES, MAX_QUANTITY

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
EARLY = NOW - timedelta(days=2)
LATE = NOW - timedelta(days=1)
ABANDON_AFTER = 1800.0
TTL = 30 * 86400.0

TEE = Product("p-001", "TEE", "Tee", 1999, 100_000)
LOW = Product("p-low", "LOW", "Last few", 500, 3)
NONE = Product("p-none", "NONE", "Sold out", 700, 0)
CATALOG = {p.id: p for p in (TEE, LOW, NONE)}
MANY = {
    f"m-{n:03d}": Product(f"m-{n:03d}", f"M-{n:03d}", f"Item {n}", 100 + n, 100_000)
    for n in range(MAX_LINES + 5)
}


def cart_with(*lines: Line, version: int = 3, status: Status = Status.ACTIVE) -> Cart:
    return Cart(id="user-cart", updated_at=LATE, version=version, status=status, lines=lines)


def absorb(cart: Cart, *incoming: Line, catalog: dict[str, Product] = CATALOG) -> Cart:
    new, _ = apply(cart, Absorb(incoming, "user-1"), catalog, NOW, ABANDON_AFTER)
    return new


# --- Absorb (login merge) ---------------------------------------------------------------


def test_absorb_sums_quantities_and_appends_new_lines_after_the_existing_ones() -> None:
    cart = cart_with(Line("p-001", 2, 1999, 1, EARLY))
    new, change = apply(
        cart,
        Absorb((Line("p-001", 3, 1999, 1, LATE), Line("p-low", 1, 500, 2, LATE)), "user-1"),
        CATALOG,
        NOW,
        ABANDON_AFTER,
    )
    assert new.lines == (Line("p-001", 5, 1999, 1, EARLY), Line("p-low", 1, 500, 4, LATE))
    assert change == Change(upserted=new.lines)
    assert new.user_id == "user-1"
    assert new.version == 4
    assert new.abandon_at == NOW + timedelta(seconds=ABANDON_AFTER)


def test_absorb_caps_the_sum_at_the_stock() -> None:
    new = absorb(cart_with(Line("p-low", 2, 500, 1, EARLY)), Line("p-low", 2, 500, 1, LATE))
    assert new.lines == (Line("p-low", 3, 500, 1, EARLY),)
    # A line new to the cart is capped too.
    new = absorb(cart_with(), Line("p-low", 5, 500, 1, LATE))
    assert new.lines == (Line("p-low", 3, 500, 4, LATE),)


def test_absorb_never_lowers_what_the_cart_held_even_above_todays_stock() -> None:
    # Stock fell to 3 after the user's cart took 5: merging must not take any away.
    new = absorb(cart_with(Line("p-low", 5, 500, 1, EARLY)), Line("p-low", 2, 500, 1, LATE))
    assert new.lines == (Line("p-low", 5, 500, 1, EARLY),)


def test_absorb_caps_the_sum_at_the_per_line_limit() -> None:
    new = absorb(cart_with(Line("p-001", 600, 1999, 1, EARLY)), Line("p-001", 600, 1999, 1, LATE))
    assert new.lines[0].quantity == MAX_QUANTITY


@pytest.mark.parametrize("incoming_first", [True, False], ids=["incoming-older", "held-older"])
def test_absorb_keeps_the_earlier_price_snapshot(incoming_first: bool) -> None:
    held = Line("p-001", 1, 1999, 1, LATE if incoming_first else EARLY)
    incoming = Line("p-001", 1, 2499, 1, EARLY if incoming_first else LATE)
    new = absorb(cart_with(held), incoming)
    earlier = incoming if incoming_first else held
    assert new.lines == (Line("p-001", 2, earlier.unit_price_cents, 1, earlier.added_at),)


def test_absorb_leaves_out_sold_out_and_unknown_products() -> None:
    new, change = apply(
        cart_with(Line("p-001", 1, 1999, 1, EARLY)),
        Absorb((Line("p-none", 2, 700, 1, LATE), Line("gone", 1, 300, 2, LATE)), "user-1"),
        CATALOG,
        NOW,
        ABANDON_AFTER,
    )
    assert new.lines == (Line("p-001", 1, 1999, 1, EARLY),)
    assert change == Change()


def test_absorb_stops_adding_lines_at_the_line_limit_but_still_sums() -> None:
    held = tuple(Line(f"m-{n:03d}", 1, 100 + n, n + 1, EARLY) for n in range(MAX_LINES - 1))
    incoming = (
        Line("m-000", 2, 100, 1, LATE),  # already held: summed even when the cart is full
        Line("m-100", 1, 200, 2, LATE),  # the 100th line: fits
        Line("m-101", 1, 201, 3, LATE),  # the 101st: left out
    )
    new = absorb(cart_with(*held, version=MAX_LINES), *incoming, catalog=MANY)
    assert len(new.lines) == MAX_LINES
    assert new.lines[0].quantity == 3
    assert new.lines[-1].product_id == "m-100"
    assert new.line("m-101") is None


def test_absorb_of_nothing_just_claims_the_cart_for_the_user() -> None:
    new, change = apply(Cart(id="c", updated_at=LATE), Absorb((), "u"), CATALOG, NOW, 1800)
    assert (new.user_id, new.version, new.lines, change) == ("u", 1, (), Change())
    assert new.abandon_at is None  # empty: nothing to abandon


def test_absorb_reactivates_an_abandoned_cart_and_is_refused_by_a_locked_one() -> None:
    held = Line("p-001", 1, 1999, 1, EARLY)
    new, change = apply(
        cart_with(held, status=Status.ABANDONED),
        Absorb((Line("p-low", 1, 500, 1, LATE),), "u"),
        CATALOG,
        NOW,
        ABANDON_AFTER,
    )
    assert new.status is Status.ACTIVE and change.status is Status.ACTIVE
    with pytest.raises(errors.CartLocked):
        absorb(cart_with(held, status=Status.CHECKING_OUT), Line("p-low", 1, 500, 1, LATE))


# --- Abandon ----------------------------------------------------------------------------


def due_cart(**fields: object) -> Cart:
    base = Cart(
        id="c",
        updated_at=NOW - timedelta(seconds=ABANDON_AFTER),
        version=2,
        lines=(Line("p-001", 1, 1999, 1, EARLY),),
        abandon_at=NOW,
    )
    return structs.replace(base, **fields)


def test_abandon_when_due_marks_the_cart_and_disarms_it() -> None:
    new, change = apply(due_cart(), Abandon(), CATALOG, NOW, ABANDON_AFTER)
    assert new.status is Status.ABANDONED
    assert change == Change(status=Status.ABANDONED)
    assert new.version == 3
    assert new.abandon_at is None  # fires once per idle period
    assert new.lines == due_cart().lines


@pytest.mark.parametrize(
    "cart",
    [
        due_cart(abandon_at=NOW + timedelta(milliseconds=1)),
        due_cart(abandon_at=None),
        due_cart(lines=()),
        due_cart(status=Status.ABANDONED),
        due_cart(status=Status.CHECKING_OUT),
        due_cart(status=Status.MERGED),
        due_cart(status=Status.EXPIRED),
    ],
    ids=["early", "unarmed", "empty", "abandoned", "checking-out", "merged", "expired"],
)
def test_abandon_not_due(cart: Cart) -> None:
    with pytest.raises(errors.NotDue):
        apply(cart, Abandon(), CATALOG, NOW, ABANDON_AFTER)


def test_an_edit_after_abandonment_reactivates_and_rearms() -> None:
    abandoned, _ = apply(due_cart(), Abandon(), CATALOG, NOW, ABANDON_AFTER)
    later = NOW + timedelta(minutes=1)
    new, change = apply(abandoned, AddItem("p-001", 1), CATALOG, later, ABANDON_AFTER)
    assert new.status is Status.ACTIVE and change.status is Status.ACTIVE
    assert new.abandon_at == later + timedelta(seconds=ABANDON_AFTER)
    cleared, _ = apply(abandoned, ClearCart(), CATALOG, later, ABANDON_AFTER)
    assert cleared.status is Status.ACTIVE and cleared.abandon_at is None  # empty: unarmed


# --- Expire -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.ACTIVE, Status.ABANDONED])
def test_expire_after_the_ttl_names_the_successor(status: Status) -> None:
    cart = due_cart(status=status, updated_at=NOW - timedelta(seconds=TTL))
    new, change = apply(cart, Expire(TTL, "fresh-cart"), CATALOG, NOW, ABANDON_AFTER)
    assert new.status is Status.EXPIRED
    assert new.merged_into == "fresh-cart"  # where its tabs move on to
    assert change == Change(status=Status.EXPIRED)
    assert new.abandon_at is None


def test_an_empty_idle_cart_expires_too() -> None:
    cart = due_cart(lines=(), abandon_at=None, updated_at=NOW - timedelta(seconds=TTL))
    new, _ = apply(cart, Expire(TTL, "fresh"), CATALOG, NOW, ABANDON_AFTER)
    assert new.status is Status.EXPIRED


@pytest.mark.parametrize(
    "cart",
    [
        due_cart(updated_at=NOW - timedelta(seconds=TTL) + timedelta(milliseconds=1)),
        due_cart(updated_at=NOW - timedelta(seconds=TTL), status=Status.CHECKING_OUT),
        due_cart(updated_at=NOW - timedelta(seconds=TTL), status=Status.CHECKED_OUT),
        due_cart(updated_at=NOW - timedelta(seconds=TTL), status=Status.MERGED),
        due_cart(updated_at=NOW - timedelta(seconds=TTL), status=Status.EXPIRED),
    ],
    ids=["early", "checking-out", "checked-out", "merged", "expired"],
)
def test_expire_not_due(cart: Cart) -> None:
    with pytest.raises(errors.NotDue):
        apply(cart, Expire(TTL, "fresh"), CATALOG, NOW, ABANDON_AFTER)


def test_merged_status_names_the_cart_it_went_into() -> None:
    new, change = apply(
        due_cart(), SetStatus(Status.MERGED, "user-cart"), CATALOG, NOW, ABANDON_AFTER
    )
    assert (new.status, new.merged_into, change) == (
        Status.MERGED,
        "user-cart",
        Change(status=Status.MERGED),
    )
