-- Cart sync server schema, applied on every start (idempotent). Written in what SQLite and
-- PostgreSQL share: both stores apply this file as it is, except that the PostgreSQL store
-- reads cart_events' "INTEGER PRIMARY KEY AUTOINCREMENT" as "BIGSERIAL PRIMARY KEY" and
-- adds a column standing in for SQLite's rowid (see server/store/postgres.py and sql.py).
--
-- Timestamps are UTC ISO-8601 text with milliseconds ("2026-11-26T10:00:00.000Z"):
-- they sort as strings, read well in a shell, and mean the same in PostgreSQL.
-- Money is integer cents everywhere.

CREATE TABLE IF NOT EXISTS products (
    id          TEXT PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock       INTEGER NOT NULL DEFAULT 0 CHECK (stock >= 0),
    image_url   TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    -- 0: archived. Out of the listing and not addable; lines holding it stay. (Databases
    -- made before this column get it from the stores' ADDED_COLUMNS at startup.)
    active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1))
);
-- The server refreshes its in-memory catalog from rows changed since its last look.
CREATE INDEX IF NOT EXISTS idx_products_updated ON products(updated_at);

CREATE TABLE IF NOT EXISTS cart_sessions (
    id           TEXT PRIMARY KEY,           -- UUID4, carried signed in the cart_id cookie
    user_id      TEXT,                       -- NULL for anonymous carts
    status       TEXT NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'checking_out', 'checked_out',
                                   'abandoned', 'merged', 'expired')),
    version      INTEGER NOT NULL DEFAULT 0, -- +1 per accepted mutation; the ETag
    abandon_at   TEXT,                       -- when an idle non-empty cart becomes abandoned
    expires_at   TEXT NOT NULL,              -- last activity + CART_TTL
    merged_into  TEXT,                       -- set when status = 'merged'
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_cart_sessions_user ON cart_sessions(user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_cart_sessions_abandon ON cart_sessions(abandon_at) WHERE abandon_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_cart_sessions_expires ON cart_sessions(expires_at);

CREATE TABLE IF NOT EXISTS cart_items (
    cart_id     TEXT NOT NULL REFERENCES cart_sessions(id) ON DELETE CASCADE,
    product_id  TEXT NOT NULL REFERENCES products(id),
    quantity    INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 999),
    price_cents INTEGER NOT NULL,            -- price snapshot taken when the line was first added
    position    INTEGER NOT NULL,            -- cart version that added the line: keeps display order
    added_at    TEXT NOT NULL,
    UNIQUE (cart_id, product_id)             -- one row per product per cart
);

-- The last patches of each cart (PATCH_HISTORY, default 100), written in the same
-- transaction as the mutation, so a tab resumes with ?since=V even across restarts.
CREATE TABLE IF NOT EXISTS cart_patches (
    cart_id  TEXT NOT NULL REFERENCES cart_sessions(id) ON DELETE CASCADE,
    version  INTEGER NOT NULL,
    body     TEXT NOT NULL,                  -- the patch frame exactly as sent to tabs
    PRIMARY KEY (cart_id, version)
);

-- Mutation ids already applied (REST Idempotency-Key, WebSocket message id), written
-- in the same transaction as their effect. REST keys keep the first answer.
CREATE TABLE IF NOT EXISTS applied_mutations (
    cart_id    TEXT NOT NULL REFERENCES cart_sessions(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    response   TEXT,                         -- REST only: the cart document first returned
    created_at TEXT NOT NULL,
    request    TEXT,                         -- REST only: what was asked (a digest): a key
                                             -- reused for another request is refused
    PRIMARY KEY (cart_id, key)
);
CREATE INDEX IF NOT EXISTS idx_applied_mutations_created ON applied_mutations(created_at);

-- A checkout holds the stock of its lines from the moment the cart is locked until it is
-- paid (an order is written) or released (cancel, expiry): stock is taken by a
-- conditional decrement, so it never goes below zero and is never sold twice.
CREATE TABLE IF NOT EXISTS checkouts (
    id           TEXT PRIMARY KEY,           -- UUID4; the demo provider's session id too
    cart_id      TEXT NOT NULL,
    cart_version INTEGER NOT NULL,           -- the version that moved the cart to checking_out
    provider     TEXT NOT NULL,              -- 'stripe' | 'demo'
    status       TEXT NOT NULL CHECK (status IN ('reserved', 'paid', 'released')),
    amount_cents INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    session_id   TEXT UNIQUE,                -- the provider's session, once created
    url          TEXT,                       -- where the shopper pays
    expires_at   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- At most one reservation per cart at a time.
CREATE UNIQUE INDEX IF NOT EXISTS idx_checkouts_open ON checkouts(cart_id) WHERE status = 'reserved';
CREATE INDEX IF NOT EXISTS idx_checkouts_expires ON checkouts(expires_at) WHERE status = 'reserved';
-- Which client address started a checkout: one address may hold only so many
-- reservations at once (MAX_CHECKOUTS_PER_IP).
CREATE TABLE IF NOT EXISTS checkout_holders (
    checkout_id TEXT PRIMARY KEY REFERENCES checkouts(id) ON DELETE CASCADE,
    address     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_checkout_holders_address ON checkout_holders(address);

CREATE TABLE IF NOT EXISTS checkout_items (
    checkout_id      TEXT NOT NULL REFERENCES checkouts(id) ON DELETE CASCADE,
    product_id       TEXT NOT NULL REFERENCES products(id),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL,       -- the price charged
    PRIMARY KEY (checkout_id, product_id)
);

CREATE TABLE IF NOT EXISTS orders (
    id                 TEXT PRIMARY KEY,     -- UUID4
    checkout_id        TEXT NOT NULL UNIQUE REFERENCES checkouts(id),  -- one order per checkout
    cart_id            TEXT NOT NULL,
    user_id            TEXT,
    session_id         TEXT,
    payment_intent     TEXT,
    amount_total_cents INTEGER NOT NULL,     -- what the provider says was paid
    currency           TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('paid', 'needs_review')),
    created_at         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_orders_cart ON orders(cart_id);
-- The admin API lists orders newest first, paged by (created_at, id).
CREATE INDEX IF NOT EXISTS idx_orders_created ON orders(created_at, id);

CREATE TABLE IF NOT EXISTS order_items (
    order_id         TEXT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id       TEXT NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    line_total_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- Payment provider events already handled, written in the same transaction as their
-- effect: a redelivered webhook changes nothing.
CREATE TABLE IF NOT EXISTS payment_events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    received_at TEXT NOT NULL
);

-- Outbox of cart lifecycle events (abandoned, expired) and order events (order_paid,
-- order_needs_review: cart_id is the order's cart), written in the same transaction as
-- the status change or the order; delivered to CART_EVENTS_WEBHOOK_URL when set, else listed by
-- `python -m server events`.
CREATE TABLE IF NOT EXISTS cart_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- BIGSERIAL PRIMARY KEY in PostgreSQL
    cart_id         TEXT NOT NULL,
    type            TEXT NOT NULL,
    payload         TEXT NOT NULL,           -- JSON, the body POSTed to the webhook
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL            -- also a lease: a sender claims a row by moving it
);
CREATE INDEX IF NOT EXISTS idx_cart_events_pending ON cart_events(next_attempt_at) WHERE delivered_at IS NULL;

-- One open cart per user: two devices logging in at once end up in the same cart.
CREATE UNIQUE INDEX IF NOT EXISTS idx_cart_sessions_user_open ON cart_sessions(user_id)
    WHERE user_id IS NOT NULL AND status IN ('active', 'checking_out', 'abandoned');

-- The purge finds finished carts past their time without scanning every cart.
CREATE INDEX IF NOT EXISTS idx_cart_sessions_finished ON cart_sessions(updated_at)
    WHERE status IN ('expired', 'merged', 'checked_out');

-- The background purge finds old records by these, oldest first (see EVENTS_TTL).
CREATE INDEX IF NOT EXISTS idx_payment_events_received ON payment_events(received_at);
CREATE INDEX IF NOT EXISTS idx_checkouts_released ON checkouts(updated_at) WHERE status = 'released';
