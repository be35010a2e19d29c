from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, fresh_schema


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


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each store test runs on both stores: a fresh SQLite file, or a fresh PostgreSQL
    schema in the test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db"
        return
    async with fresh_schema() as url:
        yield url
