"""WebSocket endpoint: accept -> join the room -> each text message, as it is parsed,
to the tab's reader (decode -> submit). Frames to the tab go the frame path (frames.Tab),
not through ASGI `send`; messages from it skip ASGI `receive` (Sink.read_with)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid

import msgspec
from starlette.websockets import WebSocket

from . import errors
from .cart import AddItem, ClearCart, Op, RemoveItem, SetQuantity
from .errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
)
from .frames import EXTENSION, Sink, Tab, text_frame
from .identity import COOKIE
from .limits import TokenBucket, admit
from .protocol import (
    DECODE_ERRORS,
    AckMsg,
    AddMsg,
    ClearMsg,
    PingMsg,
    PongMsg,
    RemoveMsg,
    SetMsg,
    client_message_decoder,
    encode,
    error_frame,
)
from .room import Room
from .web import Services, cart_cookie, client_address, origin_allowed, services, settle

log = logging.getLogger("server.ws")

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PONG = text_frame(encode(PongMsg()))
# Strikes (invalid frames, rate-limited mutations) a tab may collect before it is closed
# with 1008: a burst, then one a second.
STRIKE_BURST = 10
STRIKE_RATE = 1.0
CLOSE_WAIT = 5.0
# A tab's mutations in flight at once; past it, its socket is not read until one is done.
IN_FLIGHT = 16


async def cart_socket(websocket: WebSocket) -> None:
    svc = services(websocket)
    if not origin_allowed(websocket, svc.settings):
        await _refuse(websocket, svc, CLOSE_POLICY_VIOLATION, "origin not allowed")
        return
    if svc.hub.draining.is_set():
        await _refuse(websocket, svc, CLOSE_SERVICE_RESTART, "server restarting")
        return
    with svc.connections.hold(client_address(websocket)) as admitted:
        if not admitted:
            reason = "too many connections from this address"
            await _refuse(websocket, svc, CLOSE_POLICY_VIOLATION, reason)
            return
        await _serve(websocket, svc)


async def _refuse(websocket: WebSocket, svc: Services, code: int, reason: str) -> None:
    # Accept, then close, so the client sees the protocol's close code and a reason rather
    # than a bare 403; no cart frame is sent first.
    await websocket.accept(subprotocol=_subprotocol(websocket))
    await websocket.close(code, reason)
    svc.metrics.inc("cart_ws_closed_total", code=str(code))


async def _serve(websocket: WebSocket, svc: Services) -> None:
    params = websocket.query_params
    client_id = params.get("client_id", "")
    if not _CLIENT_ID.fullmatch(client_id):
        # Only a tab that names itself keeps its message ids across reconnects.
        client_id = uuid.uuid4().hex
    since_raw = params.get("since", "")
    # A version has at most 19 digits; a longer one (int() refuses past 4,300) gets a snapshot.
    readable = since_raw.isascii() and since_raw.isdigit() and len(since_raw) <= 19
    since = int(since_raw) if readable else None

    asked = svc.ids.resolve(
        _offered_cart(websocket), params.get("cart"), websocket.cookies.get(COOKIE)
    )
    try:
        ref = await settle(websocket, svc, asked)
    except errors.RateLimited:
        await _refuse(websocket, svc, CLOSE_TRY_AGAIN_LATER, "too many new carts from this address")
        return
    if ref.cart_id != asked.cart_id:
        since = None  # moved on to another cart: its history is not this tab's; a snapshot
    headers = None
    if ref.issued or ref.renewed:
        cookie = cart_cookie(websocket, ref.signed)
        headers = [(b"set-cookie", cookie.encode())]

    async with svc.hub.use(ref.cart_id) as room:
        if since is not None and since > room.version:
            # The tab saw a version this process has not: another process committed it
            # (and may have died since). Read it, so the tab resumes instead of restarting.
            with contextlib.suppress(errors.Unavailable):  # then it gets a snapshot
                await room.catch_up()
        if len(room.tabs) >= svc.settings.max_tabs_per_cart:
            # Checked before the accept's await as well as after it, so the limit holds.
            await _refuse(websocket, svc, CLOSE_POLICY_VIOLATION, "too many tabs on this cart")
            return
        await websocket.accept(subprotocol=_subprotocol(websocket), headers=headers)
        if len(room.tabs) >= svc.settings.max_tabs_per_cart:
            await websocket.close(CLOSE_POLICY_VIOLATION, "too many tabs on this cart")
            svc.metrics.inc("cart_ws_closed_total", code=str(CLOSE_POLICY_VIOLATION))
            return
        sink: Sink | None = websocket.scope["extensions"].get(EXTENSION)
        if sink is None:
            log.error("WebSocket refused: serve the app with `python -m server`")
            await websocket.close(CLOSE_INTERNAL_ERROR, "server misconfigured")
            return
        tab = Tab(client_id, svc.settings.ws_send_queue, sink)
        room.join(tab, since)
        try:
            await _read(websocket, room, tab, svc, sink)
        finally:
            room.leave(tab)
            if tab.close_code is not None:
                svc.metrics.inc("cart_ws_closed_total", code=str(tab.close_code))
                # Give the close frame its chance to go out; a stuck peer gets no more.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tab.closed(), CLOSE_WAIT)


async def _read(websocket: WebSocket, room: Room, tab: Tab, svc: Services, sink: Sink) -> None:
    reader = _Reader(room, tab, svc, sink)
    sink.read_with(reader)  # text messages go straight to it, as they are parsed
    try:
        while tab.close_code is None:
            message = await websocket.receive()  # the disconnect, or a binary message
            if message["type"] == "websocket.disconnect":
                return
            reader.refuse(
                None, errors.InvalidMessage("binary frames are not accepted; send JSON text")
            )
    finally:
        sink.read_with(None)
        if reader.flying:
            await asyncio.wait(reader.flying)


class _Reader:
    """A tab's text messages, each taken as soon as it is parsed (Sink.read_with): checked,
    decoded and limited, and a mutation submitted in a task of its own, in the order
    received (the room's lock is first come, first served), so the next one joins the same
    group commit instead of waiting for this one's answer. Past IN_FLIGHT mutations in
    flight the socket is held, and what was read already waits here for its turn."""

    __slots__ = (
        "room", "tab", "svc", "sink", "strikes", "rate", "limit", "draining", "flying",
        "waiting", "struck",
    )  # fmt: skip

    def __init__(self, room: Room, tab: Tab, svc: Services, sink: Sink) -> None:
        self.room = room
        self.tab = tab
        self.svc = svc
        self.sink = sink
        # Invalid frames and rate-limited mutations are strikes: a burst of them is
        # answered with error frames, a connection that keeps going is closed with 1008.
        self.strikes = TokenBucket(STRIKE_RATE, STRIKE_BURST)
        self.rate = TokenBucket(svc.settings.connection_rate, svc.settings.connection_burst)
        self.limit = svc.settings.max_frame_bytes
        self.draining = svc.hub.draining
        self.flying: list[asyncio.Task[None]] = []  # a set is 216 bytes, for every tab
        self.waiting: list[str] = []  # read while IN_FLIGHT were in flight, oldest first
        self.struck = False  # past the strikes' allowance: closed once the flying answer

    def __call__(self, text: str) -> None:
        if self.struck or self.tab.close_code is not None:
            return
        if self.waiting or len(self.flying) >= IN_FLIGHT:
            self.waiting.append(text)
            self.sink.hold_reading(True)
            return
        self._take(text)

    def _take(self, text: str) -> None:
        try:
            self._handle(text)
        except Exception:  # a bug: the tab starts over rather than wait for an answer
            log.exception("reading a message of cart %s failed", self.room.cart.id)
            self.tab.close(CLOSE_INTERNAL_ERROR)

    def _handle(self, text: str) -> None:
        if self.draining.is_set():
            return  # shutting down: not applied, not acknowledged; resent after reconnecting
        try:
            limit = self.limit
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                raise errors.InvalidMessage(f"frames are limited to {limit} bytes")
            try:
                msg = client_message_decoder.decode(text)
            except DECODE_ERRORS as exc:
                raise errors.InvalidMessage(str(exc)) from None
        except errors.InvalidMessage as exc:
            self.refuse(_loose_id(text), exc)
            return
        if isinstance(msg, PingMsg):
            self.tab.write(_PONG)
            return
        try:
            admit(self.rate, self.room.rate)
        except errors.CartError as exc:
            self.refuse(msg.id, exc, strike=False)
            return
        task = asyncio.create_task(_mutate(self.room, self.tab, msg, self.svc, self.strikes))
        self.flying.append(task)
        task.add_done_callback(self._answered)

    def refuse(self, msg_id: str | None, exc: errors.CartError, strike: bool = True) -> None:
        """Answer `exc`; a strike past the allowance closes the tab with 1008 once the
        mutations in flight are answered, reading nothing more meanwhile."""
        if _refused(self.tab, self.svc, self.strikes, msg_id, exc, strike=strike):
            self.struck = True
            self.waiting.clear()
            self.sink.hold_reading(True)
            if not self.flying:
                self.tab.close(CLOSE_POLICY_VIOLATION, flush=True)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self.flying.remove(task)
        while self.waiting and len(self.flying) < IN_FLIGHT and not self.struck:
            self._take(self.waiting.pop(0))
        if self.struck:
            if not self.flying:
                self.tab.close(CLOSE_POLICY_VIOLATION, flush=True)
        elif not self.waiting:
            self.sink.hold_reading(False)


async def _mutate(
    room: Room, tab: Tab, msg: AddMsg | SetMsg | RemoveMsg | ClearMsg, svc: Services,
    strikes: TokenBucket,
) -> None:  # fmt: skip
    if svc.hub.draining.is_set():
        # Read before the shutdown began, started after the drain took the room: not
        # applied, not acknowledged, like a frame read during the drain; resent later.
        return
    try:
        outcome = await room.submit(
            _operation(msg),
            origin=tab.client_id,
            key=f"ws:{tab.client_id}:{msg.id}",
            base_version=msg.base_version,
        )
    except errors.CartError as exc:
        if _refused(tab, svc, strikes, msg.id, exc):
            tab.close(CLOSE_POLICY_VIOLATION, flush=True)
        return
    except Exception:  # a bug: the tab starts over rather than wait for an answer
        log.exception("mutation %s of cart %s failed", msg.id, room.cart.id)
        tab.close(CLOSE_INTERNAL_ERROR)
        return
    # Written in the same loop turn as the patch the room just sent: one write for both.
    tab.send(encode(AckMsg(id=msg.id, version=outcome.version)))
    svc.metrics.inc("cart_mutations_total", source="ws", result="ok")


def _refused(
    tab: Tab,
    svc: Services,
    strikes: TokenBucket,
    msg_id: str | None,
    exc: errors.CartError,
    strike: bool = False,
) -> bool:
    """Answer `exc`; True if it is a strike (an invalid frame, or a rate-limited
    mutation) past the tab's allowance: the tab is to be closed with 1008."""
    tab.send(error_frame(msg_id, exc.code, exc.message, exc.details))
    svc.metrics.inc("cart_mutations_total", source="ws", result=exc.code)
    strike = strike or isinstance(exc, errors.RateLimited)
    return strike and not strikes.take()


# A browser can set no header on a WebSocket handshake but this one: the client offers
# `cartsync` and `cart-id.<signed id>`, so the bearer credential stays out of the URL (and
# out of every proxy's and router's log). The server answers `cartsync`.
SUBPROTOCOL = "cartsync"
CART_ID_PROTOCOL = "cart-id."


def _offered(websocket: WebSocket) -> list[str]:
    offered: list[str] = websocket.scope.get("subprotocols") or []
    return offered


def _offered_cart(websocket: WebSocket) -> str | None:
    for value in _offered(websocket):
        if value.startswith(CART_ID_PROTOCOL):
            return value[len(CART_ID_PROTOCOL) :]
    return None


def _subprotocol(websocket: WebSocket) -> str | None:
    """`cartsync` when offered: a browser that offered subprotocols fails a handshake
    that picks none of them."""
    return SUBPROTOCOL if SUBPROTOCOL in _offered(websocket) else None


def _operation(msg: AddMsg | SetMsg | RemoveMsg | ClearMsg) -> Op:
    match msg:
        case AddMsg():
            return AddItem(msg.product_id, msg.quantity)
        case SetMsg():
            return SetQuantity(msg.product_id, msg.quantity)
        case RemoveMsg():
            return RemoveItem(msg.product_id)
        case ClearMsg():
            return ClearCart()


def _loose_id(text: str | None) -> str | None:
    """The `id` of an invalid message, when it has a readable one, to match the error to it."""
    if text is None:
        return None
    try:
        data = msgspec.json.decode(text)
    except DECODE_ERRORS:
        return None
    msg_id = data.get("id") if isinstance(data, dict) else None
    return msg_id if isinstance(msg_id, str) and len(msg_id) <= 64 else None
