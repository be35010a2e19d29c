"""Login: the shopper's anonymous cart is merged into the user's cart, both rooms locked
(in cart id order, so two merges that cross never deadlock) and both carts committed in
one transaction. The anonymous cart's tabs get `moved` and follow."""

from __future__ import annotations

import logging
import uuid

from . import errors
from .cart import FINISHED, MUTABLE, Absorb, SetStatus, Status
from .hub import Hub
from .identity import CartIds, CartRef
from .transaction import commit_together, together

log = logging.getLogger("server.merge")
ATTEMPTS = 5


async def login(hub: Hub, ids: CartIds, ref: CartRef, user_id: str) -> CartRef:
    """The user's cart after taking in the lines of the cart `ref` holds."""
    for _ in range(ATTEMPTS):
        async with hub.use(ref.cart_id) as source:
            if source.cart.user_id == user_id:
                return ref  # already the user's cart: logging in again changes nothing
            target_id = await hub.store.user_cart(user_id) or str(uuid.uuid4())
            if target_id == source.cart.id:
                # Only another process can have made it the user's meanwhile: read again.
                await source.catch_up()
                continue
            async with hub.use(target_id) as target:
                async with together(source, target) as (src, tgt):
                    if target.cart.user_id not in (None, user_id) or target.cart.status in FINISHED:
                        continue  # the user's cart moved on while we looked: look again
                    for room, whose in ((source, "this"), (target, "the user's")):
                        if room.cart.status is Status.CHECKING_OUT:
                            # A payment in flight belongs to the cart it was started from.
                            raise errors.CartLocked(
                                f"{whose} cart is checking out: pay or cancel before signing in",
                                status=room.cart.status.value,
                            )
                    # Another user's cart, or a finished one, is left as it is:
                    # on a shared computer one user's cart is never poured into another's.
                    mergeable = source.cart.user_id is None and source.cart.status in MUTABLE
                    lines = source.cart.lines if mergeable else ()
                    writes = []
                    if lines or target.cart.user_id != user_id:  # else nothing to change
                        writes.append((tgt, tgt.prepare(Absorb(lines, user_id))))
                    if mergeable and (source.cart.version > 0 or source.tabs):
                        # Its tabs (and later requests for it) move on to the user's cart.
                        writes.append((src, src.prepare(SetStatus(Status.MERGED, target.cart.id))))
                    if writes and not await commit_together(*writes):
                        # Another process changed one of them, or another device made the
                        # user's cart first: read again and start over.
                        continue
                    return _ref(ids, target.cart.id)
    raise errors.Unavailable("the carts kept changing while logging in; try again")


def _ref(ids: CartIds, cart_id: str) -> CartRef:
    return CartRef(cart_id, ids.sign(cart_id), issued=True)
