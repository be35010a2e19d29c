// Minimal cart sync demo client (PROTOCOL.md v1). No dependencies, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const MUTABLE = new Set(["active", "abandoned"]);

// --- identities ---------------------------------------------------------------------

function randomId(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// One client_id per tab (kept across reloads) so the server scopes our message ids.
let clientId = sessionStorage.getItem("cartsync.client_id");
if (!/^[A-Za-z0-9_-]{1,64}$/.test(clientId || "")) {
  clientId = randomId(12);
  sessionStorage.setItem("cartsync.client_id", clientId);
}
// Message ids: a random prefix per page load, so a reload never reuses an id the server
// already applied for this client_id (it would be acknowledged, not re-applied).
const loadId = randomId(6);
let seq = 0;
const nextId = () => `${loadId}-${++seq}`;

// --- state --------------------------------------------------------------------------

let cart = null; // the cart document from the last snapshot, patched in place
let ws = null;
let delay = 500; // reconnect backoff: 0.5 s doubling to 8 s
let retryTimer = null;

function money(cents, currency = (cart && cart.currency) || "usd") {
  const fmt = new Intl.NumberFormat("en-US", { style: "currency", currency: currency.toUpperCase() });
  return fmt.format(cents / 10 ** fmt.resolvedOptions().maximumFractionDigits);
}

// --- status line and badge ----------------------------------------------------------

function showStatus(text) {
  $("#status-text").textContent = text;
  $("#status").hidden = false;
}

function setBadge(state) {
  $("#badge").textContent = $("#badge").dataset.state = state;
}

// --- rendering ----------------------------------------------------------------------

function renderProducts(products) {
  const list = $("#products");
  const tpl = $("#product-tpl");
  list.replaceChildren(...products.map((p) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.id = p.id;
    if (p.image_url) $(".thumb", li).src = p.image_url; else $(".thumb", li).remove();
    $(".name", li).textContent = p.name;
    $(".price", li).textContent = money(p.price_cents);
    $(".stock", li).textContent = p.stock > 0 ? `${p.stock} in stock` : "Out of stock";
    const add = $(".add", li);
    add.disabled = p.stock <= 0;
    add.setAttribute("aria-label", `Add ${p.name}`);
    return li;
  }));
}

function lineRow(item) {
  const li = $("#line-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = item.product_id;
  if (item.image_url) $(".thumb", li).src = item.image_url; else $(".thumb", li).remove();
  $("label .visually-hidden", li).textContent = `Quantity of ${item.name}`;
  $(".dec", li).setAttribute("aria-label", `One less ${item.name}`);
  $(".inc", li).setAttribute("aria-label", `One more ${item.name}`);
  $(".remove", li).setAttribute("aria-label", `Remove ${item.name}`);
  return li;
}

// Rows are kept and updated in place (keyed by product id), so an input keeps what is being
// typed into it (not yet committed); `reset` puts every input back to the cart's quantity.
function renderCart(reset = false) {
  const list = $("#lines");
  const rows = new Map([...list.children].map((li) => [li.dataset.id, li]));
  const items = cart ? cart.items : [];
  items.forEach((item, i) => {
    const li = rows.get(item.product_id) || lineRow(item);
    rows.delete(item.product_id);
    $(".name", li).textContent = item.name;
    $(".unit", li).textContent = `${money(item.unit_price_cents)} each`;
    $(".total", li).textContent = money(item.line_total_cents);
    const qty = $(".qty", li);
    if (reset || !qty.dataset.dirty) qty.value = String(item.quantity);
    if (reset) delete qty.dataset.dirty;
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  rows.forEach((li) => li.remove());

  const editable = !!cart && MUTABLE.has(cart.status) && ws && ws.readyState === WebSocket.OPEN;
  list.querySelectorAll("button, input").forEach((el) => { el.disabled = !editable; });
  $("#empty").hidden = items.length > 0;
  $("#count").textContent = String(cart ? cart.item_count : 0);
  $("#subtotal").textContent = money(cart ? cart.subtotal_cents : 0);
  $("#clear").disabled = !editable || items.length === 0;
  $("#checkout").disabled = !editable || items.length === 0;
  $("#cancel-checkout").hidden = !cart || cart.status !== "checking_out";
  const note = $("#cart-state");
  note.hidden = !cart || MUTABLE.has(cart.status);
  note.textContent = !cart ? ""
    : cart.status === "checking_out" ? "Checkout in progress: the cart is locked until it is paid or cancelled."
    : `This cart is ${cart.status.replace("_", " ")}.`;
}

// --- protocol -----------------------------------------------------------------------

function applyPatch(p) {
  for (const op of p.ops) {
    if (op.op === "upsert") {
      const i = cart.items.findIndex((it) => it.product_id === op.item.product_id);
      if (i >= 0) cart.items[i] = op.item; else cart.items.push(op.item);
    } else if (op.op === "remove") {
      cart.items = cart.items.filter((it) => it.product_id !== op.product_id);
    } else if (op.op === "status") {
      cart.status = op.status;
    }
  }
  cart.version = p.version;
  cart.item_count = p.item_count;
  cart.subtotal_cents = p.subtotal_cents;
}

function onFrame(msg) {
  switch (msg.type) {
    case "snapshot":
      cart = msg.cart;
      renderCart();
      break;
    case "patch":
      if (!cart || msg.version <= cart.version) return; // already applied
      if (msg.version !== cart.version + 1) { resync(); return; } // gap: ask again with since
      applyPatch(msg);
      renderCart();
      break;
    case "presence":
      $("#presence").textContent = `${msg.tabs} ${msg.tabs === 1 ? "tab" : "tabs"} open`;
      break;
    case "error":
      showStatus(msg.message || msg.code);
      renderCart(true); // puts back any quantity the server refused
      break;
    case "moved":
      cart = null; // merged, or paid: the server moves the cookie on to the cart named
      resync();
      break;
    // "ack" and "pong" need nothing: the patch has already updated the page.
  }
}

function send(type, fields = {}) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showStatus("Not connected; try again in a moment.");
    renderCart(true);
    return;
  }
  ws.send(JSON.stringify({ type, id: nextId(), ...fields }));
}

function connect() {
  retryTimer = null;
  const url = new URL("/api/cart/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("client_id", clientId);
  if (cart) url.searchParams.set("since", String(cart.version));
  const sock = new WebSocket(url);
  ws = sock;
  sock.onopen = () => { setBadge("live"); renderCart(); };
  sock.onmessage = (ev) => {
    if (ws !== sock) return;
    delay = 500; // the server is talking to us: the next outage starts the backoff afresh
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    onFrame(msg);
  };
  sock.onclose = () => {
    if (ws !== sock) return; // replaced by resync()
    ws = null;
    setBadge("reconnecting");
    renderCart();
    retryTimer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 8000);
  };
}

// Close this socket and reconnect at once with ?since=cart.version.
function resync() {
  const old = ws;
  ws = null;
  if (old) old.close(1000, "resync");
  if (retryTimer) clearTimeout(retryTimer);
  setBadge("connecting");
  connect();
}

// --- events -------------------------------------------------------------------------

$("#products").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button.add");
  if (btn) send("add", { product_id: btn.closest(".product").dataset.id, quantity: 1 });
});

$("#lines").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button");
  if (!btn) return;
  const id = btn.closest(".line").dataset.id;
  const item = cart && cart.items.find((it) => it.product_id === id);
  if (!item) return;
  if (btn.classList.contains("remove")) send("remove", { product_id: id });
  else if (btn.classList.contains("dec")) send("set", { product_id: id, quantity: item.quantity - 1 });
  else if (btn.classList.contains("inc")) send("set", { product_id: id, quantity: item.quantity + 1 });
});

$("#lines").addEventListener("input", (ev) => {
  if (ev.target.matches("input.qty")) ev.target.dataset.dirty = "1";
});

$("#lines").addEventListener("change", (ev) => {
  if (!ev.target.matches("input.qty")) return;
  delete ev.target.dataset.dirty;
  const id = ev.target.closest(".line").dataset.id;
  const q = Number(ev.target.value);
  if (ev.target.value === "" || !Number.isInteger(q) || q < 0 || q > 999) {
    showStatus("Quantity must be a whole number from 0 to 999.");
    renderCart(true);
    return;
  }
  send("set", { product_id: id, quantity: q });
});

$("#clear").addEventListener("click", () => send("clear"));

// --- checkout -----------------------------------------------------------------------

async function post(path, body, headers = {}) {
  const res = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const doc = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = (doc && doc.error) || {};
    const short = (err.lines || []).map((l) => `${l.product_id}: ${l.available} left`).join(", ");
    const failure = new Error(short ? `${err.message} (${short})` : err.message || `HTTP ${res.status}`);
    failure.code = err.code;
    throw failure;
  }
  return doc;
}

$("#checkout").addEventListener("click", async () => {
  $("#checkout").disabled = true;
  try {
    // If-Match: pay for the cart this tab shows, not one changed a moment ago elsewhere.
    // Every tab sees the cart lock through its socket; this one goes on to pay.
    const started = await post("/api/cart/checkout", {}, { "If-Match": `"${cart.version}"` });
    location.assign(started.checkout_url);
  } catch (err) {
    showStatus(err.code === "version_conflict"
      ? "The cart changed in another tab: check it, then check out again."
      : `Could not check out: ${err.message}`);
    renderCart();
  }
});

$("#cancel-checkout").addEventListener("click", async () => {
  try {
    await post("/api/cart/checkout/cancel");
  } catch (err) {
    showStatus(`Could not cancel: ${err.message}`);
  }
});

// Back from the payment page: settle now rather than wait for the webhook, or unlock.
async function returnedFromPayment() {
  const params = new URLSearchParams(location.search);
  const outcome = params.get("checkout");
  if (!outcome) return;
  history.replaceState(null, "", location.pathname);
  try {
    if (outcome === "success") {
      const fresh = await post("/api/cart/checkout/confirm");
      showStatus(fresh.status === "checking_out"
        ? "Payment received; the order is being confirmed."
        : "Thank you: your order is placed.");
    } else if (outcome === "cancelled") {
      await post("/api/cart/checkout/cancel");
      showStatus("Checkout cancelled; your cart can be edited again.");
    }
  } catch (err) {
    showStatus(err.message);
  }
}
$("#status-close").addEventListener("click", () => { $("#status").hidden = true; });

// --- start --------------------------------------------------------------------------

async function start() {
  renderCart();
  try {
    // GET /api/cart first, so the cart_id cookie is set before the socket opens.
    await fetch("/api/cart", { credentials: "same-origin" });
    await returnedFromPayment();
    const res = await fetch("/api/products");
    if (!res.ok) throw new Error(`products: HTTP ${res.status}`);
    renderProducts((await res.json()).products);
  } catch (err) {
    showStatus(`Could not load the shop: ${err.message}`);
  }
  connect();
}

start();
