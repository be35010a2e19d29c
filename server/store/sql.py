"""One SQL for both stores: each statement is written once, and each driver runs it.

Statements use named parameters (`:name`) and, where SQLite and PostgreSQL spell a
thing differently, a `{slot}` that the driver's Dialect fills in. Each dialect numbers
the parameters (`numbered`: asyncpg's `$1..$n`, SQLite's `?1..?n`) and the driver binds
the values in that order. Work of several statements, or that decides on what it finds,
is written as a plan: a generator that yields steps and receives each step's result, so
the logic of a cart write is written once and run by the SQLite writer thread and by an
asyncpg connection alike (see `drive` in each store).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Mapping
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")
Params = Mapping[str, Any]

# A string literal, a quoted name, a `::` cast, a `:name` parameter, a `?`, a lone quote.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|:(\w+)|(\?)|(['\"])")


def numbered(sql: str, mark: str = "$") -> tuple[str, tuple[str, ...]]:
    """`:name` parameters numbered (asyncpg's `$n`, or SQLite's `?n`), and the names in
    that order. One name used twice is one parameter. Quoted text is left as it is; `?`
    and an unclosed quote are refused, so a statement never binds other values than it
    names."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        name, stray, quote = found.groups()
        if stray or quote:
            raise ValueError(f"statement has a stray {stray or quote!r}: {sql}")
        if name is None:  # quoted text or a cast
            return found.group(0)
        if name not in names:
            names.append(name)
        return f"{mark}{names.index(name) + 1}"

    return _TOKEN.sub(number, sql), tuple(names)


class Rendered(NamedTuple):
    """A shared statement as one driver sends it."""

    text: str
    names: tuple[str, ...]  # its parameters, in the order they are numbered
    bind: Callable[[Params], tuple[Any, ...]]  # their values, in that order


class Dialect(dict[str, Rendered]):
    """What one database calls the slots of the shared statements. Indexed by a shared
    statement: that statement for this driver, rendered once. Both drivers bind by
    position, through an itemgetter: binding by name costs the writer thread more."""

    def __init__(self, slots: dict[str, str], mark: str, lists: Callable[[Any], Any]) -> None:
        super().__init__()
        self._slots = slots
        self._mark = mark
        self._lists = lists  # how a list parameter (always `:ids`) is bound

    def __missing__(self, sql: str) -> Rendered:
        text, names = numbered(sql.format_map(self._slots), self._mark)
        found = self[sql] = Rendered(text, names, self._binder(names))
        return found

    def render(self, sql: str) -> Rendered:
        return self[sql]

    def _binder(self, names: tuple[str, ...]) -> Callable[[Params], tuple[Any, ...]]:
        if "ids" in names:
            lists = self._lists
            return lambda params: tuple(
                lists(params[name]) if name == "ids" else params[name] for name in names
            )
        if len(names) == 1:
            (name,) = names
            return lambda params: (params[name],)
        if not names:
            return lambda params: ()
        return itemgetter(*names)


SQLITE = Dialect(
    {
        # A list parameter is always `:ids`: JSON text for SQLite, an array for asyncpg.
        "in_ids": "IN (SELECT value FROM json_each(:ids))",
        "bytewise": "",  # SQLite compares text byte by byte already
        "for_update": "",  # one writer: whatever it reads stays as read
        "skip_locked": "",
        "seq": "rowid",  # insertion order
    },
    mark="?",
    lists=json.dumps,
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
    mark="$",
    lists=lambda values: values,
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
