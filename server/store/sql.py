"""One SQL for both stores: each statement is written once, and each driver runs it.

Statements use named parameters (`:name`) and, where SQLite and PostgreSQL spell a
thing differently, a `{slot}` that the driver's Dialect fills in. sqlite3 takes named
parameters as they are; asyncpg wants `$1..$n`, so the PostgreSQL dialect numbers them
(`numbered`). Statements that change several rows, or decide on what they find, are
written as plans: generators that yield steps and receive each step's result, so the
logic of a cart write is written once and run by the SQLite writer thread and by an
asyncpg connection alike (see `drive` in each store).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")
Params = Mapping[str, Any]

# A string literal, a quoted name, a `::` cast, a `:name` parameter, a `?`, a lone quote.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|:(\w+)|(\?)|(['\"])")


def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters as asyncpg's `$n`, and the names in that order. One name used
    twice is one parameter. Quoted text is left as it is; `?` and an unclosed quote are
    refused, so a statement never binds other values than it names."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        name, mark, quote = found.groups()
        if mark or quote:
            raise ValueError(f"statement has a stray {mark or quote!r}: {sql}")
        if name is None:  # quoted text or a cast
            return found.group(0)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _TOKEN.sub(number, sql), tuple(names)


class Dialect:
    """What one database calls the slots of the shared statements, and the rendered
    statements, cached: a statement is turned into its driver's text once."""

    def __init__(self, slots: dict[str, str], numbers: bool) -> None:
        self._slots = slots
        self._numbers = numbers
        self._rendered: dict[str, tuple[str, tuple[str, ...]]] = {}

    def render(self, sql: str) -> tuple[str, tuple[str, ...]]:
        """The statement for this driver, and (PostgreSQL) its parameters' names in order."""
        found = self._rendered.get(sql)
        if found is None:
            text = sql.format_map(self._slots)
            found = self._rendered[sql] = numbered(text) if self._numbers else (text, ())
        return found


SQLITE = Dialect(
    {
        # A list parameter is always `:ids`: JSON text for SQLite, an array for asyncpg.
        "in_ids": "IN (SELECT value FROM json_each(:ids))",
        "bytewise": "",  # SQLite compares text byte by byte already
        "for_update": "",  # one writer: whatever it reads stays as read
        "skip_locked": "",
        "seq": "rowid",  # insertion order
    },
    numbers=False,
)
POSTGRES = Dialect(
    {
        "in_ids": "= ANY(:ids)",
        "bytewise": ' COLLATE "C"',
        "for_update": " FOR UPDATE",
        "skip_locked": " FOR UPDATE SKIP LOCKED",
        # PostgreSQL has no rowid: a column of its own keeps insertion order.
        "seq": "seq",
    },
    numbers=True,
)


# --- steps: what a plan yields; the driver sends back the result ----------------------


class Run(NamedTuple):
    """Execute one statement: the number of rows it changed. An integrity error (a
    unique or check constraint) raises what `refused` makes of it instead, when given.
    A refusal ends the plan: PostgreSQL voids the transaction, so a plan never goes on."""

    sql: str
    params: Params
    refused: Callable[[Exception], Exception] | None = None


class Rows(NamedTuple):
    """A statement's rows (a query, or a change with RETURNING)."""

    sql: str
    params: Params


class Many(NamedTuple):
    """One statement for each set of parameters; nothing comes back."""

    sql: str
    params: list[Params]


class Pair(NamedTuple):
    """Two statements with one set of parameters: PostgreSQL sends them in one round
    trip (a data-modifying WITH); SQLite, which has none, runs one after the other."""

    first: str
    then: str
    params: Params


class Lock(NamedTuple):
    """A statement that only takes locks: PostgreSQL's concurrent transactions need it;
    SQLite skips it, as its single writer holds every lock already."""

    sql: str
    params: Params


Step = Run | Rows | Many | Pair | Lock
Plan = Generator[Step, Any, T]


def fetch(sql: str, **params: Any) -> Plan[list[Any]]:
    """The plan of one query."""
    rows: list[Any] = yield Rows(sql, params)
    return rows


def change(sql: str, **params: Any) -> Plan[int]:
    """The plan of one change: the number of rows changed."""
    count: int = yield Run(sql, params)
    return count
