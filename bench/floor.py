"""The floor: the leanest server of the cart protocol on the server's own stack (uvicorn
with uvloop, httptools and the same websockets-sansio protocol, msgspec), holding carts
in dicts: no durability, no signatures, no limits, no middleware. It is what this stack
does when it does nothing else, so the server's figures can be read as a ratio of it.

It speaks what the load generator uses: GET /api/products, GET /api/cart (X-Cart-Id
issued), POST /api/cart/items, and /api/cart/ws?cart=ID (snapshot; add/set/remove/clear
answered by a patch to every tab of the cart, encoded once, then the author's ack; ping).

    python -m bench floor --port 8001       # serve it (loopback only)
    python -m bench --floor fanout ...       # any mode, against a floor it starts"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import msgspec

PRODUCTS = 100  # b-000 .. b-099, deep stock: the catalog LocalServer imports
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_JSON = [(b"content-type", b"application/json")]


class Cart:
    __slots__ = ("lines", "version", "tabs")

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}  # product id -> quantity, in the order added
        self.version = 0
        self.tabs: set[Any] = set()  # the ASGI send of each open tab

    def item(self, product_id: str) -> dict[str, Any]:
        quantity, price = self.lines[product_id], held_price(product_id)
        return {
            "product_id": product_id,
            "sku": product_id.upper(),
            "name": product_id,
            "quantity": quantity,
            "unit_price_cents": price,
            "line_total_cents": quantity * price,
            "image_url": None,
            "current_price_cents": price,
        }

    def totals(self) -> tuple[int, int]:
        count = sum(self.lines.values())
        return count, sum(q * held_price(p) for p, q in self.lines.items())

    def doc(self, cart_id: str) -> dict[str, Any]:
        count, subtotal = self.totals()
        items = [self.item(p) for p in self.lines]
        return {"id": cart_id, "version": self.version, "items": items, "item_count": count,
                "subtotal_cents": subtotal}  # fmt: skip

    def apply(self, msg: dict[str, Any]) -> list[dict[str, Any]] | str:
        """The patch ops of a mutation, or the code of its refusal."""
        kind, product = msg.get("type"), msg.get("product_id")
        quantity = msg.get("quantity", 1)
        if kind == "clear":
            ops: list[dict[str, Any]] = [{"op": "remove", "product_id": p} for p in self.lines]
            self.lines.clear()
        elif not isinstance(product, str) or price_of(product) is None:
            return "unknown_product"
        elif kind == "remove" or (kind == "set" and quantity == 0):
            if self.lines.pop(product, None) is None:
                return "not_in_cart"
            ops = [{"op": "remove", "product_id": product}]
        elif kind in ("add", "set") and isinstance(quantity, int) and 0 < quantity < 1000:
            held = self.lines.get(product, 0) if kind == "add" else 0
            self.lines[product] = held + quantity
            ops = [{"op": "upsert", "item": self.item(product)}]
        else:
            return "invalid_message"
        self.version += 1
        return ops


def price_of(product_id: str) -> int | None:
    if len(product_id) == 5 and product_id.startswith("b-") and product_id[2:].isdigit():
        return 1000 + int(product_id[2:])
    return None


def held_price(product_id: str) -> int:
    """The price of a product a cart holds: apply() lets in only known ones."""
    price = price_of(product_id)
    assert price is not None, product_id
    return price


class Floor:
    def __init__(self) -> None:
        self.carts: dict[str, Cart] = {}
        products = [
            {"id": f"b-{n:03d}", "sku": f"B-{n:03d}", "name": f"b-{n:03d}",
             "price_cents": 1000 + n, "stock": 10_000_000, "image_url": None}
            for n in range(PRODUCTS)
        ]  # fmt: skip
        self.products = _encode({"products": products})

    def cart(self, cart_id: str | None) -> tuple[str, Cart]:
        if not cart_id or cart_id not in self.carts:
            cart_id = uuid.uuid4().hex
            self.carts[cart_id] = Cart()
        return cart_id, self.carts[cart_id]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.socket(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        named = next((v.decode() for k, v in scope["headers"] if k == b"x-cart-id"), None)
        headers, status = list(_JSON), 200
        if path == "/api/products":
            body = self.products
        elif path == "/api/cart" and method == "GET":
            cart_id, cart = self.cart(named)
            body, headers = _encode(cart.doc(cart_id)), [*_JSON, (b"x-cart-id", cart_id.encode())]
        elif path == "/api/cart/items" and method == "POST":
            raw, more = b"", True
            while more:
                message = await receive()
                raw, more = raw + message.get("body", b""), message.get("more_body", False)
            cart_id, cart = self.cart(named)
            headers.append((b"x-cart-id", cart_id.encode()))
            try:
                msg = {"type": "add", **_decode(raw)}
            except (msgspec.DecodeError, TypeError):
                msg = {}
            ops = cart.apply(msg)
            if isinstance(ops, str):
                status, body = 400, _encode({"error": {"code": ops}})
            else:
                await self.broadcast(cart, ops, None)
                body = _encode(cart.doc(cart_id))
        else:
            status, body = 404, b'{"error":{"code":"not_found"}}'
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def broadcast(self, cart: Cart, ops: list[dict[str, Any]], origin: str | None) -> None:
        count, subtotal = cart.totals()
        patch = {"type": "patch", "version": cart.version, "ops": ops, "item_count": count,
                 "subtotal_cents": subtotal, "origin": origin}  # fmt: skip
        message = {"type": "websocket.send", "text": _encode(patch).decode()}
        for tab in list(cart.tabs):
            try:
                await tab(message)
            except Exception:  # gone: its own handler removes it
                cart.tabs.discard(tab)

    async def socket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        cart_id, cart = self.cart(query.get("cart"))
        client = query.get("client_id")
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        snapshot = {"type": "snapshot", "cart": cart.doc(cart_id)}
        await send({"type": "websocket.send", "text": _encode(snapshot).decode()})
        cart.tabs.add(send)
        try:
            while (message := await receive())["type"] == "websocket.receive":
                try:
                    msg = _decode(message.get("text") or message.get("bytes") or b"")
                    msg = msg if isinstance(msg, dict) else {}
                except msgspec.DecodeError:
                    msg = {}
                if msg.get("type") == "ping":
                    await send({"type": "websocket.send", "text": '{"type":"pong"}'})
                    continue
                ops = cart.apply(msg)
                if isinstance(ops, str):
                    error = {"type": "error", "id": msg.get("id"), "code": ops, "message": ops}
                    await send({"type": "websocket.send", "text": _encode(error).decode()})
                    continue
                await self.broadcast(cart, ops, client)
                ack = {"type": "ack", "id": msg.get("id"), "version": cart.version}
                await send({"type": "websocket.send", "text": _encode(ack).decode()})
        finally:
            cart.tabs.discard(send)


def serve(host: str, port: int) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("the floor listens on loopback only")
    uvicorn.run(
        Floor(),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


# `python -m bench floor`: a mode that serves the floor until interrupted.
OWN_SERVER = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    pass


def main(args: argparse.Namespace, target: None) -> None:
    serve(args.host, args.port)
