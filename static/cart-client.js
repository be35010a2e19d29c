// cart-client.js: a dependency-free browser client for the cart sync protocol (docs/PROTOCOL.md).
//
//   import { CartClient } from "/static/cart-client.js";
//   const client = new CartClient();
//   client.onChange((cart) => render(cart));
//   client.onStatus((status) => badge(status));
//   client.start();
//   client.add("p-001");
//
// The client keeps the server's cart (`confirmed`) apart from the edits it has sent but not
// yet seen answered (`pending`); what it shows (`cart`) is the first with the second applied
// on top. An accepted edit arrives as a patch and leaves `pending`; a refused one leaves it
// with an `error` event, which rolls the shown cart back.

export const Status = Object.freeze({
  CONNECTING: "connecting",
  LIVE: "live",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
  POLLING: "polling", // WebSockets unavailable: long-poll + REST
});

const MUTABLE = new Set(["active", "abandoned"]);
const FINISHED = new Set(["checked_out", "merged", "expired"]);
const DEFAULTS = {
  transport: "auto", // "auto" | "ws" | "poll"
  baseUrl: null, // the cart server (with its ROOT_PATH, if any); defaults to the page's origin
  cartId: null, // a signed cart id to start from (a shop that keeps it itself)
  persist: false, // keep the signed cart id in localStorage: for browsers that block the
                  // cart server's cookie (another site's), so a reload keeps the cart
  legacyQuery: false, // send the id as ?cart= on the socket (for servers before cartsync 0.2)
  backoffBase: 250, // ms before the first retry; doubles per failed attempt ...
  backoffCap: 10000, // ... up to this, with jitter
  offlineAfter: 5, // failed attempts in a row before the status says offline
  fallbackAfter: 3, // WebSocket attempts that never opened before trying long-poll
  pingInterval: 20000, // ms; a socket silent for two of these is presumed dead
  pollWait: 25, // seconds the server may hold a long-poll
  movedGrace: 3000, // ms to wait for `moved` after the cart is finished, before asking
};

/** A refused request or message: the server's `code` and `message`, plus its details. */
export class CartError extends Error {
  constructor(error, status = 0) {
    super(error.message || error.code || "request failed");
    this.name = "CartError";
    this.code = error.code || "error";
    this.status = status;
    this.details = error;
    this.op = null; // the edit it refused, if any
  }
}

export function formatMoney(cents, currency = "usd") {
  const fmt = new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() });
  return fmt.format(cents / 10 ** fmt.resolvedOptions().maximumFractionDigits);
}

function randomId(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class CartClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const base = new URL(this.options.baseUrl || location.origin, location.href);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    this.base = base;
    this.crossOrigin = base.origin !== location.origin;
    this.storageKey = `cartsync.cart_id:${base.origin}${base.pathname}`;
    // One client id per page load, never stored: a duplicated tab copies sessionStorage, and
    // two tabs sharing an id would each have the server take the other's messages as repeats.
    this.clientId = randomId(12);
    this.seq = 0;
    this.confirmed = null; // the server's cart document, patched in place
    this.pending = []; // edits not answered yet: {id, type, product_id, quantity, sent}
    this.cart = null; // what to show: confirmed + pending
    this.status = Status.CONNECTING;
    this.presence = null; // open tabs of this cart (known over the WebSocket only)
    // The signed cart id (X-Cart-Id, `moved`); null: the cookie decides.
    this._signed = this.options.cartId || this.stored() || null;
    this.catalog = new Map();
    const noSocket = typeof WebSocket !== "function";
    this.mode = this.options.transport === "poll" || noSocket ? "poll" : "ws";
    this.ws = null;
    this.failures = 0; // connection attempts that failed in a row
    this.everOpened = false;
    this.generation = 0; // bumped whenever the cart changes: late answers about the old one are dropped
    this.closed = true;
    this.listeners = new Map();
    this.timers = { retry: null, ping: null, moved: null };
    this.lastHeard = 0;
    this.restBusy = false;
    this.pollAbort = null;
    this.needSnapshot = false;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.setStatus(Status.OFFLINE);
  }

  /** The signed cart id this client names its cart by (kept in localStorage if `persist`). */
  get signed() { return this._signed; }
  set signed(value) {
    this._signed = value;
    if (this.options.persist && value) {
      try { localStorage.setItem(this.storageKey, value); } catch { /* storage refused */ }
    }
  }

  stored() {
    if (!this.options.persist) return null;
    try { return localStorage.getItem(this.storageKey); } catch { return null; }
  }

  /** A URL on the cart server: `path` is taken under its base (and ROOT_PATH). */
  url(path) { return new URL(path.replace(/^\//, ""), this.base); }

  // --- events ----------------------------------------------------------------------------

  /** Subscribe to `change` | `status` | `error` | `presence` | `moved` | `catalog`; returns an
   *  unsubscribe. `catalog` gets the products of this cart that changed in the shop (price,
   *  stock, name, `active`), as the server sent them; `change` follows with the lines updated. */
  on(event, cb) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(cb);
    return () => this.listeners.get(event).delete(cb);
  }
  onChange(cb) { return this.on("change", cb); }
  onStatus(cb) { return this.on("status", cb); }
  onError(cb) { return this.on("error", cb); }
  onPresence(cb) { return this.on("presence", cb); }
  onMoved(cb) { return this.on("moved", cb); }
  onCatalog(cb) { return this.on("catalog", cb); }

  emit(event, value) {
    for (const cb of this.listeners.get(event) || []) {
      try { cb(value, this); } catch (err) { console.error(err); }
    }
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  /** Products by id (merged into those known), so that an add can be shown before the
   *  server answers it and lines can show their stock. */
  setCatalog(products) {
    for (const p of products) this.catalog.set(p.id, { ...this.catalog.get(p.id), ...p });
  }

  /** GET /api/products, merged into the catalog: the products named (`ids`, e.g. a cart's
   *  lines), or a page of the catalog (`limit`, `after`: the previous page's `next`). The
   *  browser revalidates with the ETag, so an unchanged catalog costs a 304.
   *  Returns {products, next}. */
  async loadProducts({ ids, limit, after } = {}) {
    if (ids && !ids.length) return { products: [], next: null };
    const url = this.url("/api/products");
    if (ids) url.searchParams.set("ids", ids.join(","));
    if (limit) url.searchParams.set("limit", String(limit));
    if (after) url.searchParams.set("after", after);
    const res = await fetch(url, { credentials: this.crossOrigin ? "include" : "same-origin", cache: "no-cache" });
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) {
      throw new CartError((data && data.error) || { code: `http_${res.status}` }, res.status);
    }
    this.setCatalog(data.products);
    this.refresh();
    return { products: data.products, next: data.next || null };
  }

  /** A `catalog` message: the shop changed products this cart holds. The lines show it at
   *  once (current price, name, availability, stock); the cart's version does not move. */
  catalogNews(products) {
    for (const p of products) {
      const known = this.catalog.get(p.product_id) || { id: p.product_id };
      const { product_id: id, ...fields } = p;
      this.catalog.set(id, { ...known, ...fields });
      for (const item of this.confirmed ? this.confirmed.items : []) {
        if (item.product_id !== id) continue;
        item.name = p.name;
        item.current_price_cents = p.price_cents;
        item.available = p.active;
      }
    }
    this.emit("catalog", products);
    this.refresh();
  }

  /** True when the shown cart accepts edits (not locked by a checkout, not finished). */
  get editable() {
    return !!this.cart && MUTABLE.has(this.cart.status);
  }

  // --- lifecycle -------------------------------------------------------------------------

  /** Load the cart, then keep it in sync until close(). Rejects (and `error` fires) with
   *  what retrying cannot fix: this page's origin refused, 401 or 403. A network that is
   *  down is not that: the client keeps trying, status `reconnecting` then `offline`. */
  async start() {
    if (!this.closed) return;
    this.closed = false;
    addEventListener("online", this.onOnline);
    addEventListener("offline", this.onOffline);
    const fatal = await this.load(this.generation);
    if (fatal) throw fatal;
  }

  close() {
    this.closed = true;
    removeEventListener("online", this.onOnline);
    removeEventListener("offline", this.onOffline);
    this.dropTransport();
    clearTimeout(this.timers.retry);
    clearTimeout(this.timers.moved);
    this.setStatus(Status.OFFLINE);
  }

  // GET /api/cart before the socket: it sets the cookie and names the cart (X-Cart-Id), and
  // the socket then only needs the patches after that version.
  async load(gen) {
    let answer;
    try {
      answer = await this.request("GET", "/api/cart");
    } catch (err) {
      if (gen !== this.generation || this.closed) return null;
      const fatal = await this.unfixable(err);
      if (fatal) {
        this.emit("error", fatal);
        this.close();
        return fatal;
      }
      if (err instanceof CartError) this.emit("error", err);
      this.retryLater(() => this.load(gen));
      return null;
    }
    if (gen !== this.generation || this.closed) return null;
    this.signed = answer.cartId || this.signed;
    this.setConfirmed(answer.data);
    this.connect();
    return null;
  }

  // A refusal no retry can mend, as a CartError; null for what may pass (a network down).
  // A browser reports a CORS refusal exactly like a network failure, so ask once more
  // without CORS: an answer, even an opaque one, means the server is there and refused.
  async unfixable(err) {
    if (err instanceof CartError) return [401, 403].includes(err.status) ? err : null;
    if (!this.crossOrigin) return null;
    try {
      await fetch(this.url("healthz"), { mode: "no-cors", cache: "no-store" });
    } catch {
      return null; // unreachable: offline, reconnecting
    }
    return new CartError({
      code: "origin_not_allowed",
      message: `${this.base.origin} does not allow requests from ${location.origin}:`
        + " add it to the cart server's ALLOWED_ORIGINS",
    });
  }

  connect() {
    if (this.closed) return;
    if (this.mode === "poll") this.poll(this.generation);
    else this.openSocket();
  }

  dropTransport() {
    const sock = this.ws;
    this.ws = null;
    clearInterval(this.timers.ping);
    if (sock) {
      sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
      try { sock.close(1000, "bye"); } catch { /* already closed */ }
    }
    if (this.pollAbort) this.pollAbort.abort();
    this.pollAbort = null;
    for (const p of this.pending) p.sent = false;
  }

  // Capped exponential backoff with jitter, so that the tabs of a restarted server do not
  // all come back in the same instant.
  retryLater(fn) {
    clearTimeout(this.timers.retry);
    const ceiling = Math.min(this.options.backoffCap, this.options.backoffBase * 2 ** this.failures);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.failures += 1;
    const offline = this.failures >= this.options.offlineAfter || navigator.onLine === false;
    this.setStatus(offline ? Status.OFFLINE : Status.RECONNECTING);
    this.timers.retry = setTimeout(() => { this.timers.retry = null; fn(); }, delay);
  }

  /** Skip the backoff wait (the browser says it is online again). */
  reconnectNow() {
    if (this.closed || !this.timers.retry) return;
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.failures = 0;
    if (this.confirmed) this.connect();
    else this.load(this.generation);
  }

  /** Drop the connection and make a new one (asks for what was missed). */
  reconnect() {
    this.dropTransport();
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.connect();
  }

  // --- WebSocket -------------------------------------------------------------------------

  socketUrl() {
    const url = this.url("api/cart/ws");
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("client_id", this.clientId);
    // The id is a bearer credential: never in a URL, which proxies and routers log.
    if (this.signed && this.options.legacyQuery) url.searchParams.set("cart", this.signed);
    // A finished cart's socket lands on its successor, whose versions mean something else:
    // ask for a snapshot then, never for patches.
    if (this.confirmed && !FINISHED.has(this.confirmed.status)) {
      url.searchParams.set("since", String(this.confirmed.version));
    }
    return url;
  }

  openSocket() {
    let sock;
    try {
      // The id travels as a subprotocol, the one header a browser lets a page set here.
      const protocols = ["cartsync"];
      if (this.signed && !this.options.legacyQuery) protocols.push(`cart-id.${this.signed}`);
      sock = new WebSocket(this.socketUrl(), protocols);
    } catch {
      this.fallBack();
      return;
    }
    this.ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      this.everOpened = true;
      this.lastHeard = Date.now();
      this.setStatus(Status.LIVE);
      this.flushSocket();
      clearInterval(this.timers.ping);
      this.timers.ping = setInterval(() => this.keepAlive(sock), this.options.pingInterval);
    };
    sock.onmessage = (ev) => {
      this.lastHeard = Date.now();
      this.failures = 0; // the server is talking to us: the next outage starts the backoff afresh
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this.onFrame(msg);
    };
    sock.onclose = (ev) => {
      if (this.ws !== sock) return;
      this.dropTransport();
      if (ev.code === 1008 && ev.reason === "origin not allowed") {
        const err = new CartError({ code: "origin_not_allowed", message: ev.reason });
        this.emit("error", err);
        this.close();
        return;
      }
      const neverOpened = !opened && !this.everOpened;
      if (neverOpened && this.options.transport === "auto"
          && this.failures + 1 >= this.options.fallbackAfter) {
        this.fallBack();
        return;
      }
      this.retryLater(() => this.connect());
    };
  }

  keepAlive(sock) {
    if (this.ws !== sock) return;
    if (Date.now() - this.lastHeard > 2 * this.options.pingInterval) {
      // Silent for too long: the connection died without saying so.
      this.dropTransport();
      this.retryLater(() => this.connect());
      return;
    }
    sock.send(JSON.stringify({ type: "ping" }));
  }

  // Sockets never opened, several times over: a proxy may be refusing upgrades. If plain
  // HTTP gets through, long-poll instead.
  async fallBack() {
    const gen = this.generation;
    try {
      const answer = await this.request("GET", "/api/cart");
      if (gen !== this.generation) return;
      this.signed = answer.cartId || this.signed;
      this.setConfirmed(answer.data);
    } catch {
      if (gen === this.generation) this.retryLater(() => this.connect());
      return;
    }
    this.mode = "poll";
    this.failures = 0;
    this.connect();
  }

  /** Send the edits this socket has not carried yet (after a reconnect: again, same ids). */
  flushSocket() {
    const sock = this.ws;
    if (!sock || sock.readyState !== WebSocket.OPEN) return;
    for (const p of this.pending) {
      if (p.sent) continue;
      const frame = { type: p.type, id: p.id };
      if (p.product_id !== undefined) frame.product_id = p.product_id;
      if (p.quantity !== undefined) frame.quantity = p.quantity;
      sock.send(JSON.stringify(frame));
      p.sent = true;
    }
  }

  onFrame(msg) {
    switch (msg.type) {
      case "snapshot":
        if (this.confirmed && msg.cart.id !== this.confirmed.id) {
          // The server put this socket on another cart (ours was finished); the upgrade
          // answer set the cookie for it, so let the cookie name it from now on.
          this.signed = null;
          this.pending = [];
          this.emit("moved", null);
        }
        this.setConfirmed(msg.cart);
        break;
      case "patch":
        if (!this.onPatch(msg)) this.reconnect(); // a gap: ask again with ?since=
        break;
      case "ack":
        this.settle(msg.id);
        break;
      case "error": {
        const err = new CartError(msg);
        err.op = this.settle(msg.id);
        this.emit("error", err);
        break;
      }
      case "presence":
        this.presence = msg.tabs;
        this.emit("presence", msg.tabs);
        break;
      case "moved":
        // No id after a sign-in merged this cart: our own credential (the cookie that
        // sign-in set, in this browser) names the cart to go on with.
        if (!msg.cart_id) this.followMerge();
        else if (msg.cart_id !== this.signed) this.switchCart(msg.cart_id, null);
        break;
      case "catalog":
        this.catalogNews(msg.products);
        break;
      default: // pong, and types a later server may add
    }
  }

  // Merged at a sign-in: the cart to go on with is the one our own credential names. With
  // `persist` that is what the tab that signed in stores, maybe a moment from now.
  async followMerge() {
    const old = this.signed;
    let next = null;
    const deadline = Date.now() + this.options.movedGrace;
    while (this.options.persist && Date.now() < deadline) {
      const stored = this.stored();
      if (stored && stored !== old) { next = stored; break; }
      await sleep(100);
    }
    if (!this.closed && this.signed === old) this.switchCart(next, null);
  }

  /** Apply a patch to the confirmed cart; false when versions skipped one (resync needed). */
  onPatch(patch) {
    const cart = this.confirmed;
    if (!cart || patch.version <= cart.version) return true; // seen, or before our snapshot
    if (patch.version !== cart.version + 1) return false;
    applyPatch(cart, patch);
    // One socket carries this tab's edits and the server applies them in the order sent, so
    // a patch of ours answers the oldest edit that socket carried.
    if (patch.origin === this.clientId) {
      const i = this.pending.findIndex((p) => p.sent);
      if (i >= 0) this.pending.splice(i, 1);
    }
    if (FINISHED.has(cart.status)) {
      if (this.mode === "poll") {
        // Long-polls hear no `moved`: ask by our own credential, for a snapshot, at once.
        this.signed = null;
        this.needSnapshot = true;
      }
      this.expectMoved(cart.id);
    }
    this.refresh();
    return true;
  }

  // A finished cart is followed by a `moved` frame; a tab that was away when it was sent
  // asks the server which cart comes next instead of waiting forever.
  expectMoved(cartId) {
    clearTimeout(this.timers.moved);
    this.timers.moved = setTimeout(() => {
      const cart = this.confirmed;
      if (!this.closed && cart && cart.id === cartId && FINISHED.has(cart.status)) {
        this.switchCart(null, null); // the old id opens only a fresh cart now
      }
    }, this.options.movedGrace);
  }

  /** The pending edit with this message id, removed (it was answered). */
  settle(id) {
    const i = this.pending.findIndex((p) => p.id === id);
    if (i < 0) return null;
    const [op] = this.pending.splice(i, 1);
    this.refresh();
    return op;
  }

  // --- long-poll + REST (WebSockets unavailable) -------------------------------------------

  async poll(gen) {
    this.setStatus(Status.POLLING);
    this.flushRest();
    while (gen === this.generation && !this.closed && this.mode === "poll") {
      const since = this.confirmed && !this.needSnapshot ? this.confirmed.version : null;
      const path = since === null
        ? "/api/cart/changes" // no ?since=: a snapshot
        : `/api/cart/changes?since=${since}&wait=${this.options.pollWait}`;
      this.pollAbort = new AbortController();
      let answer;
      try {
        answer = await this.request("GET", path, undefined, { signal: this.pollAbort.signal });
      } catch (err) {
        if (gen !== this.generation || this.closed || err.name === "AbortError") return;
        this.retryLater(() => this.poll(gen));
        return;
      }
      if (gen !== this.generation) return;
      this.failures = 0;
      this.setStatus(Status.POLLING);
      const { data, cartId } = answer;
      if (cartId && this.signed && cartId !== this.signed) {
        // Long-poll answers say nothing of a move: the cart id header is the only sign that
        // the server answered for another cart (ours was merged or finished).
        this.signed = cartId;
        this.pending = [];
        this.needSnapshot = !data.snapshot;
        if (data.snapshot) this.setConfirmed(data.snapshot);
        this.emit("moved", cartId);
        continue;
      }
      this.signed = cartId || this.signed;
      this.needSnapshot = false;
      if (data.snapshot && this.confirmed && data.snapshot.id !== this.confirmed.id) {
        this.pending = [];
        this.setConfirmed(data.snapshot);
        this.emit("moved", this.signed);
        continue;
      }
      if (data.snapshot) this.setConfirmed(data.snapshot);
      else if (this.confirmed && this.confirmed.version === since) {
        for (const patch of data.patches) {
          if (!this.onPatch(patch)) { this.needSnapshot = true; break; }
        }
      }
    }
  }

  // REST edits go one at a time, in order, each with an Idempotency-Key, so that a retry
  // after a lost answer is answered again rather than applied twice.
  async flushRest() {
    if (this.restBusy) return;
    this.restBusy = true;
    try {
      while (this.mode === "poll" && !this.closed && this.pending.length) {
        const p = this.pending[0];
        const gen = this.generation;
        let answer;
        try {
          answer = await this.request(...restCall(p), { key: `${this.clientId}-${p.id}` });
        } catch (err) {
          if (gen !== this.generation || this.pending[0] !== p) continue;
          if (err instanceof CartError && err.code !== "unavailable") {
            this.pending.shift();
            this.refresh();
            err.op = p;
            this.emit("error", err);
            continue;
          }
          this.setStatus(Status.RECONNECTING);
          await sleep(Math.min(this.options.backoffCap, this.options.backoffBase * 4));
          continue;
        }
        if (gen !== this.generation || this.pending[0] !== p) continue;
        this.pending.shift();
        const doc = answer.data;
        if (!this.confirmed || doc.id !== this.confirmed.id || doc.version > this.confirmed.version) {
          this.signed = answer.cartId || this.signed;
          this.setConfirmed(doc);
        } else {
          this.refresh();
        }
      }
    } finally {
      this.restBusy = false;
    }
  }

  /** fetch() against the cart server: {data, cartId (X-Cart-Id)}, or throws a CartError. */
  async request(method, path, body, { signal, key, ifMatch } = {}) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.signed) headers["x-cart-id"] = this.signed;
    if (key) headers["idempotency-key"] = key;
    if (ifMatch !== undefined) headers["if-match"] = `"${ifMatch}"`;
    const res = await fetch(this.url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // Cross-origin, the cookie goes along only when asked for (and the server allows it).
      credentials: this.crossOrigin ? "include" : "same-origin",
      cache: "no-store",
      signal,
    });
    let data = null;
    try { data = await res.json(); } catch { /* empty, or not JSON */ }
    if (!res.ok) {
      throw new CartError((data && data.error) || { code: `http_${res.status}` }, res.status);
    }
    return { data, cartId: res.headers.get("x-cart-id") };
  }

  // --- cart state --------------------------------------------------------------------------

  setConfirmed(doc) {
    this.confirmed = structuredClone(doc);
    if (FINISHED.has(doc.status)) this.expectMoved(doc.id);
    this.refresh();
  }

  /** Recompute what to show and tell the listeners. */
  refresh() {
    this.cart = this.confirmed ? withPending(this.confirmed, this.pending, this.catalog) : null;
    this.emit("change", this.cart);
  }

  /** Move to another cart (a `moved` frame, a sign-in): its cookie, its document, its socket.
   *  `signed` null: the cookie decides. */
  async switchCart(signed, doc) {
    this.generation += 1;
    const gen = this.generation;
    this.dropTransport();
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.pending = [];
    this.presence = null;
    this.needSnapshot = false;
    this.signed = signed;
    this.emit("moved", this.signed);
    if (doc) {
      this.setConfirmed(doc);
      this.connect();
      return;
    }
    // GET /api/cart with the new id also re-issues the cookie, so a reload lands there too.
    await this.load(gen);
  }

  // --- edits -------------------------------------------------------------------------------

  add(productId, quantity = 1) { return this.mutate({ type: "add", product_id: productId, quantity }); }
  set(productId, quantity) { return this.mutate({ type: "set", product_id: productId, quantity }); }
  remove(productId) { return this.mutate({ type: "remove", product_id: productId }); }
  clear() { return this.mutate({ type: "clear" }); }

  /** Show the edit at once, send it now or when the connection is back; its message id. */
  mutate(edit) {
    const op = { ...edit, id: `m${++this.seq}`, sent: false };
    this.pending.push(op);
    this.refresh();
    if (this.mode === "poll") this.flushRest();
    else this.flushSocket();
    return op.id;
  }

  // --- checkout and sign-in ----------------------------------------------------------------

  /** Lock the cart for payment: {checkout_url, session_id}; every tab sees `checking_out`.
   *  If-Match: the shopper pays for the cart they saw, or gets `version_conflict`. */
  async checkout() {
    const ifMatch = this.confirmed && !this.pending.length ? this.confirmed.version : undefined;
    return (await this.request("POST", "/api/cart/checkout", {}, { ifMatch })).data;
  }

  /** Back from the payment page: settle now if the provider says it is paid. */
  async confirmCheckout() {
    const { data, cartId } = await this.request("POST", "/api/cart/checkout/confirm", {});
    // This request settled the payment: it names the cart that comes next.
    if (cartId && cartId !== this.signed && data.id !== (this.confirmed && this.confirmed.id)) {
      await this.switchCart(cartId, data);
    }
    return data;
  }

  /** Give up a checkout in progress: the cart is editable again. */
  async cancelCheckout() {
    return (await this.request("POST", "/api/cart/checkout/cancel", {})).data;
  }

  /** Merge this cart into the signed-in user's and follow it there; the user's cart. */
  async login(token) {
    const { data, cartId } = await this.request("POST", "/api/cart/login", { token });
    await this.switchCart(cartId, data);
    return data;
  }
}

// --- pure helpers --------------------------------------------------------------------------

/** Apply one patch frame to a cart document, in place. */
export function applyPatch(cart, patch) {
  for (const op of patch.ops) {
    if (op.op === "upsert") {
      const i = cart.items.findIndex((it) => it.product_id === op.item.product_id);
      if (i >= 0) cart.items[i] = op.item;
      else cart.items.push(op.item);
    } else if (op.op === "remove") {
      cart.items = cart.items.filter((it) => it.product_id !== op.product_id);
    } else if (op.op === "status") {
      cart.status = op.status;
    }
  }
  cart.version = patch.version;
  cart.item_count = patch.item_count;
  cart.subtotal_cents = patch.subtotal_cents;
}

/** The cart as it will be if the pending edits are accepted; their lines say `pending`. */
export function withPending(confirmed, pending, catalog) {
  const cart = structuredClone(confirmed);
  for (const item of cart.items) { // the stock left, where the catalog knows it
    const known = catalog.get(item.product_id);
    if (known && known.stock !== undefined) item.stock = known.stock;
  }
  if (!pending.length || !MUTABLE.has(cart.status)) return cart;
  const setQty = (item, quantity) => {
    item.quantity = quantity;
    item.line_total_cents = quantity * item.unit_price_cents;
    item.pending = true;
  };
  for (const p of pending) {
    const i = cart.items.findIndex((it) => it.product_id === p.product_id);
    const item = cart.items[i];
    if (p.type === "clear") cart.items = [];
    else if (p.type === "remove" || (p.type === "set" && p.quantity === 0)) {
      if (i >= 0) cart.items.splice(i, 1);
    } else if (p.type === "set" && item) setQty(item, p.quantity);
    else if (p.type === "add" && item) setQty(item, item.quantity + p.quantity);
    else if (p.type === "add" && catalog.has(p.product_id)) {
      const product = catalog.get(p.product_id);
      const added = {
        product_id: product.id, sku: product.sku, name: product.name,
        image_url: product.image_url, unit_price_cents: product.price_cents,
        current_price_cents: product.price_cents, quantity: 0, line_total_cents: 0,
        available: product.active !== false, stock: product.stock,
      };
      setQty(added, p.quantity);
      cart.items.push(added);
    }
  }
  cart.item_count = cart.items.reduce((n, it) => n + it.quantity, 0);
  cart.subtotal_cents = cart.items.reduce((n, it) => n + it.line_total_cents, 0);
  return cart;
}

function restCall(p) {
  const line = `/api/cart/items/${encodeURIComponent(p.product_id)}`;
  switch (p.type) {
    case "add": return ["POST", "/api/cart/items", { product_id: p.product_id, quantity: p.quantity }];
    case "set": return ["PATCH", line, { quantity: p.quantity }];
    case "remove": return ["DELETE", line];
    default: return ["DELETE", "/api/cart/items"];
  }
}
