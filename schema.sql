-- Cart sync server schema, applied on every start (idempotent). Written in what SQLite and
-- PostgreSQL share: both stores apply this file as it is.
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
    updated_at  TEXT NOT NULL
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
    PRIMARY KEY (cart_id, key)
);
CREATE INDEX IF NOT EXISTS idx_applied_mutations_created ON applied_mutations(created_at);
