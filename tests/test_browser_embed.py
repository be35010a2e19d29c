"""The client embedded on a shop's own site, in a real Chromium: the shop page on one site
(127.0.0.1), the cart server on another (localhost). Tabs stay in sync, a reload keeps
the cart, the cart id never travels in a URL, and an origin the server does not allow
gets a clear error through onError instead of "offline" forever."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from tests.browser_support import ROOT, WAIT_MS
from tests.support import ServerProcess, free_port, unavailable

try:
    from playwright.async_api import expect
except ImportError:
    unavailable("the playwright package is missing", module=True)

if TYPE_CHECKING:
    from playwright.async_api import Browser

expect.set_options(timeout=WAIT_MS)
MakeShop = Callable[..., ServerProcess]

SHOP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A shop</title></head>
<body>
<p>Cart: <span id="lines"></span> <span id="status"></span> <span id="error"></span></p>
<button id="add" type="button">Add a tee</button>
<script type="module">
import {{ CartClient }} from "{module}";
const client = new CartClient({{ baseUrl: "{cart_server}", persist: true }});
const show = (sel, text) => {{ document.querySelector(sel).textContent = text; }};
client.onChange((cart) => show("#lines",
  cart ? cart.items.map((i) => `${{i.product_id}}×${{i.quantity}}`).join(", ") || "empty" : ""));
client.onStatus((status) => show("#status", status));
client.onError((err) => show("#error", err.code));
document.querySelector("#add").addEventListener("click", () => client.add("p-tee"));
client.start().then(
  () => {{ document.body.dataset.started = "yes"; }},
  (err) => {{ document.body.dataset.started = `rejected: ${{err.code}}`; }},
);
</script>
</body></html>
"""


class ShopSite:
    """The shop's own web server: one page, and a copy of the client for shops that host
    it themselves."""

    def __init__(self, cart_server: str, port: int, self_hosted: bool = False) -> None:
        self.port = port
        module = "/cart-client.js" if self_hosted else f"{cart_server}/static/cart-client.js"
        page = SHOP_PAGE.format(module=module, cart_server=cart_server).encode()
        client = (ROOT / "static" / "cart-client.js").read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                body, kind = (
                    (client, "text/javascript")
                    if self.path == "/cart-client.js"
                    else (
                        page,
                        "text/html",
                    )
                )
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> ShopSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_a_shop_on_another_site_embeds_the_cart(
    browser: Browser, make_shop: MakeShop
) -> None:
    # The shop's port is chosen first: the cart server lists the shop's origin.
    shop_port = free_port()
    server = make_shop({"ALLOWED_ORIGINS": f"http://127.0.0.1:{shop_port}"})
    cart_server = f"http://localhost:{server.port}"  # another site than 127.0.0.1
    with ShopSite(cart_server, shop_port) as shop:
        context = await browser.new_context(locale="en-US")
        sockets: list[str] = []
        a = await context.new_page()
        a.on("websocket", lambda ws: sockets.append(ws.url))
        b = await context.new_page()
        b.on("websocket", lambda ws: sockets.append(ws.url))
        for page in (a, b):
            await page.goto(shop.url)
            await expect(page.locator("body")).to_have_attribute("data-started", "yes")
            await expect(page.locator("#status")).to_have_text("live")
        await a.bring_to_front()
        await a.locator("#add").click()
        await expect(a.locator("#lines")).to_have_text("p-tee×1")
        await expect(b.locator("#lines")).to_have_text("p-tee×1")  # the other tab follows

        await b.reload()  # a reload keeps the cart, with no cookie across sites
        await expect(b.locator("#status")).to_have_text("live")
        await expect(b.locator("#lines")).to_have_text("p-tee×1")
        await b.bring_to_front()
        await b.locator("#add").click()
        await expect(a.locator("#lines")).to_have_text("p-tee×2")

        assert sockets and all("cart=" not in url for url in sockets), sockets
        assert await a.evaluate("document.querySelector('#error').textContent") == ""
        await context.close()


async def test_an_origin_the_server_does_not_allow_gets_a_clear_error(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop({"ALLOWED_ORIGINS": "http://127.0.0.1:1"})  # some other shop
    with ShopSite(f"http://localhost:{server.port}", free_port(), self_hosted=True) as shop:
        context = await browser.new_context(locale="en-US")
        page = await context.new_page()
        await page.goto(shop.url)
        started = page.locator("body")
        await expect(started).to_have_attribute("data-started", "rejected: origin_not_allowed")
        await expect(page.locator("#error")).to_have_text("origin_not_allowed")
        await expect(page.locator("#status")).not_to_have_text("reconnecting")
        await context.close()
