"""Closed to strangers: cross-site WebSocket hijacking, forged cart ids, SQL built only from
literals, and no secret or cart credential in the log of a whole session."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from itsdangerous import Signer

from server.auth import make_user_token
from tests.support import (
    SECRET,
    RedisServer,
    ServerProcess,
    Tab,
    fresh_schema,
    rest,
    sign,
)

SERVER_DIR = Path(__file__).resolve().parent.parent / "server"


@pytest.fixture
def victim(server: ServerProcess) -> Iterator[tuple[str, dict[str, Any]]]:
    """A cart with a line in it, checked to be untouched at the end."""
    import httpx

    with httpx.Client(base_url=server.url, trust_env=False) as client:
        signed = client.get("/api/cart").headers["x-cart-id"]
        headers = {"X-Cart-Id": signed}
        doc = client.post(
            "/api/cart/items", json={"product_id": "p-007", "quantity": 3}, headers=headers
        ).json()
        yield signed, doc
        assert client.get("/api/cart", headers=headers).json() == doc


# --- cross-site WebSocket hijacking ---------------------------------------------------


def foreign_origins(server: ServerProcess) -> dict[str, str]:
    host = f"127.0.0.1:{server.port}"
    return {
        "another site": "http://evil.example",
        "sandboxed frame or file": "null",
        "same host, other port": "http://127.0.0.1:1",
        "our host as a subdomain": f"http://{host}.evil.example",
        "our host as userinfo": f"http://{host}@evil.example",
        "our host in the path": f"http://evil.example/{host}",
        "another name for the host": f"http://localhost:{server.port}",
    }


async def test_a_foreign_page_cannot_open_the_socket_with_the_victims_cookie(
    server: ServerProcess, victim: tuple[str, dict[str, Any]]
) -> None:
    """A browser sends the cookie with a cross-site WebSocket, and always its Origin: the
    server must refuse by Origin before it sends a single frame about the cart."""
    signed, _ = victim
    for name, origin in foreign_origins(server).items():
        tab = await Tab.open(server, cookie=signed, origin=origin)
        assert await tab.closed() == 1008, name
        assert tab.close_reason == "origin not allowed", name
        assert tab.log == [], name  # no snapshot: nothing of the cart leaked
        assert "set-cookie" not in tab.ws.response.headers, name


async def test_the_shops_own_page_and_listed_origins_may(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ALLOWED_ORIGINS": "https://shop.example"}).start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    for origin in (server.url, "https://shop.example", "https://shop.example/"):
        tab = await Tab.open(server, cookie=signed, origin=origin)
        assert (await tab.next())["type"] == "snapshot", origin
        await tab.close()
    other = await Tab.open(server, cookie=signed, origin="https://shop.example.evil.example")
    assert await other.closed() == 1008


async def test_a_state_change_from_a_foreign_page_with_the_cookie_is_403(
    server: ServerProcess, victim: tuple[str, dict[str, Any]]
) -> None:
    signed, _ = victim
    async with rest(server) as client:
        for origin in foreign_origins(server).values():
            headers = {"Cookie": f"cart_id={signed}", "Origin": origin}
            response = await client.post(
                "/api/cart/items", json={"product_id": "p-008"}, headers=headers
            )
            assert response.status_code == 403, origin
            assert response.json()["error"]["code"] == "forbidden_origin"


# --- forged cart ids ------------------------------------------------------------------


def forgeries(victim_id: str) -> dict[str, str]:
    signed = sign(victim_id)
    value, signature = signed.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    default_salt = Signer(SECRET, digest_method=hashlib.sha256).sign(victim_id).decode()
    return {
        "bad signature": f"{value}.{flipped}",
        "another shop's secret": sign(victim_id, "another-shops-secret"),
        "guessed uuid, unsigned": victim_id,
        "our secret, another salt": default_salt,
        "signature of another cart": f"{victim_id}.{sign(str(uuid.uuid4())).rsplit('.', 1)[1]}",
        "truncated signature": signed[:-4],
        "huge": signed + "x" * 5000,
    }


async def test_a_forged_id_on_the_socket_gets_a_fresh_cart_never_the_victims(
    server: ServerProcess, victim: tuple[str, dict[str, Any]]
) -> None:
    _, doc = victim
    for name, forged in forgeries(doc["id"]).items():
        for carrier in ("query", "cookie"):
            if carrier == "query":
                tab = await Tab.open(server, forged.replace("x" * 5000, "x" * 500))
            else:
                tab = await Tab.open(server, cookie=forged)
            cart = (await tab.next("snapshot"))["cart"]
            assert cart["id"] != doc["id"] and cart["items"] == [], (name, carrier)
            issued = tab.ws.response.headers["set-cookie"]
            assert issued.startswith(f"cart_id={sign(cart['id'])};"), (name, carrier)
            # What the forger then does lands in the fresh cart.
            await tab.send({"type": "clear", "id": "wipe"})
            assert (await tab.next("ack"))["version"] == 1
            await tab.close()


async def test_a_forged_id_on_rest_changes_only_a_fresh_cart(
    server: ServerProcess, victim: tuple[str, dict[str, Any]]
) -> None:
    _, doc = victim
    async with rest(server) as client:
        for name, forged in forgeries(doc["id"]).items():
            for headers in ({"X-Cart-Id": forged}, {"Cookie": f"cart_id={forged}"}):
                response = await client.delete("/api/cart/items", headers=headers)
                assert response.status_code == 200, (name, response.text)
                assert response.json()["id"] != doc["id"], name
                assert response.headers["x-cart-id"] == sign(response.json()["id"]), name


# --- SQL only from literals -----------------------------------------------------------

SQL_CALLS = {
    "execute", "executemany", "executescript", "execute_fetchall",
    "fetch", "fetchrow", "fetchval", "copy_records_to_table",
}  # fmt: skip
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|DROP|ALTER|WHERE)\b")
# Each exception, and why it is safe.
ALLOWED = {
    # Validated against FULL / NORMAL / EXTRA in Settings.from_env; a PRAGMA takes no
    # parameters.
    'f"PRAGMA synchronous = {self._synchronous}"',
}
TRUSTED_FILES = {"SCHEMA_PATH"}  # schema.sql, shipped with the package: text we wrote
# The stores' plans (server/store/sql.py): a step, or a plan made of one, carries its
# statement to the driver; each is a sink whose first (Pair: first two) argument must be
# built from literals where it is called. Inside these functions that argument is theirs.
PLAN_CALLS = {"Run": 1, "Rows": 1, "Many": 1, "Lock": 1, "Pair": 2, "fetch": 1, "change": 1}
PLAN_CALLS |= {"checkouts": 1}  # effects.checkouts(where): the where clause
# A dialect renders the statement a step carries (checked where the step was made).
DIALECTS = {"SQLITE", "POSTGRES"}
STEP_TEXTS = {"sql", "first", "then"}
Function = ast.FunctionDef | ast.AsyncFunctionDef


class SqlScan:
    """Follows where the text of each query comes from, within one module: a string
    literal, literals joined, an f-string or a conditional of such, a name only ever bound
    to such (a module constant, a local), or a parameter every caller passes such to.
    Anything else (a value, an attribute, a call) is unsafe."""

    modules: dict[Path, SqlScan] = {}

    def __init__(self, source: str, path: Path | None = None) -> None:
        self.source = source
        self.path = path  # where `from .x import NAME` is looked up
        self.tree = ast.parse(source)
        self.parent = {
            child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)
        }
        self.busy: set[tuple[str, int]] = set()

    def scope(self, node: ast.AST) -> ast.AST:
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, Function):
                return node
        return self.tree

    def static(self, expr: ast.expr, scope: ast.AST) -> bool:
        if isinstance(expr, ast.Constant):
            return isinstance(expr.value, str)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.static(expr.left, scope) and self.static(expr.right, scope)
        if isinstance(expr, ast.JoinedStr):
            return all(
                self.static(part.value, scope)
                for part in expr.values
                if isinstance(part, ast.FormattedValue)
            )
        if isinstance(expr, ast.IfExp):
            return self.static(expr.body, scope) and self.static(expr.orelse, scope)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            receiver, method = expr.func.value, expr.func.attr
            if method == "read_text":
                return isinstance(receiver, ast.Name) and receiver.id in TRUSTED_FILES
            if method in ("replace", "join"):  # static text swapped in, or joined by it
                parts = [receiver, *expr.args]
                return all(self.static(part, scope) for part in parts)
            return False
        if isinstance(expr, ast.Tuple | ast.List):  # what a `for` takes its queries from
            return all(self.static(element, scope) for element in expr.elts)
        if isinstance(expr, ast.Name):
            return self.static_name(expr.id, scope)
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
            return expr.value.id in DIALECTS and self.static(expr.slice, scope)
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            if expr.value.id == "step" and expr.attr in STEP_TEXTS:
                return True  # a step's statement: checked where the step was made
            if expr.attr == "text":  # a rendered statement
                return self.static(expr.value, scope)
            found = self.imported(expr.value.id)  # a constant of another module of ours
            return found is not None and found[1] is None and found[0].static_global(expr.attr)
        return False

    def static_global(self, name: str) -> bool:
        return self.static_name(name, self.tree)

    def imported(self, name: str) -> tuple[SqlScan, str | None] | None:
        """The module of ours a module-level name is imported from, and its name there
        (None: the name is that module)."""
        for node in self.tree.body:
            if not isinstance(node, ast.ImportFrom) or not node.level or self.path is None:
                continue
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                package = self.path.parents[node.level - 1]
                base = package.joinpath(*node.module.split(".")) if node.module else package
                if (base / f"{alias.name}.py").exists():
                    return SqlScan.of(base / f"{alias.name}.py"), None
                if base.with_suffix(".py").exists():
                    return SqlScan.of(base.with_suffix(".py")), alias.name
                return SqlScan.of(base / "__init__.py"), alias.name
        return None

    @classmethod
    def of(cls, path: Path) -> SqlScan:
        if path not in cls.modules:
            cls.modules[path] = cls(path.read_text(), path)
        return cls.modules[path]

    def static_name(self, name: str, scope: ast.AST) -> bool:
        key = (name, id(scope))
        if key in self.busy:
            return True  # a cycle brings in no new source
        self.busy.add(key)
        try:
            if isinstance(scope, Function):
                args = scope.args
                if name in [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]:
                    return self.static_parameter(scope, name)
            bound = [value for target, value in self.bindings(scope) if target == name]
            if not bound and scope is self.tree and (found := self.imported(name)):
                module, original = found
                return original is not None and module.static_global(original)
            if not bound:
                return scope is not self.tree and self.static_name(name, self.tree)
            return all(self.static(value, scope) for value in bound)
        finally:
            self.busy.discard(key)

    def bindings(self, scope: ast.AST) -> list[tuple[str, ast.expr]]:
        """(name, value) for each assignment in `scope`; a `for` binds its iterable."""
        found = []
        for node in ast.walk(scope):
            if self.scope(node) is not scope:
                continue
            if isinstance(node, ast.Assign):
                found += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign | ast.For) and isinstance(node.target, ast.Name):
                value = node.iter if isinstance(node, ast.For) else node.value
                if value is not None:
                    found.append((node.target.id, value))
        return found

    def static_parameter(self, func: Function, name: str) -> bool:
        if func.name in PLAN_CALLS:
            return True  # checked where it is called (see unsafe)
        positional = [a.arg for a in func.args.posonlyargs + func.args.args]
        index = positional.index(name) if name in positional else None
        if index is not None and positional[0] in ("self", "cls"):
            index -= 1
        passed: list[tuple[ast.expr, ast.AST]] = []
        for call in ast.walk(self.tree):
            if not isinstance(call, ast.Call):
                continue
            args = call.args
            target = call.func
            if isinstance(target, ast.Name) and target.id == "partial" and args:
                target, args = args[0], args[1:]  # partial(f, a, b): a call of f
            callee = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if callee != func.name:
                continue
            if index is not None and index < len(args):
                passed.append((args[index], self.scope(call)))
            passed += [(k.value, self.scope(call)) for k in call.keywords if k.arg == name]
        return bool(passed) and all(self.static(arg, scope) for arg, scope in passed)

    def unsafe(self) -> list[str]:
        found = []
        for node in ast.walk(self.tree):
            suspect: ast.expr | None = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else ""  # methods only
                callee = name or getattr(func, "id", "")
                if name in SQL_CALLS and node.args:
                    suspect = node.args[0]
                elif callee in PLAN_CALLS and node.args:
                    texts = node.args[: PLAN_CALLS[callee]]
                    suspect = texts[0] if len(texts) == 1 else ast.Tuple(texts, ast.Load())
                elif (
                    name == "format"
                    and isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Constant)
                    and SQL_WORDS.search(str(func.value.value))
                ):
                    suspect = node  # never static
            elif isinstance(node, ast.JoinedStr):
                text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
                if SQL_WORDS.search(text):
                    suspect = node
            elif (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod)
                and isinstance(node.left, ast.Constant)
                and SQL_WORDS.search(str(node.left.value))
            ):
                suspect = node  # never static
            if suspect is not None and not self.static(suspect, self.scope(node)):
                found.append(ast.get_source_segment(self.source, suspect) or ast.unparse(suspect))
        return [segment for segment in found if segment not in ALLOWED]


def unsafe_sql(source: str, path: Path | None = None) -> list[str]:
    return SqlScan(source, path).unsafe()


def test_every_query_in_server_is_built_from_literals_with_parameters() -> None:
    files = sorted(SERVER_DIR.rglob("*.py"))
    assert any(path.name == "sqlite.py" for path in files)  # the scan sees the store
    problems = {
        str(path.relative_to(SERVER_DIR)): found
        for path in files
        if (found := unsafe_sql(path.read_text(), path))
    }
    assert problems == {}


@pytest.mark.parametrize(
    "snippet",
    [
        "db.execute(f\"SELECT * FROM carts WHERE id = '{cart_id}'\")",
        "db.execute(\"SELECT * FROM carts WHERE id = '%s'\" % cart_id)",
        'db.execute("SELECT * FROM carts WHERE id = {}".format(cart_id))',
        'db.execute("SELECT * FROM carts WHERE id = " + cart_id)',
        "def run(db, query):\n    db.execute(query)\nrun(db, request.query)",
        'await conn.fetch(f"DELETE FROM cart_items WHERE cart_id = {cid}")',
        'sql = f"UPDATE carts SET version = {v}"',
        # A helper is only as safe as its callers.
        "def q(db, where):\n    db.execute(f'SELECT 1 FROM t WHERE {where}')\n"
        "q(db, 'a = ?')\nq(db, user_input)",
        'COLS = "a, b"\nCOLS = name\ndb.execute(f"SELECT {COLS} FROM t")',
        "for q in queries_from_somewhere():\n    db.execute(q)",
        "db.execute(Path(user_path).read_text())",
        'db.execute(SCHEMA_PATH.read_text().replace("X", name))',
        # A plan's step carries its statement to a driver: it is a sink too.
        'yield Rows(f"SELECT 1 FROM t WHERE id = {cart_id}", {})',
        'yield Pair("DELETE FROM t", user_sql, {})',
        "rows = await self._query('read', fetch(request.query))",
        "conn.execute(SQLITE[user_sql].text, ())",
        "conn.execute(carts.NOT_IMPORTED, ())",
        'db.execute("; ".join(user_sql))',
    ],
)
def test_the_scan_catches_queries_built_from_values(snippet: str) -> None:
    assert unsafe_sql(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        'db.execute("SELECT 1 FROM carts WHERE id = ?" " AND v = ?", (a, b))',
        'COLS = ("a, b," " c")\ndb.execute(f"SELECT {COLS} FROM t WHERE id = ?", (i,))',
        "def q(db, where):\n    db.execute(f'SELECT 1 FROM t WHERE {where}', ())\n"
        "q(db, 'a = ?')\nq(db, 'b = ? ORDER BY c')",
        'w = "WHERE x IS NULL " if flag else ""\ndb.execute(f"SELECT 1 FROM t {w}LIMIT ?", (n,))',
        'QS = ("DELETE FROM a WHERE t < ?", "DELETE FROM b WHERE t < ?")\n'
        "for q in QS:\n    db.execute(q, (t,))",
        'db.execute(SCHEMA_PATH.read_text().replace(OLD, "BIGSERIAL"))\nOLD = "INTEGER"',
        'A = "SELECT :a"\nB = "DELETE FROM t"\nyield Rows(A, {})\nyield Pair(B, A, {})',
        "sql = SQLITE[step.sql]\nconn.execute(sql.text, sql.bind(step.params))",
        'STEPS = ("DELETE FROM a", "DELETE FROM b")\ndb.execute("BEGIN " + "; ".join(STEPS))',
    ],
)
def test_the_scan_passes_queries_from_literals(snippet: str) -> None:
    assert unsafe_sql(snippet) == []


# --- secrets stay out of the log ------------------------------------------------------


async def test_a_whole_session_logs_no_secret_and_no_credential(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    secrets = {
        "CART_SECRET": f"cart-secret-{tag}",
        "CART_AUTH_SECRET": f"auth-secret-{tag}",
        "STRIPE_WEBHOOK_SECRET": f"whsec_{tag}",
        "CART_EVENTS_SECRET": f"events-secret-{tag}",
        "ADMIN_TOKEN": f"admin-token-{tag}",
    }
    passwords = {"PostgreSQL": f"pg-password-{tag}", "Redis": f"redis-password-{tag}"}
    redis = RedisServer(tmp_path, password=passwords["Redis"]).start()
    async with fresh_schema() as database_url:
        try:
            await _whole_session(make_server, tag, secrets, passwords, database_url, redis.url)
        finally:
            redis.kill()


async def _whole_session(
    make_server: Callable[..., ServerProcess],
    tag: str,
    secrets: dict[str, str],
    passwords: dict[str, str],
    database_url: str,
    redis_url: str,
) -> None:
    # Trust authentication takes any password: the URL carries one, as production's do.
    database_url = database_url.replace("://postgres@", f"://postgres:{passwords['PostgreSQL']}@")
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_LEVEL": "trace"}
    server = make_server({**secrets, **env, "ACCESS_LOG": "1"}).start()
    token = make_user_token("shopper-1", secrets["CART_AUTH_SECRET"])
    credentials: set[str] = {token}
    async with rest(server) as client:
        first = await client.get("/api/cart")
        signed = first.headers["x-cart-id"]
        credentials.add(signed)
        headers = {"X-Cart-Id": signed}
        await client.post("/api/cart/items", json={"product_id": "p-001"}, headers=headers)
        await client.patch("/api/cart/items/p-001", json={"quantity": 4}, headers=headers)
        await client.post("/api/cart/items", content=b"{not json", headers=headers)
        await client.post("/api/cart/items", json={"product_id": "nope"}, headers=headers)
        await client.get("/api/cart/changes", params={"since": 0, "wait": 0}, headers=headers)
        cookie = await client.get("/api/cart", headers={"Cookie": f"cart_id={signed}"})
        forged = await client.get("/api/cart", headers={"Cookie": f"cart_id={signed[:-3]}abc"})
        credentials.add(forged.headers["x-cart-id"])
        assert cookie.status_code == 200
        login = await client.post("/api/cart/login", json={"token": token}, headers=headers)
        assert login.status_code == 200, login.text
        credentials.add(login.headers["x-cart-id"])
        refused = await client.post("/api/cart/login", json={"token": token[:-2] + "xx"})
        assert refused.status_code == 401
        webhook = await client.post(
            "/api/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
        )
        assert webhook.status_code == 400
        await client.get("/metrics")
        await client.get("/nowhere")
        admin = {"Authorization": f"Bearer {secrets['ADMIN_TOKEN']}"}
        changed = await client.patch(
            "/api/admin/products/p-003", json={"stock_delta": -1}, headers=admin
        )
        assert changed.status_code == 200, changed.text
        assert (await client.get("/api/admin/orders", headers=admin)).status_code == 200
        wrong = {"Authorization": f"Bearer {secrets['ADMIN_TOKEN'][:-1]}x"}
        assert (await client.get("/api/admin/orders", headers=wrong)).status_code == 401
    tab = await Tab.open(server, signed, client_id="logged")
    await tab.next("snapshot")
    await tab.send({"type": "add", "id": "w1", "product_id": "p-002", "quantity": 1})
    await tab.next("ack")
    await tab.send("not json")
    await tab.next("error")
    await tab.close()
    by_cookie = await Tab.open(server, cookie=signed)
    await by_cookie.next("snapshot")
    await by_cookie.close()
    foreign = await Tab.open(server, signed, origin="http://evil.example")
    await foreign.closed()
    # The id percent-encoded, under a percent-encoded name: read as ?cart= all the same.
    encoded = "".join(f"%{byte:02X}" for byte in signed.encode())
    async with websockets.connect(f"{server.ws_url}?%63art={encoded}", proxy=None) as sneaky:
        assert json.loads(await sneaky.recv())["type"] == "snapshot"
    # A demo checkout: its id pays or cancels it.
    async with rest(server) as client:
        add = await client.post("/api/cart/items", json={"product_id": "p-003"})
        client.headers["X-Cart-Id"] = add.headers["x-cart-id"]
        credentials.add(add.headers["x-cart-id"])
        started = (await client.post("/api/cart/checkout")).json()
        checkout_id = started["session_id"]
        assert (await client.get(started["checkout_url"])).status_code == 200
        assert (await client.post(f"{started['checkout_url']}/pay")).status_code == 303
    server.stop()

    log = server.log()
    assert "WebSocket /api/cart/ws" in log  # the log did record the sockets, and the requests
    assert "/api/cart/items" in log and "/api/cart/login" in log
    assert "ASGI [" in log and "< cookie: [redacted]" in log  # trace: scopes and headers too
    assert "/checkout/demo/[redacted]" in log and checkout_id not in log
    for name, secret in {**secrets, **passwords}.items():
        assert secret not in log, name
    for value in credentials:
        assert value not in log
        assert value.rsplit(".", 1)[1] not in log  # not even the signature alone


async def test_allowed_hosts_guard_the_mutation_routes_too(
    make_server: Callable[..., ServerProcess],
) -> None:
    # The item routes and the socket are dispatched past Starlette's router
    # (server/direct.py), but not past the host check in front of it.
    server = make_server({"ALLOWED_HOSTS": "shop.example"}).start()
    async with rest(server) as client:
        forged = {"host": "evil.example"}
        added = await client.post("/api/cart/items", json={"product_id": "p-001"}, headers=forged)
        assert added.status_code == 400
        removed = await client.delete("/api/cart/items/p-001", headers=forged)
        assert removed.status_code == 400
        ours = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"host": "shop.example"}
        )
        assert ours.status_code == 200 and ours.json()["item_count"] == 1
