"""Which of the schema's tables a database holds: what `migrate` reports it created."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

from ..config import SCHEMA_PATH, sqlite_path

SCHEMA_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA_PATH.read_text()))
_SQLITE = "SELECT name FROM sqlite_master WHERE type = 'table'"
_POSTGRES = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"


async def present(url: str) -> set[str]:
    """The schema's tables found in the database at `url` (none if it does not exist yet)."""
    if url.startswith("sqlite:"):
        path = Path(sqlite_path(url))
        if not path.exists():
            return set()
        # Read-only: looking must not create the file, nor change a thing in it.
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            names = {name for (name,) in conn.execute(_SQLITE)}
    else:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=10)
        try:
            names = {row[0] for row in await conn.fetch(_POSTGRES)}
        finally:
            await conn.close()
    return names & set(SCHEMA_TABLES)
