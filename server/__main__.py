"""Command line: serve (the default), migrate, import a catalog, list outbox events, back
up and restore the SQLite database; what each does and reads is its --help."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import textwrap
from pathlib import Path

from .backup import DatabaseInUse
from .config import ConfigError, Settings, declarations, redact, settings_table
from .variables import plain

TRACE = 5


DESCRIPTION = """\
cartsync: a real-time shopping-cart sync server. Without a command it serves (as `serve`).

Every command reads its settings from environment variables: `python -m server settings`
lists them with their values, `serve --help` with what each means. The database is
DATABASE_URL (default sqlite:///cart.db; a postgresql:// URL for several processes), and
LOG_LEVEL sets what is logged. A bad value stops the command with status 2 and one line
naming the variable and what it allows."""

SERVE = """\
Run the cart server until SIGTERM or Ctrl-C, then drain: long-polls are answered and
changes in flight are committed before the tabs are closed.

Reads every variable below; the ones a deployment sets first: HOST and PORT (or --host,
--port), DATABASE_URL, CART_SECRET (signs cart ids; required with PostgreSQL), REDIS_URL
(to run several processes), PUBLIC_URL, ALLOWED_ORIGINS, FORWARDED_ALLOW_IPS, LOG_LEVEL.
The schema is created or updated at start-up."""

SETTINGS = """\
Print every variable the server reads with the value it would use now (secrets hidden),
or with --markdown README.md's configuration table, which is made this way:
    python -m server settings --markdown"""

MIGRATE = """\
Create the tables and indexes of schema.sql that DATABASE_URL's database lacks, say which
tables were created, and exit. Existing tables and their rows are kept; running it again
changes nothing. The server does the same at start-up: this is for doing it beforehand."""

IMPORT = """\
Insert or update the products of a catalog file in DATABASE_URL's database, by id, in one
transaction: every row or none. The first bad row is named, by line (CSV) or item (JSON).

CSV (UTF-8): a header row naming the columns id, sku, name, price_cents, stock and,
optionally, image_url and active (true or false), then one product per line. JSON: a list
of objects with those fields, or {"products": [...]}. Prices are integer cents: 12.50 is
written 1250. Running servers show the changes within CATALOG_REFRESH; with REDIS_URL set
they are told at once."""

EVENTS = """\
Print cart lifecycle events (the outbox: abandoned and expired carts) from DATABASE_URL's
database, one JSON object per line, oldest first. Delivering them to
CART_EVENTS_WEBHOOK_URL, if set, is the server's job; this only reads."""


def parser() -> argparse.ArgumentParser:
    """The commands, their options and their --help."""
    text = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="python -m server", description=DESCRIPTION, formatter_class=text
    )
    commands = top.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the cart server (the default)",
        description=SERVE,
        epilog=variables_help(),
        formatter_class=text,
    )
    _serve_options(serve)
    _serve_options(top)
    commands.add_parser(
        "migrate",
        help="create the database tables that are missing, then exit",
        description=MIGRATE,
        formatter_class=text,
    )
    load = commands.add_parser(
        "import",
        help="insert or update products from a .csv or .json catalog file",
        description=IMPORT,
        formatter_class=text,
    )
    load.add_argument("file", type=Path, help="the catalog: a .csv or .json file")
    events = commands.add_parser(
        "events",
        help="list cart lifecycle events, one JSON object per line",
        description=EVENTS,
        formatter_class=text,
    )
    events.add_argument("--undelivered", action="store_true", help="only those not delivered")
    events.add_argument("--limit", type=int, default=100, help="at most this many (oldest first)")
    copy = commands.add_parser("backup", help="copy the live SQLite database while it serves")
    copy.add_argument("path", type=Path)
    copy.add_argument("--force", action="store_true", help="replace PATH if it exists")
    put = commands.add_parser(
        "restore", help="put a backup in place of the SQLite database (server stopped)"
    )
    put.add_argument("path", type=Path)
    listed = commands.add_parser(
        "settings",
        help="list the variables read and their values now (or README's table)",
        description=SETTINGS,
        formatter_class=text,
    )
    listed.add_argument("--markdown", action="store_true", help="README's table, unfilled")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "settings" and args.markdown:
        sys.stdout.write(settings_table())
        return 0
    try:
        settings = Settings.from_env(given(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.addLevelName(TRACE, "TRACE")  # uvicorn's level below debug, known before uvicorn
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "import":
            return asyncio.run(_import(settings, args.file))
        if args.command == "events":
            return asyncio.run(_events(settings, args.undelivered, args.limit))
        if args.command in ("backup", "restore"):
            return _backup_or_restore(settings, args)
        if args.command == "settings":
            return _print_settings(settings)
        return _serve(settings, args)
    except (ConfigError, DatabaseInUse) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# Options that stand for a variable: given, they replace it (and are checked as it is).
OPTIONS = {"host": "HOST", "port": "PORT", "forwarded_allow_ips": "FORWARDED_ALLOW_IPS"}


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", help="TCP port to listen on (default: PORT, else 8000)")
    parser.add_argument(
        "--forwarded-allow-ips",
        help="proxies trusted for X-Forwarded-* ('*' behind a platform router such as Heroku's);"
        " default: FORWARDED_ALLOW_IPS, else 127.0.0.1",
    )


def given(args: argparse.Namespace) -> dict[str, str]:
    """The environment, with the variables that command-line options replace."""
    options = {env: getattr(args, name, None) for name, env in OPTIONS.items()}
    return {**os.environ, **{env: value for env, value in options.items() if value is not None}}


def variables_help() -> str:
    """Every variable, its default and its help, for `serve --help`."""
    lines = ["environment variables (python -m server settings shows their values now):"]
    for var in declarations():
        lines.append(f"  {var.env} (default {plain(var.shown)})")
        lines += textwrap.wrap(
            plain(var.help), 88, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)


def _print_settings(settings: Settings) -> int:
    """One line per variable: its value now; a secret only as set or not."""
    for var, value in zip(declarations(), dataclasses.astuple(settings), strict=True):
        if var.hidden and value:
            value = redact(value) if "://" in value else "(set)"
        print(f"{var.env}={var.write(value)}")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .connections import guarded_http
    from .forwarded import ProxyHeaders, TrustedProxies
    from .limits import AddressCount
    from .serving import GRACEFUL_SECONDS, CartServer, redact_logs, stall_guarded
    from .sockets import Sockets, capacity, raise_fd_limit

    trusted = TrustedProxies(settings.forwarded_allow_ips)
    per_address = AddressCount(settings.max_sockets_per_ip)
    sockets = Sockets(per_address, capacity(raise_fd_limit()), trusted)
    ws = stall_guarded(settings)  # websockets-sansio, dropping stuck peers
    app = create_app(settings)
    config = uvicorn.Config(
        # uvicorn's own proxy-header middleware believes the client's leftmost entry.
        ProxyHeaders(app, trusted, settings.forwarded_hops, per_address),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded_http(settings, sockets, ws),  # httptools or h11, with header limits
        ws=ws,
        ws_max_size=settings.ws_max_size,
        ws_per_message_deflate=False,  # frames are small; compressing each per tab costs more
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,  # names the software and version to anyone probing
    )
    redact_logs()  # after Config, which (re)configures uvicorn's loggers
    CartServer(config, app).run()
    return 0


async def _migrate(settings: Settings) -> int:
    from .store import open_store
    from .store.tables import SCHEMA_TABLES, present

    before = await present(settings.database_url)
    store = await open_store(settings)
    await store.close()
    created = [name for name in SCHEMA_TABLES if name not in before]
    where = redact(settings.database_url)
    if not created:
        print(f"nothing to create: all {len(SCHEMA_TABLES)} tables were there in {where}")
    else:
        counted = f"{len(created)} of {len(SCHEMA_TABLES)} tables"
        print(f"created {', '.join(created)} ({counted}) in {where}")
    print("the schema is up to date")
    return 0


async def _import(settings: Settings, path: Path) -> int:
    from .importer import CatalogFileError, read_products
    from .store import open_store

    try:
        products = read_products(path)
    except (CatalogFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"read {len(products)} products from {path}; writing them in one transaction")
    store = await open_store(settings)
    try:
        inserted, updated = await store.upsert_products(products)
    except ValueError as exc:
        print(f"error: {path}: {exc}; nothing was imported", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(f"imported {len(products)} products: {inserted} new, {updated} updated")
    if settings.redis_url:
        await _tell_servers(settings, [p.id for p in products])
    return 0


async def _tell_servers(settings: Settings, product_ids: list[str]) -> None:
    """Running servers re-read the imported products now (each would within
    CATALOG_REFRESH anyway): the news a process publishes after its own changes."""
    from .bus import open_bus
    from .news import catalog_news

    try:
        bus = await open_bus(settings.redis_url, verify_tls=settings.redis_verify_tls)
    except Exception as exc:  # the import stands; the servers' refresh finds it
        print(f"note: could not tell the running servers ({exc})", file=sys.stderr)
        return
    try:
        bus.publish(*catalog_news("import", product_ids))
    finally:
        await bus.close()  # sends what is queued first


async def _events(settings: Settings, undelivered: bool, limit: int) -> int:
    import msgspec

    from .store import open_store

    store = await open_store(settings)
    try:
        events = await store.list_events(undelivered, limit)
    finally:
        await store.close()
    for event in events:
        record = msgspec.structs.asdict(event)
        record["payload"] = msgspec.json.decode(event.payload)
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
    return 0


def _backup_or_restore(settings: Settings, args: argparse.Namespace) -> int:
    from . import backup
    from .config import sqlite_path

    if not settings.database_url.startswith("sqlite:"):
        tool = "pg_dump" if args.command == "backup" else "pg_restore (of a pg_dump archive)"
        print(
            f"error: the store is PostgreSQL ({redact(settings.database_url)}): use {tool};"
            f" `python -m server {args.command}` is for the SQLite store",
            file=sys.stderr,
        )
        return 2
    db = Path(sqlite_path(settings.database_url))
    try:
        if args.command == "backup":
            print(f"backing up {db} (the server may keep serving)", flush=True)
            summary = backup.backup(db, args.path, args.force, lambda s: print(s, flush=True))
            print(f"backup written and checked: {summary.describe()}")
        else:
            kept = backup.restore(db, args.path)
            print(f"restored {args.path} as {db}")
            if kept is not None:
                print(f"the database it replaced is kept as {kept}")
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
