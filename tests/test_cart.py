"""The pure cart domain: apply, rendering and money formatting. No event loop, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import errors
from server.cart import (
    AddItem,
    Cart,
    Change,
    ClearCart,
    Line,
    Op,
    Product,
    RemoveItem,
    SetQuantity,
    SetStatus,
    Status,
    apply,
)
from server.protocol import MAX_LINES, MAX_QUANTITY, RemoveOp, StatusOp, UpsertOp
from server.render import ItemDocs, cart_doc, format_money, item_doc, patch_msg

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
ABANDON_AFTER = 1800.0

TEE = Product("p-001", "TEE-BLK-M", "Black tee (M)", 1999, 10, "/static/img/tee.svg")
MUG = Product("p-002", "MUG-WHT", "White mug", 500, 3)
PEN = Product("p-003", "PEN-BLU", "Blue pen", 150, 100_000)
CATALOG: dict[str, Product] = {p.id: p for p in (TEE, MUG, PEN)}
# Enough deep-stock products to reach the line limit.
MANY: dict[str, Product] = {
    f"m-{n:03d}": Product(f"m-{n:03d}", f"SKU-M-{n:03d}", f"Item {n}", 100 + n, 100_000)
    for n in range(MAX_LINES + 1)
}


def new_cart(status: Status = Status.ACTIVE) -> Cart:
    return Cart(id="cart-1", updated_at=NOW - timedelta(hours=1), status=status)


def step(
    cart: Cart,
    op: Op,
    catalog: Mapping[str, Product] = CATALOG,
    now: datetime = NOW,
) -> tuple[Cart, Change]:
    return apply(cart, op, catalog, now, ABANDON_AFTER)


def run(cart: Cart, *ops: Op, catalog: Mapping[str, Product] = CATALOG) -> Cart:
    for op in ops:
        cart, _ = step(cart, op, catalog)
    return cart


# --- add ------------------------------------------------------------------------------


def test_add_creates_a_line_with_the_price_snapshot_and_position() -> None:
    cart, change = step(new_cart(), AddItem("p-001", 2))
    assert cart.lines == (Line("p-001", 2, 1999, 1, NOW),)
    assert change == Change(upserted=(Line("p-001", 2, 1999, 1, NOW),))
    assert cart.version == 1
    assert cart.updated_at == NOW
    assert cart.item_count == 2
    assert cart.subtotal_cents == 3998


def test_add_to_an_existing_line_sums_and_keeps_snapshot_and_position() -> None:
    cart = run(new_cart(), AddItem("p-003", 1), AddItem("p-001", 2))
    cart, change = step(cart, AddItem("p-001", 3))
    assert cart.lines == (Line("p-003", 1, 150, 1, NOW), Line("p-001", 5, 1999, 2, NOW))
    assert change.upserted == (Line("p-001", 5, 1999, 2, NOW),)
    assert change.removed == ()
    assert change.status is None


def test_version_grows_by_one_per_accepted_op_and_not_on_refusal() -> None:
    cart = new_cart()
    ops: list[Op] = [
        AddItem("p-001", 1),
        AddItem("p-003", 4),
        SetQuantity("p-003", 2),
        RemoveItem("p-001"),
        ClearCart(),
        SetStatus(Status.CHECKING_OUT),
    ]
    for expected, op in enumerate(ops, start=1):
        cart, _ = step(cart, op)
        assert cart.version == expected
    with pytest.raises(errors.CartLocked):
        step(cart, AddItem("p-001", 1))
    assert cart.version == len(ops)


def test_abandon_at_set_for_non_empty_active_cart_and_none_for_empty() -> None:
    cart, _ = step(new_cart(), AddItem("p-001", 1))
    assert cart.abandon_at == NOW + timedelta(seconds=ABANDON_AFTER)
    later = NOW + timedelta(minutes=5)
    cart, _ = step(cart, AddItem("p-001", 1), now=later)
    assert cart.abandon_at == later + timedelta(seconds=ABANDON_AFTER)
    cart, _ = step(cart, RemoveItem("p-001"))
    assert cart.lines == ()
    assert cart.abandon_at is None


def test_abandon_at_none_when_not_active() -> None:
    cart = run(new_cart(), AddItem("p-001", 1))
    cart, _ = step(cart, SetStatus(Status.CHECKING_OUT))
    assert cart.abandon_at is None
    cart, _ = step(cart, SetStatus(Status.ABANDONED))
    assert cart.abandon_at is None


# --- status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [Status.CHECKING_OUT, Status.CHECKED_OUT, Status.MERGED, Status.EXPIRED]
)
@pytest.mark.parametrize(
    "op",
    [AddItem("p-001", 1), SetQuantity("p-001", 2), RemoveItem("p-001"), ClearCart()],
    ids=["add", "set", "remove", "clear"],
)
def test_edits_refused_with_cart_locked_when_not_mutable(status: Status, op: Op) -> None:
    cart = Cart(
        id="c",
        updated_at=NOW,
        version=4,
        status=status,
        lines=(Line("p-001", 1, 1999, 1, NOW),),
    )
    with pytest.raises(errors.CartLocked) as info:
        step(cart, op)
    assert info.value.code == "cart_locked"
    assert info.value.details == {"status": status.value}


def test_edit_reactivates_an_abandoned_cart_with_status_in_the_change() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), SetStatus(Status.ABANDONED))
    assert cart.status is Status.ABANDONED
    cart, change = step(cart, AddItem("p-003", 1))
    assert cart.status is Status.ACTIVE
    assert change.status is Status.ACTIVE
    assert change.upserted == (Line("p-003", 1, 150, 3, NOW),)
    assert cart.abandon_at == NOW + timedelta(seconds=ABANDON_AFTER)


def test_edit_on_active_cart_has_no_status_change() -> None:
    cart = run(new_cart(), AddItem("p-001", 1))
    _, change = step(cart, AddItem("p-001", 1))
    assert change.status is None


def test_set_status_is_a_system_transition_allowed_in_any_status() -> None:
    cart = run(new_cart(), AddItem("p-001", 2), SetStatus(Status.CHECKING_OUT))
    cart, change = step(cart, SetStatus(Status.ACTIVE))
    assert cart.status is Status.ACTIVE
    assert change == Change(status=Status.ACTIVE)
    assert cart.lines == (Line("p-001", 2, 1999, 1, NOW),)
    assert cart.abandon_at == NOW + timedelta(seconds=ABANDON_AFTER)


# --- refusals -------------------------------------------------------------------------


def test_add_beyond_stock_reports_stock_minus_held() -> None:
    cart = run(new_cart(), AddItem("p-002", 2))
    with pytest.raises(errors.InsufficientStock) as info:
        step(cart, AddItem("p-002", 2))
    assert info.value.code == "insufficient_stock"
    assert info.value.details["product_id"] == "p-002"
    assert info.value.details["available"] == 1


def test_add_of_exactly_the_remaining_stock_is_accepted() -> None:
    cart = run(new_cart(), AddItem("p-002", 2), AddItem("p-002", 1))
    assert cart.lines[0].quantity == 3


def test_add_beyond_stock_when_stock_fell_below_held_reports_zero() -> None:
    cart = run(new_cart(), AddItem("p-001", 8))
    fallen = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Black tee (M)", 1999, 5)}
    with pytest.raises(errors.InsufficientStock) as info:
        step(cart, AddItem("p-001", 1), catalog=fallen)
    assert info.value.details["available"] == 0


def test_set_beyond_stock_reports_the_stock() -> None:
    cart = run(new_cart(), AddItem("p-002", 1))
    with pytest.raises(errors.InsufficientStock) as info:
        step(cart, SetQuantity("p-002", 4))
    assert info.value.details == {"product_id": "p-002", "available": 3}


def test_lowering_a_quantity_is_allowed_even_above_stock() -> None:
    cart = run(new_cart(), AddItem("p-001", 9))
    fallen = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Black tee (M)", 1999, 2)}
    cart, change = step(cart, SetQuantity("p-001", 7), catalog=fallen)
    assert cart.lines == (Line("p-001", 7, 1999, 1, NOW),)
    assert change.upserted == (Line("p-001", 7, 1999, 1, NOW),)
    with pytest.raises(errors.InsufficientStock):
        step(cart, SetQuantity("p-001", 8), catalog=fallen)


def test_quantity_limit_at_999() -> None:
    cart = run(new_cart(), AddItem("p-003", 990))
    cart = run(cart, AddItem("p-003", 9))
    assert cart.lines[0].quantity == MAX_QUANTITY == 999
    with pytest.raises(errors.QuantityLimit) as info:
        step(cart, AddItem("p-003", 1))
    assert info.value.code == "quantity_limit"
    assert info.value.details["max_quantity"] == 999
    assert info.value.details["available"] == 0
    with pytest.raises(errors.InvalidRequest):  # out of 1..999: refused as input, like the wire
        step(new_cart(), AddItem("p-003", 1000))


def test_too_many_lines_at_100() -> None:
    ids = list(MANY)
    cart = run(new_cart(), *(AddItem(pid, 1) for pid in ids[:MAX_LINES]), catalog=MANY)
    assert len(cart.lines) == MAX_LINES == 100
    with pytest.raises(errors.TooManyLines) as info:
        step(cart, AddItem(ids[MAX_LINES], 1), catalog=MANY)
    assert info.value.code == "too_many_lines"
    assert info.value.details == {"max_lines": 100}
    # Adding to an existing line is still fine at the limit.
    cart, _ = step(cart, AddItem(ids[0], 1), catalog=MANY)
    assert cart.lines[0].quantity == 2


def test_unknown_product() -> None:
    with pytest.raises(errors.UnknownProduct) as info:
        step(new_cart(), AddItem("nope", 1))
    assert info.value.code == "unknown_product"
    assert info.value.details == {"product_id": "nope"}


@pytest.mark.parametrize(
    "op", [SetQuantity("p-001", 2), SetQuantity("p-001", 0), RemoveItem("p-001")]
)
def test_not_in_cart_for_set_and_remove(op: Op) -> None:
    cart = run(new_cart(), AddItem("p-003", 1))
    with pytest.raises(errors.NotInCart) as info:
        step(cart, op)
    assert info.value.code == "not_in_cart"
    assert info.value.details == {"product_id": "p-001"}


# --- set / remove / clear -------------------------------------------------------------


def test_set_changes_the_quantity_in_place() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-003", 1))
    cart, change = step(cart, SetQuantity("p-001", 4))
    assert cart.lines == (Line("p-001", 4, 1999, 1, NOW), Line("p-003", 1, 150, 2, NOW))
    assert change == Change(upserted=(Line("p-001", 4, 1999, 1, NOW),))


def test_set_zero_removes_the_line() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-003", 1))
    cart, change = step(cart, SetQuantity("p-001", 0))
    assert cart.lines == (Line("p-003", 1, 150, 2, NOW),)
    assert change == Change(removed=("p-001",))


def test_remove_drops_the_line() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-003", 1))
    cart, change = step(cart, RemoveItem("p-003"))
    assert cart.lines == (Line("p-001", 1, 1999, 1, NOW),)
    assert change == Change(removed=("p-003",))


def test_clear_empties_the_cart_and_lists_every_removed_line() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-003", 1))
    cart, change = step(cart, ClearCart())
    assert cart.lines == ()
    assert cart.item_count == 0
    assert change == Change(removed=("p-001", "p-003"))
    assert cart.abandon_at is None
    assert cart.version == 3


def test_clear_on_an_empty_cart_is_accepted() -> None:
    cart, change = step(new_cart(), ClearCart())
    assert cart.version == 1
    assert change == Change()


# --- prices and order -----------------------------------------------------------------


def test_price_snapshot_kept_when_catalog_price_changes() -> None:
    cart = run(new_cart(), AddItem("p-001", 1))
    repriced = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Black tee (M)", 2499, 10)}
    cart, _ = step(cart, AddItem("p-001", 1), catalog=repriced)
    assert cart.lines == (Line("p-001", 2, 1999, 1, NOW),)
    doc = item_doc(cart.lines[0], repriced)
    assert doc.unit_price_cents == 1999
    assert doc.current_price_cents == 2499
    assert doc.line_total_cents == 3998
    assert cart_doc(cart, repriced, "usd").subtotal_cents == 3998


def test_items_keep_first_added_order_after_quantity_changes() -> None:
    cart = run(
        new_cart(),
        AddItem("p-001", 1),
        AddItem("p-002", 1),
        AddItem("p-003", 1),
        SetQuantity("p-001", 5),
        AddItem("p-002", 1),
        SetQuantity("p-003", 9),
    )
    assert [line.product_id for line in cart.lines] == ["p-001", "p-002", "p-003"]
    doc = cart_doc(cart, CATALOG, "usd")
    assert [item.product_id for item in doc.items] == ["p-001", "p-002", "p-003"]


def test_remove_and_re_add_goes_to_the_end_with_a_new_price_snapshot() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-003", 1), RemoveItem("p-001"))
    repriced = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Black tee (M)", 2499, 10)}
    cart, change = step(cart, AddItem("p-001", 2), catalog=repriced)
    assert [line.product_id for line in cart.lines] == ["p-003", "p-001"]
    assert cart.lines[1] == Line("p-001", 2, 2499, 4, NOW)
    assert change.upserted == (Line("p-001", 2, 2499, 4, NOW),)


# --- rendering ------------------------------------------------------------------------


def test_cart_doc_shape_and_totals() -> None:
    cart = run(new_cart(), AddItem("p-001", 2), AddItem("p-002", 3))
    doc = cart_doc(cart, CATALOG, "usd")
    assert doc.id == "cart-1"
    assert doc.version == 2
    assert doc.status == "active"
    assert doc.item_count == 5
    assert doc.subtotal_cents == 2 * 1999 + 3 * 500 == 5498
    assert doc.currency == "usd"
    assert doc.total_formatted == "$54.98"
    assert doc.updated_at == "2026-11-26T10:00:00.000Z"
    assert doc.abandon_at == "2026-11-26T10:30:00.000Z"
    tee = doc.items[0]
    assert tee.product_id == "p-001"
    assert tee.sku == "TEE-BLK-M"
    assert tee.name == "Black tee (M)"
    assert tee.quantity == 2
    assert tee.unit_price_cents == 1999
    assert tee.line_total_cents == 3998
    assert tee.image_url == "/static/img/tee.svg"
    assert tee.current_price_cents == 1999
    assert doc.items[1].image_url is None


def test_cart_doc_of_an_empty_cart() -> None:
    doc = cart_doc(new_cart(), CATALOG, "eur")
    assert doc.version == 0
    assert doc.items == []
    assert doc.item_count == 0
    assert doc.subtotal_cents == 0
    assert doc.total_formatted == "€0.00"
    assert doc.abandon_at is None


def test_item_doc_for_a_product_gone_from_the_catalog() -> None:
    doc = item_doc(Line("gone", 2, 300, 1, NOW), {})
    assert doc.name == "gone"
    assert doc.sku == ""
    assert doc.current_price_cents == 300
    assert doc.line_total_cents == 600


def test_patch_msg_upsert_op_and_totals() -> None:
    cart = run(new_cart(), AddItem("p-001", 1))
    cart, change = step(cart, AddItem("p-002", 2))
    msg = patch_msg(cart, change, CATALOG, "tab-1")
    assert msg.version == 2
    assert msg.origin == "tab-1"
    assert msg.item_count == 3
    assert msg.subtotal_cents == 1999 + 1000
    assert msg.ops == [UpsertOp(item_doc(Line("p-002", 2, 500, 2, NOW), CATALOG))]


def test_patch_msg_remove_ops() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-002", 1))
    cart, change = step(cart, ClearCart())
    msg = patch_msg(cart, change, CATALOG, None)
    assert msg.ops == [RemoveOp("p-001"), RemoveOp("p-002")]
    assert msg.item_count == 0
    assert msg.subtotal_cents == 0
    assert msg.origin is None


def test_patch_msg_status_op_comes_after_the_item_ops() -> None:
    cart = run(new_cart(), AddItem("p-001", 1), SetStatus(Status.ABANDONED))
    cart, change = step(cart, SetQuantity("p-001", 3))
    msg = patch_msg(cart, change, CATALOG, None)
    assert msg.version == 3
    assert msg.ops == [
        UpsertOp(item_doc(Line("p-001", 3, 1999, 1, NOW), CATALOG)),
        StatusOp("active"),
    ]
    cart, change = step(cart, SetStatus(Status.CHECKING_OUT))
    assert patch_msg(cart, change, CATALOG, None).ops == [StatusOp("checking_out")]


@pytest.mark.parametrize(
    ("cents", "currency", "expected"),
    [
        (3998, "usd", "$39.98"),
        (5, "usd", "$0.05"),
        (0, "usd", "$0.00"),
        (123456789, "usd", "$1,234,567.89"),
        (1250, "eur", "€12.50"),
        (1500, "jpy", "¥1,500"),
        (7, "jpy", "¥7"),
        (1234, "xyz", "12.34 XYZ"),
        (150000, "krw", "150,000 KRW"),
        (-199, "usd", "-$1.99"),
        (-5, "eur", "-€0.05"),
        (-1500, "jpy", "-¥1,500"),
        (-1234, "xyz", "-12.34 XYZ"),
    ],
)
def test_format_money(cents: int, currency: str, expected: str) -> None:
    assert format_money(cents, currency) == expected


# --- property -------------------------------------------------------------------------

PIDS = ["p-001", "p-002", "p-003", "nope"] + [f"m-{n:03d}" for n in range(6)]
PROPERTY_CATALOG: dict[str, Product] = {**CATALOG, **{k: MANY[k] for k in PIDS if k in MANY}}
pid = st.sampled_from(PIDS)
op_strategy: st.SearchStrategy[Op] = st.one_of(
    st.builds(AddItem, pid, st.integers(1, MAX_QUANTITY)),
    st.builds(AddItem, pid, st.integers(1, 5)),
    st.builds(SetQuantity, pid, st.integers(0, MAX_QUANTITY)),
    st.builds(SetQuantity, pid, st.integers(0, 5)),
    st.builds(RemoveItem, pid),
    st.just(ClearCart()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op_strategy, max_size=60))
def test_any_sequence_of_ops_keeps_the_cart_invariants(ops: list[Op]) -> None:
    cart = new_cart()
    accepted = 0
    for op in ops:
        try:
            cart, _ = step(cart, op, PROPERTY_CATALOG)
        except errors.CartError:
            continue
        accepted += 1
    assert cart.version == accepted
    assert cart.item_count == sum(line.quantity for line in cart.lines)
    assert all(1 <= line.quantity <= MAX_QUANTITY for line in cart.lines)
    assert len(cart.lines) <= MAX_LINES
    assert len({line.product_id for line in cart.lines}) == len(cart.lines)
    positions = [line.position for line in cart.lines]
    assert positions == sorted(positions)
    for line in cart.lines:
        assert line.quantity <= PROPERTY_CATALOG[line.product_id].stock


def test_quantity_limit_never_reports_more_than_stock_allows() -> None:
    deep = Product("p-d", "SKU-D", "Deep", 100, 10)
    cart = run(new_cart(), AddItem("p-d", 5), catalog={"p-d": deep})
    with pytest.raises(errors.InsufficientStock) as info:
        step(cart, AddItem("p-d", 995), catalog={"p-d": deep})
    assert info.value.details["available"] == 5


@pytest.mark.parametrize(
    "op",
    [
        AddItem("p-001", 0),
        AddItem("p-001", 1000),
        SetQuantity("p-001", 1500),
        SetQuantity("p-001", -1),
    ],
)
def test_the_domain_refuses_quantities_out_of_range(op: Op) -> None:
    cart = run(new_cart(), AddItem("p-001", 1))
    with pytest.raises(errors.InvalidRequest):
        step(cart, op)


def test_item_docs_render_what_item_doc_does_and_only_changed_lines_again() -> None:
    docs = ItemDocs()
    cart = run(new_cart(), AddItem("p-001", 1), AddItem("p-002", 1), AddItem("p-003", 2))
    first = docs.render(cart, CATALOG, 0)
    assert first == [item_doc(line, CATALOG) for line in cart.lines]
    edited = run(cart, SetQuantity("p-002", 3))
    second = docs.render(edited, CATALOG, 0)
    assert second == [item_doc(line, CATALOG) for line in edited.lines]
    assert second[0] is first[0] and second[2] is first[2]  # untouched lines: not again
    assert second[1] is not first[1] and second[1].quantity == 3
    renamed = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Tee", 1999, 10)}
    third = docs.render(edited, renamed, 1)  # a catalog change shows in every line
    assert third[0].name == "Tee" and third == [item_doc(x, renamed) for x in edited.lines]
    assert cart_doc(edited, renamed, "usd", third) == cart_doc(edited, renamed, "usd")
