from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess


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
