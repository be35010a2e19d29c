"""The demo page in a real Chromium against a real server: tabs in sync, a server restart,
optimistic edits rolled back, the long-poll fallback, price changes, a phone-sized screen."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from tests.browser_support import ARTIFACTS, ROOT, WAIT_MS, Shop, change_product, side_by_side
from tests.support import ServerProcess, rest, unavailable

try:
    from playwright.async_api import expect
except ImportError:
    unavailable("the playwright package is missing", module=True)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, WebSocketRoute

expect.set_options(timeout=WAIT_MS)
MakeShop = Callable[..., ServerProcess]


async def test_two_tabs_stay_in_sync_without_reload(browser: Browser, make_shop: MakeShop) -> None:
    server = make_shop()
    context = await browser.new_context(viewport={"width": 940, "height": 700}, locale="en-US")
    a = await Shop.open(context, server)
    b = await Shop.open(context, server)
    for tab in (a, b):
        await tab.page.evaluate("window.__loaded_once = true")  # gone if the page reloads
        await expect(tab.badge).to_have_attribute("data-state", "live")
        await expect(tab.badge).to_have_text("Live")
        await expect(tab.presence).to_have_text("2 tabs open")

    await a.add("p-tee")
    await expect(b.qty("p-tee")).to_have_value("1")
    await expect(b.subtotal).to_have_text("$19.99")
    await expect(b.count).to_have_text("1")

    await b.press("One more Black tee (M)")
    await expect(a.qty("p-tee")).to_have_value("2")
    await expect(a.subtotal).to_have_text("$39.98")

    await b.type_qty("p-tee", "3")
    await expect(a.qty("p-tee")).to_have_value("3")

    await a.add("p-hoodie")
    await a.add("p-hoodie")
    await a.add("p-mug")
    await expect(b.qty("p-hoodie")).to_have_value("2")
    await expect(b.subtotal).to_have_text("$172.94")  # 3 × 19.99 + 2 × 49.99 + 12.99
    await expect(b.count).to_have_text("6")

    await b.press("Remove Orange mug (350 ml)")
    await expect(a.line("p-mug")).to_have_count(0)
    await expect(a.subtotal).to_have_text("$159.95")
    # Lines keep the order in which they were first added, in both tabs.
    for tab in (a, b):
        await expect(tab.lines).to_have_count(2)
        assert await tab.lines.evaluate_all("rows => rows.map(r => r.dataset.id)") == [
            "p-tee",
            "p-hoodie",
        ]
        assert await tab.page.evaluate("window.__loaded_once") is True
        await tab.assert_clean()

    shots = []
    for caption, tab in (("Tab A", a), ("Tab B", b)):
        await tab.page.evaluate("document.activeElement.blur(); scrollTo(0, 0)")
        shots.append((caption, await tab.page.screenshot()))
    picture = ARTIFACTS / "two-tabs.png"
    await side_by_side(browser, shots, picture)
    assert picture.stat().st_size > 10_000
    await context.close()


async def test_the_readme_picture_shows_the_demo_a_user_gets(
    browser: Browser, make_server: Callable[..., ServerProcess]
) -> None:
    """The first README command's page, two tabs of one cart: the 20-product demo catalog.
    UPDATE_SCREENSHOT=1 copies the picture to docs/screenshot.png."""
    server = make_server(catalog=False).start()  # DEMO_CATALOG, as `python -m server` seeds it
    context = await browser.new_context(viewport={"width": 940, "height": 700}, locale="en-US")
    a = await Shop.open(context, server, product="p-001")
    b = await Shop.open(context, server, product="p-001")
    await expect(a.page.locator("#products > li")).to_have_count(20)
    await a.add("p-001")
    await b.add("p-004")
    await a.add("p-004")
    for tab in (a, b):
        await expect(tab.count).to_have_text("3")
        await expect(tab.presence).to_have_text("2 tabs open")
    shots = []
    for caption, tab in (("Tab A", a), ("Tab B", b)):
        await tab.page.evaluate("document.activeElement.blur(); scrollTo(0, 0)")
        shots.append((caption, await tab.page.screenshot()))
    picture = ARTIFACTS / "readme.png"
    await side_by_side(browser, shots, picture)
    assert picture.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":  # refreshes the one README shows
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(picture, ROOT / "docs" / "screenshot.png")
    for tab in (a, b):
        await tab.assert_clean()
    await context.close()


async def test_adding_past_the_stock_shows_the_error_and_rolls_back(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop()
    context = await browser.new_context(locale="en-US")
    shop = await Shop.open(context, server)
    await expect(shop.product("p-low").locator(".stock")).to_have_text("Only 3 left")
    await expect(shop.product("p-none").locator(".add")).to_be_disabled()
    for n in (1, 2, 3):
        await shop.add("p-low")
        await expect(shop.qty("p-low")).to_have_value(str(n))
    await expect(shop.count).to_have_text("3")

    # Every item count the page shows from here on, to see the optimistic one go by.
    await shop.page.evaluate(
        """() => {
          const count = document.querySelector("#count");
          window.__counts = [];
          new MutationObserver(() => window.__counts.push(count.textContent))
            .observe(count, { childList: true, characterData: true, subtree: true });
        }"""
    )
    await shop.add("p-low")
    await expect(shop.notice).to_be_visible()
    await expect(shop.notice).to_contain_text("no more of Red cap")
    await expect(shop.qty("p-low")).to_have_value("3")
    await expect(shop.count).to_have_text("3")
    counts = await shop.page.evaluate("window.__counts")
    assert counts[0] == "4" and counts[-1] == "3", counts  # shown at once, then rolled back

    # A typed quantity over the stock: refused, and the input shows the cart's quantity again.
    await shop.press("Dismiss message")
    await expect(shop.notice).to_be_hidden()
    await shop.type_qty("p-low", "10")
    await expect(shop.notice).to_contain_text("only 3 more of Red cap")
    await expect(shop.qty("p-low")).to_have_value("3")
    await expect(shop.subtotal).to_have_text("$74.97")
    await shop.assert_clean()
    await context.close()


async def _cart_cookie(page: Page) -> str:
    cookies = await page.context.cookies()
    return next(c["value"] for c in cookies if c["name"] == "cart_id")


async def test_server_restart_reconnects_and_catches_up(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop()
    context = await browser.new_context(locale="en-US")
    shop = await Shop.open(context, server)
    await expect(shop.badge).to_have_attribute("data-state", "live")
    await shop.add("p-tee")
    await shop.add("p-hoodie")
    await expect(shop.count).to_have_text("2")
    await expect(shop.page.locator("#cart")).to_have_attribute("data-version", "2")
    signed = await _cart_cookie(shop.page)

    server.kill()  # SIGKILL: no close frame, the socket just dies
    await expect(shop.badge).to_have_attribute("data-state", "reconnecting")
    await expect(shop.badge).to_have_text("Reconnecting…")
    # Keep the tab away while the server is back, so the next change happens in its absence.
    await context.set_offline(True)
    server.start()
    async with rest(server, signed) as other_client:
        answer = await other_client.post("/api/cart/items", json={"product_id": "p-mug"})
        assert answer.status_code == 200 and answer.json()["version"] == 3
    await expect(shop.count).to_have_text("2")  # not seen yet: the tab is still away

    await context.set_offline(False)
    await expect(shop.badge).to_have_attribute("data-state", "live")
    await expect(shop.qty("p-mug")).to_have_value("1")
    await expect(shop.page.locator("#cart")).to_have_attribute("data-version", "3")
    await expect(shop.qty("p-tee")).to_have_value("1")
    await expect(shop.qty("p-hoodie")).to_have_value("1")
    await expect(shop.subtotal).to_have_text("$82.97")
    await expect(shop.presence).to_have_text("1 tab open")

    # And the socket is a working one: an edit goes through and the server has it.
    await shop.press("One more Orange mug (350 ml)")
    await expect(shop.page.locator("#cart")).to_have_attribute("data-version", "4")
    async with rest(server, signed) as other_client:
        cart = (await other_client.get("/api/cart")).json()
    assert {i["product_id"]: i["quantity"] for i in cart["items"]} == {
        "p-tee": 1,
        "p-hoodie": 1,
        "p-mug": 2,
    }
    await shop.assert_clean()
    await context.close()


async def test_a_missed_patch_is_asked_for_again_with_since(
    browser: Browser, make_shop: MakeShop
) -> None:
    """A patch lost on the way (dropped by a route in front of the real server): the page
    sees the next version skip one, reconnects with ?since= and gets what it missed."""
    server = make_shop()
    context = await browser.new_context(locale="en-US")
    urls: list[str] = []

    async def lose_version_2_once(ws: WebSocketRoute) -> None:
        urls.append(ws.url)
        first = len(urls) == 1
        upstream = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if first and frame.get("type") == "patch" and frame["version"] == 2:
                return
            ws.send(message)

        upstream.on_message(to_page)  # the page's frames still go up unchanged

    async def route(page: Page) -> None:
        await page.route_web_socket("**/api/cart/ws*", lose_version_2_once)

    shop = await Shop.open(context, server, prepare=route)
    await shop.page.evaluate("window.__loaded_once = true")
    await shop.add("p-tee")
    await expect(shop.page.locator("#cart")).to_have_attribute("data-version", "1")
    signed = await _cart_cookie(shop.page)
    async with rest(server, signed) as other_client:
        for product in ("p-mug", "p-hoodie"):  # versions 2 (lost) and 3
            assert (
                await other_client.post("/api/cart/items", json={"product_id": product})
            ).is_success

    await expect(shop.page.locator("#cart")).to_have_attribute("data-version", "3")
    await expect(shop.qty("p-mug")).to_have_value("1")
    await expect(shop.qty("p-hoodie")).to_have_value("1")
    assert len(urls) == 2 and "since=1" in urls[1], urls
    assert await shop.page.evaluate("window.__loaded_once") is True
    await shop.assert_clean()
    await context.close()


async def test_without_websockets_the_page_syncs_by_long_poll(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop()
    context = await browser.new_context(locale="en-US")
    polling = await Shop.open(context, server, init="delete window.WebSocket;")
    live = await Shop.open(context, server)
    assert await polling.page.evaluate("typeof WebSocket") == "undefined"
    await expect(polling.badge).to_have_attribute("data-state", "polling")
    await expect(polling.badge).to_have_text("REST fallback")
    await expect(polling.presence).to_be_hidden()
    await expect(live.presence).to_have_text("1 tab open")  # a polling tab holds no socket

    await polling.add("p-tee")  # REST with an Idempotency-Key
    await expect(live.qty("p-tee")).to_have_value("1")
    await live.add("p-mug")  # arrives at the polling tab by long-poll
    await expect(polling.qty("p-mug")).to_have_value("1")
    await polling.press("One more Black tee (M)")
    await expect(live.qty("p-tee")).to_have_value("2")
    await live.press("Remove Black tee (M)")
    await expect(polling.line("p-tee")).to_have_count(0)
    await expect(polling.subtotal).to_have_text("$12.99")

    # Refused edits roll back over REST too.
    for _ in range(4):
        await polling.add("p-low")
    await expect(polling.notice).to_contain_text("no more of Red cap")
    await expect(polling.qty("p-low")).to_have_value("3")
    await expect(live.qty("p-low")).to_have_value("3")
    await polling.assert_clean()
    await live.assert_clean()
    await context.close()
    # A long-poll still held by the server delays a SIGTERM shutdown by the 10 s graceful
    # timeout (the server does not release its long-polls on shutdown): end it quicker.
    server.kill()


async def test_refused_upgrades_fall_back_to_long_poll(
    browser: Browser, make_shop: MakeShop
) -> None:
    """A proxy that never lets a WebSocket through: after a few attempts, long-poll."""
    server = make_shop()
    context = await browser.new_context(locale="en-US")
    attempts = 0

    async def refuse(ws: WebSocketRoute) -> None:
        nonlocal attempts
        attempts += 1
        await ws.close()

    async def block_sockets(page: Page) -> None:
        await page.route_web_socket("**/api/cart/ws*", refuse)

    blocked = await Shop.open(context, server, prepare=block_sockets)
    live = await Shop.open(context, server)
    await expect(blocked.badge).to_have_attribute("data-state", "polling")
    assert attempts >= 3
    await live.add("p-backpack")
    await expect(blocked.qty("p-backpack")).to_have_value("1")
    await blocked.add("p-backpack")
    await expect(live.qty("p-backpack")).to_have_value("2")
    await context.close()
    server.kill()  # see above: a held long-poll delays a SIGTERM shutdown


async def test_a_changed_price_is_marked_on_the_line(browser: Browser, make_shop: MakeShop) -> None:
    server = make_shop({"CATALOG_REFRESH": "100ms"})
    context = await browser.new_context(locale="en-US")
    shop = await Shop.open(context, server)
    await shop.add("p-mug")
    await expect(shop.qty("p-mug")).to_have_value("1")
    marker = shop.line("p-mug").locator(".price-changed")
    await expect(marker).to_be_hidden()

    await change_product(server, "p-mug", price_cents=1499)
    await shop.press("One more Orange mug (350 ml)")
    await expect(marker).to_be_visible()
    await expect(marker).to_have_text("Price went up: now $14.99")
    # The line keeps the price it was added at.
    await expect(shop.line("p-mug").locator(".unit")).to_have_text("$12.99 each")
    await expect(shop.subtotal).to_have_text("$25.98")
    await shop.assert_clean()
    await context.close()


async def test_keyboard_and_a_phone_sized_screen(browser: Browser, make_shop: MakeShop) -> None:
    server = make_shop()
    context = await browser.new_context(viewport={"width": 375, "height": 740}, locale="en-US")
    shop = await Shop.open(context, server)
    page = shop.page
    await expect(shop.badge).to_have_attribute("role", "status")
    await expect(shop.badge).to_have_attribute("aria-live", "polite")
    await expect(shop.badge).to_have_attribute("data-state", "live")

    # Tab through the page to the first product's button, as a keyboard user would.
    for _ in range(30):
        await page.keyboard.press("Tab")
        label = await page.evaluate("document.activeElement.getAttribute('aria-label')")
        if label == "Add Black tee (M) to cart":
            break
    else:
        pytest.fail("the Add button of the first product cannot be reached with Tab")
    await page.keyboard.press("Enter")
    await expect(shop.qty("p-tee")).to_have_value("1")

    await page.get_by_role("button", name="One more Black tee (M)").focus()
    await page.keyboard.press("Space")
    await expect(shop.qty("p-tee")).to_have_value("2")
    quantity = page.get_by_label("Quantity of Black tee (M)")
    await quantity.fill("5")
    await quantity.press("Enter")
    await expect(shop.count).to_have_text("5")

    # Nothing is wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    wide = await page.evaluate(
        """() => [...document.querySelectorAll("body *")]
            .filter((el) => el.getBoundingClientRect().right > 375.5)
            .map((el) => el.id || el.className)"""
    )
    assert wide == []
    # Every control has a name a screen reader can say.
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll("button, input")]
            .filter((el) => !el.closest("[hidden], template"))
            .filter((el) => !(el.getAttribute("aria-label") || el.labels?.length
                              || el.textContent.trim()))
            .map((el) => el.outerHTML)"""
    )
    assert unnamed == []
    await page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)

    await page.get_by_role("button", name="Remove Black tee (M)").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#empty")).to_be_visible()
    # The removed line took the focus with it; the cart has it now, not the page's end.
    assert await page.evaluate("document.activeElement.id") == "cart"
    await shop.assert_clean()
    await context.close()


async def test_on_a_phone_the_cart_covers_nothing_and_checkout_is_in_reach(
    browser: Browser, make_shop: MakeShop
) -> None:
    """Measured, not only tabbed through: at 375 px the cart is in the page's flow (it
    once stayed sticky and covered the products), and its total and Checkout button are
    within reach, not thousands of pixels down."""
    server = make_shop()
    height = 740
    context = await browser.new_context(viewport={"width": 375, "height": height}, locale="en-US")
    shop = await Shop.open(context, server)
    page = shop.page
    await shop.add("p-tee")
    await expect(shop.count).to_have_text("1")
    reach = await page.evaluate(
        """() => ["#subtotal", "#checkout"].map(
            (sel) => document.querySelector(sel).getBoundingClientRect().bottom + scrollY)"""
    )
    assert max(reach) < 2 * height, reach
    covered = []
    for product in await page.locator("#products > li").all():
        await product.scroll_into_view_if_needed()
        covered += await product.evaluate(
            """(el) => {
                const r = el.getBoundingClientRect();
                const points = [[r.left + 4, r.top + 4], [r.right - 4, r.bottom - 4],
                                [(r.left + r.right) / 2, (r.top + r.bottom) / 2]];
                return points
                  .filter(([x, y]) => y >= 0 && y < innerHeight)
                  .map(([x, y]) => document.elementFromPoint(x, y))
                  .filter((hit) => hit && !el.contains(hit))
                  .map((hit) => `${el.dataset.id} under ${hit.closest("[id]")?.id}`);
            }"""
        )
    assert covered == []
    await page.locator("#checkout").scroll_into_view_if_needed()
    await expect(page.locator("#checkout")).to_be_in_viewport()
    await shop.assert_clean()
    await context.close()
