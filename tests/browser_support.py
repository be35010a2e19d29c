"""Browser test support: Debian's Chromium driven by Playwright, and the demo page as a shop."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support import ServerProcess, rest, unavailable

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "test-artifacts")) / "browser"
# Long enough for a loaded 2-core CI machine; every wait ends as soon as its condition holds.
WAIT_MS = 15_000

# A small catalog with the demo's pictures: a shop that looks like one in screenshots, with a
# scarce product (p-low) and a sold-out one (p-none).
SHOP_CATALOG = [
    # id, name, price in cents, picture in static/img, stock
    ("p-tee", "Black tee (M)", 1999, "black-tee", 1000),
    ("p-hoodie", "Navy hoodie (L)", 4999, "hoodie", 1000),
    ("p-sneakers", "Blue sneakers (42)", 8999, "sneakers", 1000),
    ("p-mug", "Orange mug (350 ml)", 1299, "mug", 1000),
    ("p-low", "Red cap", 2499, "cap", 3),
    ("p-backpack", "Green backpack", 6999, "backpack", 1000),
    ("p-phones", "Purple headphones", 7999, "headphones", 1000),
    ("p-none", "Yellow umbrella", 2999, "umbrella", 0),
]


def shop_catalog() -> list[dict[str, Any]]:
    return [
        {
            "id": product_id,
            "sku": product_id.upper(),
            "name": name,
            "price_cents": price,
            "stock": stock,
            "image_url": f"/static/img/{picture}.svg",
        }
        for product_id, name, price, picture, stock in SHOP_CATALOG
    ]


def shop_server(workdir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """A server (not started) whose catalog is SHOP_CATALOG."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(workdir, env, catalog=False)
    path = workdir / "shop.json"
    path.write_text(json.dumps(shop_catalog()))
    done = server.cli("import", str(path))
    assert done.returncode == 0, done.stderr
    return server


async def change_product(server: ServerProcess, product_id: str, **fields: Any) -> None:
    """Import a changed product into the running server's store; return once the server
    serves it (it re-reads the catalog every CATALOG_REFRESH)."""
    product = next(p for p in shop_catalog() if p["id"] == product_id) | fields
    path = server.workdir / f"change-{product_id}.json"
    path.write_text(json.dumps([product]))
    done = server.cli("import", str(path))
    assert done.returncode == 0, done.stderr
    async with rest(server) as client:
        deadline = time.monotonic() + 10
        while True:
            served = (await client.get("/api/products")).json()["products"]
            if next(p for p in served if p["id"] == product_id) == product:
                return
            assert time.monotonic() < deadline, f"{product_id} never changed on the server"
            await asyncio.sleep(0.05)


def require_chromium() -> None:
    """Skip without Chromium or Playwright, except in CI, where that is a failure."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is missing (pip install -e '.[test]')"
    if missing is not None:
        unavailable(f"browser tests cannot run: {missing}")


# Runs before the page's own scripts: records CSP violations, which the page must have none of.
RECORD_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


class Shop:
    """One tab of the demo page, with locators for what the tests read and press."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.page_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    @classmethod
    async def open(
        cls,
        context: BrowserContext,
        server: ServerProcess,
        query: str = "",
        init: str = "",
        prepare: Callable[[Page], Awaitable[None]] | None = None,
        product: str = "p-tee",
    ) -> Shop:
        """A new tab on the shop, once its products are shown. `init` runs before the
        page's scripts; `prepare(page)` before it loads (routes)."""
        page = await context.new_page()
        shop = cls(page)
        await page.add_init_script(RECORD_CSP + init)
        if prepare is not None:
            await prepare(page)
        await page.goto(f"{server.url}/{query}")
        await shop.product(product).locator(".add").wait_for(timeout=WAIT_MS)
        return shop

    @property
    def badge(self) -> Locator:
        return self.page.locator("#badge")

    @property
    def presence(self) -> Locator:
        return self.page.locator("#presence")

    @property
    def subtotal(self) -> Locator:
        return self.page.locator("#subtotal")

    @property
    def count(self) -> Locator:
        return self.page.locator("#count")

    @property
    def lines(self) -> Locator:
        return self.page.locator("#lines > li")

    @property
    def notice(self) -> Locator:
        return self.page.locator("#notice")

    def product(self, product_id: str) -> Locator:
        return self.page.locator(f'#products > li[data-id="{product_id}"]')

    def line(self, product_id: str) -> Locator:
        return self.page.locator(f'#lines > li[data-id="{product_id}"]')

    def qty(self, product_id: str) -> Locator:
        return self.line(product_id).locator("input.qty")

    # Chromium throttles animation frames in a tab that is not in front, and Playwright waits
    # for two frames before a click: a tab is brought to the front before it is used.
    async def add(self, product_id: str) -> None:
        await self.page.bring_to_front()
        await self.product(product_id).locator(".add").click()

    async def press(self, button_name: str) -> None:
        """Click the button with this accessible name."""
        await self.page.bring_to_front()
        await self.page.get_by_role("button", name=button_name, exact=True).click()

    async def type_qty(self, product_id: str, quantity: str) -> None:
        """Type a quantity into a line and commit it with Enter."""
        await self.page.bring_to_front()
        await self.qty(product_id).fill(quantity)
        await self.qty(product_id).press("Enter")

    async def assert_clean(self) -> None:
        """No uncaught script error and no Content-Security-Policy violation."""
        assert self.page_errors == []
        assert await self.page.evaluate("window.__csp") == []


async def side_by_side(browser: Browser, shots: list[tuple[str, bytes]], path: Path) -> None:
    """One picture of several tabs' screenshots next to each other, each under a caption."""
    figures = "".join(
        f"<figure><figcaption>{caption}</figcaption>"
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
        for caption, png in shots
    )
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    try:
        await page.set_content(f"<style>{SIDE_BY_SIDE_CSS}</style><main>{figures}</main>")
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.locator("main").screenshot(path=str(path))
    finally:
        await page.close()


SIDE_BY_SIDE_CSS = """
body { margin: 0; font: 600 15px system-ui, sans-serif; color: #3a4352; }
main { display: inline-flex; gap: 20px; padding: 18px 20px 20px; background: #d9dee6; }
figure { margin: 0; }
figcaption { margin: 0 0 8px 4px; }
img { display: block; border-radius: 10px; box-shadow: 0 4px 16px rgba(20, 30, 50, .25); }
"""
