"""Several server processes sharing PostgreSQL and Redis behave as one server: one order
per cart, every tab sees every version once, nothing acknowledged is lost when a process
is killed or Redis restarts, presence counts every process's tabs."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
import websockets

from tests.checkout_support import import_products
from tests.checkout_support import product as catalog_product
from tests.lifecycle_support import unsign
from tests.support import (
    POSTGRES_URL,
    REDIS_URL,
    RedisServer,
    ServerProcess,
    Tab,
    TcpProxy,
    apply_patch,
    db_query,
    fresh_schema,
    passes,
    require_redis,
    rest,
    same_items,
    sign,
)

# Quick repairs and presence expiry, so the tests wait seconds, not minutes.
BUS_ENV = {"BUS_CHECK": "0.5s", "PRESENCE_TTL": "3s"}

Item = tuple[str, str, int]  # message id / idempotency key, product, quantity
Start = Callable[..., Awaitable[list[ServerProcess]]]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def cluster(database: str, make_server: Callable[..., ServerProcess]) -> Start:
    """Starts N servers on one fresh schema (they stop before the schema is dropped)."""

    async def start(
        count: int = 3,
        redis_url: str | None = REDIS_URL,
        database_url: str = database,
        env: dict[str, str] | None = None,
        extra: Sequence[dict[str, Any]] = (),
    ) -> list[ServerProcess]:
        """`extra`: products imported besides the test catalog; `env`: more settings."""
        if redis_url == REDIS_URL:
            await require_redis()
        env = {"DATABASE_URL": database_url, **BUS_ENV, **(env or {})}
        if redis_url:
            env["REDIS_URL"] = redis_url
        # The first imports the test catalog (in a thread: the loop may be serving a proxy).
        servers = [await asyncio.to_thread(make_server, env)]
        if extra:
            await asyncio.to_thread(import_products, servers[0], list(extra), "extra")
        servers += [
            make_server(env={**env, "DEMO_CATALOG": "0"}, catalog=False) for _ in range(count - 1)
        ]
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        return servers

    return start


def make_plan(senders: int, each: int, seed: int) -> list[list[Item]]:
    rng = random.Random(seed)
    return [
        [
            (f"m{seed}-{s}-{n}", f"p-{rng.randrange(1, 21):03d}", rng.randrange(1, 4))
            for n in range(each)
        ]
        for s in range(senders)
    ]


def sums(plan: Sequence[Sequence[Item]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for items in plan:
        for _, product, quantity in items:
            total[product] += quantity
    return dict(total)


def quantities(doc: dict[str, Any]) -> dict[str, int]:
    return {item["product_id"]: item["quantity"] for item in doc["items"]}


def version_seen(tabs: Sequence[Tab]) -> int:
    version = -1
    for tab in tabs:
        for frame in tab.log:
            if frame["type"] == "snapshot":
                version = frame["cart"]["version"]
            elif frame["type"] == "patch":
                version = frame["version"]
    return version


def replay(tabs: Sequence[Tab]) -> tuple[dict[str, Any], list[int], int]:
    """What a client that held these connections, in turn, ends with: the cart, the patch
    versions applied, and how many snapshots it took. Asserts every patch is the next."""
    doc: dict[str, Any] | None = None
    versions: list[int] = []
    snapshots = 0
    for tab in tabs:
        for frame in tab.log:
            if frame["type"] == "snapshot":
                assert doc is None or frame["cart"]["version"] >= doc["version"]  # never back
                doc, snapshots = frame["cart"], snapshots + 1
            elif frame["type"] == "patch":
                assert doc is not None
                doc = apply_patch(doc, frame)  # asserts version == previous + 1
                versions.append(frame["version"])
    assert doc is not None
    return doc, versions, snapshots


async def reaches(tabs: Sequence[Tab], version: int, timeout: float) -> None:
    """Wait until the last of these connections has seen `version`."""
    async with asyncio.timeout(timeout):
        while version_seen(tabs) < version:
            await tabs[-1].next()


def presence_seen(tab: Tab) -> int | None:
    """The last tab count this connection was sent."""
    counts = [frame["tabs"] for frame in tab.log if frame["type"] == "presence"]
    return counts[-1] if counts else None


async def presence(tab: Tab, count: int, timeout: float = 10.0) -> None:
    """Wait until the tab's count is `count` (frames read meanwhile stay in its log)."""
    async with asyncio.timeout(timeout):
        while presence_seen(tab) != count:
            await tab.next()


class WsSender:
    """One tab sending its mutations without waiting for each answer; if its server dies
    it resumes on another with ?since= and sends again what was not acknowledged (the
    same message ids: anything already applied is acknowledged, not applied twice)."""

    def __init__(self, servers: list[ServerProcess], home: int, signed: str, name: str):
        self.servers = servers
        self.home = home
        self.signed = signed
        self.name = name
        self.tabs: list[Tab] = []
        self.acked: dict[str, int] = {}
        self.reconnects = 0

    async def open(self) -> Tab:
        server = self.servers[self.home]
        since = version_seen(self.tabs) if self.tabs else None
        tab = await Tab.open(server, self.signed, since=since, client_id=self.name)
        self.tabs.append(tab)
        return tab

    async def run(self, items: Sequence[Item], dead: set[int]) -> None:
        tab = self.tabs[-1]
        while todo := [item for item in items if item[0] not in self.acked]:
            try:
                for msg_id, product, quantity in todo:
                    await tab.send(
                        {"type": "add", "id": msg_id, "product_id": product, "quantity": quantity}
                    )
                while any(msg_id not in self.acked for msg_id, _, _ in todo):
                    frame = await tab.next(timeout=30)
                    if frame["type"] == "ack":
                        self.acked[frame["id"]] = frame["version"]
                    assert frame["type"] != "error", frame
            except (ConnectionError, websockets.ConnectionClosed):
                assert self.home in dead, f"{self.name} lost a live server"
                self.home = next(n for n in range(len(self.servers)) if n not in dead)
                self.reconnects += 1
                tab = await self.open()


class RestSender:
    """One REST client posting its mutations one by one, each with an Idempotency-Key;
    on a connection error it posts the same again to another server."""

    def __init__(self, servers: list[ServerProcess], home: int, signed: str):
        self.servers = servers
        self.home = home
        self.signed = signed
        self.acked: dict[str, int] = {}

    async def run(self, items: Sequence[Item], dead: set[int]) -> None:
        clients: dict[int, httpx.AsyncClient] = {}
        try:
            for msg_id, product, quantity in items:
                for _ in range(5):
                    if self.home not in clients:
                        clients[self.home] = rest(self.servers[self.home], self.signed)
                    try:
                        response = await clients[self.home].post(
                            "/api/cart/items",
                            json={"product_id": product, "quantity": quantity},
                            headers={"Idempotency-Key": msg_id},
                        )
                    except httpx.TransportError:
                        assert self.home in dead, "a REST call failed on a live server"
                        self.home = next(n for n in range(len(self.servers)) if n not in dead)
                        continue
                    assert response.status_code == 200, response.text
                    self.acked[msg_id] = int(response.headers["etag"].strip('"'))
                    break
                else:
                    raise AssertionError(f"{msg_id} was never acknowledged")
        finally:
            for client in clients.values():
                await client.aclose()


async def open_cart(server: ServerProcess) -> str:
    async with rest(server) as client:
        response = await client.get("/api/cart")
    signed: str = response.headers["x-cart-id"]
    return signed


async def cart_doc(server: ServerProcess, signed: str) -> dict[str, Any]:
    async with rest(server, signed) as client:
        response = await client.get("/api/cart")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def all_acked(senders: Sequence[WsSender | RestSender]) -> dict[str, int]:
    acked: dict[str, int] = {}
    for sender in senders:
        acked.update(sender.acked)
    return acked


async def test_three_processes_keep_one_order_for_one_cart(cluster: Start) -> None:
    servers = await cluster()
    signed = await open_cart(servers[0])
    ws = [WsSender(servers, n % 3, signed, f"tab{n}") for n in range(9)]  # 3 on each
    for sender in ws:
        await sender.open()
    for sender in ws:  # presence counts the tabs of all three processes
        await presence(sender.tabs[-1], 9)
    http = [RestSender(servers, n, signed) for n in range(3)]
    plan = make_plan(12, 50, seed=6)  # 9 tabs and 3 REST clients x 50 = 600, interleaved

    await asyncio.gather(
        *(sender.run(items, set()) for sender, items in zip([*ws, *http], plan, strict=True))
    )

    acked = all_acked([*ws, *http])
    assert sorted(acked.values()) == list(range(1, 601))  # each version acknowledged once
    for sender in ws:
        await reaches(sender.tabs, 600, timeout=20)
    final = await cart_doc(servers[0], signed)
    assert final["version"] == 600
    assert quantities(final) == sums(plan)  # exact sums: nothing lost, nothing doubled
    for server in servers[1:]:
        assert await cart_doc(server, signed) == final
    for sender in ws:
        doc, versions, snapshots = replay(sender.tabs)
        assert versions == list(range(1, 601)), sender.name  # every version once, in order
        assert snapshots == 1  # only the first: no tab ever had to reload
        assert same_items(doc, final)
        assert doc["subtotal_cents"] == final["subtotal_cents"]


async def test_kill_9_of_one_process_loses_nothing_acknowledged(cluster: Start) -> None:
    servers = await cluster()
    signed = await open_cart(servers[0])
    ws = [WsSender(servers, n % 3, signed, f"tab{n}") for n in range(9)]
    for sender in ws:
        await sender.open()
    http = [RestSender(servers, n, signed) for n in range(3)]
    senders: list[WsSender | RestSender] = [*ws, *http]
    plan = make_plan(len(senders), 40, seed=9)
    total = sum(len(items) for items in plan)
    dead: set[int] = set()

    async def killer() -> None:
        async with asyncio.timeout(60):
            while len(all_acked(senders)) < total // 3:
                await asyncio.sleep(0.01)
        dead.add(2)
        await asyncio.to_thread(servers[2].kill)  # SIGKILL: no goodbye to anyone

    await asyncio.gather(
        killer(), *(s.run(items, dead) for s, items in zip(senders, plan, strict=True))
    )

    acked = all_acked(senders)
    assert len(acked) == total
    assert sorted(acked.values()) == list(range(1, total + 1))
    moved = [sender for sender in ws if sender.reconnects]
    assert len(moved) == 3  # the killed process's tabs, and only those
    for sender in ws:
        await reaches(sender.tabs, total, timeout=20)
    final = await cart_doc(servers[0], signed)
    assert final["version"] == total
    assert quantities(final) == sums(plan)
    assert await cart_doc(servers[1], signed) == final
    for sender in ws:
        doc, versions, snapshots = replay(sender.tabs)
        # A moved tab resumed with ?since=: patches only, no version missed or repeated.
        assert versions == list(range(1, total + 1)), sender.name
        assert snapshots == 1
        assert same_items(doc, final)
    # The dead process's tabs are forgotten; its tabs count where they are now.
    for sender in ws:
        await presence(sender.tabs[-1], 9, timeout=15)


async def test_redis_restart_loses_nothing_and_tabs_converge(
    cluster: Start, tmp_path_factory: pytest.TempPathFactory
) -> None:
    await require_redis()
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        servers = await cluster(redis_url=redis.url)
        signed = await open_cart(servers[0])
        ws = [WsSender(servers, n % 3, signed, f"tab{n}") for n in range(6)]
        for sender in ws:
            await sender.open()
        http = [RestSender(servers, n, signed) for n in range(3)]
        senders: list[WsSender | RestSender] = [*ws, *http]
        phases = [make_plan(len(senders), 20, seed=seed) for seed in (1, 2, 3)]

        async def phase(plan: list[list[Item]]) -> None:
            await asyncio.gather(
                *(s.run(items, set()) for s, items in zip(senders, plan, strict=True))
            )

        async def ready(server: ServerProcess) -> int:
            async with rest(server) as client:
                return (await client.get("/readyz")).status_code

        await phase(phases[0])
        redis.kill()
        async with asyncio.timeout(10):
            while await ready(servers[0]) != 503:  # not ready while Redis is away
                await asyncio.sleep(0.02)
        await phase(phases[1])  # committed and acknowledged while Redis is away
        redis.start()
        await phase(phases[2])
        async with asyncio.timeout(15):
            while await ready(servers[0]) != 200:
                await asyncio.sleep(0.02)

        plan = [item for p in phases for item in p]
        total = sum(len(items) for items in plan)
        acked = all_acked(senders)
        assert sorted(acked.values()) == list(range(1, total + 1))
        for sender in ws:  # within a few seconds of the load's end, every tab has it all
            await reaches(sender.tabs, total, timeout=5)
        final = await cart_doc(servers[0], signed)
        assert final["version"] == total
        assert quantities(final) == sums(plan)
        for sender in ws:
            doc, _, _ = replay(sender.tabs)  # a tab far behind may have had a snapshot
            assert same_items(doc, final) and doc["version"] == total
    finally:
        redis.kill()


async def test_presence_spans_processes_and_forgets_a_dead_one(cluster: Start) -> None:
    servers = await cluster()
    signed = await open_cart(servers[0])
    a = await Tab.open(servers[0], signed)
    b1, b2 = await Tab.open(servers[1], signed), await Tab.open(servers[1], signed)
    c = await Tab.open(servers[2], signed)
    for tab in (a, b1, b2, c):
        await presence(tab, 4)
    await b2.close()
    for tab in (a, b1, c):
        await presence(tab, 3)
    await asyncio.to_thread(servers[2].kill)
    for tab in (a, b1):  # within PRESENCE_TTL (3 s here) of its last word
        await presence(tab, 2, timeout=10)
    await a.close()
    await b1.close()


async def test_checkouts_on_three_processes_never_oversell(cluster: Start, database: str) -> None:
    stock, carts = 20, 60
    servers = await cluster(extra=[catalog_product("twenty", stock)])
    signed = [sign(str(uuid.uuid4())) for _ in range(carts)]
    clients = [rest(server) for server in servers]
    try:

        async def fill(n: int) -> None:
            response = await clients[n % 3].post(
                "/api/cart/items",
                json={"product_id": "twenty", "quantity": 1},
                headers={"X-Cart-Id": signed[n]},
            )
            assert response.status_code == 200, response.text

        await asyncio.gather(*(fill(n) for n in range(carts)))
        gate = asyncio.Event()

        async def check_out(n: int) -> httpx.Response:
            await gate.wait()
            # On another process than the one that filled it: its room there is new.
            return await clients[(n + 1) % 3].post(
                "/api/cart/checkout", headers={"X-Cart-Id": signed[n]}
            )

        tasks = [asyncio.create_task(check_out(n)) for n in range(carts)]
        await asyncio.sleep(0)  # every task is parked at the gate
        gate.set()
        async with asyncio.timeout(60):
            answers = await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()

    won = [n for n, answer in enumerate(answers) if answer.status_code == 200]
    assert len(won) == stock, [a.text for a in answers if a.status_code != 409]
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["lines"] == [
                {"product_id": "twenty", "requested": 1, "available": 0}
            ]
    assert await db_query(database, "SELECT stock FROM products WHERE id = 'twenty'") == [(0,)]
    reserved = await db_query(database, "SELECT cart_id FROM checkouts WHERE status = 'reserved'")
    assert sorted(cart_id for (cart_id,) in reserved) == sorted(unsign(signed[n]) for n in won)
    statuses = await db_query(
        database, "SELECT status, count(*) FROM cart_sessions GROUP BY status ORDER BY status"
    )
    assert statuses == [("active", carts - stock), ("checking_out", stock)]


async def test_a_cart_open_on_three_processes_is_abandoned_once(
    cluster: Start, database: str
) -> None:
    servers = await cluster(env={"ABANDON_AFTER": "1s"})
    signed = await open_cart(servers[0])
    cart_id = unsign(signed)
    tabs = [await Tab.open(server, signed) for server in servers]
    for tab in tabs:
        await presence(tab, 3)
    await tabs[1].send({"type": "add", "id": "a1", "product_id": "p-001", "quantity": 2})
    for tab in tabs:  # the edit arms the timer of every process holding the cart
        assert (await tab.next("patch"))["version"] == 1
    for tab in tabs:
        patch = await tab.next("patch", timeout=10)
        assert (patch["version"], patch["ops"]) == (2, [{"op": "status", "status": "abandoned"}])
    # More idle sweeps of every process (four whole ones each): still one.
    await passes(servers, "cart_sweeps_total", 5)
    for tab in tabs:
        patches = [frame for frame in tab.log if frame["type"] == "patch"]
        assert [frame["version"] for frame in patches] == [1, 2]
    rows = await db_query(database, "SELECT type FROM cart_events WHERE cart_id = ?", cart_id)
    assert rows == [("abandoned",)]
    doc = await cart_doc(servers[2], signed)
    assert (doc["status"], doc["version"]) == ("abandoned", 2)
    for tab in tabs:
        await tab.close()


async def test_database_out_of_reach_refuses_changes_and_recovers(
    cluster: Start, database: str
) -> None:
    host_port = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    try:
        # One process whose database is reached through a connection the test can cut.
        proxied = database.replace(host_port, f"127.0.0.1:{proxy.port}")
        [server] = await cluster(count=1, redis_url=None, database_url=proxied)
        signed = await open_cart(server)
        tab = await Tab.open(server, signed, client_id="t")
        await tab.next("snapshot")
        async with rest(server, signed) as client:
            ok = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 1})
            assert ok.status_code == 200

            await proxy.cut()
            assert (await client.get("/readyz")).status_code == 503
            refused = await client.post(
                "/api/cart/items", json={"product_id": "p-002", "quantity": 1}
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "unavailable"
            async with rest(server) as stranger:  # a cart not in memory: it cannot be read
                unread = await stranger.get("/api/cart")
                assert unread.status_code == 503, unread.text
                assert unread.json()["error"]["code"] == "unavailable"
            await tab.send({"type": "add", "id": "w1", "product_id": "p-003", "quantity": 1})
            error = await tab.next()
            while error["type"] in ("patch", "presence"):
                error = await tab.next()
            assert error["type"] == "error" and error["code"] == "unavailable", error
            assert error["id"] == "w1"

            await proxy.restore()
            async with asyncio.timeout(15):
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.02)
            again = await client.post(
                "/api/cart/items", json={"product_id": "p-004", "quantity": 1}
            )
            assert again.status_code == 200
            doc = again.json()
        # Only what was acknowledged is in the cart, at contiguous versions.
        assert quantities(doc) == {"p-001": 1, "p-004": 1}
        assert doc["version"] == 2
        # The tab's patch leaves in the loop turn the answer leaves in, just after it: a
        # tab closed the moment the answer is read can be closing before it is written.
        assert (await tab.next("patch"))["version"] == 2
        await tab.close()
        versions = [f["version"] for f in tab.log if f["type"] == "patch"]
        assert versions == [1, 2]
        assert not any(f["type"] == "ack" for f in tab.log)
        # In a thread: the proxy in this loop carries the server's goodbye to the database.
        await asyncio.to_thread(server.stop)
    finally:
        await proxy.cut()


async def test_cli_migrates_postgres_without_printing_the_password(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import asyncpg

    url = database.replace("postgres@", "postgres:hunter2@")  # trust auth: any password
    server = ServerProcess(tmp_path_factory.mktemp("cli"), {"DATABASE_URL": url}, catalog=False)
    for _ in range(2):  # idempotent
        result = await asyncio.to_thread(server.cli, "migrate")
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
        assert "hunter2" not in result.stdout + result.stderr
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await conn.close()
    tables = {row[0] for row in rows}
    assert {"products", "cart_sessions", "cart_items", "cart_patches"} <= tables
    assert "applied_mutations" in tables
    bad = ServerProcess(tmp_path_factory.mktemp("bad"), {"REDIS_URL": "amqp://mq"}, catalog=False)
    result = await asyncio.to_thread(bad.cli)  # serve: refused before it starts
    assert result.returncode == 2
    assert (
        result.stderr == "error: REDIS_URL must be a redis:// or rediss:// URL; got 'amqp://mq'\n"
    )
