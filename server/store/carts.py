"""The carts' statements, the one plan of a cart write, and a cart read back from rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ..cart import Cart, Line, Status
from ..clock import iso, parse_iso
from . import ANSWERS_PER_CART, AlreadyApplied, CartWrite, StaleVersion, StoredCart
from .effects import apply_effects
from .sql import Many, Pair, Params, Plan, Rows, Run

_HEADER = (
    "user_id = :user_id, status = :status, version = :version, abandon_at = :abandon_at,"
    " expires_at = :expires_at, merged_into = :merged_into, updated_at = :now"
)
# A cart's first write, or the first on an empty user cart made by CreateCart.
FIRST_WRITE = (
    "INSERT INTO cart_sessions (user_id, status, version, abandon_at, expires_at,"
    " merged_into, updated_at, id, created_at) VALUES (:user_id, :status, :version,"
    " :abandon_at, :expires_at, :merged_into, :now, :id, :now)"
    " ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id,"
    " status = excluded.status, version = excluded.version,"
    " abandon_at = excluded.abandon_at, expires_at = excluded.expires_at,"
    " merged_into = excluded.merged_into, updated_at = excluded.updated_at"
    " WHERE cart_sessions.version = 0"
)
# The compare-and-set on the version that every later write is.
NEXT_WRITE = f"UPDATE cart_sessions SET {_HEADER} WHERE id = :id AND version = :base"
ADD_KEY = (
    "INSERT INTO applied_mutations (cart_id, key, version, response, created_at, request)"
    " VALUES (:cart_id, :key, :version, :response, :now, :request)"
    " ON CONFLICT (cart_id, key) DO NOTHING"
)
KEY_VERSION = "SELECT version FROM applied_mutations WHERE cart_id = :cart_id AND key = :key"
FORGET_OLD_ANSWERS = (
    "UPDATE applied_mutations SET response = NULL"
    " WHERE cart_id = :cart_id AND version <= :version AND response IS NOT NULL"
)
PUT_LINE = (
    "INSERT INTO cart_items (cart_id, product_id, quantity, price_cents, position, added_at)"
    " VALUES (:cart_id, :product_id, :quantity, :price_cents, :position, :added_at)"
    " ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = excluded.quantity,"
    " price_cents = excluded.price_cents, added_at = excluded.added_at"
)
DROP_LINE = "DELETE FROM cart_items WHERE cart_id = :cart_id AND product_id = :product_id"
TRIM_PATCHES = "DELETE FROM cart_patches WHERE cart_id = :cart_id AND version <= :oldest"
# Patches past PATCH_HISTORY go this many at a time: one delete in eight writes, of rows
# next to each other, instead of a delete in every write. A cart keeps PATCH_HISTORY to
# PATCH_HISTORY + TRIM_STEP - 1 patches stored; a room holds the last PATCH_HISTORY.
TRIM_STEP = 8
ADD_PATCH = "INSERT INTO cart_patches (cart_id, version, body) VALUES (:cart_id, :version, :body)"

# write_many's one statement: an insert into a temporary view (made on the SQLite writer's
# connection, EDITS_VIEW), whose trigger writes every kind of row of all the edits
# (EDIT_STEPS). Each kind comes as one JSON array of rows, each row an array of the values
# named in its comment: those of write_cart's parameters for it, in their order. One
# statement is one trip into SQLite, and without a transaction around it, its own: the
# writer's thread lets go of the GIL, and waits to take it back from the event loop, once
# per batch. A compare-and-set or a mutation id that refuses one edit fails the statement,
# and with it every row of the batch.
EDITS = (
    "INSERT INTO edits (heads, keys, answers, drops, puts, patches, trims)"
    " VALUES (:heads, :keys, :answers, :drops, :puts, :patches, :trims)"
)
EDITS_VIEW = (
    "CREATE TEMP VIEW IF NOT EXISTS edits (heads, keys, answers, drops, puts, patches, trims)"
    " AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL"
)
EDIT_STEPS = (
    # heads: [id, user_id, status, version, abandon_at, expires_at, merged_into, now, base],
    # each cart once: every one must be at its base version.
    "SELECT RAISE(ABORT, 'a cart is not at the version its edits were applied to')"
    " WHERE (SELECT count(*) FROM json_each(NEW.heads) v JOIN cart_sessions"
    " ON cart_sessions.id = v.value ->> 0 AND cart_sessions.version = v.value ->> 8)"
    " <> json_array_length(NEW.heads)",
    "UPDATE cart_sessions SET user_id = v.value ->> 1, status = v.value ->> 2,"
    " version = v.value ->> 3, abandon_at = v.value ->> 4, expires_at = v.value ->> 5,"
    " merged_into = v.value ->> 6, updated_at = v.value ->> 7"
    " FROM json_each(NEW.heads) v WHERE cart_sessions.id = v.value ->> 0",
    # keys: [cart_id, key, version, response, now, request]; one applied already fails it.
    "INSERT INTO applied_mutations (cart_id, key, version, response, created_at, request)"
    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5"
    " FROM json_each(NEW.keys)",
    # answers: [cart_id, version]: REST answers kept at and before it are forgotten.
    "UPDATE applied_mutations SET response = NULL FROM json_each(NEW.answers) v"
    " WHERE applied_mutations.cart_id = v.value ->> 0"
    " AND applied_mutations.version <= v.value ->> 1 AND applied_mutations.response IS NOT NULL",
    # drops: [cart_id, product_id]
    "DELETE FROM cart_items WHERE (cart_id, product_id) IN"
    " (SELECT value ->> 0, value ->> 1 FROM json_each(NEW.drops))",
    # puts: [cart_id, product_id, quantity, price_cents, position, added_at]
    "INSERT INTO cart_items (cart_id, product_id, quantity, price_cents, position, added_at)"
    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5"
    " FROM json_each(NEW.puts) WHERE true ON CONFLICT (cart_id, product_id) DO UPDATE"
    " SET quantity = excluded.quantity, price_cents = excluded.price_cents,"
    " added_at = excluded.added_at",
    # patches: [cart_id, version, body]
    "INSERT INTO cart_patches (cart_id, version, body)"
    " SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(NEW.patches)",
    # trims: [cart_id, oldest]: a cart's patches at and before `oldest` go.
    "DELETE FROM cart_patches WHERE (cart_id, version) IN (SELECT p.cart_id, p.version"
    " FROM cart_patches p JOIN json_each(NEW.trims) v"
    " ON p.cart_id = v.value ->> 0 AND p.version <= v.value ->> 1)",
)
EDITS_TRIGGER = (
    "CREATE TEMP TRIGGER IF NOT EXISTS edits_write INSTEAD OF INSERT ON edits BEGIN "
    + "; ".join(EDIT_STEPS)
    + "; END"
)

REPLAY = "SELECT response, request FROM applied_mutations WHERE cart_id = :cart_id AND key = :key"
VERSIONS = "SELECT id, version FROM cart_sessions WHERE id {in_ids}"
USER_CART = (
    "SELECT id FROM cart_sessions WHERE user_id = :user_id"
    " AND status IN ('active', 'checking_out', 'abandoned')"
)
# Two queries, each served by its own partial index.
DUE_ABANDON = (
    "SELECT id FROM cart_sessions WHERE abandon_at <= :now AND status = 'active'"
    " ORDER BY abandon_at LIMIT :limit"
)
DUE_EXPIRE = (
    "SELECT id FROM cart_sessions WHERE expires_at <= :now"
    " AND status IN ('active', 'abandoned') ORDER BY expires_at LIMIT :limit"
)
# Small batches: each is one short write transaction, so carts never wait long.
PRUNE_BATCH = 500
PRUNE_KEYS = (
    "DELETE FROM applied_mutations WHERE (cart_id, key) IN (SELECT cart_id, key"
    " FROM applied_mutations WHERE created_at < :before LIMIT :limit)"
)
# Each a short transaction of at most `limit` rows, so carts never wait long for a write.
PURGES = (
    "DELETE FROM cart_items WHERE (cart_id, product_id) IN (SELECT i.cart_id, i.product_id"
    " FROM cart_items i JOIN cart_sessions s ON s.id = i.cart_id"
    " WHERE s.status = 'expired' LIMIT :limit)",
    "DELETE FROM cart_patches WHERE (cart_id, version) IN (SELECT p.cart_id, p.version"
    " FROM cart_patches p JOIN cart_sessions s ON s.id = p.cart_id"
    " WHERE s.status = 'expired' LIMIT :limit)",
    "DELETE FROM applied_mutations WHERE (cart_id, key) IN (SELECT m.cart_id, m.key"
    " FROM applied_mutations m JOIN cart_sessions s ON s.id = m.cart_id"
    " WHERE s.status = 'expired' LIMIT :limit)",
    "DELETE FROM cart_sessions WHERE id IN (SELECT id FROM cart_sessions"
    " WHERE status IN ('expired', 'merged', 'checked_out') AND updated_at < :before"
    " LIMIT :limit)",
)


def write_cart(write: CartWrite, ttl: timedelta, history: int) -> Plan[None]:
    """One accepted mutation: the compare-and-set on the cart row, its mutation id, its
    lines, its patch (and the trim of old ones), then its effects."""
    cart = write.cart
    now = iso(cart.updated_at)
    header = _header(write, ttl, now)
    if write.base_version == 0:
        # Refused: the user got an open cart meanwhile (one open cart per user), look again.
        changed = yield Run(FIRST_WRITE, header, refused=lambda _: StaleVersion(cart.id))
    else:
        changed = yield Run(NEXT_WRITE, header)
    if changed != 1:
        raise StaleVersion(cart.id)
    if write.key is not None:
        yield from _remember_key(write, now)
    if write.change.upserted:
        yield Many(PUT_LINE, [_line(cart.id, line, now) for line in write.change.upserted])
    if write.change.removed:
        yield Many(DROP_LINE, [_dropped(cart.id, p) for p in write.change.removed])
    patch = _patch(write, history)
    if _trims(patch):
        yield Pair(TRIM_PATCHES, ADD_PATCH, patch)
    else:
        yield Run(ADD_PATCH, patch)
    if write.effects:
        yield from apply_effects(write.effects, now)


def plain(write: CartWrite) -> bool:
    """An edit that write_many can take: no first write, no effects."""
    return write.base_version > 0 and not write.effects


def write_many(writes: Sequence[CartWrite], ttl: timedelta, history: int) -> Plan[None]:
    """Plain edits (see plain()), of one cart or many, in order: the rows write_cart
    would leave, all in one statement (EDITS). It fails as a whole if a compare-and-set
    or a mutation id refuses one: the caller writes them one at a time with write_cart,
    which tells the refused one why. Only the SQLite writer runs it (see EDITS_VIEW)."""
    stamps = [iso(write.cart.updated_at) for write in writes]
    # Each cart's row once: compared with the version its first edit was applied to, and
    # left as its last edit leaves it.
    heads: dict[str, Params] = {}
    for write, now in zip(writes, stamps, strict=True):
        first = heads.get(write.cart.id)
        heads[write.cart.id] = _header(write, ttl, now, first["base"] if first else None)
    keys = [_key(w, now) for w, now in zip(writes, stamps, strict=True) if w.key is not None]
    answered = {w.cart.id: _old_answers(w) for w in writes if w.key and w.response is not None}
    # The last of each line's changes wins, as one at a time; a line dropped before it is
    # put again is dropped first, so it comes back as a new line (its position, its time).
    dropped: dict[tuple[str, str], Params] = {}
    put: dict[tuple[str, str], Params] = {}
    for write, now in zip(writes, stamps, strict=True):
        cart_id = write.cart.id
        for product_id in write.change.removed:
            put.pop((cart_id, product_id), None)
            dropped[(cart_id, product_id)] = _dropped(cart_id, product_id)
        for line in write.change.upserted:
            put[(cart_id, line.product_id)] = _line(cart_id, line, now)
    patches = [_patch(write, history) for write in writes]
    # One trim per cart, its last due: the patches it keeps are the ones write_cart keeps.
    trims = {
        p["cart_id"]: {"cart_id": p["cart_id"], "oldest": p["oldest"]} for p in patches if _trims(p)
    }
    rows = {
        "heads": heads.values(),
        "keys": keys,
        "answers": answered.values(),
        "drops": dropped.values(),
        "puts": put.values(),
        "patches": patches,  # its last value, `oldest`, is the trims'
        "trims": trims.values(),
    }
    yield Run(EDITS, {kind: _json(values) for kind, values in rows.items()})


def _json(rows: Iterable[Params]) -> str:
    """Rows as EDIT_STEPS read them: each the values of write_cart's parameters for it, in
    their order."""
    return msgspec.json.encode([list(row.values()) for row in rows]).decode()


def _header(write: CartWrite, ttl: timedelta, now: str, base: int | None = None) -> Params:
    cart = write.cart
    return {
        "id": cart.id,
        "user_id": cart.user_id,
        "status": cart.status.value,
        "version": cart.version,
        "abandon_at": iso(cart.abandon_at) if cart.abandon_at else None,
        "expires_at": iso(cart.updated_at + ttl),
        "merged_into": cart.merged_into,
        "now": now,
        "base": write.base_version if base is None else base,
    }


def _line(cart_id: str, line: Line, now: str) -> Params:
    return {
        "cart_id": cart_id,
        "product_id": line.product_id,
        "quantity": line.quantity,
        "price_cents": line.unit_price_cents,
        "position": line.position,
        "added_at": iso(line.added_at) if line.added_at else now,
    }


def _dropped(cart_id: str, product_id: str) -> Params:
    return {"cart_id": cart_id, "product_id": product_id}


def _patch(write: CartWrite, history: int) -> Params:
    cart = write.cart
    return {
        "cart_id": cart.id,
        "version": cart.version,
        "body": write.patch,
        "oldest": cart.version - history,
    }


def first_kept(version: int, history: int) -> int:
    """The oldest patch a cart at `version` keeps stored (see TRIM_STEP)."""
    return max(1, (version - history) // TRIM_STEP * TRIM_STEP + 1)


def _trims(patch: Params) -> bool:
    """Whether the write of this patch deletes the cart's patches past PATCH_HISTORY:
    every TRIM_STEP versions."""
    oldest: int = patch["oldest"]
    return oldest > 0 and oldest % TRIM_STEP == 0


def _key(write: CartWrite, now: str) -> Params:
    return {
        "cart_id": write.cart.id,
        "key": write.key,
        "version": write.cart.version,
        "response": write.response.decode() if write.response is not None else None,
        "now": now,
        "request": write.request,
    }


def _old_answers(write: CartWrite) -> Params:
    return {"cart_id": write.cart.id, "version": write.cart.version - ANSWERS_PER_CART}


def _remember_key(write: CartWrite, now: str) -> Plan[None]:
    """The mutation id, with the REST answer to replay: AlreadyApplied if it is known."""
    added = yield Run(ADD_KEY, _key(write, now))
    if added != 1:
        rows = yield Rows(KEY_VERSION, {"cart_id": write.cart.id, "key": write.key})
        raise AlreadyApplied(rows[0][0])
    if write.response is not None:
        yield Run(FORGET_OLD_ANSWERS, _old_answers(write))


def stored_cart(
    cart_id: str,
    head: Iterable[Any],
    lines: Iterable[Iterable[Any]],
    patches: Iterable[tuple[int, str]],
    keys: Iterable[tuple[str, int]],
) -> StoredCart:
    """A cart from its rows: head (version, status, user_id, updated_at, abandon_at,
    merged_into), lines (product_id, quantity, price, position, added_at) in order,
    patches (version, body) and keys (key, version), each oldest first."""
    version, status, user_id, updated_at, abandon_at, merged_into = head
    cart = Cart(
        id=cart_id,
        version=version,
        status=Status(status),
        lines=tuple(Line(p, q, price, pos, parse_iso(at)) for p, q, price, pos, at in lines),
        user_id=user_id,
        updated_at=parse_iso(updated_at),
        abandon_at=parse_iso(abandon_at) if abandon_at else None,
        merged_into=merged_into,
    )
    return StoredCart(cart=cart, patches=list(patches), keys=dict(keys))


def due_carts(at: datetime, limit: int) -> Plan[list[str]]:
    """Carts whose abandon_at or expires_at has passed and that still need it."""
    params = {"now": iso(at), "limit": limit}
    abandon = yield Rows(DUE_ABANDON, params)
    expire = yield Rows(DUE_EXPIRE, params)
    return list(dict.fromkeys(row[0] for row in [*expire, *abandon]))[:limit]
