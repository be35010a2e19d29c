"""The live catalog in a real Chromium: an admin price change, a sell-out and an archived
product reach an open tab of the demo page without a reload."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from tests.browser_support import ARTIFACTS, WAIT_MS, Shop
from tests.support import ServerProcess, unavailable
from tests.test_admin import BEARER, TOKEN

try:
    from playwright.async_api import expect
except ImportError:
    unavailable("the playwright package is missing", module=True)

if TYPE_CHECKING:
    from playwright.async_api import Browser

expect.set_options(timeout=WAIT_MS)


async def admin_patch(server: ServerProcess, product_id: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=BEARER, trust_env=False) as admin:
        response = await admin.patch(f"/api/admin/products/{product_id}", json=body)
    assert response.status_code == 200, response.text


async def test_price_changes_and_a_sell_out_reach_an_open_tab_without_reload(
    browser: Browser, make_shop: Callable[..., ServerProcess]
) -> None:
    # The catalog is re-read only every minute: what the tab shows sooner was pushed to it.
    server = make_shop({"ADMIN_TOKEN": TOKEN, "CATALOG_REFRESH": "60s"})
    context = await browser.new_context(viewport={"width": 940, "height": 760}, locale="en-US")
    shop = await Shop.open(context, server)
    await shop.page.evaluate("window.__loaded_once = true")  # gone if the page reloads
    await shop.add("p-mug")
    await expect(shop.qty("p-mug")).to_have_value("1")
    await shop.add("p-low")
    await expect(shop.qty("p-low")).to_have_value("1")
    mug_price = shop.line("p-mug").locator(".price-changed")
    mug_note = shop.line("p-mug").locator(".line-note")
    low_note = shop.line("p-low").locator(".line-note")
    await expect(mug_price).to_be_hidden()
    await expect(mug_note).to_be_hidden()
    await expect(low_note).to_have_text("Only 3 left")

    await admin_patch(server, "p-mug", {"price_cents": 1499})
    await expect(mug_price).to_have_text("Price went up: now $14.99")
    await expect(shop.product("p-mug").locator(".price")).to_have_text("$14.99")
    await expect(shop.line("p-mug").locator(".unit")).to_have_text("$12.99 each")  # as added

    await admin_patch(server, "p-low", {"stock_delta": -3})
    await expect(low_note).to_have_text("Sold out")
    await expect(shop.line("p-low").locator(".inc")).to_be_disabled()
    await expect(shop.product("p-low").locator(".stock")).to_have_text("Out of stock")
    await expect(shop.product("p-low").locator(".add")).to_be_disabled()

    await admin_patch(server, "p-mug", {"active": False})
    await expect(mug_note).to_have_text("No longer available")
    await expect(shop.product("p-mug")).to_have_count(0)
    await expect(shop.line("p-mug").locator(".inc")).to_be_disabled()
    await shop.page.screenshot(path=str(ARTIFACTS / "live-catalog.png"))

    await shop.press("Checkout")
    await expect(shop.notice).to_contain_text(
        "no longer available before checking out: Orange mug (350 ml)"
    )

    assert await shop.page.evaluate("window.__loaded_once") is True
    await shop.assert_clean()
    await context.close()
