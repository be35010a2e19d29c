"""Test support: a real server process on 127.0.0.1 and a real WebSocket tab client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import websockets
from itsdangerous import Signer

SECRET = "test-secret-not-for-production"
READY_LINE = "Uvicorn running on"
# Tests drive carts at machine speed from one address: far past the limits meant for
# people. Tests of the limits themselves set their own.
UNLIMITED = {
    "MAX_CONNECTIONS_PER_IP": "100000",
    "CART_RATE_LIMIT": "1000000",
    "CART_RATE_BURST": "1000000",
    "CONNECTION_RATE_LIMIT": "1000000",
    "CONNECTION_RATE_BURST": "1000000",
    "MAX_CHECKOUTS_PER_IP": "100000",
    "NEW_CART_RATE": "1000000",
    "NEW_CART_BURST": "1000000",
}
START_TIMEOUT = 20.0
# The scale-out services: the machine (and CI) runs both on their standard ports.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    """CI=true (or 1, yes): everything must run there, nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(message: str, *, module: bool = False) -> NoReturn:
    """The one rule for what a test needs and does not find (a service, a browser, a
    package): skipped locally, a failure in CI, never a silent skip. `module`: called
    while a test module is imported."""
    if in_ci():
        pytest.fail(f"{message} (CI must provide it)", pytrace=False)
    pytest.skip(message, allow_module_level=module)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a run with any test skipped fails, whatever skipped it: unavailable() fails
    there already, and this catches the rest (an empty parametrization, a plugin's own
    skip), each of which would let a missing feature pass unseen. A hook: the suite's
    conftest takes it from here."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not in_ci() or not skipped:
        return
    for report in skipped:
        reporter.write_line(f"skipped in CI: {report.nodeid} {report.longrepr}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def service_missing(what: str, exc: BaseException) -> NoReturn:
    unavailable(f"{what} is not reachable: {type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """An empty schema in the test database; the URL selects it (search_path)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL", exc)
        raise
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")  # a generated name, not input
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def db_query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows read (or written) straight in a store's database, past the store: a SQLite
    file or a PostgreSQL schema. `?` placeholders, translated to `$n` for PostgreSQL."""
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            return conn.execute(sql, params).fetchall()
    import asyncpg

    first, *rest = sql.split("?")
    numbered = first + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))
    pg = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await pg.fetch(numbered, *params)]
    finally:
        await pg.close()


async def require_redis(url: str = REDIS_URL) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        service_missing("Redis", exc)
    finally:
        await client.aclose()


def test_catalog() -> list[dict[str, Any]]:
    """p-001..p-120 with deep stock (enough for 100+ lines), plus scarce ones."""
    products = [
        {
            "id": f"p-{n:03d}",
            "sku": f"SKU-{n:03d}",
            "name": f"Product {n}",
            "price_cents": 100 * n + 99,
            "stock": 100_000,
            "image_url": f"/static/img/{n}.svg",
        }
        for n in range(1, 121)
    ]
    products.append(
        {"id": "p-low", "sku": "SKU-LOW", "name": "Last few", "price_cents": 500, "stock": 3}
    )
    products.append(
        {"id": "p-none", "sku": "SKU-NONE", "name": "Sold out", "price_cents": 700, "stock": 0}
    )
    return products


def sign(cart_id: str, secret: str = SECRET) -> str:
    """The signed cart id the server would issue (same scheme as server.identity)."""
    return Signer(secret, salt="cart-id", digest_method=hashlib.sha256).sign(cart_id).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """`python -m server` in a child process on its own SQLite file."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        catalog: bool = True,
        open_files: int | None = None,  # RLIMIT_NOFILE (soft and hard) of the process
    ):
        self.workdir = workdir
        self.open_files = open_files
        self.db = workdir / "cart.db"
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.db}",
            "CART_SECRET": SECRET,
            "LOG_LEVEL": "info",
            "DEMO_CATALOG": "0" if catalog else "1",
            # The suite pays with the demo provider on both stores; off is its own test.
            "DEMO_PAYMENTS": "1",
            **UNLIMITED,
            **(env or {}),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        if catalog and not self.db.exists():
            path = workdir / "catalog.json"
            path.write_text(json.dumps(test_catalog()))
            self.cli("import", str(path))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/cart/ws"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> ServerProcess:
        ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(self.port)],
            env=self.env,
            cwd=self.workdir,
            stderr=subprocess.STDOUT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )

        def pump(stream: Iterable[str]) -> None:
            for line in stream:
                self.lines.append(line)
                if READY_LINE in line:
                    ready.set()
            ready.set()  # the process ended: wake the waiter, which then checks poll()

        self._pump = threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True)
        self._pump.start()
        if not ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        return self

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._pump.join(timeout)  # it ends at the pipe's end of file
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return "".join(self.lines)


class Tab:
    """A real WebSocket client; a background task files every frame into a queue."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.log: list[dict[str, Any]] = []  # every frame received, in order
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        server: ServerProcess,
        signed: str | None = None,
        *,
        since: int | None = None,
        client_id: str | None = None,
        origin: str | None = None,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Tab:
        query = []
        if signed is not None:
            query.append(f"cart={signed}")
        if since is not None:
            query.append(f"since={since}")
        if client_id is not None:
            query.append(f"client_id={client_id}")
        url = server.ws_url + ("?" + "&".join(query) if query else "")
        extra = {**(headers or {}), **({"Cookie": f"cart_id={cookie}"} if cookie else {})}
        ws = await websockets.connect(
            url,
            origin=origin,
            additional_headers=extra,
            max_size=2**22,
            proxy=None,
            compression=None,
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.log.append(frame)
                self.frames.put_nowait(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.frames.put_nowait({"type": "_closed", "code": self.ws.close_code})

    async def next(self, kind: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame (of `kind`, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if frame["type"] == "_closed" and kind != "_closed":
                    raise ConnectionError(f"socket closed with {frame['code']}")
                if kind is None or frame["type"] == kind:
                    return frame

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close the socket; its close code."""
        await self.next("_closed", timeout)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


def rest(server: ServerProcess, signed: str | None = None) -> httpx.AsyncClient:
    """A cookie-less REST client that names its cart with X-Cart-Id."""
    headers = {"X-Cart-Id": signed} if signed else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30, trust_env=False)


async def counter(server: ServerProcess, name: str) -> float:
    """A label-less counter of the server's /metrics."""
    async with rest(server) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        found, _, value = line.partition(" ")
        if found == name:
            return float(value)
    raise AssertionError(f"{name} is not in /metrics")


async def passes(servers: list[ServerProcess], name: str, more: int, timeout: float = 30) -> None:
    """Return once every server's counter `name` (a background loop's passes: sweeps,
    outbox polls) has gone up by `more`: at least `more - 1` whole passes ran after the
    call, whatever their period. Not a fixed wait, so not a guess at how long they take."""
    start = [await counter(server, name) for server in servers]
    deadline = time.monotonic() + timeout
    for server, first in zip(servers, start, strict=True):
        while await counter(server, name) < first + more:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not go up by {more} in {timeout} s")
            await asyncio.sleep(0.05)


def apply_patch(cart: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What a client does with a patch frame: the next cart document (items and totals)."""
    assert patch["version"] == cart["version"] + 1, (cart["version"], patch["version"])
    items = {item["product_id"]: item for item in cart["items"]}
    status = cart["status"]
    for op in patch["ops"]:
        if op["op"] == "upsert":
            items[op["item"]["product_id"]] = op["item"]
        elif op["op"] == "remove":
            items.pop(op["product_id"])
        else:
            status = op["status"]
    return {
        **cart,
        "version": patch["version"],
        "status": status,
        "items": list(items.values()),
        "item_count": patch["item_count"],
        "subtotal_cents": patch["subtotal_cents"],
    }


def same_items(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(doc: dict[str, Any]) -> list[tuple[str, int, int]]:
        return sorted((i["product_id"], i["quantity"], i["unit_price_cents"]) for i in doc["items"])

    return key(a) == key(b)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can cut and restore: the network between
    a server and its database going away, as seen from the server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)


class RedisServer:
    """A private redis-server on a free port that a test may kill and start again."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            service_missing("redis-server (the binary)", FileNotFoundError("not on PATH"))
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
