from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, require_chromium, shop_server
from tests.support import (
    ServerProcess,
    fresh_schema,
    pytest_sessionfinish,  # noqa: F401 - a hook, found here by name
)

if TYPE_CHECKING:
    from playwright.async_api import Browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module, on its own SQLite file with the test catalog."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Servers a test starts and stops itself (restarts, kills); all stopped at the end."""
    made: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None, catalog: bool = True) -> ServerProcess:
        proc = ServerProcess(tmp_path, env, catalog)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
def make_shop(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Started servers with the browser tests' shop catalog; all stopped at the end."""
    made: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None) -> ServerProcess:
        proc = shop_server(tmp_path / f"shop{len(made)}", env)
        made.append(proc)
        return proc.start()

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium (never a downloaded one); skipped without it, except in CI."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each store test runs on both stores: a fresh SQLite file, or a fresh PostgreSQL
    schema in the test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db"
        return
    async with fresh_schema() as url:
        yield url
