"""Checkout and sign-in on the demo page, in a real Chromium against a real server.

These need POST /api/cart/checkout (+ /cancel), the demo payment page it links to, and
POST /api/demo/login + /api/cart/login (DEMO_LOGIN=1): they fail until those endpoints exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.browser_support import WAIT_MS, Shop, change_product
from tests.support import ServerProcess, rest, unavailable

try:
    from playwright.async_api import expect
except ImportError:
    unavailable("the playwright package is missing", module=True)

if TYPE_CHECKING:
    from playwright.async_api import Browser

expect.set_options(timeout=WAIT_MS)
MakeShop = Callable[..., ServerProcess]
DEMO = {"DEMO_LOGIN": "1"}


def shop_url(server: ServerProcess) -> re.Pattern[str]:
    """The shop's page, with any query (the way back from the payment page)."""
    return re.compile(re.escape(server.url) + r"/(\?.*)?$")


async def assert_locked(tab: Shop) -> None:
    """Every control that edits the cart is disabled, and the page says why."""
    await expect(tab.page.locator("#lock")).to_be_visible()
    await expect(tab.page.locator("#lock")).to_contain_text("Checkout in progress in another tab")
    await expect(tab.page.locator("#checkout")).to_be_disabled()
    await expect(tab.page.locator("#clear")).to_be_disabled()
    await expect(tab.product("p-hoodie").locator(".add")).to_be_disabled()
    for control in await tab.page.locator("#lines button, #lines input").all():
        await expect(control).to_be_disabled()


async def assert_unlocked(tab: Shop) -> None:
    await expect(tab.page.locator("#lock")).to_be_hidden()
    await expect(tab.product("p-hoodie").locator(".add")).to_be_enabled()


async def test_checkout_locks_the_other_tab_and_payment_starts_a_fresh_cart(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop(DEMO)
    context = await browser.new_context(locale="en-US")
    a = await Shop.open(context, server)
    b = await Shop.open(context, server)
    await a.add("p-tee")
    await a.add("p-mug")
    await expect(b.count).to_have_text("2")

    await a.press("Checkout")
    await a.page.wait_for_url(lambda url: url != f"{server.url}/", timeout=WAIT_MS)
    await assert_locked(b)
    await expect(b.count).to_have_text("2")  # the cart is kept while it is paid for

    # The demo payment page: pay, and back to the shop.
    await a.page.get_by_role("button", name=re.compile(r"^pay", re.I)).click()
    await a.page.wait_for_url(shop_url(server), timeout=WAIT_MS)
    await expect(a.page.locator("#banner")).to_contain_text("order is placed")
    assert "checkout=" not in a.page.url  # the outcome is shown once, not on every reload
    assert "session_id" not in a.page.url
    for tab in (a, b):
        await expect(tab.page.locator("#empty")).to_be_visible()
        await expect(tab.count).to_have_text("0")
        await expect(tab.badge).to_have_attribute("data-state", "live")
        await assert_unlocked(tab)

    # Both tabs are on the same fresh cart: an edit in one shows in the other.
    await b.add("p-hoodie")
    await expect(a.qty("p-hoodie")).to_have_value("1")
    await expect(a.presence).to_have_text("2 tabs open")
    for tab in (a, b):
        await tab.assert_clean()
    await context.close()


async def test_cancelled_payment_keeps_the_cart_and_unlocks_it(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop(DEMO)
    context = await browser.new_context(locale="en-US")
    a = await Shop.open(context, server)
    b = await Shop.open(context, server)
    await a.add("p-tee")
    await expect(b.count).to_have_text("1")

    await a.press("Checkout")
    await assert_locked(b)
    await a.page.get_by_role("button", name=re.compile(r"cancel", re.I)).click()
    await a.page.wait_for_url(shop_url(server), timeout=WAIT_MS)
    await expect(a.page.locator("#banner")).to_contain_text("cancelled")
    for tab in (a, b):
        await assert_unlocked(tab)
        await expect(tab.qty("p-tee")).to_have_value("1")
    await b.add("p-tee")
    await expect(a.qty("p-tee")).to_have_value("2")
    await context.close()


async def test_coming_back_by_the_providers_cancel_link_unlocks_the_cart(
    browser: Browser, make_shop: MakeShop
) -> None:
    """Stripe's cancel link only leads back to `/?checkout=cancelled`: the page itself must
    cancel, or the cart stays locked ("Checkout in progress") until the hold expires."""
    server = make_shop(DEMO)
    context = await browser.new_context(locale="en-US")
    a = await Shop.open(context, server)
    b = await Shop.open(context, server)
    await a.add("p-tee")
    await a.press("Checkout")
    await assert_locked(b)
    await a.page.goto(f"{server.url}/?checkout=cancelled")  # as the provider's link does
    await expect(a.page.locator("#banner")).to_contain_text("cancelled")
    for tab in (a, b):
        await assert_unlocked(tab)
    await b.add("p-tee")
    await expect(a.qty("p-tee")).to_have_value("2")
    await context.close()


async def test_the_locked_tab_can_cancel_the_checkout(
    browser: Browser, make_shop: MakeShop
) -> None:
    """A checkout started elsewhere (here: by REST) and abandoned can be cancelled from a tab."""
    server = make_shop(DEMO)
    context = await browser.new_context(locale="en-US")
    tab = await Shop.open(context, server)
    await tab.add("p-tee")
    await expect(tab.page.locator("#cart")).to_have_attribute("data-version", "1")
    cookie = next(c["value"] for c in await context.cookies() if c["name"] == "cart_id")
    async with rest(server, cookie) as other:
        started = await other.post("/api/cart/checkout", json={})
        assert started.status_code == 200, started.text
        assert started.json()["checkout_url"]
    await assert_locked(tab)
    await tab.press("Cancel checkout")
    await assert_unlocked(tab)
    await tab.add("p-tee")
    await expect(tab.qty("p-tee")).to_have_value("2")
    await context.close()


async def test_checkout_refused_for_stock_names_the_lines(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop({**DEMO, "CATALOG_REFRESH": "100ms"})
    context = await browser.new_context(locale="en-US")
    tab = await Shop.open(context, server)
    for n in (1, 2, 3):
        await tab.add("p-low")
        await expect(tab.qty("p-low")).to_have_value(str(n))
    # The stock falls to 1 while the cart holds 3.
    await change_product(server, "p-low", stock=1)

    await tab.press("Checkout")
    await expect(tab.notice).to_contain_text("Red cap (1 left, 3 in cart)")
    assert tab.page.url.startswith(server.url)  # still in the shop
    await assert_unlocked(tab)
    await context.close()


async def test_two_devices_signed_in_as_one_user_stay_in_sync(
    browser: Browser, make_shop: MakeShop
) -> None:
    server = make_shop(DEMO)
    laptop = await browser.new_context(locale="en-US")
    phone = await browser.new_context(locale="en-US", viewport={"width": 375, "height": 740})
    laptop_a = await Shop.open(laptop, server)
    laptop_b = await Shop.open(laptop, server)  # a second tab of the laptop's anonymous cart
    on_phone = await Shop.open(phone, server)
    await laptop_a.add("p-tee")
    await on_phone.add("p-mug")
    await expect(laptop_b.qty("p-tee")).to_have_value("1")
    await expect(on_phone.qty("p-mug")).to_have_value("1")

    for tab in (laptop_a, on_phone):
        await tab.page.bring_to_front()
        await tab.page.get_by_label("Demo user").fill("alice")
        await tab.press("Sign in")
        await expect(tab.page.locator("#who")).to_have_text("Signed in as alice")

    # Both anonymous carts went into alice's; the laptop's other tab followed its cart there.
    for tab in (laptop_a, laptop_b, on_phone):
        await expect(tab.qty("p-tee")).to_have_value("1")
        await expect(tab.qty("p-mug")).to_have_value("1")
        await expect(tab.badge).to_have_attribute("data-state", "live")
    await expect(laptop_b.page.locator("#who")).to_have_text("Signed in as alice")

    await on_phone.add("p-hoodie")
    for tab in (laptop_a, laptop_b):
        await expect(tab.qty("p-hoodie")).to_have_value("1")
    await laptop_b.press("One more Black tee (M)")
    await expect(on_phone.qty("p-tee")).to_have_value("2")
    await expect(on_phone.presence).to_have_text("3 tabs open")

    # A reload keeps the device on alice's cart.
    await on_phone.page.reload()
    await expect(on_phone.qty("p-tee")).to_have_value("2")
    await expect(on_phone.qty("p-hoodie")).to_have_value("1")
    for tab in (laptop_a, laptop_b, on_phone):
        await tab.assert_clean()
    await laptop.close()
    await phone.close()
