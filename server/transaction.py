"""The only way into a room's mutation path besides Room.submit(): a transaction holds
the cart's lock for several steps (read, apply, store) with no other mutation between
them, and the two-room form locks two carts in cart id order for the login merge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .cart import Cart, Op
from .store import CartWrite, Effect, StaleVersion

if TYPE_CHECKING:
    from .room import Outcome, Room


class Transaction:
    """What the holder of a room's lock may do; made by Room.transaction() and together()."""

    def __init__(self, room: Room) -> None:
        self._room = room

    @property
    def cart(self) -> Cart:
        return self._room.cart

    async def apply(
        self,
        op: Op,
        *,
        base_version: int | None = None,
        effects: Callable[[Cart], tuple[Effect, ...]] | None = None,
    ) -> Outcome:
        """Room.submit() inside the transaction, with rows written in the same commit."""
        return await self._room._apply(op, base_version=base_version, effects=effects)

    def prepare(self, op: Op) -> CartWrite:
        """The write applying `op` now would commit, for commit_together()."""
        return self._room.prepare(op)


@contextlib.asynccontextmanager
async def together(a: Room, b: Room) -> AsyncIterator[tuple[Transaction, Transaction]]:
    """Two carts to themselves, locked in cart id order: two callers that take the same
    pair the other way round (two logins crossing) never deadlock."""
    first, second = sorted((a, b), key=lambda room: room.cart.id)
    async with first._lock, second._lock:
        await first._pipe.drain()
        await second._pipe.drain()
        yield Transaction(a), Transaction(b)


async def commit_together(*writes: tuple[Transaction, CartWrite]) -> bool:
    """Commit writes to several locked carts in one store transaction, then take each
    into its room in the order given. False if another process changed one of them
    first: every room named is brought up to date, and nothing was written."""
    store = writes[0][0]._room.ctx.store
    try:
        await store.commit(*(write for _, write in writes))
    except StaleVersion:
        for tx, _ in writes:
            await tx._room._catch_up()
        return False
    for tx, write in writes:
        tx._room.accept(write)
    return True
