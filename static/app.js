// The demo shop: a product grid and a cart kept in sync by cart-client.js. No build step.
import { CartClient, CartError, Status, formatMoney } from "./cart-client.js";

const $ = (sel, root = document) => root.querySelector(sel);
const USER_KEY = "cartsync.demo_user";
const BADGE = {
  [Status.CONNECTING]: "Connecting…",
  [Status.LIVE]: "Live",
  [Status.RECONNECTING]: "Reconnecting…",
  [Status.OFFLINE]: "Offline",
  [Status.POLLING]: "REST fallback",
};

// ?transport=poll (or ws) picks the transport, e.g. to try the long-poll fallback by hand.
const params = new URLSearchParams(location.search);
const transport = ["ws", "poll"].includes(params.get("transport")) ? params.get("transport") : "auto";
// The page is served under the server's ROOT_PATH: <base href> names it, and so the API.
const client = new CartClient({ transport, baseUrl: document.baseURI });
const PAGE = 24; // products per page of the grid: the page loads only what it shows
let products = new Map();
let productList = [];
let nextPage = null; // `after` of the next page of the grid, or null
const asked = new Set(); // products of cart lines already asked for (?ids=)
let currency = "usd";
let leaving = false; // this tab started the checkout and is on its way to the payment page

const money = (cents) => formatMoney(cents, currency);

// --- messages ---------------------------------------------------------------------------

function notify(text) {
  $("#notice-text").textContent = text;
  $("#notice").hidden = false;
}

function banner(text) {
  $("#banner-text").textContent = text;
  $("#banner").hidden = false;
}

function errorText(err) {
  const d = err.details || {};
  const name = (id) => (products.get(id) || {}).name || id;
  const pid = err.op && err.op.product_id;
  switch (err.code) {
    case "insufficient_stock":
      if (Array.isArray(d.lines) && d.lines.length) {
        return "Not enough stock to check out: " + d.lines.map((l) =>
          `${name(l.product_id)} (${l.available} left, ${l.requested} in cart)`).join(", ") + ".";
      }
      if (pid && d.available !== undefined) {
        return d.available > 0
          ? `Sorry, only ${d.available} more of ${name(pid)} available.`
          : `Sorry, no more of ${name(pid)} available.`;
      }
      break;
    case "quantity_limit":
      return `${pid ? name(pid) : "A line"} can hold at most ${d.max_quantity || 999}.`;
    case "cart_locked":
      return "This cart is locked while a checkout is in progress.";
    case "empty_cart":
      return "Your cart is empty: add something first.";
    case "product_unavailable":
      if (Array.isArray(d.lines) && d.lines.length) {
        return "Remove what is no longer available before checking out: " +
          d.lines.map((l) => name(l.product_id)).join(", ") + ".";
      }
      return `Sorry, ${pid ? name(pid) : "this product"} is no longer available.`;
    default:
  }
  return err.message || "Something went wrong; please try again.";
}

// --- rendering ----------------------------------------------------------------------------

function renderProducts(list) {
  const tpl = $("#product-tpl");
  $("#products").replaceChildren(...list.map((p) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.id = p.id;
    const img = $(".thumb", li);
    if (p.image_url) {
      img.src = p.image_url;
      img.addEventListener("error", () => img.classList.add("broken"), { once: true });
    } else {
      img.classList.add("broken");
    }
    $(".name", li).textContent = p.name;
    $(".price", li).textContent = money(p.price_cents);
    const stock = $(".stock", li);
    stock.textContent = p.stock <= 0 ? "Out of stock" : p.stock <= 5 ? `Only ${p.stock} left` : `${p.stock} in stock`;
    stock.dataset.level = p.stock <= 0 ? "none" : p.stock <= 5 ? "low" : "ok";
    const add = $(".add", li);
    add.dataset.soldOut = p.stock <= 0 ? "1" : "";
    add.setAttribute("aria-label", `Add ${p.name} to cart`);
    return li;
  }));
  $("#products-state").hidden = list.length > 0;
  $("#products-state").textContent = list.length ? "" : "No products yet.";
}

function lineRow(item) {
  const li = $("#line-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = item.product_id;
  const img = $(".thumb", li);
  if (item.image_url) {
    img.src = item.image_url;
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
  } else {
    img.classList.add("broken");
  }
  $(".qty", li).setAttribute("aria-label", `Quantity of ${item.name}`);
  $(".dec", li).setAttribute("aria-label", `One less ${item.name}`);
  $(".inc", li).setAttribute("aria-label", `One more ${item.name}`);
  $(".remove", li).setAttribute("aria-label", `Remove ${item.name}`);
  return li;
}

// What the shop changed about a line since it was added, as the catalog says now.
function lineNote(item) {
  if (item.available === false) return "No longer available";
  if (item.stock === undefined) return "";
  if (item.stock <= 0) return "Sold out";
  if (item.stock <= 5 || item.stock < item.quantity) return `Only ${item.stock} left`;
  return "";
}

function lockText(status) {
  if (status === "checking_out") {
    return leaving ? "Taking you to payment…" : "Checkout in progress in another tab.";
  }
  if (status === "checked_out") return "Order placed. Starting a new cart…";
  if (status === "merged") return "This cart was merged into your account's cart. Switching…";
  if (status === "expired") return "This cart expired. Starting a new one…";
  return "";
}

// Rows are kept and updated in place (keyed by product id), so that a quantity being typed
// survives a patch from another tab; `reset` puts every input back to the cart's quantity.
function renderCart(reset = false) {
  const cart = client.cart;
  if (cart && cart.currency && cart.currency !== currency) {
    currency = cart.currency;
    // Product prices may have been shown before the cart named its currency.
    if (productList.length) renderProducts(productList);
  }
  const items = cart ? cart.items : [];
  const list = $("#lines");
  const rows = new Map([...list.children].map((li) => [li.dataset.id, li]));
  const hadFocus = list.contains(document.activeElement);
  items.forEach((item, i) => {
    const li = rows.get(item.product_id) || lineRow(item);
    rows.delete(item.product_id);
    li.dataset.pending = item.pending ? "1" : "";
    $(".name", li).textContent = item.name;
    $(".unit", li).textContent = `${money(item.unit_price_cents)} each`;
    const changed = $(".price-changed", li);
    changed.hidden = item.current_price_cents === item.unit_price_cents;
    changed.textContent = item.current_price_cents > item.unit_price_cents
      ? `Price went up: now ${money(item.current_price_cents)}`
      : `Price dropped: now ${money(item.current_price_cents)}`;
    const note = $(".line-note", li);
    note.textContent = lineNote(item);
    note.hidden = !note.textContent;
    li.dataset.unavailable = item.available === false ? "1" : "";
    // No more can be added than the stock left (it counts no cart's lines, only checkouts).
    li.dataset.noMore = item.available === false || item.stock <= item.quantity ? "1" : "";
    $(".total", li).textContent = money(item.line_total_cents);
    const qty = $(".qty", li);
    if (reset || !qty.dataset.dirty) qty.value = String(item.quantity);
    if (reset) delete qty.dataset.dirty;
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  rows.forEach((li) => li.remove());
  // A removed line took the focus with it: keep the keyboard user in the cart.
  if (hadFocus && !list.contains(document.activeElement)) $("#cart").focus();

  const status = cart ? cart.status : "active";
  const editable = !!cart && client.editable;
  list.querySelectorAll("button, input").forEach((el) => { el.disabled = !editable; });
  list.querySelectorAll('.line[data-no-more="1"] .inc').forEach((el) => { el.disabled = true; });
  for (const btn of document.querySelectorAll("#products .add")) {
    btn.disabled = !editable || btn.dataset.soldOut === "1";
  }
  $("#empty").hidden = items.length > 0;
  $("#count").textContent = String(cart ? cart.item_count : 0);
  $("#count-pill").textContent = String(cart ? cart.item_count : 0);
  $("#subtotal").textContent = money(cart ? cart.subtotal_cents : 0);
  $("#clear").disabled = !editable || items.length === 0;
  $("#checkout").disabled = !editable || items.length === 0;
  $("#cart").dataset.status = status;
  $("#cart").dataset.version = cart ? String(cart.version) : "";
  const text = lockText(status);
  $("#lock").hidden = !text;
  $("#lock-text").textContent = text;
  $("#cancel-checkout").hidden = status !== "checking_out" || leaving;
}

function renderStatus(status) {
  $("#badge").dataset.state = status;
  $("#badge-text").textContent = BADGE[status] || status;
  // Presence is what the server last said: stale once the connection is gone.
  if (status !== Status.LIVE) $("#presence").hidden = true;
  renderCart();
}

function renderPresence(tabs) {
  const el = $("#presence");
  el.hidden = tabs === null;
  el.textContent = tabs === 1 ? "1 tab open" : `${tabs} tabs open`;
  el.dataset.tabs = String(tabs);
}

function renderUser() {
  const user = localStorage.getItem(USER_KEY);
  $("#who").hidden = !user;
  $("#who-name").textContent = user || "";
  $("#login").hidden = !!user;
}

// --- events -----------------------------------------------------------------------------

client.onChange(() => { renderCart(); loadLineProducts(); });
// The shop changed a product this cart holds: the grid shows it too (the lines follow
// through `change`).
client.onCatalog((changed) => {
  for (const c of changed) {
    const p = products.get(c.product_id);
    if (p) Object.assign(p, { name: c.name, price_cents: c.price_cents, stock: c.stock, active: c.active });
  }
  productList = productList.filter((p) => p.active !== false);
  renderProducts(productList);
  renderCart();
});
client.onStatus(renderStatus);
client.onPresence(renderPresence);
client.onMoved(() => renderPresence(null));
client.onError((err) => {
  notify(errorText(err));
  renderCart(true); // puts back a quantity the server refused
});

$("#products").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button.add");
  if (btn) client.add(btn.closest(".product").dataset.id, 1);
});

$("#lines").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button");
  if (!btn) return;
  const id = btn.closest(".line").dataset.id;
  const item = client.cart && client.cart.items.find((it) => it.product_id === id);
  if (!item) return;
  if (btn.classList.contains("remove")) client.remove(id);
  else if (btn.classList.contains("dec")) client.set(id, item.quantity - 1);
  else if (btn.classList.contains("inc")) client.add(id, 1);
});

$("#lines").addEventListener("input", (ev) => {
  if (ev.target.matches("input.qty")) ev.target.dataset.dirty = "1";
});

$("#lines").addEventListener("change", (ev) => {
  if (!ev.target.matches("input.qty")) return;
  const input = ev.target;
  delete input.dataset.dirty;
  const q = Number(input.value);
  if (input.value === "" || !Number.isInteger(q) || q < 0 || q > 999) {
    notify("Quantity must be a whole number from 0 to 999.");
    renderCart(true);
    return;
  }
  client.set(input.closest(".line").dataset.id, q);
});

$("#clear").addEventListener("click", () => client.clear());
$("#more-products").addEventListener("click", () => loadPage());

$("#checkout").addEventListener("click", async () => {
  $("#checkout").disabled = true;
  leaving = true;
  try {
    const { checkout_url: url } = await client.checkout();
    location.assign(url);
  } catch (err) {
    leaving = false;
    notify(err instanceof CartError ? errorText(err) : "Could not reach the server; try again.");
    renderCart();
  }
});

$("#cancel-checkout").addEventListener("click", async () => {
  try {
    await client.cancelCheckout();
  } catch (err) {
    notify(err instanceof CartError ? errorText(err) : "Could not reach the server; try again.");
  }
});

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const user = $("#login-user").value.trim();
  if (!user) return;
  $("#login-submit").disabled = true;
  try {
    const res = await fetch("api/demo/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
    if (res.status === 404) throw new Error("Demo sign-in is off on this server (DEMO_LOGIN=1).");
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((data.error && data.error.message) || `HTTP ${res.status}`);
    await client.login(data.token);
    localStorage.setItem(USER_KEY, user);
    renderUser();
  } catch (err) {
    notify(`Sign-in failed: ${err.message}`);
  } finally {
    $("#login-submit").disabled = false;
  }
});

// Another tab signed in: this one shows it too (its cart follows by a `moved` frame).
addEventListener("storage", (ev) => { if (ev.key === USER_KEY) renderUser(); });

$("#notice-close").addEventListener("click", () => { $("#notice").hidden = true; });
$("#banner-close").addEventListener("click", () => { $("#banner").hidden = true; });

// Back from the payment page (or the back button): the page is fresh, nothing is leaving.
addEventListener("pageshow", () => { leaving = false; renderCart(); });

// --- start ------------------------------------------------------------------------------

async function start() {
  const outcome = params.get("checkout");
  if (outcome === "success") banner("Thank you! Your order is placed.");
  else if (outcome === "cancelled") banner("Checkout cancelled: your cart is as you left it.");
  if (outcome) {
    params.delete("checkout");
    params.delete("session_id"); // said once; not left in the address bar or history
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  }
  renderUser();
  renderCart();
  // Stripe's webhook may lag the shopper's return: ask the server to settle now.
  if (outcome === "success") client.confirmCheckout().catch(() => {});
  // Back from the provider's cancel link: give the stock back and unlock the cart now,
  // not when the reservation expires.
  if (outcome === "cancelled") client.cancelCheckout().catch(() => {});
  const cartReady = client.start();
  await loadPage();
  await cartReady;
}

// The grid a page at a time: the first page at start, the next on "Show more".
async function loadPage() {
  try {
    const { products: page, next } = await client.loadProducts({ limit: PAGE, after: nextPage });
    for (const p of page) {
      if (!products.has(p.id)) productList.push(p);
      products.set(p.id, p);
    }
    nextPage = next;
    $("#more-products").hidden = !next;
    renderProducts(productList);
    renderCart();
  } catch (err) {
    $("#products-state").textContent = `Could not load the products (${err.message}).`;
  }
}

// Lines of products the grid has not loaded: ask for just those (their stock and state).
function loadLineProducts() {
  const missing = (client.cart ? client.cart.items : [])
    .map((item) => item.product_id)
    .filter((id) => !client.catalog.has(id) && !asked.has(id));
  if (!missing.length) return;
  missing.forEach((id) => asked.add(id));
  client.loadProducts({ ids: missing.slice(0, 100) }).catch(() => {});
}

start();
