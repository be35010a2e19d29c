"""Wire messages of docs/PROTOCOL.md: what the decoders accept and refuse, and what we send."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from server.protocol import (
    AckMsg,
    AddMsg,
    ClearMsg,
    ItemDoc,
    MovedMsg,
    PatchMsg,
    PingMsg,
    PongMsg,
    PresenceMsg,
    RemoveMsg,
    RemoveOp,
    SetMsg,
    SnapshotMsg,
    StatusOp,
    UpsertOp,
    add_item_decoder,
    client_message_decoder,
    encode,
    error_frame,
    server_message_decoder,
    set_quantity_decoder,
)


def decode(message: dict[str, Any]) -> object:
    return client_message_decoder.decode(json.dumps(message).encode())


def add(**overrides: Any) -> dict[str, Any]:
    return {"type": "add", "id": "m1", "product_id": "p-001", "quantity": 2, **overrides}


# --- client -> server -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (add(), AddMsg(id="m1", product_id="p-001", quantity=2)),
        (
            {"type": "set", "id": "m2", "product_id": "p-001", "quantity": 5},
            SetMsg(id="m2", product_id="p-001", quantity=5),
        ),
        (
            {"type": "remove", "id": "m3", "product_id": "p-001"},
            RemoveMsg(id="m3", product_id="p-001"),
        ),
        ({"type": "clear", "id": "m4"}, ClearMsg(id="m4")),
        ({"type": "ping"}, PingMsg()),
    ],
    ids=["add", "set", "remove", "clear", "ping"],
)
def test_each_client_message_type_is_accepted(frame: dict[str, Any], expected: object) -> None:
    assert decode(frame) == expected


def test_base_version_is_optional_and_carried_when_given() -> None:
    msg = decode(add())
    assert isinstance(msg, AddMsg)
    assert msg.base_version is None
    for frame in (
        add(base_version=7),
        {"type": "set", "id": "a", "product_id": "p", "quantity": 1, "base_version": 7},
        {"type": "remove", "id": "a", "product_id": "p", "base_version": 7},
        {"type": "clear", "id": "a", "base_version": 7},
    ):
        decoded = decode(frame)
        assert getattr(decoded, "base_version", None) == 7


def test_set_accepts_zero_and_999() -> None:
    for quantity in (0, 999):
        msg = decode({"type": "set", "id": "a", "product_id": "p", "quantity": quantity})
        assert isinstance(msg, SetMsg)
        assert msg.quantity == quantity


def test_add_accepts_the_bounds_1_and_999() -> None:
    assert decode(add(quantity=1)) == AddMsg(id="m1", product_id="p-001", quantity=1)
    assert decode(add(quantity=999)) == AddMsg(id="m1", product_id="p-001", quantity=999)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "bogus", "id": "m1"},
        {"id": "m1", "product_id": "p-001", "quantity": 1},
        {"type": "add", "product_id": "p-001", "quantity": 1},
        {"type": "add", "id": "m1", "quantity": 1},
        {"type": "add", "id": "m1", "product_id": "p-001"},
        {"type": "set", "id": "m1", "product_id": "p-001"},
        {"type": "remove", "id": "m1"},
        {"type": "clear"},
        add(quantity="2"),
        add(quantity=True),
        add(quantity=1.0),
        add(quantity=1.5),
        add(quantity=None),
        add(quantity=0),
        add(quantity=1000),
        add(quantity=-1),
        add(quantity=10**30),
        {"type": "set", "id": "m1", "product_id": "p-001", "quantity": 1000},
        {"type": "set", "id": "m1", "product_id": "p-001", "quantity": -1},
        {"type": "set", "id": "m1", "product_id": "p-001", "quantity": "0"},
        add(id="x" * 65),
        add(id=""),
        add(id=5),
        add(product_id="p" * 65),
        add(product_id=""),
        add(product_id=1),
        add(base_version=-1),
        add(base_version="3"),
        {"type": 1, "id": "m1"},
    ],
    ids=[
        "unknown-type",
        "missing-type",
        "missing-id",
        "missing-product",
        "missing-quantity",
        "set-missing-quantity",
        "remove-missing-product",
        "clear-missing-id",
        "string-quantity",
        "bool-quantity",
        "float-1.0",
        "float-1.5",
        "null-quantity",
        "add-zero",
        "add-1000",
        "add-negative",
        "add-huge",
        "set-1000",
        "set-negative",
        "set-string",
        "id-65",
        "id-empty",
        "id-int",
        "product-65",
        "product-empty",
        "product-int",
        "base-negative",
        "base-string",
        "type-int",
    ],
)
def test_invalid_client_messages_are_rejected(frame: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode(frame)


def test_id_of_exactly_64_characters_is_accepted() -> None:
    msg = decode(add(id="x" * 64))
    assert isinstance(msg, AddMsg)
    assert msg.id == "x" * 64


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"add"', b"{"])
def test_non_object_frames_are_rejected(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        client_message_decoder.decode(raw)


# --- REST bodies ----------------------------------------------------------------------


def test_rest_add_body_defaults_quantity_to_1_and_bounds_it() -> None:
    assert add_item_decoder.decode(b'{"product_id": "p-001"}').quantity == 1
    assert add_item_decoder.decode(b'{"product_id": "p-001", "quantity": 3}').quantity == 3
    for bad in (b'{"product_id": "p-001", "quantity": 0}', b'{"quantity": 1}'):
        with pytest.raises(msgspec.ValidationError):
            add_item_decoder.decode(bad)


def test_rest_set_body_accepts_zero_and_refuses_1000() -> None:
    assert set_quantity_decoder.decode(b'{"quantity": 0}').quantity == 0
    with pytest.raises(msgspec.ValidationError):
        set_quantity_decoder.decode(b'{"quantity": 1000}')


# --- server -> client -----------------------------------------------------------------

ITEM = ItemDoc(
    product_id="p-001",
    sku="TEE-BLK-M",
    name="Black tee (M)",
    quantity=2,
    unit_price_cents=1999,
    line_total_cents=3998,
    image_url="/static/img/tee.svg",
    current_price_cents=1999,
    available=True,
)


def test_patch_encodes_with_type_first_and_the_protocol_field_names() -> None:
    msg = PatchMsg(
        version=7,
        ops=[UpsertOp(ITEM), RemoveOp("p-002"), StatusOp("active")],
        item_count=2,
        subtotal_cents=3998,
        origin="tab-1",
    )
    raw = encode(msg)
    assert raw.startswith(b'{"type":"patch",')
    data = json.loads(raw)
    assert list(data) == ["type", "version", "ops", "item_count", "subtotal_cents", "origin"]
    assert data["version"] == 7
    assert data["origin"] == "tab-1"
    assert data["ops"] == [
        {
            "op": "upsert",
            "item": {
                "product_id": "p-001",
                "sku": "TEE-BLK-M",
                "name": "Black tee (M)",
                "quantity": 2,
                "unit_price_cents": 1999,
                "line_total_cents": 3998,
                "image_url": "/static/img/tee.svg",
                "current_price_cents": 1999,
                "available": True,
            },
        },
        {"op": "remove", "product_id": "p-002"},
        {"op": "status", "status": "active"},
    ]
    assert list(data["ops"][0]) == ["op", "item"]


def test_patch_with_no_origin_encodes_null() -> None:
    raw = encode(PatchMsg(version=1, ops=[], item_count=0, subtotal_cents=0, origin=None))
    assert json.loads(raw)["origin"] is None
    assert b'"origin":null' in raw


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (AckMsg(id="m1", version=3), {"type": "ack", "id": "m1", "version": 3}),
        (PresenceMsg(tabs=2), {"type": "presence", "tabs": 2}),
        (MovedMsg(cart_id="signed"), {"type": "moved", "cart_id": "signed"}),
        (PongMsg(), {"type": "pong"}),
    ],
    ids=["ack", "presence", "moved", "pong"],
)
def test_other_server_messages_encode_as_documented(msg: object, expected: dict[str, Any]) -> None:
    raw = encode(msg)
    assert raw.startswith(b'{"type":')
    assert json.loads(raw) == expected


def test_snapshot_embeds_the_raw_cart_document() -> None:
    raw = encode(SnapshotMsg(cart=msgspec.Raw(b'{"id":"c","version":0}')))
    assert raw == b'{"type":"snapshot","cart":{"id":"c","version":0}}'


def test_server_messages_roundtrip_through_the_server_decoder() -> None:
    msg = PatchMsg(version=2, ops=[UpsertOp(ITEM)], item_count=2, subtotal_cents=3998, origin=None)
    assert server_message_decoder.decode(encode(msg)) == msg


def test_error_frame_carries_extra_details() -> None:
    raw = error_frame(
        "m1", "insufficient_stock", "only 1 left", {"available": 1, "product_id": "p"}
    )
    assert raw.startswith(b'{"type":"error",')
    assert json.loads(raw) == {
        "type": "error",
        "id": "m1",
        "code": "insufficient_stock",
        "message": "only 1 left",
        "available": 1,
        "product_id": "p",
    }


def test_error_frame_without_id_or_details() -> None:
    data = json.loads(error_frame(None, "invalid_message", "bad frame", {}))
    assert data == {"type": "error", "id": None, "code": "invalid_message", "message": "bad frame"}
